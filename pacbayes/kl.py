"""Gaussian KL divergences over pytrees and streamed over two safetensors checkpoints."""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from pacbayes.tensorio import CheckpointError, SafetensorsFolder, row_blocks
from pacbayes.tensorio import iter_tensors as iter_safetensors

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

# Floating dtypes that np.issubdtype(., np.floating) does not recognise.
_EXTRA_FLOATS = frozenset(
  np.dtype(t) for t in (ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2)
)


def _is_float(dtype: np.dtype) -> bool:
  return np.issubdtype(dtype, np.floating) or dtype in _EXTRA_FLOATS


# Elements per streamed chunk: three float64 buffers of this size stay live at once (~48 MiB).
_CHUNK_ELEMS = 1 << 21

SigmaSpec = float | Mapping[str, float] | Callable[[str], float]


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
# Weight sources: safetensors folders (pacbayes.tensorio) or in-memory mappings.


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
    for r0, r1 in row_blocks(array.shape, max_elems):
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


def _paired_rows(src_p, src_q, name: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """The same row blocks of tensor ``name`` from both sources, one pair at a time."""
  return zip(src_p.iter_rows(name, _CHUNK_ELEMS), src_q.iter_rows(name, _CHUNK_ELEMS), strict=True)


def _raise_non_finite(src_p, src_q, name: str) -> None:
  for src in (src_p, src_q):
    for block in src.iter_rows(name, _CHUNK_ELEMS):
      if not np.all(np.isfinite(np.asarray(block, dtype=np.float64))):
        raise CheckpointError(f"tensor {name!r} in {src.path!r} has non-finite values.")


def _tensor_sq_distance(src_p, src_q, name: str) -> float:
  parts = []
  for a, b in _paired_rows(src_p, src_q, name):
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
  for a, b in _paired_rows(src_p, src_q, name):
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
