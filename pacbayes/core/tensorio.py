"""Reading and writing Hugging Face safetensors checkpoint folders (single file or sharded)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from safetensors import safe_open

from pacbayes.core.jsonio import loads

__all__ = [
  "CONFIG_FILE",
  "INDEX_FILE",
  "SINGLE_FILE",
  "CheckpointError",
  "SafetensorsFolder",
  "checkpoint_folder",
  "is_float_dtype",
  "load_unique_json",
  "iter_tensors",
  "read_tensors",
  "row_blocks",
  "weight_files",
  "write_safetensors",
  "write_tensors",
]

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"

# safetensors dtype tags -> NumPy dtypes (little-endian on disk, as the format requires).
_DTYPES: dict[str, np.dtype] = {
  "F64": np.dtype("<f8"),
  "F32": np.dtype("<f4"),
  "F16": np.dtype("<f2"),
  "BF16": np.dtype(ml_dtypes.bfloat16),
  "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
  "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
  "I64": np.dtype("<i8"),
  "I32": np.dtype("<i4"),
  "I16": np.dtype("<i2"),
  "I8": np.dtype("i1"),
  "U64": np.dtype("<u8"),
  "U32": np.dtype("<u4"),
  "U16": np.dtype("<u2"),
  "U8": np.dtype("u1"),
  "BOOL": np.dtype("?"),
}
_TAGS = {dtype: tag for tag, dtype in _DTYPES.items()}
_SHARD_NAME = re.compile(r"model-\d+-of-\d+\.safetensors")

_EXTRA_FLOATS = frozenset(_DTYPES[t] for t in ("BF16", "F8_E4M3", "F8_E5M2"))


def is_float_dtype(dtype: np.dtype) -> bool:
  """True for floating dtypes, including ml_dtypes' bfloat16 and float8 (NumPy misses those)."""
  dtype = np.dtype(dtype)
  return bool(np.issubdtype(dtype, np.floating)) or dtype in _EXTRA_FLOATS


# Elements per block when a caller of ``iter_rows`` gives no size (~16 MiB of float64).
DEFAULT_BLOCK_ELEMS = 1 << 21


class CheckpointError(ValueError):
  """A checkpoint folder, file or tensor that cannot be used (the message names it)."""


def checkpoint_folder(path: str | os.PathLike, *, require_config: bool = False) -> Path:
  """Checks that ``path`` is a folder (holding ``config.json`` if asked) and returns it.

  Raises:
    CheckpointError: naming the folder, when it is missing or lacks ``config.json``.
  """
  folder = Path(path)
  if not folder.is_dir():
    raise CheckpointError(f"checkpoint folder {str(folder)!r} does not exist (or is a file).")
  if require_config and not (folder / CONFIG_FILE).is_file():
    raise CheckpointError(f"checkpoint folder {str(folder)!r} has no {CONFIG_FILE}.")
  return folder


@dataclasses.dataclass(frozen=True)
class _TensorInfo:
  file: str  # path of the .safetensors file holding it
  dtype: str  # safetensors tag, e.g. "F32"
  shape: tuple[int, ...]
  begin: int  # absolute byte offset of the data in the file
  end: int


def load_unique_json(text: str | bytes, *, where: str = "JSON") -> Any:
  """Strict ``json.loads`` (`pacbayes.core.jsonio.loads`): a repeated key, NaN or Infinity
  raises a ValueError naming `where` and the line."""
  return loads(text, where=where)


