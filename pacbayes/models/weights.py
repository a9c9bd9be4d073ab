"""The parameters of two checkpoints side by side, streamed: pairing, stored dtypes, bf16 rounding.

`open_parameters` gives the parameter set of one checkpoint (a Hugging Face folder, classified
by `pacbayes.models.params.classify_tensors`, or an in-memory `{name: array}` mapping);
`paired_blocks` walks the same parameter of two checkpoints block by block, so that callers
(`pacbayes.posterior.kl.checkpoint_kl`, `storage_report`) hold about one block in memory
whatever the model size.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from pacbayes.core.tensorio import (
  CONFIG_FILE,
  CheckpointError,
  SafetensorsFolder,
  is_float_dtype,
  row_blocks,
)
from pacbayes.models.checkpoint import load_config
from pacbayes.models.config import ModelConfig
from pacbayes.models.params import classify_tensors, embedding_name, hf_shapes

__all__ = [
  "BLOCK_ELEMS",
  "CheckpointParams",
  "StorageReport",
  "check_identical",
  "check_same_parameters",
  "open_parameters",
  "paired_blocks",
  "raise_non_finite",
  "sq_distance",
  "storage_dtypes",
  "storage_report",
]

# Elements per streamed block: a few float64 buffers of this size stay live (~16 MiB each).
BLOCK_ELEMS = 1 << 21


class CheckpointParams:
  """The parameters of one checkpoint, readable by HF name in blocks of rows.

  Attributes:
    path: the folder (or the label of an in-memory mapping), for messages.
    config: the architecture, or None for a mapping given without one (then every entry of
      the mapping is a parameter).
    names: HF parameter names (table order for a folder).
    buffers: stored names of ignored buffers.
    tied_duplicate: stored name of a redundant tied `lm_head.weight` (checked equal), or None.
  """

  def __init__(self, path: str, config: ModelConfig | None, reader: Any,
               stored: Mapping[str, str], buffers=(), tied_duplicate=None):
    self.path = path
    self.config = config
    self.names = tuple(stored)
    self.buffers = tuple(buffers)
    self.tied_duplicate = tied_duplicate
    self._reader = reader
    self._stored = dict(stored)
    for name in self.names:
      dtype = self.numpy_dtype(name)
      if not is_float_dtype(dtype):
        raise CheckpointError(f"{path}: parameter {self._stored[name]!r} has dtype {dtype}; "
                              "expected a floating-point dtype.")

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._reader.shape(self._stored[name]))

  def numpy_dtype(self, name: str) -> np.dtype:
    return np.dtype(self._reader.numpy_dtype(self._stored[name]))

  def iter_rows(self, name: str, max_elems: int | None = None) -> Iterator[np.ndarray]:
    """Parameter `name` in blocks of whole rows (stored dtype)."""
    return self._reader.iter_rows(self._stored[name], max_elems)

  def stored_name(self, name: str) -> str:
    return self._stored[name]


class _DictReader:
  """In-memory `{name: array}` weights with the reading interface of SafetensorsFolder."""

  def __init__(self, weights: Mapping[str, Any]):
    self._weights = {k: np.asarray(v) for k, v in weights.items()}

  def names(self) -> list[str]:
    return list(self._weights)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._weights[name].shape)

  def numpy_dtype(self, name: str) -> np.dtype:
    return self._weights[name].dtype

  def iter_rows(self, name: str, max_elems: int | None = None) -> Iterator[np.ndarray]:
    array = self._weights[name]
    if array.ndim == 0:
      yield array
      return
    for r0, r1 in row_blocks(array.shape, max_elems):
      yield array[r0:r1]


def _folder_config(path: str) -> ModelConfig:
  if not os.path.isfile(os.path.join(path, CONFIG_FILE)):
    raise CheckpointError(f"checkpoint folder {path!r} has no {CONFIG_FILE}.")
  return load_config(path)


def open_parameters(source: str | os.PathLike | SafetensorsFolder | Mapping[str, Any],
                    label: str = "checkpoint", *, config: ModelConfig | None = None,
                    direct: bool = False) -> CheckpointParams:
  """The parameter set of one checkpoint.

  Args:
    source: a Hugging Face folder (`config.json` and safetensors weights), an open
      `SafetensorsFolder` (its folder must hold `config.json`), or an in-memory
      `{HF name: array}` mapping.
    label: the name of an in-memory mapping in messages.
    config: the architecture of a mapping (its names are then classified like a folder's);
      ignored for folders, which use their own `config.json`. A mapping without a config is
      taken as it is: every entry is a parameter.
    direct: read folders with plain file reads (see `SafetensorsFolder`).

  Returns:
    A `CheckpointParams`. For a folder, a tied `lm_head.weight` has already been checked
    equal to the embedding.

  Raises:
    CheckpointError / ValueError: naming the folder and tensor: a missing folder, config or
      weights file; an unknown tensor; a missing parameter; a non-floating parameter; a tied
      duplicate that differs from the embedding.
  """
  if isinstance(source, Mapping):
    reader = _DictReader(source)
    if config is None:
      return CheckpointParams(label, None, reader, {n: n for n in reader.names()})
    where = label
  else:
    reader = source if isinstance(source, SafetensorsFolder) else SafetensorsFolder(
      source, require_config=True, direct=direct)
    where = reader.path
    config = _folder_config(where)
  pset = classify_tensors(config, reader.names(), where)
  for name, shape in hf_shapes(config).items():
    stored = pset.parameters[name]
    if tuple(reader.shape(stored)) != shape:
      raise CheckpointError(f"{where}: tensor {stored!r} has shape {tuple(reader.shape(stored))}, "
                            f"but config.json implies {shape}.")
  params = CheckpointParams(where, config, reader, pset.parameters, pset.buffers,
                            pset.tied_duplicate)
  if pset.tied_duplicate is not None:
    embed = pset.parameters[embedding_name(config)]
    head = pset.tied_duplicate
    same = reader.shape(head) == reader.shape(embed) and all(
      np.array_equal(np.asarray(a, np.float64), np.asarray(b, np.float64))
      for a, b in zip(reader.iter_rows(embed, BLOCK_ELEMS), reader.iter_rows(head, BLOCK_ELEMS),
                      strict=True))
    if not same:
      raise CheckpointError(f"{where}: tie_word_embeddings is true but {head!r} differs from "
                            f"{embed!r}.")
  return params


def paired_blocks(prior: CheckpointParams, posterior: CheckpointParams, name: str,
                  max_elems: int = BLOCK_ELEMS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """The same row blocks of parameter `name` from both checkpoints (stored dtypes)."""
  return zip(prior.iter_rows(name, max_elems), posterior.iter_rows(name, max_elems), strict=True)


def check_same_parameters(prior: CheckpointParams, posterior: CheckpointParams) -> None:
  """Raises CheckpointError unless both hold the same parameter names and shapes."""
  names_q = set(posterior.names)
  only_p = [n for n in prior.names if n not in names_q]
  only_q = sorted(names_q - set(prior.names))
  if only_p or only_q:
    raise CheckpointError(
      f"checkpoints {prior.path!r} and {posterior.path!r} hold different parameters: "
      f"only in the prior: {only_p[:5]}{' ...' if len(only_p) > 5 else ''}; "
      f"only in the posterior: {only_q[:5]}{' ...' if len(only_q) > 5 else ''}."
    )
  for name in prior.names:
    if prior.shape(name) != posterior.shape(name):
      raise CheckpointError(f"tensor {name!r} has shape {prior.shape(name)} in {prior.path!r} "
                            f"but {posterior.shape(name)} in {posterior.path!r}.")


def raise_non_finite(prior: CheckpointParams, posterior: CheckpointParams, name: str,
                     max_elems: int = BLOCK_ELEMS) -> None:
  """Raises CheckpointError naming the checkpoint and tensor if parameter `name` holds a NaN or
  infinite value in either checkpoint (returns otherwise)."""
  for src in (prior, posterior):
    for block in src.iter_rows(name, max_elems):
      if not np.all(np.isfinite(np.asarray(block, dtype=np.float64))):
        raise CheckpointError(f"tensor {src.stored_name(name)!r} in {src.path!r} has non-finite "
                              "values (NaN or infinite).")


def sq_distance(prior: CheckpointParams, posterior: CheckpointParams, name: str,
                max_elems: int = BLOCK_ELEMS) -> float:
  """``||w_posterior - w_prior||^2`` of parameter `name`, upcast to float64 block by block and
  summed exactly (``math.fsum`` over blocks).

  Raises:
    CheckpointError: naming the tensor and checkpoint, for a non-finite value or overflow.
  """
  parts = []
  for a, b in paired_blocks(prior, posterior, name, max_elems):
    # The ufunc upcasts block by block: no float64 copies of the inputs are made.
    d = np.subtract(b, a, dtype=np.float64).ravel()
    parts.append(float(np.dot(d, d)))
  sq = math.fsum(parts)
  if not math.isfinite(sq):
    raise_non_finite(prior, posterior, name, max_elems)
    raise CheckpointError(f"tensor {name!r}: squared distance overflows float64.")
  return sq


def check_identical(prior: CheckpointParams, posterior: CheckpointParams, name: str,
                    max_elems: int = BLOCK_ELEMS) -> None:
  """Raises unless parameter `name` holds the same finite values in both checkpoints.

  Raises:
    CheckpointError: a non-finite value (naming tensor and checkpoint).
    ValueError: the values differ (the KL of an unperturbed moved parameter is infinite).
  """
  for a, b in paired_blocks(prior, posterior, name, max_elems):
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if not (np.all(np.isfinite(a64)) and np.all(np.isfinite(b64))):
      raise_non_finite(prior, posterior, name, max_elems)
    if not np.array_equal(a64, b64):
      raise ValueError(
        f"tensor {name!r} is not perturbed (excluded by include/exclude) but differs between "
        f"{prior.path!r} and {posterior.path!r}: its KL is infinite. Perturb it, or make it "
        "identical in both checkpoints."
      )


# ----------------------------------------------------------------------------------------------
# Stored dtypes and rounding.

# 16-bit float dtypes: (fraction bits, smallest normal exponent).
_SIXTEEN = {"bfloat16": (7, -126), "float16": (10, -14)}


def _dtype_name(dtype: np.dtype) -> str:
  return "bfloat16" if dtype == np.dtype(ml_dtypes.bfloat16) else np.dtype(dtype).name


def storage_dtypes(checkpoint: str | os.PathLike | CheckpointParams) -> dict[str, str]:
  """The stored dtype of each parameter: `{HF name: "float32" | "bfloat16" | ...}`.

  Reads headers only.

  Raises:
    CheckpointError / ValueError: as `open_parameters`.
  """
  params = checkpoint if isinstance(checkpoint, CheckpointParams) else open_parameters(checkpoint)
  return {name: _dtype_name(params.numpy_dtype(name)) for name in params.names}


@dataclasses.dataclass(frozen=True)
class StorageReport:
  """Stored dtypes of a prior/posterior pair and how much of their difference is rounding.

  Attributes:
    prior_dtypes, posterior_dtypes: stored dtype -> number of parameters (elements).
    num_params: elements in the parameter set.
    sixteen_bit: "bfloat16" or "float16" when either side stores a parameter in 16 bits
      (the coarser one if both occur), else None.
    num_moved: elements whose stored values differ (None when no side is 16-bit: not read).
    num_rounding: elements with 0 < |w_q - w_p| <= one ulp of the 16-bit dtype at
      max(|w_p|, |w_q|): a change that rounding to the stored 16-bit dtype alone can make.
  """

  prior_dtypes: dict[str, int]
  posterior_dtypes: dict[str, int]
  num_params: int
  sixteen_bit: str | None
  num_moved: int | None
  num_rounding: int | None

  @property
  def moved_share(self) -> float | None:
    return None if self.num_moved is None else self.num_moved / max(self.num_params, 1)

  @property
  def rounding_share(self) -> float | None:
    return None if self.num_rounding is None else self.num_rounding / max(self.num_params, 1)

  def note(self) -> str | None:
    """One line for a report when a 16-bit dtype is involved, else None."""
    if self.sixteen_bit is None:
      return None
    sides = [side for side, d in (("prior", self.prior_dtypes),
                                  ("posterior", self.posterior_dtypes)) if self.sixteen_bit in d]
    return (f"{' and '.join(sides)} stored in {self.sixteen_bit}: {100 * self.rounding_share:.1f}% "
            f"of parameters differ from the prior by at most one {self.sixteen_bit} ulp (a change "
            f"rounding alone can make; {100 * self.moved_share:.1f}% differ at all); the KL "
            "counts every such difference.")


def _ulp(magnitude: np.ndarray, fraction_bits: int, min_exponent: int) -> np.ndarray:
  """Spacing of a binary float format at |x| = magnitude (float64), subnormals included."""
  _, exponent = np.frexp(magnitude)  # magnitude = f * 2**exponent, f in [0.5, 1)
  exponent = np.maximum(exponent - 1, min_exponent)
  return np.ldexp(1.0, exponent - fraction_bits)


def storage_report(prior: str | os.PathLike | CheckpointParams,
                   posterior: str | os.PathLike | CheckpointParams) -> StorageReport:
  """Stored dtypes of both checkpoints and the share of parameters moved only by rounding.

  When either checkpoint stores a parameter in a 16-bit dtype, one streamed pass over both
  counts the elements that differ and those that differ by at most one unit in the last
  place of that dtype (the KL grows with such rounding differences: a bf16 save of a
  fine-tune moves weights by whole ulps). Without a 16-bit dtype nothing but headers is read.

  Args:
    prior, posterior: checkpoint folders (or `open_parameters` results).

  Returns:
    A `StorageReport`.

  Raises:
    CheckpointError / ValueError: as `open_parameters`, or parameters that differ in names
      or shapes.
  """
  src_p = prior if isinstance(prior, CheckpointParams) else open_parameters(prior)
  src_q = posterior if isinstance(posterior, CheckpointParams) else open_parameters(posterior)
  check_same_parameters(src_p, src_q)
  counts: list[dict[str, int]] = [{}, {}]
  sixteen = set()
  total = 0
  for name in src_p.names:
    count = math.prod(src_p.shape(name))
    total += count
    for side, src in enumerate((src_p, src_q)):
      dtype = _dtype_name(src.numpy_dtype(name))
      counts[side][dtype] = counts[side].get(dtype, 0) + count
      if dtype in _SIXTEEN:
        sixteen.add(dtype)
  if not sixteen:
    return StorageReport(counts[0], counts[1], total, None, None, None)
  coarse = min(sixteen, key=lambda d: _SIXTEEN[d][0])
  bits, emin = _SIXTEEN[coarse]
  moved = rounding = 0
  for name in src_p.names:
    for a, b in paired_blocks(src_p, src_q, name):
      a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
      diff = np.abs(b64 - a64)
      changed = diff > 0
      moved += int(np.count_nonzero(changed))
      ulp = _ulp(np.maximum(np.abs(a64), np.abs(b64)), bits, emin)
      rounding += int(np.count_nonzero(changed & (diff <= ulp)))
  return StorageReport(counts[0], counts[1], total, coarse, moved, rounding)

