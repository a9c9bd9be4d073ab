"""Flax NNX decoders (Llama, Qwen2, GPT-2) and Hugging Face checkpoint I/O."""

from pacbayes.models.checkpoint import (
  iter_tensors,
  load_config,
  load_pretrained,
  param_table,
  read_tensors,
  save_pretrained,
  weight_files,
  write_safetensors,
)
from pacbayes.models.config import Llama3RopeScaling, ModelConfig
from pacbayes.models.generate import greedy_generate
from pacbayes.models.transformer import Decoder, build_model

__all__ = [
  "Decoder",
  "Llama3RopeScaling",
  "ModelConfig",
  "build_model",
  "greedy_generate",
  "iter_tensors",
  "load_config",
  "load_pretrained",
  "param_table",
  "read_tensors",
  "save_pretrained",
  "weight_files",
  "write_safetensors",
]
