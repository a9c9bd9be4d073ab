"""Flax NNX decoders (Llama, Qwen2, GPT-2) and Hugging Face checkpoint I/O."""

from pacbayes.models.checkpoint import (
    iter_tensors,
    load_config,
    load_pretrained,
    read_tensors,
    save_pretrained,
    weight_files,
    write_safetensors,
)
from pacbayes.models.config import Llama3RopeScaling, ModelConfig
from pacbayes.models.generate import greedy_generate
from pacbayes.models.params import (
    hf_name_of_path,
    hf_names,
    param_table,
    parameter_mask,
    paths_of_hf_name,
    select_parameters,
)
from pacbayes.models.transformer import Decoder, build_model, positions_from_mask
from pacbayes.models.weights import StorageReport, storage_dtypes, storage_report

__all__ = [
  "Decoder",
  "Llama3RopeScaling",
  "ModelConfig",
  "StorageReport",
  "build_model",
  "greedy_generate",
  "hf_name_of_path",
  "hf_names",
  "iter_tensors",
  "load_config",
  "load_pretrained",
  "param_table",
  "parameter_mask",
  "paths_of_hf_name",
  "positions_from_mask",
  "read_tensors",
  "save_pretrained",
  "select_parameters",
  "storage_dtypes",
  "storage_report",
  "weight_files",
  "write_safetensors",
]
