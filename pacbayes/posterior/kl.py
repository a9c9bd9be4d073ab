"""Gaussian KL divergences over pytrees and streamed over two safetensors checkpoints.

`gaussian_kl` and `isotropic_kl` compute in float64 whether or not the program has turned on
JAX's x64 mode (`pacbayes.core.precision.with_float64`: JAX arrays with x64 on, NumPy float64
arrays without it, float64 tracers under a trace); `checkpoint_kl` works in NumPy and Python
floats (docs/THEORY.md §1.3). The sigma checks live in `pacbayes.posterior.sigma_checks`
(`check_sigma`, `check_sigmas` and `check_finite` stay importable from here).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pacbayes.core.precision import with_float64
from pacbayes.core.tensorio import CheckpointError, SafetensorsFolder
from pacbayes.core.tensorio import iter_tensors as iter_safetensors
from pacbayes.models.config import ModelConfig
from pacbayes.models.params import match_names, select_parameters
from pacbayes.models.weights import (
  BLOCK_ELEMS,
  check_identical,
  check_same_parameters,
  open_parameters,
  sq_distance,
)
from pacbayes.posterior.sigma_checks import (
  check_finite,
  check_sigma,
  check_sigma_leaf,
  check_sigmas,
)

__all__ = [
  "CheckpointError",
  "CheckpointKL",
  "SafetensorsFolder",
  "TensorKL",
  "check_finite",
  "check_sigma",
  "check_sigmas",
  "checkpoint_kl",
  "gaussian_kl",
  "isotropic_kl",
  "iter_safetensors",
]

# Elements per streamed block (three float64 buffers of this size stay live at once).
_CHUNK_ELEMS = BLOCK_ELEMS

SigmaSpec = float | Mapping[str, float] | Callable[[str], float]


# --------------------------------------------------------------------------------------------
# KL over pytrees.


def _is_scalar(x: Any) -> bool:
  if isinstance(x, (int, float, np.number)):
    return True
  return hasattr(x, "shape") and hasattr(x, "dtype") and np.ndim(x) == 0


def _sigma_leaves(sigma: Any, name: str, treedef, paths, shapes) -> list[Any]:
  """Per-leaf sigma values (scalar or leaf-shaped) for the leaves of mu_q."""
  if _is_scalar(sigma):
    check_sigma_leaf(sigma, name)
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
    check_sigma_leaf(leaf, where)
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


@with_float64
def gaussian_kl(mu_q: Any, mu_p: Any, sigma_q: Any, sigma_p: Any) -> jax.Array | np.ndarray:
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
    ValueError: on mismatched structure or shapes (naming the leaf path), an unusable sigma
      (naming the argument; see `check_sigma`), or, on concrete inputs, a mean holding a
      non-finite value (naming the leaf) or a KL that overflows float64.

  References:
    docs/THEORY.md §1.3; the Gaussian KL as used in Dziugaite & Roy, "Computing nonvacuous
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
  total = jnp.sum(jnp.stack(terms))
  if not isinstance(total, jax.core.Tracer) and not bool(jnp.isfinite(total)):
    check_finite(mu_q, "mu_q")
    check_finite(mu_p, "mu_p")
    raise ValueError(f"the KL overflows float64 ({float(total)!r}): the means are too far apart "
                     "for these sigmas.")
  return total


@with_float64
def isotropic_kl(
  sq_distance: jax.typing.ArrayLike,
  num_params: jax.typing.ArrayLike,
  sigma_q: jax.typing.ArrayLike,
  sigma_p: jax.typing.ArrayLike,
) -> jax.Array | np.ndarray:
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
    excluded: names of parameters left unperturbed (they are identical in both checkpoints).
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
  return check_sigma(value, what, dtype=None)


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


def checkpoint_kl(
  prior: str | os.PathLike | Mapping[str, Any],
  posterior: str | os.PathLike | Mapping[str, Any],
  sigma_q: SigmaSpec,
  sigma_p: SigmaSpec,
  *,
  include: str | Sequence[str] | None = None,
  exclude: str | Sequence[str] | None = None,
  config: ModelConfig | None = None,
  progress: bool = False,
  direct: bool = False,
) -> CheckpointKL:
  """KL(N(w_post, sigma_q^2 I) || N(w_prior, sigma_p^2 I)) streamed over two checkpoints.

  The sum runs over the parameters of the checkpoints as defined once for every path by
  `pacbayes.models.weights.open_parameters` (the architecture's own parameter table from
  `config.json`; known buffers such as GPT-2's `attn.bias` / `attn.masked_bias` and rotary
  `inv_freq` are ignored; a redundant tied `lm_head.weight` is checked equal to the embedding
  and counted once; any other tensor is refused). It therefore equals `gaussian_kl` over the
  parameters of the loaded models (`pacbayes.models.load_pretrained`).

  Reads the two checkpoints tensor by tensor, in blocks of rows, so memory stays near one
  block plus the file pages of the tensor being read, whatever the model size. Values are
  upcast to float64 before subtracting; each tensor's squared distance is a float64 sum and
  the total is summed exactly (``math.fsum``).

  A parameter is perturbed when `pacbayes.models.select_parameters` keeps it (the same
  Hugging Face glob patterns as `pacbayes bound --include/--exclude`). Every other parameter
  must be identical in both checkpoints: a parameter that moved but is not perturbed has a
  point-mass posterior and prior at different places, and the KL is infinite.

  Args:
    prior: the pretrained checkpoint: a HF folder (``config.json`` and ``model.safetensors``
      or an index with shards) or an in-memory ``{HF name: array}`` mapping.
    posterior: the fine-tuned checkpoint, same forms.
    sigma_q: posterior scale: a positive number, a ``{tensor name: scale}`` mapping, or a
      callable ``name -> scale`` (per-tensor isotropic).
    sigma_p: prior scale, same forms. For a valid bound it must not depend on the training set.
    include: fnmatch glob pattern(s) on HF parameter names to perturb (None: all).
    exclude: fnmatch glob pattern(s) on HF parameter names to leave unperturbed.
    config: the architecture of in-memory mappings (their names are then checked like a
      folder's); without it every entry of a mapping is a parameter. Ignored for folders.
    progress: show a tqdm progress bar over tensors.
    direct: read folders with plain file reads instead of ``safe_open`` (same values; memory
      stays at one block instead of one tensor's mapped pages; see ``SafetensorsFolder``).

  Returns:
    A CheckpointKL with the total KL, parameter count, squared distance and per-tensor terms.

  Raises:
    ValueError: (CheckpointError for file problems) naming the folder or tensor, for: a
      missing folder, config or weights file, a shard listed in the index but absent, an
      unknown or missing tensor, parameter names or shapes that differ between the
      checkpoints, a non-finite weight (naming the tensor and the checkpoint), an unusable
      sigma (see `check_sigma`), a pattern that matches no parameter, or an excluded
      parameter that differs.

  References:
    docs/THEORY.md §1.3 (KL(Q||P) of Proposition 4.1, arXiv 2605.12906).
  """
  sigma_q_of, sigma_q_value = _sigma_resolver(sigma_q, "sigma_q")
  sigma_p_of, sigma_p_value = _sigma_resolver(sigma_p, "sigma_p")
  src_p = open_parameters(prior, "prior", config=config, direct=direct)
  src_q = open_parameters(posterior, "posterior", config=config, direct=direct)
  check_same_parameters(src_p, src_q)
  names_p = list(src_p.names)
  if src_p.config is not None:
    chosen_names = set(select_parameters(src_p.config, include, exclude))
  else:
    chosen_names = set(match_names(names_p, include, exclude))
  chosen = {name: name in chosen_names for name in names_p}

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
      check_identical(src_p, src_q, name, _CHUNK_ELEMS)
      continue
    s_q, s_p = scales[name]
    sq = sq_distance(src_p, src_q, name, _CHUNK_ELEMS)
    count = math.prod(src_p.shape(name))
    tensors.append(
      TensorKL(name, src_p.shape(name), count, sq, _kl_terms(count, sq, s_q, s_p), s_q, s_p)
    )

  total = math.fsum(t.kl for t in tensors)
  if not math.isfinite(total):
    raise ValueError(f"the KL overflows float64 ({total!r}): the checkpoints are too far apart "
                     "for these sigmas.")
  return CheckpointKL(
    kl=total,
    num_params=sum(t.count for t in tensors),
    sq_distance=math.fsum(t.sq_distance for t in tensors),
    tensors=tuple(tensors),
    excluded=tuple(excluded),
    sigma_q=sigma_q_value,
    sigma_p=sigma_p_value,
  )
