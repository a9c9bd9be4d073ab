"""Gaussian posterior draws, perturbation masks and the Monte-Carlo risk E_Q[R_S].

Everything here is generic over a parameter pytree and a bounded loss

    loss_fn(params, batch: dict[str, Array]) -> per-example losses [B] in [0, 1],

where `batch` holds the data arrays of B rows plus `batch['weight']` [B] (1 for a real
row, 0 for padding; padding rows are ignored whatever the loss says). Data sets are
mappings from names to NumPy arrays sharing a leading axis of length n.

Randomness: the draw with index m uses `jax.random.fold_in(key_draws, m)`, and within a
draw each leaf gets its own key (`optax.tree.split_key_like`). The noise is made on the
device inside the compiled step, so no weight-sized array crosses the host, and the
numbers do not depend on how many devices share the work.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from pacbayes import sharding as shd

LossFn = Callable[[Any, dict[str, jax.Array]], jax.Array]
SCHEMES = ("chunk", "passes")
# Host-side tolerance when checking that a loss lies in [0, 1] (float32 round-off).
_RANGE_TOL = 1e-6


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


def _patterns(arg: str | Sequence[str] | None, name: str) -> tuple[str, ...] | None:
  if arg is None:
    return None
  if isinstance(arg, str):
    return (arg,)
  out = tuple(arg)
  if not all(isinstance(p, str) and p for p in out):
    raise ValueError(f"{name}: expected glob pattern strings, got {arg!r}")
  return out


def perturbation_mask(
    params: Any,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> Any:
  """Pytree of Python bools: which leaves the posterior perturbs.

  Patterns are `fnmatch` globs matched against the '/'-joined leaf path (see `leaf_paths`);
  `*` also matches '/', so '*norm*' selects every norm scale at any depth. A leaf is
  perturbed when it has a floating dtype, matches some `include` pattern (all leaves when
  `include` is None) and matches no `exclude` pattern.

  Args:
    params: parameter pytree.
    include: pattern or patterns to keep; each must match at least one leaf.
    exclude: pattern or patterns to drop (patterns that match nothing are allowed).

  Returns:
    A pytree with the structure of `params` and bool leaves.

  Raises:
    ValueError: an include pattern matches no leaf, or nothing is left to perturb.
  """
  include = _patterns(include, "include")
  exclude = _patterns(exclude, "exclude")
  leaves, treedef = jax.tree.flatten(params)
  names = leaf_paths(params)
  if include is not None:
    for pat in include:
      if not any(fnmatch.fnmatchcase(nm, pat) for nm in names):
        raise ValueError(
            f"include: pattern {pat!r} matches no parameter; names look like {names[:3]}")
  keep = []
  for leaf, nm in zip(leaves, names, strict=True):
    ok = jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
    ok = ok and (include is None or any(fnmatch.fnmatchcase(nm, p) for p in include))
    ok = ok and not (exclude is not None and any(fnmatch.fnmatchcase(nm, p) for p in exclude))
    keep.append(bool(ok))
  if not any(keep):
    raise ValueError(
        f"include={include!r}, exclude={exclude!r}: no floating-point parameter is left to "
        "perturb")
  return jax.tree.unflatten(treedef, keep)


def _mask_leaves(mask: Any, params: Any) -> tuple[bool, ...]:
  leaves, treedef = jax.tree.flatten(params)
  if mask is None:
    return tuple(bool(jnp.issubdtype(jnp.result_type(x), jnp.inexact)) for x in leaves)
  m_leaves, m_def = jax.tree.flatten(mask)
  if len(m_leaves) != len(leaves):
    raise ValueError(
        f"mask: expected a pytree of bools with {len(leaves)} leaves like params, got "
        f"{len(m_leaves)} leaves ({m_def})")
  return tuple(bool(m) for m in m_leaves)


# ------------------------------------------------------------------------------ sigma, noise


def _sigma_leaves(sigma: Any, params: Any, mask: tuple[bool, ...]) -> list[jax.Array]:
  """One float array per leaf (scalar or the leaf's shape), checked to be positive."""
  leaves, treedef = jax.tree.flatten(params)
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


def _perturb_leaves(
    key: jax.Array, leaves: Sequence[jax.Array], sigmas: Sequence[jax.Array],
    mask: Sequence[bool]) -> list[jax.Array]:
  """theta_i = w_i + sigma_i * eps_i for masked leaves; noise in max(dtype, float32)."""
  keys = jax.tree.leaves(optax.tree.split_key_like(key, list(leaves)))
  out = []
  for x, s, k, m in zip(leaves, sigmas, keys, mask, strict=True):
    if not m:
      out.append(x)
      continue
    x = jnp.asarray(x)
    dt = jnp.promote_types(x.dtype, jnp.float32)
    eps = jax.random.normal(k, x.shape, dt)
    s = jnp.asarray(s).astype(dt)
    if s.ndim and s.shape != x.shape:
      s = jnp.broadcast_to(s, x.shape)
    out.append((x.astype(dt) + s * eps).astype(x.dtype))
  return out


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
  mask_t = _mask_leaves(mask, params)
  leaves, treedef = jax.tree.flatten(params)
  sig = _sigma_leaves(sigma, params, mask_t)
  return jax.tree.unflatten(treedef, _perturb_leaves(key, leaves, sig, mask_t))


# --------------------------------------------------------------------------------- data


def _check_data(data: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], int]:
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