def _read_header(path: str) -> dict[str, _TensorInfo]:
  """Parses and validates a safetensors header (8-byte little-endian length, then JSON).

  The checks are those of the reference implementation (the `safetensors` crate's
  ``Metadata::validate``): a JSON object of unique names, each with a known dtype, a shape of
  non-negative integers and ``data_offsets [begin, end]`` with ``end - begin`` equal to the
  tensor's byte size; the byte ranges, sorted, tile the data buffer exactly (contiguous, no
  overlap, no gap, nothing left over); ``__metadata__`` maps strings to strings.
  """
  try:
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
      raw_len = f.read(8)
      if len(raw_len) != 8:
        raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes).")
      header_len = int.from_bytes(raw_len, "little")
      if header_len > file_size - 8:
        raise CheckpointError(f"{path}: not a safetensors file (header length {header_len}).")
      header = load_unique_json(f.read(header_len), where=f"{path} (header)")
  except (OSError, UnicodeDecodeError, ValueError) as e:
    if isinstance(e, CheckpointError):
      raise
    raise CheckpointError(f"{path}: cannot read the safetensors header ({e}).") from e
  if not isinstance(header, dict):
    raise CheckpointError(f"{path}: safetensors header is not a JSON object.")
  meta = header.get("__metadata__")
  if meta is not None and not (isinstance(meta, dict)
                               and all(isinstance(v, str) for v in meta.values())):
    raise CheckpointError(f"{path}: safetensors '__metadata__' must map strings to strings.")
  start = 8 + header_len
  infos = {}
  for name, entry in header.items():
    if name == "__metadata__":
      continue
    try:
      dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
      if not (isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2
              and all(_is_count(x) for x in shape + offsets)):
        raise TypeError
      shape = tuple(shape)
      begin, end = offsets
    except (KeyError, TypeError) as e:
      raise CheckpointError(f"{path}: malformed header entry for tensor {name!r} (needs dtype, "
                            "a shape and data_offsets of non-negative integers).") from e
    if not isinstance(dtype, str) or dtype not in _DTYPES:
      raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}.")
    nbytes = math.prod(shape) * _DTYPES[dtype].itemsize
    if end < begin or end - begin != nbytes or start + end > file_size:
      raise CheckpointError(
        f"{path}: tensor {name!r} ({dtype}, shape {shape}) does not fit its byte range "
        f"[{begin}, {end}) in a file of {file_size} bytes: the file is truncated or malformed."
      )
    infos[name] = _TensorInfo(path, dtype, shape, start + begin, start + end)
  position = start
  for name in sorted(infos, key=lambda n: (infos[n].begin, infos[n].end)):
    info = infos[name]
    if info.begin != position:
      what = "overlaps the tensor before it" if info.begin < position else "leaves a gap"
      raise CheckpointError(
        f"{path}: tensor {name!r} at bytes [{info.begin - start}, {info.end - start}) {what} "
        "(safetensors data must be contiguous and non-overlapping).")
    position = info.end
  if position != file_size:
    raise CheckpointError(f"{path}: {file_size - position} bytes after the last tensor's data "
                          "(the header does not describe the whole file).")
  return infos


