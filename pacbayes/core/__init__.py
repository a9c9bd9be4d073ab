"""Layer 0: errors, float64 scopes, atomic writes, safetensors I/O and device meshes.

Imports nothing else of pacbayes; `sharding` (JAX) is imported on its own.
"""

from pacbayes.core.tensorio import (
    CONFIG_FILE as CONFIG_FILE,
)
from pacbayes.core.tensorio import (
    INDEX_FILE as INDEX_FILE,
)
from pacbayes.core.tensorio import (
    SINGLE_FILE as SINGLE_FILE,
)
from pacbayes.core.tensorio import (
    CheckpointError as CheckpointError,
)
from pacbayes.core.tensorio import (
    SafetensorsFolder as SafetensorsFolder,
)
from pacbayes.core.tensorio import (
    checkpoint_folder as checkpoint_folder,
)
from pacbayes.core.tensorio import (
    is_float_dtype as is_float_dtype,
)
from pacbayes.core.tensorio import (
    iter_tensors as iter_tensors,
)
from pacbayes.core.tensorio import (
    load_unique_json as load_unique_json,
)
from pacbayes.core.tensorio import (
    read_tensors as read_tensors,
)
from pacbayes.core.tensorio import (
    row_blocks as row_blocks,
)
from pacbayes.core.tensorio import (
    weight_files as weight_files,
)
from pacbayes.core.tensorio import (
    write_safetensors as write_safetensors,
)
from pacbayes.core.tensorio import (
    write_tensors as write_tensors,
)

__all__ = [
    "PacBayesWarning",
    "enable_x64_globally",
    "float64_scope",
    "with_float64",
    "CONFIG_FILE",
    "CheckpointError",
    "INDEX_FILE",
    "SINGLE_FILE",
    "SafetensorsFolder",
    "checkpoint_folder",
    "is_float_dtype",
    "iter_tensors",
    "load_unique_json",
    "read_tensors",
    "row_blocks",
    "weight_files",
    "write_safetensors",
    "write_tensors",
]