def _positive_int(value: Any, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name}: expected a positive integer, got {value!r}")
  return int(value)


def _gather(arrays: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
  """Rows `idx` (any shape; -1 = padding) of every array, plus the 0/1 `weight`."""
  safe = np.maximum(idx, 0)
  batch = {k: v[safe] for k, v in arrays.items()}
  batch["weight"] = (idx >= 0).astype(np.float32)
  return batch


def _check_range(losses: np.ndarray, weight: np.ndarray) -> None:
  real = losses[weight > 0]
  if real.size and not (np.all(np.isfinite(real)) and real.min() >= -_RANGE_TOL
                        and real.max() <= 1 + _RANGE_TOL):
    raise ValueError(
        f"loss_fn: per-example losses must lie in [0, 1], got values in "
        f"[{np.nanmin(real):.6g}, {np.nanmax(real):.6g}] (nan present: {np.isnan(real).any()})")


# -------------------------------------------------------------------------- compiled steps


def _hashable(x: Any) -> bool:
  try:
    hash(x)
    return True
  except TypeError:
    return False


def _draw_step_impl(loss_fn: LossFn, treedef: Any, mask: tuple[bool, ...], shared_batch: bool):
  def one_draw(leaves, sigmas, key, index, batch):
    draw_key = jax.random.fold_in(key, index)
    theta = jax.tree.unflatten(treedef, _perturb_leaves(draw_key, leaves, sigmas, mask))
    losses = loss_fn(theta, batch)
    return jnp.reshape(losses, (batch["weight"].shape[0],))

  in_axes = (None, None, None, 0, None if shared_batch else 0)
  return jax.jit(jax.vmap(one_draw, in_axes=in_axes))


_draw_step_cached = functools.lru_cache(maxsize=64)(_draw_step_impl)


def _draw_step(loss_fn, treedef, mask, shared_batch):
  """jit(vmap over draws) of loss_fn at perturbed params; cached so repeated calls (sigma
  search, several data sets) reuse the compiled program."""
  if _hashable(loss_fn) and _hashable(treedef):
    return _draw_step_cached(loss_fn, treedef, mask, shared_batch)
  return _draw_step_impl(loss_fn, treedef, mask, shared_batch)


@functools.lru_cache(maxsize=64)
def _plain_step(loss_fn: LossFn):
  return jax.jit(lambda params, batch: jnp.reshape(
      loss_fn(params, batch), (batch["weight"].shape[0],)))


# ------------------------------------------------------------------------------ MC risk


@dataclasses.dataclass(frozen=True)
class MCRisk:
  """Monte-Carlo estimate of E_Q[R_S].

  Attributes:
    mean: the estimate (average of `draws`).
    draws: [M] the independent [0, 1] variables whose average is `mean` (one per
      posterior draw: a full-pass risk, or a chunk mean).
    num_samples: M, to pass to `pacbayes.bounds.mc_sample_bound` / the certificate.
    scheme: "chunk" or "passes".
    num_examples: n = |S|.
    chunk_size: examples per draw in the chunk scheme (None for "passes").
    num_fillers: rows drawn uniformly from S to complete the last chunk (chunk scheme).
    unperturbed: R_S at the posterior mean, when asked for.
    seconds: wall time of the estimate.
  """

  mean: float
  draws: np.ndarray
  num_samples: int
  scheme: str
  num_examples: int
  chunk_size: int | None = None
  num_fillers: int = 0
  unperturbed: float | None = None
  seconds: float = 0.0

  def upper(self, delta: float) -> float:
    """kl-inverse upper confidence bound on E_Q[R_S] at level 1 - delta."""
    from pacbayes import bounds

    return float(bounds.mc_sample_bound(self.mean, self.num_samples, delta))


def _progress_bar(total: int, desc: str, enabled: bool):
  from tqdm.auto import tqdm

  return tqdm(total=total, desc=desc, unit="ex", unit_scale=True, disable=not enabled,
              dynamic_ncols=True, leave=False)


def mc_risk(
    loss_fn: LossFn,
    params: Any,
    data: Mapping[str, Any],
    *,
    key: jax.Array,
    sigma: Any,
    scheme: str = "chunk",
    num_draws: int | None = None,
    chunk_size: int | None = None,
    batch_size: int = 32,
    draws_per_step: int = 1,
    mask: Any = None,
    mesh: Mesh | None = None,
    unperturbed: bool = False,
    progress: bool = False,
) -> MCRisk:
  r"""Monte-Carlo estimate of E_{theta~Q}[R_S(theta)] for Q = N(params, diag(sigma^2)).

  Two schemes give M independent [0, 1] variables X_1..X_M whose average means are
  exactly E_Q[R_S], so that `kl_inv_upper(mean X, ln(2/delta)/M)` bounds E_Q[R_S]
  (Langford & Caruana 2001):

  * "passes": X_m = R_S(theta_m), a full pass over S per draw; M = `num_draws`. The X_m
    are i.i.d. with mean E_Q[R_S].
  * "chunk": S is cut, in its given order, into M = ceil(n / C) chunks of exactly
    C = `chunk_size` rows and chunk j is scored under its own draw theta_j;
    X_j = mean loss of chunk j. When C does not divide n, the r = M*C - n missing rows of
    the last chunk are indices drawn uniformly at random from S (independently of
    everything else). Then E[X_j] = R_{chunk j}(Q) (for the last chunk the fillers add
    r * R_S(Q) to its sum in expectation), so (1/M) sum_j E[X_j] = (n R_S(Q) + r R_S(Q)) /
    (M C) = E_Q[R_S] exactly. The X_j are independent (fresh theta_j and fillers per chunk)
    but not identically distributed. The kl-Chernoff bound still holds for them: for
    X_j in [0, 1], convexity gives E exp(l X_j) <= 1 - mu_j + mu_j e^l, and concavity of
    log(1 - mu + mu e^l) in mu gives prod_j (...) <= (1 - mu + mu e^l)^M with mu the
    average mean (Hoeffding 1963, Thm 1 and its proof; Maurer 2004 uses the same step),
    which is the moment generating function bound of M i.i.d. Bernoulli(mu) variables.
    Equal chunk sizes matter: unequal chunks would average means with the wrong weights.
    This scheme costs one pass over S (plus r < C rows) for M = ceil(n / C) draws.

  Noise is generated inside the compiled step; the step is `jax.jit(jax.vmap(...))` over
  `draws_per_step` draws with fixed shapes (the last batch is padded with weight-0 rows,
  surplus draws of the last group are computed and discarded), so nothing recompiles
  across batches. Memory: `draws_per_step` perturbed copies of the parameters plus one
  batch of activations per draw. Draw m always uses fold_in(key_draws, m), whatever the
  mesh: the result is the same on one device or many.

  Args:
    loss_fn: `loss_fn(params, batch) -> [B]` losses in [0, 1] (checked on the host).
    params: posterior mean pytree.
    data: mapping of NumPy arrays with a shared leading axis (n rows).
    key: PRNG key.
    sigma: positive scalar or pytree like params (diagonal posterior).
    scheme: "chunk" or "passes".
    num_draws: M for "passes"; for "chunk", used only to derive
      chunk_size = ceil(n / num_draws) when `chunk_size` is None.
    chunk_size: rows per draw for "chunk".
    batch_size: rows per forward pass per draw (in "chunk", min(batch_size, chunk_size)).
    draws_per_step: draws evaluated in parallel (vmap) per compiled step.
    mask: pytree of bools (`perturbation_mask`); default all floating leaves.
    mesh: optional ('data', 'fsdp') mesh: draws (or rows) along 'data', params on 'fsdp'.
    unperturbed: also compute R_S at `params` (one extra pass).
    progress: show a tqdm bar (examples evaluated and rate).

  Returns:
    An `MCRisk`.

  References:
    Langford & Caruana, "(Not) Bounding the True Error", NeurIPS 2001.
    Hoeffding, "Probability inequalities for sums of bounded random variables", JASA 1963.
    Maurer, "A note on the PAC Bayesian theorem", arXiv cs/0411099, 2004.
  """
  if scheme not in SCHEMES:
    raise ValueError(f"scheme: expected one of {SCHEMES}, got {scheme!r}")
  arrays, n = _check_data(data)
  batch_size = _positive_int(batch_size, "batch_size")
  draws_per_step = _positive_int(draws_per_step, "draws_per_step")
  mask_t = _mask_leaves(mask, params)
  leaves, treedef = jax.tree.flatten(params)
  sigmas = _sigma_leaves(sigma, params, mask_t)
  key_draws, key_fill = jax.random.split(key)
  start = time.perf_counter()

  leaves = shd.shard_params(leaves, mesh)
  sigmas = [shd.put(s, mesh, shd.param_spec(s.shape, mesh)) if mesh is not None else s
            for s in sigmas]
  key_dev = shd.put(key_draws, mesh) if mesh is not None else key_draws
  group = draws_per_step
  draw_spec = shd.leading_axis_spec((group,), mesh)
  draws_sharded = draw_spec != P()

  if scheme == "passes":
    if num_draws is None:
      raise ValueError("num_draws: required for scheme='passes'")
    m_total = _positive_int(num_draws, "num_draws")
    b = batch_size
    nb = math.ceil(n / b)
    order = np.full(nb * b, -1, np.int64)
    order[:n] = np.arange(n)
    order = order.reshape(nb, b)
    fillers = 0
    csize = None
    step = _draw_step(loss_fn, treedef, mask_t, True)
    evals_per_group = group * nb * b
  else:
    if chunk_size is None:
      if num_draws is None:
        raise ValueError("chunk_size: required for scheme='chunk' (or give num_draws)")
      chunk_size = math.ceil(n / _positive_int(num_draws, "num_draws"))
    csize = _positive_int(chunk_size, "chunk_size")
    if csize > n:
      raise ValueError(f"chunk_size: {csize} exceeds the number of examples n={n}")
    m_total = math.ceil(n / csize)
    fillers = m_total * csize - n
    fill_idx = (np.asarray(jax.random.randint(key_fill, (fillers,), 0, n)) if fillers else
                np.zeros((0,), np.int64))
    slots = np.concatenate([np.arange(n), fill_idx]).reshape(m_total, csize)
    b = min(batch_size, csize)
    steps = math.ceil(csize / b)
    padded = np.full((shd.padded_size(m_total, group), steps * b), -1, np.int64)
    padded[:m_total, :csize] = slots
    step = _draw_step(loss_fn, treedef, mask_t, False)
    evals_per_group = group * steps * b

  n_groups = math.ceil(m_total / group)
  sums = np.zeros(n_groups * group, np.float64)
  bar = _progress_bar(n_groups * evals_per_group, f"MC risk ({scheme}, M={m_total})", progress)
  for g in range(n_groups):
    draw_idx = np.arange(g * group, (g + 1) * group, dtype=np.int32)
    idx_dev = shd.put(draw_idx, mesh, draw_spec) if mesh is not None else draw_idx
    pending = []
    if scheme == "passes":
      for j in range(order.shape[0]):
        batch = _gather(arrays, order[j])
        spec_axes = () if draws_sharded else (0,)
        dev = shd.shard_batch(batch, mesh, spec_axes) if mesh is not None else batch
        pending.append((step(leaves, sigmas, key_dev, idx_dev, dev), batch["weight"][None, :]))
        bar.update(group * b)
    else:
      rows = padded[g * group:(g + 1) * group]
      for s in range(steps):
        batch = _gather(arrays, rows[:, s * b:(s + 1) * b])
        spec_axes = (0,) if draws_sharded else (1,)
        dev = shd.shard_batch(batch, mesh, spec_axes) if mesh is not None else batch
        pending.append((step(leaves, sigmas, key_dev, idx_dev, dev), batch["weight"]))
        bar.update(group * b)
    for out, w in pending:
      losses = shd.to_host(out).astype(np.float64)
      w = np.broadcast_to(w, losses.shape)
      _check_range(losses, w)
      sums[g * group:(g + 1) * group] += (losses * w).sum(axis=1)
  bar.close()

  denom = n if scheme == "passes" else csize
  draws = sums[:m_total] / denom
  base = None
  if unperturbed:
    base = empirical_risk(loss_fn, params, arrays, batch_size=batch_size, mesh=mesh)
  return MCRisk(
      mean=float(draws.mean()), draws=draws, num_samples=m_total, scheme=scheme,
      num_examples=n, chunk_size=csize, num_fillers=fillers, unperturbed=base,
      seconds=time.perf_counter() - start)


def empirical_risk(
    loss_fn: LossFn, params: Any, data: Mapping[str, Any], *, batch_size: int = 32,
    mesh: Mesh | None = None) -> float:
  """R_S(params): mean loss over the data set, no perturbation (float64 accumulation)."""
  arrays, n = _check_data(data)
  b = _positive_int(batch_size, "batch_size")
  step = _plain_step(loss_fn) if _hashable(loss_fn) else _plain_step.__wrapped__(loss_fn)
  params = shd.shard_params(params, mesh)
  total = 0.0
  pending = []
  for j in range(math.ceil(n / b)):
    idx = np.arange(j * b, (j + 1) * b)
    idx[idx >= n] = -1
    batch = _gather(arrays, idx)
    dev = shd.shard_batch(batch, mesh) if mesh is not None else batch
    pending.append((step(params, dev), batch["weight"]))
  for out, w in pending:
    losses = shd.to_host(out).astype(np.float64)
    _check_range(losses, w)
    total += float((losses * w).sum())
  return total / n


# `pacbayes.posterior` (sigma choice, posterior fit) imports this module; its public names stay
# reachable here lazily, so that either module can be imported first without a cycle.
_POSTERIOR_NAMES = ("PosteriorFit", "SigmaSearch", "optimise_posterior", "search_sigma",
                    "sigma_prior_grid")


def __getattr__(name: str) -> Any:
  if name in _POSTERIOR_NAMES:
    from pacbayes import posterior

    return getattr(posterior, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
