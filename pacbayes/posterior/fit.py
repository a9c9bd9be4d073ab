"""Posterior choice: prior sigma grid, risk-tolerance sigma search, PBB-style diagonal fit."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from pacbayes.posterior.draws import (
    LossFn,
    check_data,
    gather,
    mask_leaves,
    perturb_leaves,
    positive_int,
    progress_bar,
)
from pacbayes.posterior.montecarlo import MonteCarloOptions, empirical_risk, mc_risk

__all__ = ["FitOptions", "PosteriorFit", "SigmaSearch", "ToleranceSearch",
           "optimise_posterior", "search_sigma", "sigma_prior_grid"]

# --------------------------------------------------------------------------- sigma choice


@dataclasses.dataclass(frozen=True)
class SigmaSearch:
  """Result of `search_sigma`.

  Attributes:
    sigma: the largest sigma found whose perturbed risk stayed within tolerance.
    unperturbed: R at sigma = 0 on the search subset.
    risk: perturbed risk at `sigma` on the subset.
    history: ((sigma, risk), ...) in evaluation order.
  """

  sigma: float
  unperturbed: float
  risk: float
  history: tuple[tuple[float, float], ...]


@dataclasses.dataclass(frozen=True)
class ToleranceSearch:
  """The sizes of `search_sigma`.

  Attributes:
    num_steps: bisection steps.
    num_draws: posterior draws per evaluation.
    subset_size: rows used (None: all).
    mc: batch size and draws per step of each evaluation (`MonteCarloOptions`; its scheme
      and sizes are the search's own: `num_draws` full passes of the subset).
  """

  num_steps: int = 12
  num_draws: int = 4
  subset_size: int | None = 512
  mc: MonteCarloOptions = MonteCarloOptions(draws_per_step=1)


def _options(cls, options, fields: Mapping[str, Any]):
  """``options``, or ``cls`` built from keyword ``fields`` (MC fields go to its ``mc``)."""
  if not fields:
    return cls() if options is None else options
  if options is not None:
    raise ValueError(f"options and {sorted(fields)}: give the options object or its fields "
                     "as keywords, not both")
  own = {f.name for f in dataclasses.fields(cls)}
  mc_names = {f.name for f in dataclasses.fields(MonteCarloOptions)}
  unknown = sorted(set(fields) - own - (mc_names if "mc" in own else set()))
  if unknown:
    raise TypeError(f"unexpected keyword arguments {unknown}")
  kw = {k: v for k, v in fields.items() if k in own}
  mc = {k: v for k, v in fields.items() if k not in own}
  if mc:
    kw["mc"] = dataclasses.replace(cls().mc, **mc)
  return cls(**kw)


def search_sigma(
    loss_fn: LossFn,
    params: Any,
    data: Mapping[str, Any],
    *,
    key: jax.Array,
    tolerance: float = 0.02,
    low: float = 1e-6,
    high: float = 1.0,
    options: ToleranceSearch | None = None,
    mask: Any = None,
    mesh: Mesh | None = None,
    **fields: Any,
) -> SigmaSearch:
  """Largest isotropic posterior sigma keeping the perturbed risk within `tolerance`.

  Bisection in log-space on [low, high] for the predicate
  `mean over num_draws draws of R_sub(theta) <= R_sub(params) + tolerance`, on a random
  subset of `subset_size` rows. Every evaluation reuses the same key (common random numbers:
  theta = params + sigma * eps with the same eps), which makes the risk a smooth function
  of sigma, and makes the result monotone in `tolerance` (the bisection paths for two
  tolerances agree until the first midpoint that only the larger accepts).

  The result depends on S; that is allowed for the posterior (PAC-Bayes bounds hold for
  every Q simultaneously), but never use it to set the prior's sigma: the prior's sigma
  comes from a grid fixed in advance (`sigma_prior_grid`).

  Args:
    loss_fn: bounded per-example loss (see `mc_risk`).
    params: posterior mean.
    data: data mapping (held-in data; a subset is used).
    key: PRNG key (subset choice and noise).
    tolerance: allowed increase of the risk (absolute, > 0).
    low, high: search interval, 0 < low < high.
    options: bisection steps, draws, subset and Monte-Carlo sizes (`ToleranceSearch`).
    mask, mesh: as in `mc_risk`.
    **fields: the fields of `ToleranceSearch` or of its `MonteCarloOptions` as keywords
      (``num_steps=8, batch_size=16``), instead of ``options``.

  Returns:
    A `SigmaSearch`; its sigma is `high` if `high` is already acceptable.

  Raises:
    ValueError: bad arguments, or even `low` breaks the tolerance.
  """
  o = _options(ToleranceSearch, options, fields)
  num_steps, num_draws, subset_size = o.num_steps, o.num_draws, o.subset_size
  eval_mc = dataclasses.replace(o.mc, scheme="passes", num_draws=positive_int(
      num_draws, "num_draws"), chunk_size=None, max_memory=None)
  if not (isinstance(tolerance, (int, float)) and tolerance > 0):
    raise ValueError(f"tolerance: expected a number > 0, got {tolerance!r}")
  if not (0 < low < high and math.isfinite(high)):
    raise ValueError(f"low, high: expected 0 < low < high < inf, got low={low!r}, high={high!r}")
  num_steps = positive_int(num_steps, "num_steps")
  arrays, n = check_data(data)
  key_sub, key_noise = jax.random.split(key)
  if subset_size is not None and positive_int(subset_size, "subset_size") < n:
    rows = np.sort(np.asarray(jax.random.permutation(key_sub, n))[:subset_size])
    arrays = {k: v[rows] for k, v in arrays.items()}
  base = empirical_risk(loss_fn, params, arrays, batch_size=eval_mc.batch_size, mesh=mesh)
  target = base + tolerance
  history = []

  def risk(s: float) -> float:
    r = mc_risk(loss_fn, params, arrays, key=key_noise, sigma=s, options=eval_mc, mask=mask,
                mesh=mesh).mean
    history.append((float(s), r))
    return r

  r_hi = risk(high)
  if r_hi <= target:
    return SigmaSearch(float(high), base, r_hi, tuple(history))
  r_lo = risk(low)
  if r_lo > target:
    raise ValueError(
        f"low: even sigma={low:g} raises the risk from {base:.4f} to {r_lo:.4f}, more than "
        f"tolerance={tolerance:g}; lower `low` or raise `tolerance`")
  lo, hi = math.log(low), math.log(high)
  for _ in range(num_steps):
    mid = 0.5 * (lo + hi)
    r = risk(math.exp(mid))
    if r <= target:
      lo, r_lo = mid, r
    else:
      hi = mid
  return SigmaSearch(math.exp(lo), base, r_lo, tuple(history))


def sigma_prior_grid(low: float, high: float, k: int) -> np.ndarray:
  """Geometric grid of k prior sigmas in [low, high], to be fixed before seeing S.

  Choosing the best of the k points after the fact costs ln k in the bound (a union bound
  over k priors with delta/k each); pass `grid_size=k` to the certificate.

  Returns:
    [k] float64 array.
  """
  k = positive_int(k, "k")
  if not (0 < low <= high and math.isfinite(high)):
    raise ValueError(f"low, high: expected 0 < low <= high < inf, got {low!r}, {high!r}")
  if k > 1 and low == high:
    raise ValueError("low, high: equal ends need k = 1")
  return np.geomspace(low, high, k)


# ----------------------------------------------------------------- posterior optimisation


@dataclasses.dataclass(frozen=True)
class PosteriorFit:
  """Result of `optimise_posterior`.

  Attributes:
    sigma: pytree like params: the fitted posterior standard deviations (per leaf scalars
      or per weight arrays; unperturbed leaves hold 1.0 and are never used).
    history: [steps] objective values (noisy minibatch estimates of the bound).
    objective: "maurer" or "fquad".
    mask: the perturbation mask used; pass it on with `sigma` (to `mc_risk` or
      `pacbayes.pipeline.run.certify_params` as its mask).
  """

  sigma: Any
  history: np.ndarray
  objective: str
  mask: Any = None


@dataclasses.dataclass(frozen=True)
class FitOptions:
  """How `optimise_posterior` trains the posterior's sigmas.

  Attributes:
    objective: "maurer" or "fquad".
    per_weight: one sigma per weight instead of one per leaf.
    num_steps, learning_rate: Adam steps and rate (or give `optimizer`).
    batch_size: minibatch rows; num_draws: draws per step.
    delta: confidence of the PAC-Bayes part of the objective.
    grid_size: prior grid size k (adds ln k to the KL).
    optimizer: an Optax transformation replacing Adam(learning_rate).
  """

  objective: str = "maurer"
  per_weight: bool = False
  num_steps: int = 100
  learning_rate: float = 0.01
  batch_size: int = 32
  num_draws: int = 1
  delta: float = 0.05
  grid_size: int = 1
  optimizer: optax.GradientTransformation | None = None


def optimise_posterior(
    surrogate_fn: LossFn,
    params: Any,
    prior_params: Any,
    data: Mapping[str, Any],
    *,
    key: jax.Array,
    sigma_init: float,
    sigma_prior: float,
    options: FitOptions | None = None,
    mask: Any = None,
    progress: bool = False,
    **fields: Any,
) -> PosteriorFit:
  """Fits a diagonal posterior N(params, diag(s^2)) by minimising a PAC-Bayes bound.

  Only the log standard deviations are trained (one per leaf, or one per weight with
  `per_weight=True`); the mean stays at `params`. Each step draws a random minibatch and
  `num_draws` reparameterised draws theta = params + s * eps, and minimises
  `bound(mean surrogate loss, KL(Q || P) + ln grid_size, n, delta)` with
  P = N(prior_params, sigma_prior^2 I), bound = `pacbayes.bounds.pac.maurer` or `fquad`, and
  KL = `pacbayes.posterior.kl.gaussian_kl` over the perturbed leaves. The surrogate must be a
  differentiable loss in [0, 1] (e.g. a bounded cross-entropy); the minibatch bound is
  only a training signal.

  This is PBB-style training (Perez-Ortiz et al. 2021) of the posterior variance. The
  fitted posterior depends on S, which PAC-Bayes allows; the prior does not (its sigma
  comes from a grid fixed in advance). The certificate must then be computed afresh with
  `mc_risk` on the 0-1 (or other reported) loss with a NEW key: the draws used here are
  spent on the fit.

  Args:
    surrogate_fn: differentiable bounded loss, `(params, batch) -> [B]` in [0, 1].
    params: posterior mean (e.g. fine-tuned weights).
    prior_params: prior mean (e.g. pretrained weights), same structure.
    data: the training set S (mapping of arrays, n rows).
    key: PRNG key.
    sigma_init: starting posterior sigma (> 0).
    sigma_prior: prior sigma (> 0), fixed during the fit.
    options: objective, steps, rate, sizes, delta, grid size, optimizer (`FitOptions`).
    mask: pytree of bools; default all floating leaves.
    progress: tqdm bar.
    **fields: the fields of `FitOptions` as keywords, instead of ``options``.

  Returns:
    A `PosteriorFit`.

  References:
    Perez-Ortiz, Rivasplata, Shawe-Taylor, Szepesvari, "Tighter risk certificates for
    neural networks", JMLR 2021.
    Dziugaite & Roy, "Computing nonvacuous generalization bounds for deep (stochastic)
    neural networks with many more parameters than training data", UAI 2017.
  """
  from pacbayes.bounds import pac as bounds
  from pacbayes.posterior.kl import gaussian_kl

  o = _options(FitOptions, options, fields)
  objective, per_weight, num_steps = o.objective, o.per_weight, o.num_steps
  learning_rate, batch_size, num_draws = o.learning_rate, o.batch_size, o.num_draws
  delta, grid_size, optimizer = o.delta, o.grid_size, o.optimizer
  if objective not in ("maurer", "fquad"):
    raise ValueError(f"objective: expected 'maurer' or 'fquad', got {objective!r}")
  for name, v in (("sigma_init", sigma_init), ("sigma_prior", sigma_prior)):
    if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
      raise ValueError(f"{name}: expected a finite number > 0, got {v!r}")
  if not 0 < delta < 1:
    raise ValueError(f"delta: expected a value in (0, 1), got {delta!r}")
  arrays, n = check_data(data)
  num_steps = positive_int(num_steps, "num_steps")
  batch_size = positive_int(batch_size, "batch_size")
  num_draws = positive_int(num_draws, "num_draws")
  grid_size = positive_int(grid_size, "grid_size")
  mask_t = mask_leaves(mask, params)
  leaves, treedef = jax.tree.flatten(params)
  p_leaves, p_def = jax.tree.flatten(prior_params)
  if p_def != treedef or any(
      np.shape(a) != np.shape(b) for a, b in zip(leaves, p_leaves, strict=True)):
    raise ValueError("prior_params: expected the same structure and shapes as params")
  bound_fn = bounds.maurer if objective == "maurer" else bounds.fquad
  ln_k = math.log(grid_size)

  log_s = [
      jnp.full(np.shape(x) if per_weight else (), math.log(sigma_init), jnp.float32)
      for x, m in zip(leaves, mask_t, strict=True) if m]
  opt = optimizer if optimizer is not None else optax.adam(learning_rate)
  opt_state = opt.init(log_s)
  sel = [i for i, m in enumerate(mask_t) if m]

  def objective_fn(log_s, leaves, p_leaves, key, batch):
    s_all = [jnp.ones((), jnp.float32)] * len(leaves)
    for i, ls in zip(sel, log_s, strict=True):
      s_all[i] = jnp.exp(ls)

    def one(k):
      theta = jax.tree.unflatten(treedef, perturb_leaves(k, leaves, s_all, mask_t))
      losses = jnp.reshape(surrogate_fn(theta, batch), batch["weight"].shape)
      return jnp.sum(losses * batch["weight"]) / jnp.sum(batch["weight"])

    emp = jnp.mean(jax.vmap(one)(jax.random.split(key, num_draws))).astype(jnp.float64)
    kl = gaussian_kl([leaves[i] for i in sel], [p_leaves[i] for i in sel],
                     [jnp.exp(ls) for ls in log_s], sigma_prior)
    return bound_fn(emp, kl + ln_k, n, delta)

  @jax.jit
  def update(log_s, opt_state, leaves, p_leaves, key, batch):
    value, grads = jax.value_and_grad(objective_fn)(log_s, leaves, p_leaves, key, batch)
    updates, opt_state = opt.update(grads, opt_state, log_s)
    return optax.apply_updates(log_s, updates), opt_state, value

  history = np.zeros(num_steps)
  bar = progress_bar(num_steps, f"fit posterior ({objective})", progress)
  for t in range(num_steps):
    k_batch, k_noise = jax.random.split(jax.random.fold_in(key, t))
    idx = np.asarray(jax.random.randint(k_batch, (batch_size,), 0, n))
    log_s, opt_state, value = update(log_s, opt_state, leaves, p_leaves, k_noise,
                                     gather(arrays, idx))
    history[t] = float(value)
    bar.update(1)
  bar.close()
  sig = [jnp.ones((), jnp.float32)] * len(leaves)
  for i, ls in zip(sel, log_s, strict=True):
    sig[i] = jnp.exp(ls)
  return PosteriorFit(jax.tree.unflatten(treedef, sig), history, objective,
                      jax.tree.unflatten(treedef, list(mask_t)))
