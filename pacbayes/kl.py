"""Gaussian KL divergences over pytrees and streamed over two safetensors checkpoints."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from safetensors import safe_open

__all__ = [
  "CheckpointError",
  "CheckpointKL",
  "SafetensorsFolder",
  "TensorKL",
  "checkpoint_kl",
  "gaussian_kl",
  "isotropic_kl",
  "iter_safetensors",
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
_EXTRA_FLOATS = frozenset(_DTYPES[t] for t in ("BF16", "F8_E4M3", "F8_E5M2"))


def _is_float(dtype: np.dtype) -> bool:
  return np.issubdtype(dtype, np.floating) or dtype in _EXTRA_FLOATS


# Elements per streamed chunk: three float64 buffers of this size stay live at once (~48 MiB).
_CHUNK_ELEMS = 1 << 21

SigmaSpec = float | Mapping[str, float] | Callable[[str], float]


class CheckpointError(ValueError):
  """A checkpoint folder or tensor that cannot be used (the message names it)."""


# --------------------------------------------------------------------------------------------
# KL over pytrees.


def _is_scalar(x: Any) -> bool:
  if isinstance(x, (int, float, np.number)):
    return True
  return hasattr(x, "shape") and hasattr(x, "dtype") and np.ndim(x) == 0


def _check_positive(value: Any, what: str) -> None:
  """Raises if a concrete (non-traced) sigma leaf is not positive and finite."""
  if isinstance(value, jax.core.Tracer):
    return
  arr = np.asarray(value, dtype=np.float64)
  if not (np.all(np.isfinite(arr)) and np.all(arr > 0)):
    bad = arr[~(np.isfinite(arr) & (arr > 0))].ravel()[0]
    raise ValueError(f"{what} must be positive and finite; got {float(bad)!r}.")


def _sigma_leaves(sigma: Any, name: str, treedef, paths, shapes) -> list[Any]:
  """Per-leaf sigma values (scalar or leaf-shaped) for the leaves of mu_q."""
  if _is_scalar(sigma):
    _check_positive(sigma, name)
    return [sigma] * len(paths)
  flat, sigma_def = jax.tree_util.tree_flatten_with_path(sigma)
  if sigma_def != treedef:
    raise ValueError(
      f"{name} must be a scalar or a pytree with the structure of mu_q; got structure "
      f"{sigma_def} for mu_q structure {treedef}."
    )
  leaves = []
  for (path, leaf), shape in zip(flat, shapes, strict=True):
    where = f"{name} at leaf {jax.tree_util.keystr(path)}"
    if np.shape(leaf) not in ((), shape):
      raise ValueError(f"{where} has shape {np.shape(leaf)}; expected () or {shape}.")
    _check_positive(leaf, where)
    leaves.append(leaf)
  return leaves


def _leaf_kl(mu_q, mu_p, sigma_q, sigma_p) -> jax.Array:
  """KL of one leaf in float64; sigmas are 0-d or leaf-shaped."""
  shape = jnp.shape(mu_q)
  d = jnp.asarray(mu_q).astype(jnp.float64) - jnp.asarray(mu_p).astype(jnp.float64)
  sq = jnp.asarray(sigma_q).astype(jnp.float64)
  sp = jnp.asarray(sigma_p).astype(jnp.float64)
  # r - 1 - ln r with r = s^2 / sp^2, written as expm1(t) - t (t = ln r) so that the sum stays
  # accurate when s is close to sp instead of cancelling 1 against r.
  t = 2.0 * (jnp.log(sq) - jnp.log(sp))
  var_term = jnp.expm1(t) - t
  if var_term.ndim == 0:
    var_sum = var_term * math.prod(shape)
  else:
    var_sum = jnp.sum(jnp.broadcast_to(var_term, shape))
  if sp.ndim == 0:
    quad_sum = jnp.sum(jnp.square(d)) / jnp.square(sp)
  else:
    quad_sum = jnp.sum(jnp.square(d) / jnp.square(sp))
  return 0.5 * (var_sum + quad_sum)


def gaussian_kl(mu_q: Any, mu_p: Any, sigma_q: Any, sigma_p: Any) -> jax.Array:
  """KL(Q || P) between diagonal Gaussians over a pytree of weights.

  ``Q = N(mu_q, diag(s^2))`` and ``P = N(mu_p, diag(sigma_p^2))``, where ``s`` is ``sigma_q``
  broadcast over the leaves of ``mu_q``. Every leaf is cast to float64 before any arithmetic
  (so bfloat16 / float32 weights lose nothing), mapped to its own KL, and the leaf KLs are
  summed:

    KL = 1/2 sum_i [ s_i^2/sp_i^2 + (mu_q_i - mu_p_i)^2/sp_i^2 - 1 + ln(sp_i^2/s_i^2) ].

  The function is jit-able and differentiable in all four arguments (a diagonal posterior can
  be optimised through it). Checks on sigma values run only on concrete inputs.

  Args:
    mu_q: posterior mean, a pytree of arrays.
    mu_p: prior mean, a pytree with the same structure and leaf shapes as ``mu_q``.
    sigma_q: posterior standard deviation: a positive scalar (isotropic), or a pytree with
      the structure of ``mu_q`` whose leaves are scalars (one per leaf) or leaf-shaped arrays
      (diagonal).
    sigma_p: prior standard deviation, a positive scalar or a pytree like ``sigma_q``.

  Returns:
    The KL divergence, a float64 scalar.

  Raises:
    ValueError: on mismatched structure or shapes (naming the leaf path) or a non-positive
      sigma (naming the argument).

  References:
    DESIGN.md section 1; the Gaussian KL as used in Dziugaite & Roy, "Computing nonvacuous
    generalization bounds for deep (stochastic) neural networks" (UAI 2017).
  """
  flat_q, treedef = jax.tree_util.tree_flatten_with_path(mu_q)
  flat_p, treedef_p = jax.tree_util.tree_flatten_with_path(mu_p)
  if treedef != treedef_p:
    keys_q = {jax.tree_util.keystr(p) for p, _ in flat_q}
    keys_p = {jax.tree_util.keystr(p) for p, _ in flat_p}
    only_q, only_p = sorted(keys_q - keys_p), sorted(keys_p - keys_q)
    if only_q or only_p:
      where = f"leaf {only_q[0]} is in mu_q only" if only_q else f"leaf {only_p[0]} is in mu_p only"
    else:
      where = f"mu_q is {treedef}, mu_p is {treedef_p}"
    raise ValueError(f"mu_q and mu_p have different tree structures: {where}.")
  paths = [p for p, _ in flat_q]
  shapes = [tuple(np.shape(x)) for _, x in flat_q]
  for path, shape, (_, leaf_p) in zip(paths, shapes, flat_p, strict=True):
    if tuple(np.shape(leaf_p)) != shape:
      raise ValueError(
        f"leaf {jax.tree_util.keystr(path)}: mu_q has shape {shape} but mu_p has shape "
        f"{tuple(np.shape(leaf_p))}."
      )
  sq_leaves = _sigma_leaves(sigma_q, "sigma_q", treedef, paths, shapes)
  sp_leaves = _sigma_leaves(sigma_p, "sigma_p", treedef, paths, shapes)
  terms = [
    _leaf_kl(q, p, s, sp)
    for (_, q), (_, p), s, sp in zip(flat_q, flat_p, sq_leaves, sp_leaves, strict=True)
  ]
  if not terms:
    return jnp.zeros((), jnp.float64)
  return jnp.sum(jnp.stack(terms))


def isotropic_kl(
  sq_distance: jax.typing.ArrayLike,
  num_params: jax.typing.ArrayLike,
  sigma_q: jax.typing.ArrayLike,
  sigma_p: jax.typing.ArrayLike,
) -> jax.Array:
  """KL(N(w_q, sigma_q^2 I) || N(w_p, sigma_p^2 I)) from ``||w_q - w_p||^2`` and the count.

  With isotropic Gaussians the KL depends on the weights only through the squared distance,
  so one pass over two checkpoints (``CheckpointKL.sq_distance``) serves a whole sigma grid.
  Vectorised and differentiable in the sigmas.

  Args:
    sq_distance: squared Euclidean distance between the means.
    num_params: number of perturbed parameters.
    sigma_q: posterior standard deviation (> 0).
    sigma_p: prior standard deviation (> 0).

  Returns:
    ``1/2 [N (r - 1 - ln r) + sq_distance / sigma_p^2]`` with ``r = sigma_q^2 / sigma_p^2``,
    in float64.
  """
  sq_distance = jnp.asarray(sq_distance, jnp.float64)
  num_params = jnp.asarray(num_params, jnp.float64)
  sigma_q = jnp.asarray(sigma_q, jnp.float64)
  sigma_p = jnp.asarray(sigma_p, jnp.float64)
  t = 2.0 * (jnp.log(sigma_q) - jnp.log(sigma_p))
  return 0.5 * (num_params * (jnp.expm1(t) - t) + sq_distance / jnp.square(sigma_p))


# --------------------------------------------------------------------------------------------
# Reading safetensors folders.


@dataclasses.dataclass(frozen=True)
class _TensorInfo:
  file: str  # absolute path of the .safetensors file holding it
  dtype: str  # safetensors tag, e.g. "F32"
  shape: tuple[int, ...]
  begin: int  # absolute byte offset of the data in the file
  end: int


def _read_header(path: str) -> dict[str, _TensorInfo]:
  """Parses a safetensors header: 8-byte little-endian length, then JSON."""
  try:
    with open(path, "rb") as f:
      raw_len = f.read(8)
      if len(raw_len) != 8:
        raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes).")
      header_len = int.from_bytes(raw_len, "little")
      if header_len > os.path.getsize(path) - 8:
        raise CheckpointError(f"{path}: not a safetensors file (header length {header_len}).")
      header = json.loads(f.read(header_len))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{path}: cannot read the safetensors header ({e}).") from e
  if not isinstance(header, dict):
    raise CheckpointError(f"{path}: safetensors header is not a JSON object.")
  start = 8 + header_len
  file_size = os.path.getsize(path)
  infos = {}
  for name, entry in header.items():
    if name == "__metadata__":
      continue
    try:
      dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
    except (KeyError, TypeError, ValueError) as e:
      raise CheckpointError(f"{path}: malformed header entry for tensor {name!r}.") from e
    if dtype not in _DTYPES:
      raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}.")
    shape = tuple(int(s) for s in shape)
    if end - begin != math.prod(shape) * _DTYPES[dtype].itemsize or start + end > file_size:
      raise CheckpointError(
        f"{path}: tensor {name!r} ({dtype}, shape {shape}) does not fit its byte range "
        f"[{begin}, {end}) in a file of {file_size} bytes: the file is truncated or malformed."
      )
    infos[name] = _TensorInfo(path, dtype, shape, start + begin, start + end)
  return infos


class SafetensorsFolder:
  """Lazy, read-only view of a Hugging Face safetensors checkpoint folder.

  Accepts a single ``model.safetensors`` or shards listed in ``model.safetensors.index.json``
  (the single file wins when both exist, as in ``transformers``). Only headers are read when
  the folder is opened; tensor data is read on demand, one tensor (or row block) at a time,
  through ``safetensors.safe_open(framework="numpy")``. bfloat16 tensors come back as
  ``ml_dtypes.bfloat16`` arrays; where the installed safetensors cannot give them to NumPy,
  their raw bytes are read directly (bit-exact).

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
    if not os.path.isdir(self.path):
      raise CheckpointError(f"checkpoint folder {self.path!r} does not exist (or is a file).")
    if require_config and not os.path.isfile(os.path.join(self.path, CONFIG_FILE)):
      raise CheckpointError(f"checkpoint folder {self.path!r} has no {CONFIG_FILE}.")
    single = os.path.join(self.path, SINGLE_FILE)
    index = os.path.join(self.path, INDEX_FILE)
    self._infos: dict[str, _TensorInfo] = {}
    if os.path.isfile(single):
      self._infos = _read_header(single)
    elif os.path.isfile(index):
      self._infos = self._read_index(index)
    else:
      raise CheckpointError(
        f"checkpoint folder {self.path!r} has neither {SINGLE_FILE} nor {INDEX_FILE}."
      )
    # Read in on-disk order: file by file, by offset.
    self._names = sorted(self._infos, key=lambda n: (self._infos[n].file, self._infos[n].begin))

  def _read_index(self, index: str) -> dict[str, _TensorInfo]:
    try:
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
      raise CheckpointError(f"{index}: not a valid index (needs a 'weight_map' object).") from e
    if not isinstance(weight_map, dict) or not weight_map:
      raise CheckpointError(f"{index}: 'weight_map' must be a non-empty object.")
    headers: dict[str, dict[str, _TensorInfo]] = {}
    infos = {}
    for name, shard in weight_map.items():
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
    """The whole tensor ``name`` as a NumPy array in its stored dtype."""
    info = self._info(name)
    blocks = self._blocks(name, [(0, info.shape[0] if info.shape else 0)])
    try:
      return next(blocks)
    finally:
      blocks.close()

  def iter_rows(self, name: str, max_elems: int | None = None) -> Iterator[np.ndarray]:
    """Yields tensor ``name`` in blocks of whole rows (first axis), about ``max_elems`` each.

    Only the block being read is held in memory; a 0-d tensor comes as one block.
    """
    return self._blocks(name, _row_blocks(self._info(name).shape, max_elems))

  def _blocks(self, name: str, blocks: Sequence[tuple[int, int]]) -> Iterator[np.ndarray]:
    info = self._info(name)
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
    count = math.prod(info.shape) if not info.shape else (r1 - r0) * row_elems
    offset = info.begin + (r0 * row_elems * dtype.itemsize if info.shape else 0)
    if info.dtype == "BF16":
      # bfloat16 is the top half of a float32: read the little-endian 16-bit words.
      raw = np.fromfile(info.file, dtype="<u2", count=count, offset=offset)
      data = raw.astype(np.uint16, copy=False).view(ml_dtypes.bfloat16)
    else:
      data = np.fromfile(info.file, dtype=dtype, count=count, offset=offset)
    if data.size != count:
      raise CheckpointError(f"{info.file}: tensor {name!r} is truncated.")
    return data.reshape(((r1 - r0),) + info.shape[1:] if info.shape else ())


