"""Flax NNX decoders (Llama, Qwen2, GPT-2) and Hugging Face checkpoint I/O."""

from pacbayes.models.checkpoint import (
  iter_tensors,
  load_config,
  load_pretrained,
  param_table,
  read_tensors,
  save_pretrained,
)
from pacbayes.models.config import ModelConfig
from pacbayes.models.transformer import Decoder, build_model

__all__ = [
  "Decoder",
  "ModelConfig",
  "build_model",
  "iter_tensors",
  "load_config",
  "load_pretrained",
  "param_table",
  "read_tensors",
  "save_pretrained",
]
