"""Layer 0: errors, float64 scopes, atomic writes, safetensors I/O and device meshes.

Imports nothing else of pacbayes; `sharding` (JAX) is imported on its own.
"""

from pacbayes.core.errors import PacBayesWarning
from pacbayes.core.precision import enable_x64_globally, float64_scope, with_float64
from pacbayes.core.tensorio import (
  CONFIG_FILE,
  INDEX_FILE,
  SINGLE_FILE,
  CheckpointError,
  SafetensorsFolder,
  checkpoint_folder,
  is_float_dtype,
  iter_tensors,
  load_unique_json,
  read_tensors,
  row_blocks,
  weight_files,
  write_safetensors,
  write_tensors,
)

__all__ = [
  "CONFIG_FILE",
  "CheckpointError",
  "INDEX_FILE",
  "PacBayesWarning",
  "SINGLE_FILE",
  "SafetensorsFolder",
  "checkpoint_folder",
  "enable_x64_globally",
  "float64_scope",
  "is_float_dtype",
  "iter_tensors",
  "load_unique_json",
  "read_tensors",
  "row_blocks",
  "weight_files",
  "with_float64",
  "write_safetensors",
  "write_tensors",
]