def _row_blocks(shape: tuple[int, ...], max_elems: int | None) -> list[tuple[int, int]]:
  max_elems = _CHUNK_ELEMS if max_elems is None else max_elems
  if not shape:
    return [(0, 0)]
  row_elems = max(1, math.prod(shape[1:]))
  rows_per_block = max(1, max_elems // row_elems)
  return [(r, min(r + rows_per_block, shape[0])) for r in range(0, shape[0], rows_per_block)] or [
    (0, 0)
  ]


def iter_safetensors(
  folder: str | os.PathLike, *, names: Sequence[str] | None = None
) -> Iterator[tuple[str, np.ndarray]]:
  """Yields ``(name, array)`` for each tensor of a safetensors checkpoint folder, lazily.

  Honours ``model.safetensors.index.json`` (sharded checkpoints). One tensor is read per step,
  in on-disk order, in its stored dtype (bfloat16 as ``ml_dtypes.bfloat16``), so the caller
  controls how many are kept alive. ``config.json`` is not required.

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


class _DictSource:
  """In-memory ``{name: array}`` weights with the reading interface of SafetensorsFolder."""

  def __init__(self, weights: Mapping[str, Any], label: str):
    self.path = label
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
    for r0, r1 in _row_blocks(array.shape, max_elems):
      yield array[r0:r1]


def _open_source(source: Any, label: str, direct: bool):
  if isinstance(source, Mapping):
    return _DictSource(source, label)
  if isinstance(source, SafetensorsFolder):
    return source
  return SafetensorsFolder(source, require_config=True, direct=direct)


# --------------------------------------------------------------------------------------------
# KL between two checkpoints.


@dataclasses.dataclass(frozen=True)
class TensorKL:
  """One perturbed tensor's contribution to the checkpoint KL."""

  name: str
  shape: tuple[int, ...]
  count: int  # number of elements
  sq_distance: float  # sum of squared differences, float64
  kl: float
  sigma_q: float
  sigma_p: float


@dataclasses.dataclass(frozen=True)
class CheckpointKL:
  """KL(Q || P) between Gaussians centred on two checkpoints, with per-tensor detail.

  Attributes:
    kl: total KL over the perturbed tensors.
    num_params: number of perturbed parameters.
    sq_distance: ``||w_posterior - w_prior||^2`` over the perturbed tensors.
    tensors: per-tensor contributions, in reading order.
    excluded: names of tensors left unperturbed (they are identical in both checkpoints).
    sigma_q: the posterior scale when it was one scalar, else None (per-tensor).
    sigma_p: the prior scale when it was one scalar, else None (per-tensor).
  """

  kl: float
  num_params: int
  sq_distance: float
  tensors: tuple[TensorKL, ...]
  excluded: tuple[str, ...]
  sigma_q: float | None
  sigma_p: float | None

  def kl_at(self, sigma_q: float, sigma_p: float) -> float:
    """Isotropic KL at other scalar scales, from the stored distance (no re-reading)."""
    _check_scalar_sigma(sigma_q, "sigma_q")
    _check_scalar_sigma(sigma_p, "sigma_p")
    return _kl_terms(self.num_params, self.sq_distance, sigma_q, sigma_p)


def _check_scalar_sigma(value: Any, what: str) -> float:
  try:
    value = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{what} must be a positive number; got {value!r}.") from None
  if not (math.isfinite(value) and value > 0):
    raise ValueError(f"{what} must be positive and finite; got {value!r}.")
  return value


def _kl_terms(count: int, sq_distance: float, sigma_q: float, sigma_p: float) -> float:
  t = 2.0 * (math.log(sigma_q) - math.log(sigma_p))
  return 0.5 * (count * (math.expm1(t) - t) + sq_distance / sigma_p**2)


def _sigma_resolver(sigma: SigmaSpec, what: str) -> tuple[Callable[[str], float], float | None]:
  """Returns name -> sigma (validated) and the scalar value when sigma is one number."""
  if callable(sigma):
    return (lambda name: _check_scalar_sigma(sigma(name), f"{what}({name!r})")), None
  if isinstance(sigma, Mapping):

    def lookup(name: str) -> float:
      if name not in sigma:
        raise ValueError(f"{what} has no value for perturbed tensor {name!r}.")
      return _check_scalar_sigma(sigma[name], f"{what}[{name!r}]")

    return lookup, None
  value = _check_scalar_sigma(sigma, what)
  return (lambda name: value), value


def _as_patterns(patterns: str | Sequence[str] | None, what: str) -> tuple[str, ...] | None:
  if patterns is None:
    return None
  if isinstance(patterns, str):
    return (patterns,)
  patterns = tuple(patterns)
  if not all(isinstance(p, str) for p in patterns):
    raise ValueError(f"{what} must be a glob pattern or a sequence of them; got {patterns!r}.")
  return patterns


def checkpoint_kl(
  prior: str | os.PathLike | Mapping[str, Any],
  posterior: str | os.PathLike | Mapping[str, Any],
  sigma_q: SigmaSpec,
  sigma_p: SigmaSpec,
  *,
  include: str | Sequence[str] | None = None,
  exclude: str | Sequence[str] | None = None,
  progress: bool = False,
  direct: bool = False,
) -> CheckpointKL:
  """KL(N(w_post, sigma_q^2 I) || N(w_prior, sigma_p^2 I)) streamed over two checkpoints.

  Reads the two checkpoints tensor by tensor, in blocks of rows, so memory stays near one
  block plus the file pages of the tensor being read, whatever the model size. Values are
  upcast to float64 before subtracting; each tensor's squared distance is a float64 sum and
  the total is summed exactly (``math.fsum``).

  A tensor is perturbed when it matches one of ``include`` (all tensors when None), matches
  none of ``exclude``, and holds floating-point values. Every other tensor must be identical
  in both checkpoints: a parameter that moved but is not perturbed has a point-mass posterior
  and prior at different places, and the KL is infinite.

  Args:
    prior: the pretrained checkpoint: a HF folder (``config.json`` and ``model.safetensors``
      or an index with shards) or an in-memory ``{name: array}`` mapping.
    posterior: the fine-tuned checkpoint, same forms.
    sigma_q: posterior scale: a positive number, a ``{tensor name: scale}`` mapping, or a
      callable ``name -> scale`` (per-tensor isotropic).
    sigma_p: prior scale, same forms. For a valid bound it must not depend on the training set.
    include: fnmatch glob pattern(s) on tensor names to perturb (None: all).
    exclude: fnmatch glob pattern(s) on tensor names to leave unperturbed.
    progress: show a tqdm progress bar over tensors.
    direct: read folders with plain file reads instead of ``safe_open`` (same values; memory
      stays at one block instead of one tensor's mapped pages; see ``SafetensorsFolder``).

  Returns:
    A CheckpointKL with the total KL, parameter count, squared distance and per-tensor terms.

  Raises:
    ValueError: (CheckpointError for file problems) naming the folder or tensor, for: a
      missing folder, config or weights file, a shard listed in the index but absent, tensor
      names or shapes that differ between the checkpoints, non-finite weights, sigma <= 0,
      an excluded tensor that differs, or an empty set of perturbed tensors.

  References:
    DESIGN.md section 1 (KL(Q||P) of Proposition 4.1, arXiv 2605.12906).
  """
  sigma_q_of, sigma_q_value = _sigma_resolver(sigma_q, "sigma_q")
  sigma_p_of, sigma_p_value = _sigma_resolver(sigma_p, "sigma_p")
  include = _as_patterns(include, "include")
  exclude = _as_patterns(exclude, "exclude")
  src_p = _open_source(prior, "prior", direct)
  src_q = _open_source(posterior, "posterior", direct)

  names_p, names_q = src_p.names(), set(src_q.names())
  only_p = sorted(set(names_p) - names_q)
  only_q = sorted(names_q - set(names_p))
  if only_p or only_q:
    raise CheckpointError(
      f"checkpoints {src_p.path!r} and {src_q.path!r} hold different tensors: "
      f"only in the prior: {only_p[:5]}{' ...' if len(only_p) > 5 else ''}; "
      f"only in the posterior: {only_q[:5]}{' ...' if len(only_q) > 5 else ''}."
    )
  for name in names_p:
    if src_p.shape(name) != src_q.shape(name):
      raise CheckpointError(
        f"tensor {name!r} has shape {src_p.shape(name)} in {src_p.path!r} but "
        f"{src_q.shape(name)} in {src_q.path!r}."
      )

  def perturbed(name: str) -> bool:
    if include is not None and not any(fnmatch.fnmatchcase(name, p) for p in include):
      return False
    if exclude is not None and any(fnmatch.fnmatchcase(name, p) for p in exclude):
      return False
    return _is_float(src_p.numpy_dtype(name)) and _is_float(src_q.numpy_dtype(name))

  chosen = {name: perturbed(name) for name in names_p}
  if not any(chosen.values()):
    raise ValueError(
      f"no tensor is perturbed (include={include!r}, exclude={exclude!r}); the KL would be "
      "over no parameters."
    )

  # Unperturbed tensors first, so that an infinite KL is refused before the long pass, and
  # every sigma is validated before any reading.
  excluded = [name for name in names_p if not chosen[name]]
  todo = [name for name in names_p if chosen[name]]
  scales = {name: (sigma_q_of(name), sigma_p_of(name)) for name in todo}
  iterator = excluded + todo
  if progress:
    from tqdm.auto import tqdm

    iterator = tqdm(iterator, desc="checkpoint KL", unit="tensor")

  tensors = []
  for name in iterator:
    if not chosen[name]:
      _check_identical(src_p, src_q, name)
      continue
    s_q, s_p = scales[name]
    sq = _tensor_sq_distance(src_p, src_q, name)
    count = math.prod(src_p.shape(name))
    tensors.append(
      TensorKL(name, src_p.shape(name), count, sq, _kl_terms(count, sq, s_q, s_p), s_q, s_p)
    )

  return CheckpointKL(
    kl=math.fsum(t.kl for t in tensors),
    num_params=sum(t.count for t in tensors),
    sq_distance=math.fsum(t.sq_distance for t in tensors),
    tensors=tuple(tensors),
    excluded=tuple(excluded),
    sigma_q=sigma_q_value,
    sigma_p=sigma_p_value,
  )


def _raise_non_finite(src_p, src_q, name: str) -> None:
  for src in (src_p, src_q):
    for block in src.iter_rows(name):
      if not np.all(np.isfinite(np.asarray(block, dtype=np.float64))):
        raise CheckpointError(f"tensor {name!r} in {src.path!r} has non-finite values.")


def _tensor_sq_distance(src_p, src_q, name: str) -> float:
  parts = []
  for a, b in zip(src_p.iter_rows(name), src_q.iter_rows(name), strict=True):
    # The ufunc upcasts block by block: no float64 copies of the inputs are made.
    d = np.subtract(b, a, dtype=np.float64).ravel()
    parts.append(float(np.dot(d, d)))
  sq = math.fsum(parts)
  if not math.isfinite(sq):
    _raise_non_finite(src_p, src_q, name)
    raise CheckpointError(f"tensor {name!r}: squared distance overflows float64.")
  return sq


def _check_identical(src_p, src_q, name: str) -> None:
  exact = not _is_float(src_p.numpy_dtype(name))
  for a, b in zip(src_p.iter_rows(name), src_q.iter_rows(name), strict=True):
    if exact and np.array_equal(a, b):
      continue
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if not (np.all(np.isfinite(a64)) and np.all(np.isfinite(b64))):
      _raise_non_finite(src_p, src_q, name)
    if not np.array_equal(a64, b64):
      raise ValueError(
        f"tensor {name!r} is not perturbed (excluded by include/exclude or not floating point) "
        f"but differs between {src_p.path!r} and {src_q.path!r}: its KL is infinite. "
        "Perturb it, or make it identical in both checkpoints."
      )
