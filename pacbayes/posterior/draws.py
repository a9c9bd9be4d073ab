"""Gaussian posterior draws over parameter pytrees: masks, sigmas, noise, data batches.

The pieces shared by the Monte-Carlo risk (`pacbayes.posterior.montecarlo`), the sigma
choice (`pacbayes.posterior.sigma`) and the posterior fit (`pacbayes.posterior.fit`).
Everything is generic over a parameter pytree and a bounded loss

    loss_fn(params, batch: dict[str, Array]) -> per-example losses [B] in [0, 1],

where `batch` holds the data arrays of B rows plus `batch['weight']` [B] (1 for a real row,
0 for padding; padding rows are ignored whatever the loss says). Data sets are mappings from
names to NumPy arrays sharing a leading axis of length n.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

LossFn = Callable[[Any, dict[str, jax.Array]], jax.Array]
# Host-side tolerance when checking that a loss lies in [0, 1] (float32 round-off).
RANGE_TOL = 1e-6


# ----------------------------------------------------------------------------- paths, masks


def _key_name(entry: Any) -> str | None:
  if isinstance(entry, jax.tree_util.DictKey):
    return str(entry.key)
  if isinstance(entry, jax.tree_util.SequenceKey):
    return str(entry.idx)
  if isinstance(entry, jax.tree_util.GetAttrKey):
    # nnx.Variable leaves end in `.value`; the variable's own name is the useful part.
    return None if entry.name == "value" else entry.name
  if isinstance(entry, jax.tree_util.FlattenedIndexKey):
    return str(entry.key)
  return str(entry)


def leaf_paths(params: Any) -> list[str]:
  """'/'-joined names of the leaves of `params`, in `jax.tree.leaves` order.

  Example: an `nnx.State` leaf `layers -> 0 -> attn -> q_proj -> kernel -> .value` is named
  'layers/0/attn/q_proj/kernel'.
  """
  flat, _ = jax.tree_util.tree_flatten_with_path(params)
  names = []
  for path, _ in flat:
    names.append("/".join(n for n in (_key_name(e) for e in path) if n is not None))
  return names


def perturbation_mask(
    params: Any,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> Any:
  """Pytree of Python bools: which leaves the posterior perturbs.

  Patterns are `fnmatch` globs matched against the '/'-joined leaf path (see `leaf_paths`);
  `*` also matches '/', so '*norm*' selects every norm scale at any depth. The rule is the one
  of `pacbayes.models.params.match_names` (also behind `--include` / `--exclude` on Hugging
  Face names): a leaf is kept when it matches some `include` pattern (all leaves when None)
  and no `exclude` pattern, and every pattern must match at least one leaf. A kept leaf is
  perturbed when it has a floating dtype.

  Args:
    params: parameter pytree.
    include: pattern or patterns to keep; each must match at least one leaf.
    exclude: pattern or patterns to drop; each must match at least one leaf.

  Returns:
    A pytree with the structure of `params` and bool leaves.

  Raises:
    ValueError: a pattern (include or exclude) matches no leaf, or nothing is left to perturb.
  """
  from pacbayes.models.params import match_names

  leaves, treedef = jax.tree.flatten(params)
  names = leaf_paths(params)
  kept = set(match_names(names, include, exclude))
  keep = [bool(nm in kept and jnp.issubdtype(jnp.result_type(leaf), jnp.inexact))
          for leaf, nm in zip(leaves, names, strict=True)]
  if not any(keep):
    raise ValueError(
        f"include={include!r}, exclude={exclude!r}: no floating-point parameter is left to "
        "perturb")
  return jax.tree.unflatten(treedef, keep)


def mask_leaves(mask: Any, params: Any) -> tuple[bool, ...]:
  """The mask as a tuple of bools in `jax.tree.leaves(params)` order.

  Args:
    mask: pytree of bools like `params` (from `perturbation_mask`), or None for every
      floating-point leaf.
    params: parameter pytree.

  Raises:
    ValueError: the mask does not have one leaf per parameter leaf.
  """
  leaves = jax.tree.leaves(params)
  if mask is None:
    return tuple(bool(jnp.issubdtype(jnp.result_type(x), jnp.inexact)) for x in leaves)
  m_leaves, m_def = jax.tree.flatten(mask)
  if len(m_leaves) != len(leaves):
    raise ValueError(
        f"mask: expected a pytree of bools with {len(leaves)} leaves like params, got "
        f"{len(m_leaves)} leaves ({m_def})")
  return tuple(bool(m) for m in m_leaves)


def count_perturbed(params: Any, mask: Any = None) -> int:
  """Number of perturbed parameters d (elements of the masked leaves)."""
  mask_t = mask_leaves(mask, params)
  return int(sum(int(np.size(x)) for x, m in zip(jax.tree.leaves(params), mask_t, strict=True)
                 if m))


def sq_distance(params: Any, prior_params: Any, mask: Any = None) -> float:
  """||params - prior_params||^2 over the masked leaves, accumulated in float64.

  Raises:
    ValueError: the two pytrees differ in structure or leaf shapes.
  """
  leaves, treedef = jax.tree.flatten(params)
  p_leaves, p_def = jax.tree.flatten(prior_params)
  if p_def != treedef or any(
      np.shape(a) != np.shape(b) for a, b in zip(leaves, p_leaves, strict=True)):
    raise ValueError("prior_params: expected the same structure and shapes as params")
  total = 0.0
  for a, b, m in zip(leaves, p_leaves, mask_leaves(mask, params), strict=True):
    if m:
      total += leaf_sq_distance(a, b)
  return total


# Entries per block of `leaf_sq_distance`: its float64 temporaries stay at 8 MiB each.
SQ_DISTANCE_BLOCK = 1 << 20


def leaf_sq_distance(a: Any, b: Any) -> float:
  """||a - b||^2 of one leaf (the term of `sq_distance`; summed in leaf order): upcast to
  float64 in blocks of about SQ_DISTANCE_BLOCK entries (no float64 copy of the leaf), each
  block's squared norm a float64 dot product, the blocks summed exactly (`math.fsum`)."""
  a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
  parts = []
  for start in range(0, a.size, SQ_DISTANCE_BLOCK):
    d = (a[start:start + SQ_DISTANCE_BLOCK].astype(np.float64)
         - b[start:start + SQ_DISTANCE_BLOCK].astype(np.float64))
    parts.append(float(np.dot(d, d)))
  return math.fsum(parts)


