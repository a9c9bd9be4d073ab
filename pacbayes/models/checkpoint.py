"""Hugging Face checkpoint folders (config.json + safetensors) <-> NNX decoders, table-driven."""

from __future__ import annotations

import collections
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from pacbayes.core.jsonio import read_object
from pacbayes.core.tensorio import (
  CONFIG_FILE,
  SafetensorsFolder,
  checkpoint_folder,
  is_float_dtype,
  iter_tensors,
  read_tensors,
  row_blocks,
  weight_files,
  write_safetensors,
  write_tensors,
)
from pacbayes.models.config import ModelConfig
from pacbayes.models.params import Entry, NnxPath, classify_tensors, embedding_name, param_table
from pacbayes.models.transformer import Decoder, build_model

# Reading and writing the safetensors files themselves lives in pacbayes.core.tensorio; these
# names stay importable from here.
__all__ = [
  "Entry",
  "ParameterReader",
  "folder_fingerprint",
  "iter_tensors",
  "load_config",
  "load_pretrained",
  "param_table",
  "read_tensors",
  "save_pretrained",
  "weight_files",
  "write_safetensors",
]


def load_config(path: str | os.PathLike, *, dtype: str | None = None) -> ModelConfig:
  """Reads and checks `config.json` of a checkpoint folder."""
  file = checkpoint_folder(path, require_config=True) / CONFIG_FILE
  hf = read_object(file)  # strict: a repeated key or NaN names the file and line
  try:
    return ModelConfig.from_hf_config(hf, dtype=dtype)
  except ValueError as e:
    raise ValueError(f"{file}: {e}") from e


def _model_dtype(config: ModelConfig):
  return np.dtype(ml_dtypes.bfloat16) if config.dtype == "bfloat16" else np.dtype(np.float32)