def _is_count(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def row_blocks(shape: tuple[int, ...], max_elems: int | None = None) -> list[tuple[int, int]]:
  """Splits the first axis of ``shape`` into ``[r0, r1)`` ranges of about ``max_elems`` each.

  A 0-d or empty shape gives one range ``(0, 0)``; a block holds at least one row.
  """
  max_elems = DEFAULT_BLOCK_ELEMS if max_elems is None else max_elems
  if not shape or shape[0] == 0:
    return [(0, 0)]
  rows_per_block = max(1, max_elems // max(1, math.prod(shape[1:])))
  return [(r, min(r + rows_per_block, shape[0])) for r in range(0, shape[0], rows_per_block)]


class SafetensorsFolder:
  """Lazy, read-only view of a Hugging Face safetensors checkpoint folder.

  Accepts a single ``model.safetensors`` or shards listed in ``model.safetensors.index.json``
  (the single file wins when both exist, as in ``transformers``). Only headers are read when
  the folder is opened, and every tensor's byte range is checked against its file. Tensor data
  is read on demand, one tensor (or row block) at a time, through
  ``safetensors.safe_open(framework="numpy")``, or memory-mapped (``memmap``). bfloat16
  tensors come back as ``ml_dtypes.bfloat16`` arrays; where the installed safetensors cannot
  give them to NumPy, their raw bytes are read directly (bit-exact).

  Args:
    folder: the checkpoint folder.
    require_config: also require ``config.json`` (a complete HF model folder).
    direct: read tensor bytes with plain file reads at the header's offsets instead of
      ``safe_open`` (bit-identical; no memory map, so the resident size stays at one block
      rather than one tensor, and reading is faster on some file systems).

  Raises:
    CheckpointError: (a ValueError) naming the folder, file or tensor that is missing or
      malformed.
  """

  # None: probe on the first bfloat16 read whether safe_open can return it to NumPy.
  _native_bf16: bool | None = None

  def __init__(
    self, folder: str | os.PathLike, *, require_config: bool = False, direct: bool = False
  ):
    self.path = os.fspath(folder)
    self.direct = direct
    checkpoint_folder(self.path, require_config=require_config)
    single = os.path.join(self.path, SINGLE_FILE)
    index = os.path.join(self.path, INDEX_FILE)
    if os.path.isfile(single):
      self._infos = _read_header(single)
    elif os.path.isfile(index):
      self._infos = self._read_index(index)
    else:
      raise CheckpointError(
        f"checkpoint folder {self.path!r} has neither {SINGLE_FILE} nor {INDEX_FILE} "
        "(only safetensors weights are supported)."
      )
    # Read in on-disk order: file by file, by offset.
    self._names = sorted(self._infos, key=lambda n: (self._infos[n].file, self._infos[n].begin))

  def _read_index(self, index: str) -> dict[str, _TensorInfo]:
    try:
      with open(index, encoding="utf-8") as f:
        weight_map = load_unique_json(f.read(), where=index)["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise CheckpointError(f"{index}: not a valid index (needs a 'weight_map' object with "
                            f"unique names): {e}") from e
    if not isinstance(weight_map, dict) or not weight_map:
      raise CheckpointError(f"{index}: 'weight_map' must be a non-empty object.")
    headers: dict[str, dict[str, _TensorInfo]] = {}
    infos = {}
    for name, shard in weight_map.items():
      if not isinstance(shard, str) or os.path.basename(shard) != shard:
        raise CheckpointError(f"{index}: tensor {name!r} maps to {shard!r}, not a file name.")
      if shard not in headers:
        shard_path = os.path.join(self.path, shard)
        if not os.path.isfile(shard_path):
          raise CheckpointError(f"{index}: lists shard {shard!r}, which is missing.")
        headers[shard] = _read_header(shard_path)
      if name not in headers[shard]:
        raise CheckpointError(f"{index}: tensor {name!r} is not in its shard {shard!r}.")
      infos[name] = headers[shard][name]
    return infos

  def names(self) -> list[str]:
    """Tensor names in on-disk order."""
    return list(self._names)

  def files(self) -> list[Path]:
    """The safetensors files that hold the tensors, sorted."""
    return sorted({Path(info.file) for info in self._infos.values()})

  def __contains__(self, name: str) -> bool:
    return name in self._infos

  def __len__(self) -> int:
    return len(self._names)

  def _info(self, name: str) -> _TensorInfo:
    try:
      return self._infos[name]
    except KeyError:
      raise CheckpointError(f"{self.path}: no tensor named {name!r}.") from None

  def shape(self, name: str) -> tuple[int, ...]:
    """Shape of tensor ``name``."""
    return self._info(name).shape

  def dtype(self, name: str) -> str:
    """safetensors dtype tag of tensor ``name`` (e.g. ``"F32"``, ``"BF16"``)."""
    return self._info(name).dtype

  def numpy_dtype(self, name: str) -> np.dtype:
    """NumPy dtype that ``get`` returns for tensor ``name``."""
    return _DTYPES[self._info(name).dtype]

  def get(self, name: str) -> np.ndarray:
    """The whole tensor ``name`` read into memory, in its stored dtype."""
    info = self._info(name)
    blocks = self._blocks(name, [(0, info.shape[0] if info.shape else 0)])
    try:
      return next(blocks)
    finally:
      blocks.close()

  def memmap(self, name: str) -> np.ndarray:
    """Tensor ``name`` as a read-only memory map of its bytes (read into memory when 0-d/empty)."""
    info = self._info(name)
    dtype = _DTYPES[info.dtype]
    if math.prod(info.shape) == 0 or not info.shape:  # np.memmap makes a 0-d shape (1,)
      return self.get(name)
    return np.memmap(info.file, dtype=dtype, mode="r", offset=info.begin, shape=info.shape)

  def iter_rows(self, name: str, max_elems: int | None = None) -> Iterator[np.ndarray]:
    """Yields tensor ``name`` in blocks of whole rows (first axis), about ``max_elems`` each.

    Only the block being read is held in memory; a 0-d tensor comes as one block.
    """
    return self._blocks(name, row_blocks(self._info(name).shape, max_elems))

  def _blocks(self, name: str, blocks: Sequence[tuple[int, int]]) -> Iterator[np.ndarray]:
    info = self._info(name)
    if info.shape and math.prod(info.shape) == 0:  # nothing to read (safe_open cannot slice)
      for r0, r1 in blocks:
        yield np.zeros((r1 - r0,) + info.shape[1:], _DTYPES[info.dtype])
      return
    if self.direct or (info.dtype == "BF16" and not self._bf16_native_ok(name)):
      for r0, r1 in blocks:
        yield self._read_raw(name, r0, r1)
      return
    # One handle per tensor: the file mapping is released once the tensor is done, so the
    # resident size stays near one tensor even for large shards.
    with safe_open(info.file, framework="numpy") as handle:
      if not info.shape:
        yield handle.get_tensor(name)
        return
      view = handle.get_slice(name)
      for r0, r1 in blocks:
        yield view[r0:r1]

  def _bf16_native_ok(self, name: str) -> bool:
    cls = type(self)
    if cls._native_bf16 is None:
      info = self._info(name)
      try:
        with safe_open(info.file, framework="numpy") as handle:
          probe = handle.get_slice(name)[0:1] if info.shape else handle.get_tensor(name)
        cls._native_bf16 = probe.dtype == _DTYPES["BF16"]
      except Exception:  # noqa: BLE001  (any failure means: use the raw reader)
        cls._native_bf16 = False
    return cls._native_bf16

  def _read_raw(self, name: str, r0: int, r1: int) -> np.ndarray:
    """Reads rows [r0, r1) of a tensor straight from the file bytes (no safe_open)."""
    info = self._info(name)
    dtype = _DTYPES[info.dtype]
    row_elems = math.prod(info.shape[1:])
    count = (r1 - r0) * row_elems if info.shape else 1
    offset = info.begin + r0 * row_elems * dtype.itemsize
    if info.dtype == "BF16":
      # bfloat16 is the top half of a float32: read the little-endian 16-bit words.
      raw = np.fromfile(info.file, dtype="<u2", count=count, offset=offset)
      data = raw.astype(np.uint16, copy=False).view(ml_dtypes.bfloat16)
    else:
      data = np.fromfile(info.file, dtype=dtype, count=count, offset=offset)
    if data.size != count:
      raise CheckpointError(f"{info.file}: tensor {name!r} is truncated.")
    return data.reshape((r1 - r0,) + info.shape[1:] if info.shape else ())


def iter_tensors(
  folder: str | os.PathLike, *, names: Sequence[str] | None = None
) -> Iterator[tuple[str, np.ndarray]]:
  """Yields ``(name, array)`` for each tensor of a safetensors checkpoint folder, lazily.

  One tensor is read into memory per step, in on-disk order, in its stored dtype (bfloat16 as
  ``ml_dtypes.bfloat16``), so the caller controls how many are kept alive. ``config.json`` is
  not required.

  Args:
    folder: a folder with ``model.safetensors`` or ``model.safetensors.index.json``.
    names: if given, only these tensors, in this order (a missing one raises).

  Yields:
    ``(tensor name, NumPy array)`` pairs.

  Raises:
    CheckpointError: (a ValueError) for a missing folder, weights file, shard or tensor.
  """
  reader = SafetensorsFolder(folder)
  for name in reader.names() if names is None else names:
    yield name, reader.get(name)


def read_tensors(folder: str | os.PathLike) -> dict[str, np.ndarray]:
  """All tensors of a checkpoint folder by name, memory-mapped (bfloat16 as ml_dtypes).

  Raises:
    CheckpointError: (a ValueError) for a missing folder, weights file, shard or tensor.
  """
  reader = SafetensorsFolder(folder)
  return {name: reader.memmap(name) for name in reader.names()}


def weight_files(folder: str | os.PathLike) -> list[Path]:
  """The safetensors files of a checkpoint folder, honouring ``model.safetensors.index.json``.

  Raises:
    CheckpointError: (a ValueError) naming the folder or file, when the folder, the weights or
      a shard is missing or malformed.
  """
  return SafetensorsFolder(folder).files()


def write_safetensors(file: str | os.PathLike, tensors: Mapping[str, Any]) -> None:
  """Writes arrays (floats incl. bfloat16 via ml_dtypes, ints, bools) as one safetensors file.

  Raises:
    ValueError: naming the tensor, for a dtype that safetensors cannot store or a bad name.
  """
  header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
  offset = 0
  arrays = []
  for name in sorted(tensors):
    if not isinstance(name, str) or not name or name == "__metadata__":
      raise ValueError(f"tensor name {name!r} cannot be saved (need a non-empty string).")
    array = np.asarray(tensors[name])
    # Not ascontiguousarray: it turns a 0-d array into shape (1,). tobytes() writes C order.
    array = array.astype(array.dtype.newbyteorder("<"), copy=False)
    if array.dtype not in _TAGS:
      raise ValueError(f"tensor {name!r}: dtype {array.dtype} cannot be saved as safetensors.")
    header[name] = {
      "dtype": _TAGS[array.dtype],
      "shape": list(array.shape),
      "data_offsets": [offset, offset + array.nbytes],
    }
    offset += array.nbytes
    arrays.append(array)
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
  with open(file, "wb") as f:
    f.write(len(raw).to_bytes(8, "little"))
    f.write(raw)
    for array in arrays:
      f.write(array.tobytes())


def write_tensors(
  folder: str | os.PathLike, tensors: Mapping[str, Any], *, max_shard_bytes: int | None = None
) -> None:
  """Writes tensors into a checkpoint folder as ``model.safetensors`` or shards plus an index.

  Args:
    folder: output folder (created). Weight files of an earlier save there (a single file,
      an index, shards) are removed first, so no stale file can shadow the new weights.
    tensors: ``{name: array}``.
    max_shard_bytes: if given, split into ``model-0000i-of-0000n.safetensors`` files of at
      most about this many bytes (a larger tensor gets a shard of its own) and write
      ``model.safetensors.index.json``.

  Raises:
    ValueError: naming the tensor, for a dtype that safetensors cannot store, or for
      ``max_shard_bytes`` <= 0.
  """
  if max_shard_bytes is not None and max_shard_bytes <= 0:
    raise ValueError(f"max_shard_bytes must be positive; got {max_shard_bytes!r}.")
  folder = Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  stale = [folder / SINGLE_FILE, folder / INDEX_FILE]
  stale += [f for f in folder.glob("model-*-of-*.safetensors") if _SHARD_NAME.fullmatch(f.name)]
  for file in stale:
    file.unlink(missing_ok=True)
  if max_shard_bytes is None:
    write_safetensors(folder / SINGLE_FILE, tensors)
    return
  shards: list[dict[str, Any]] = [{}]
  size = 0
  for name in sorted(tensors):
    nbytes = np.asarray(tensors[name]).nbytes
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = tensors[name]
    size += nbytes
  weight_map = {}
  for i, shard in enumerate(shards):
    file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    write_safetensors(folder / file, shard)
    weight_map.update(dict.fromkeys(shard, file))
  total = sum(np.asarray(a).nbytes for a in tensors.values())
  index = {"metadata": {"total_size": total}, "weight_map": weight_map}
  (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