# ------------------------------------------------------------------------------ sigma, noise


def sigma_leaves(sigma: Any, params: Any, mask: tuple[bool, ...]) -> list[jax.Array]:
  """One float array per leaf (scalar or the leaf's shape), checked to be positive.

  Args:
    sigma: positive scalar (isotropic) or a pytree like `params` (diagonal).
    params: parameter pytree.
    mask: tuple from `mask_leaves`; unmasked leaves are not checked.

  Raises:
    ValueError: sigma is not finite and > 0, or a leaf does not broadcast.
  """
  leaves = jax.tree.leaves(params)
  if jax.tree_util.treedef_is_leaf(jax.tree.structure(sigma)) and np.ndim(sigma) == 0:
    value = float(sigma)
    if not (math.isfinite(value) and value > 0):
      raise ValueError(f"sigma: expected a finite value > 0, got {sigma!r}")
    return [jnp.asarray(value, jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
            for _ in leaves]
  s_leaves, s_def = jax.tree.flatten(sigma)
  if s_def.num_leaves != len(leaves):
    raise ValueError(
        f"sigma: expected a scalar or a pytree like params ({len(leaves)} leaves), got "
        f"{s_def.num_leaves} leaves")
  out = []
  for i, (s, x, m) in enumerate(zip(s_leaves, leaves, mask, strict=True)):
    s = jnp.asarray(s)
    if not m:
      out.append(s)
      continue
    try:
      np.broadcast_shapes(s.shape, np.shape(x))
    except ValueError as err:
      raise ValueError(
          f"sigma: leaf {i} has shape {s.shape}, not broadcastable to the parameter shape "
          f"{np.shape(x)}") from err
    if not bool(jnp.all(jnp.isfinite(s) & (s > 0))):
      raise ValueError(f"sigma: leaf {i} has values that are not finite and > 0")
    out.append(s)
  return out


# A leaf with more than BLOCKED_NOISE_MIN elements (and more than one row) is "row-keyed": row
# j of its noise is drawn from the key fold_in(key, j), so that any rows can be drawn alone
# (`perturb_rows`: an embedding stage draws only the rows it looks up), and the whole leaf is
# drawn in blocks of about NOISE_BLOCK elements inside one `jax.lax.fori_loop`: JAX's normal
# draw (threefry) holds several temporaries of the size it draws, 0.32 GiB for SmolLM2-135M's
# 49152 x 576 embedding drawn at once, ~10 MiB in blocks (benchmarks/bench_memory.py).
# Smaller leaves draw at once, as `jax.random.normal(key, shape)`.
BLOCKED_NOISE_MIN = 1 << 22
NOISE_BLOCK = 1 << 20


def row_keyed(shape: Sequence[int]) -> bool:
  """Whether a leaf of this shape draws its noise row by row (see `perturb_leaf`)."""
  return len(shape) >= 1 and shape[0] > 1 and math.prod(shape) > BLOCKED_NOISE_MIN


def _row_noise(key: jax.Array, rows: jax.Array, row_shape: tuple, dt: Any) -> jax.Array:
  """Noise rows [*rows.shape, *row_shape] of a row-keyed leaf: row j from fold_in(key, j)."""
  draw = lambda j: jax.random.normal(jax.random.fold_in(key, j), row_shape, dt)  # noqa: E731
  flat = jax.vmap(draw)(jnp.reshape(rows, (-1,)))
  return jnp.reshape(flat, (*jnp.shape(rows), *row_shape))


def _sigma_rows(s: jax.Array, shape: tuple, rows: jax.Array) -> jax.Array:
  """Sigma broadcastable to `shape`, taken at `rows` of axis 0: broadcastable to
  [*rows.shape, *shape[1:]]."""
  s = jnp.reshape(s, (1,) * (len(shape) - s.ndim) + s.shape)
  if s.shape[0] == shape[0]:
    return jnp.take(s, rows, axis=0)
  return jnp.reshape(s, (1,) * (jnp.ndim(rows) - 1) + s.shape)


def perturb_leaf(key: jax.Array, x: jax.Array, sigma: jax.Array) -> jax.Array:
  """x + sigma * eps for one leaf, eps ~ N(0, I) drawn from `key` in max(x.dtype, float32),
  the sum rounded to x.dtype (see `sample_posterior`).

  The one definition of a leaf's noise, used by every path (whole copies, draws inside the
  forward pass, `perturb_rows`). A `row_keyed` leaf draws row j from fold_in(key, j), in
  blocks of r = max(1, NOISE_BLOCK // row size) rows; block i covers rows [start_i, start_i +
  r), start_i = min(i * r, rows - r) (the last block may overlap its predecessor and then
  draws the same rows again, to the same numbers). Every entry is one independent N(0, 1)
  draw either way; only the stream differs from a draw at once.
  """
  x = jnp.asarray(x)
  dt = jnp.promote_types(x.dtype, jnp.float32)
  s = jnp.asarray(sigma).astype(dt)
  if not row_keyed(x.shape):
    eps = jax.random.normal(key, x.shape, dt)
    if s.ndim and s.shape != x.shape:
      s = jnp.broadcast_to(s, x.shape)
    return (x.astype(dt) + s * eps).astype(x.dtype)
  rows = x.shape[0]
  r = max(1, min(rows, NOISE_BLOCK // (x.size // rows)))

  def block(i, out):
    start = jnp.minimum(i * r, rows - r)
    idx = start + jnp.arange(r)
    x_b = jax.lax.dynamic_slice_in_dim(x, start, r, 0).astype(dt)
    eps_b = _row_noise(key, idx, x.shape[1:], dt)
    new = (x_b + _sigma_rows(s, x.shape, idx) * eps_b).astype(x.dtype)
    return jax.lax.dynamic_update_slice_in_dim(out, new, start, 0)

  return jax.lax.fori_loop(0, -(-rows // r), block, jnp.zeros_like(x))


def perturb_rows(key: jax.Array, x: jax.Array, sigma: jax.Array, rows: jax.Array) -> jax.Array:
  """``perturb_leaf(key, x, sigma)[rows]`` ([*rows.shape, *x.shape[1:]]; rows int, in range).

  For a `row_keyed` leaf only the taken rows are drawn (an embedding lookup of B x T tokens
  draws B x T rows, not the table); otherwise the whole leaf is drawn, then taken.
  """
  x = jnp.asarray(x)
  if not row_keyed(x.shape):
    return jnp.take(perturb_leaf(key, x, sigma), rows, axis=0)
  dt = jnp.promote_types(x.dtype, jnp.float32)
  s = jnp.asarray(sigma).astype(dt)
  eps = _row_noise(key, rows, x.shape[1:], dt)
  return (jnp.take(x, rows, axis=0).astype(dt) + _sigma_rows(s, x.shape, rows) * eps
          ).astype(x.dtype)


def leaf_keys(key: jax.Array, leaves: Sequence[Any]) -> list[jax.Array]:
  """One key per leaf (`optax.tree.split_key_like`), in leaf order."""
  return jax.tree.leaves(optax.tree.split_key_like(key, list(leaves)))


def perturb_leaves(
    key: jax.Array, leaves: Sequence[jax.Array], sigmas: Sequence[jax.Array],
    mask: Sequence[bool]) -> list[jax.Array]:
  """theta_i = w_i + sigma_i * eps_i on masked leaves, eps_i ~ N(0, I) from one key per leaf.

  Noise is drawn in max(leaf dtype, float32) and the sum rounded to the leaf's dtype (see
  `sample_posterior`). Traceable: call it inside `jax.jit` so that the noise never leaves
  the device.
  """
  keys = leaf_keys(key, leaves)
  return [perturb_leaf(k, x, s) if m else x
          for x, s, k, m in zip(leaves, sigmas, keys, mask, strict=True)]


def sample_posterior(key: jax.Array, params: Any, sigma: Any, *, mask: Any = None) -> Any:
  """One draw theta ~ N(params, diag(sigma^2)) on the masked leaves.

  Noise is drawn in the leaf's dtype, or in float32 for bfloat16/float16 leaves, then the
  sum is rounded to the leaf's dtype. The bound then concerns the loss of the rounded
  draw, a deterministic function of theta, so it stays exact for low-precision models.

  Args:
    key: a JAX PRNG key; each leaf gets its own subkey (`optax.tree.split_key_like`).
    params: posterior mean (a parameter pytree).
    sigma: positive scalar (isotropic) or a pytree like `params` whose leaves broadcast
      to the parameter shapes (diagonal).
    mask: pytree of bools from `perturbation_mask`; default all floating leaves.

  Returns:
    A pytree like `params`; unmasked leaves are returned unchanged.
  """
  mask_t = mask_leaves(mask, params)
  leaves, treedef = jax.tree.flatten(params)
  sig = sigma_leaves(sigma, params, mask_t)
  return jax.tree.unflatten(treedef, perturb_leaves(key, leaves, sig, mask_t))


# --------------------------------------------------------------------------------- data


def check_data(data: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], int]:
  """NumPy views of a data mapping and its row count n.

  Raises:
    ValueError: not a non-empty mapping, the reserved key 'weight', arrays of different
      lengths, or 0 rows.
  """
  if not isinstance(data, Mapping) or not data:
    raise ValueError("data: expected a non-empty mapping from names to arrays")
  if "weight" in data:
    raise ValueError("data: the key 'weight' is reserved for padding weights")
  arrays = {k: np.asarray(v) for k, v in data.items()}
  sizes = {k: (v.shape[0] if v.ndim else None) for k, v in arrays.items()}
  n = next(iter(sizes.values()))
  if any(s != n for s in sizes.values()) or n is None:
    raise ValueError(f"data: arrays must share a leading axis, got lengths {sizes}")
  if n == 0:
    raise ValueError("data: the data set is empty (0 rows)")
  return arrays, int(n)


def positive_int(value: Any, name: str) -> int:
  """`value` as an int, or ValueError naming `name` unless it is an integer >= 1."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name}: expected a positive integer, got {value!r}")
  return int(value)


def gather(arrays: Mapping[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
  """Rows `idx` (any shape; -1 = padding) of every array, plus the 0/1 float32 `weight`."""
  safe = np.maximum(idx, 0)
  batch = {k: v[safe] for k, v in arrays.items()}
  batch["weight"] = (idx >= 0).astype(np.float32)
  return batch


def check_range(losses: np.ndarray, weight: np.ndarray) -> None:
  """ValueError unless every real (weight > 0) loss is finite and in [0, 1] (+-RANGE_TOL)."""
  real = losses[weight > 0]
  if real.size and not (np.all(np.isfinite(real)) and real.min() >= -RANGE_TOL
                        and real.max() <= 1 + RANGE_TOL):
    raise ValueError(
        f"loss_fn: per-example losses must lie in [0, 1], got values in "
        f"[{np.nanmin(real):.6g}, {np.nanmax(real):.6g}] (nan present: {np.isnan(real).any()})")


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "ex"):
  """A tqdm bar that stays in the log when done (leave=True); a no-op when not enabled."""
  from tqdm.auto import tqdm

  return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=not enabled,
              dynamic_ncols=True, leave=True, mininterval=1.0)