def load_pretrained(path: str | os.PathLike, *,
                    dtype: str | None = None) -> tuple[Decoder, ModelConfig]:
  """Loads a Hugging Face checkpoint folder into an NNX decoder, without network access.

  Args:
    path: folder with `config.json` and `model.safetensors` (or shards listed in
      `model.safetensors.index.json`).
    dtype: "float32" or "bfloat16" for parameters and activations; None takes bfloat16 when
      `config.json` says so and float32 otherwise.

  Returns:
    (model, config).

  Raises:
    ValueError: naming the folder, file or tensor: missing folder/config/weights/shard,
      unsupported config attribute, a tensor that is neither a parameter nor a known buffer
      (see `pacbayes.models.params.classify_tensors`), a missing parameter, a tied
      `lm_head.weight` that differs from the embedding, a shape mismatch, a non-floating or
      non-finite parameter.
  """
  config = load_config(path, dtype=dtype)
  tensors = read_tensors(path)
  table = param_table(config)
  pset = _classified(path, config, tensors)
  abstract = nnx.eval_shape(lambda: build_model(config, rngs=nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract)
  slots = dict(nnx.to_flat_state(abstract_state))
  filled: dict[NnxPath, Any] = {}
  # Each tensor is a memory map of its file bytes: its pages stay resident while a reference
  # lives, so every map is dropped as soon as its last table entry has copied it (peak RSS
  # near the model plus one tensor, not the model plus the whole file).
  uses = collections.Counter(pset.parameters[entry.hf_name] for entry in table)
  for entry in table:
    name = pset.parameters[entry.hf_name]
    array = tensors[name]
    uses[name] -= 1
    if not uses[name]:
      del tensors[name]
    for nnx_path, value in _entry_values(path, config, entry, array, slots):
      filled[nnx_path] = slots[nnx_path].replace(value=jnp.asarray(value))
      del value
    del array
  unfilled = [p for p in slots if p not in filled]
  if unfilled:  # a table bug, not a user error
    raise RuntimeError(f"parameters not covered by the load table: {unfilled}")
  state = nnx.from_flat_state([(p, filled[p]) for p in slots])
  return nnx.merge(graphdef, state), config


def _classified(path: Any, config: ModelConfig, tensors: dict[str, Any]) -> Any:
  """`classify_tensors` of the folder; a redundant tied head is checked equal to the embedding
  and removed from `tensors`."""
  pset = classify_tensors(config, tensors, str(path))
  if pset.tied_duplicate is not None:
    # Compared as stored (no float64 copies of a [V, D] matrix); equal values in two stored
    # dtypes still compare equal because NumPy promotes both to a common type row by row.
    embed = tensors[pset.parameters[embedding_name(config)]]
    head = tensors.pop(pset.tied_duplicate)
    if head.shape != embed.shape or not all(
        np.array_equal(head[r0:r1], embed[r0:r1]) for r0, r1 in row_blocks(embed.shape)):
      raise ValueError(f"{path}: tie_word_embeddings is true but {pset.tied_duplicate!r} differs "
                       f"from {embedding_name(config)!r}")
  return pset


def _entry_values(path: Any, config: ModelConfig, entry: Entry, array: np.ndarray,
                  slots: dict[NnxPath, Any]) -> list[tuple[NnxPath, np.ndarray]]:
  """The NNX arrays of one table entry from its stored array, in the config's dtype, each
  checked for dtype, shape and finiteness (the one conversion of `load_pretrained` and
  `ParameterReader`)."""
  if not is_float_dtype(array.dtype):
    raise ValueError(f"{path}: parameter {entry.hf_name!r} has dtype {array.dtype}; expected "
                     "a floating-point dtype")
  try:
    parts = entry.load(array)
  except ValueError as e:
    raise ValueError(f"{path}: tensor {entry.hf_name!r} with shape {array.shape} cannot be "
                     f"mapped ({e})") from e
  out = []
  for nnx_path, part in zip(entry.nnx_paths, parts, strict=True):
    slot = slots[nnx_path]
    if tuple(part.shape) != tuple(slot.shape):
      raise ValueError(
        f"{path}: tensor {entry.hf_name!r} has shape {tuple(array.shape)}, which does not "
        f"match the config (expected {tuple(slot.shape)} for {'/'.join(map(str, nnx_path))})")
    # No copy when the stored dtype is the model's: a view of the file's bytes, which the
    # caller copies (`load_pretrained`) or reads and drops (`ParameterReader`).
    value = np.asarray(part).astype(_model_dtype(config), copy=False)
    if not np.all(np.isfinite(value)):
      raise ValueError(f"{path}: parameter {entry.hf_name!r} holds a non-finite value (NaN or "
                       f"infinite, after casting to {config.dtype})")
    out.append((nnx_path, value))
  return out


class ParameterReader:
  """A checkpoint folder's `nnx.Param` leaves one at a time, exactly as `load_pretrained`
  loads them (same table, cast and checks), without building the model: a leaf's tensor is
  memory-mapped when asked for and released after, so reading every leaf in turn keeps about
  one tensor resident (`pacbayes bound` streams the prior this way).

  Attributes:
    path: the folder; config: its `ModelConfig` (in the asked dtype); names: the leaves'
      '/'-joined paths (those of `pacbayes.posterior.draws.leaf_paths` of the loaded model).

  Raises:
    ValueError: as `load_pretrained` (when opened, or for the leaf asked for).
  """

  def __init__(self, path: str | os.PathLike, *, dtype: str | None = None):
    self.path = path
    self.config = load_config(path, dtype=dtype)
    self._folder = SafetensorsFolder(path)
    tensors = {name: self._folder.memmap(name) for name in self._folder.names()}
    self._pset = _classified(path, self.config, tensors)
    del tensors
    abstract = nnx.eval_shape(lambda: build_model(self.config, rngs=nnx.Rngs(0)))
    self._slots = dict(nnx.to_flat_state(nnx.split(abstract)[1]))
    self._entries = {"/".join(map(str, p)): (e, p) for e in param_table(self.config)
                     for p in e.nnx_paths}
    self.names = ["/".join(map(str, p)) for p in self._slots]

  def leaf(self, name: str) -> np.ndarray:
    """Leaf `name` ('/'-joined NNX path) as the loaded model would hold it (NumPy)."""
    if name not in self._entries:
      raise KeyError(f"{self.path}: no parameter {name!r}")
    entry, nnx_path = self._entries[name]
    array = self._folder.memmap(self._pset.parameters[entry.hf_name])
    values = dict(_entry_values(self.path, self.config, entry, array, self._slots))
    del array
    return values[nnx_path]


def _tensors_to_save(model: Decoder, config: ModelConfig) -> dict[str, np.ndarray]:
  _, state = nnx.split(model)
  flat = {p: v for p, v in nnx.to_flat_state(state)}
  out = {}
  for entry in param_table(config):
    parts = []
    for nnx_path in entry.nnx_paths:
      if nnx_path not in flat:
        raise ValueError(f"model has no parameter {'/'.join(map(str, nnx_path))} that config "
                         f"(model_type={config.model_type!r}) requires")
      parts.append(np.asarray(jax.device_get(flat[nnx_path][...])))
    out[entry.hf_name] = np.ascontiguousarray(entry.save(*parts))
  return out


def save_pretrained(model: Decoder, config: ModelConfig, path: str | os.PathLike, *,
                    max_shard_bytes: int | None = None) -> None:
  """Writes `config.json` and safetensors weights that transformers (torch) loads back.

  Args:
    model: the decoder.
    config: its config.
    path: output folder (created; existing files of the same names are overwritten).
    max_shard_bytes: if given, split the weights into `model-0000i-of-0000n.safetensors`
      files of at most about this many bytes plus `model.safetensors.index.json`.
  """
  tensors = _tensors_to_save(model, config)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, CONFIG_FILE), "w") as f:
    f.write(json.dumps(config.to_hf_config(), indent=2) + "\n")
  write_tensors(path, tensors, max_shard_bytes=max_shard_bytes)


FINGERPRINT_FILES = (CONFIG_FILE, "model.safetensors.index.json")
_FINGERPRINTS: dict[tuple, str] = {}


def folder_fingerprint(path: str | os.PathLike) -> str:
  """A content fingerprint of a checkpoint folder: "sha256:<hex>".

  SHA-256 over, in sorted order of file name, each of `config.json`, the shard index (if any)
  and the safetensors weight files: the name, the size in bytes, then the bytes. A renamed or
  moved byte-identical copy has the same fingerprint; other weights or another config give
  another. Tokenizer files are left out (they do not change the weights' meaning here).
  Reading streams 1 MiB blocks (about 1-2 GB/s); the result is cached per process on the
  files' (path, size, mtime), so checking the same base twice reads it once.

  Raises:
    ValueError: the folder has no config or no weights (see `weight_files`).
  """
  import hashlib

  folder = checkpoint_folder(path, require_config=True)
  names = {os.path.basename(str(f)) for f in weight_files(folder)}
  names |= {n for n in FINGERPRINT_FILES if (folder / n).is_file()}
  files = [folder / n for n in sorted(names)]
  key = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
  if key in _FINGERPRINTS:
    return _FINGERPRINTS[key]
  digest = hashlib.sha256()
  for f in files:
    digest.update(f"{f.name}\0{f.stat().st_size}\0".encode())
    with open(f, "rb") as stream:
      for block in iter(lambda s=stream: s.read(1 << 20), b""):
        digest.update(block)
  _FINGERPRINTS[key] = out = "sha256:" + digest.hexdigest()
  return out
