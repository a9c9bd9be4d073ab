"""Posterior and prior scales (sigma_q, sigma_p) chosen to minimise the PAC-Bayes bound."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from pacbayes import bounds
from pacbayes.draws import LossFn, check_data, positive_int, progress_bar
from pacbayes.kl import isotropic_kl
from pacbayes.montecarlo import mc_risk

METHODS = ("maurer", "mcallester", "fquad")
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618...
# Two subset bounds closer than this count as tied; the smaller KL then wins.
_TIE = 1e-12


def subset_bound(
    emp_risk: Any, num_mc: int, kl: Any, n: int, *, delta_mc: float, delta_pb: float,
    grid_size: int = 1, method: str = "maurer") -> np.ndarray:
  """B_train for a Monte-Carlo risk and a KL: the in-distribution bound a certificate gives.

  B_train = bound(mc_sample_bound(emp_risk, num_mc, delta_mc), kl + ln grid_size, n, delta_pb)
  with `bound` = `pacbayes.bounds.maurer` (or mcallester / fquad), i.e. emp_risk + epsilon +
  g_gen of DESIGN.md §1 (Maurer 2004, Thm 5; Langford & Caruana 2001 for epsilon).
  Vectorised over `emp_risk` and `kl` (broadcast).

  Returns:
    float64 array of bounds in [0, 1].
  """
  if method not in METHODS:
    raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
  fn = getattr(bounds, method)
  q_up = bounds.mc_sample_bound(np.clip(emp_risk, 0.0, 1.0), num_mc, delta_mc)
  kl = np.asarray(kl, np.float64) + math.log(grid_size)
  return np.minimum(np.asarray(fn(q_up, kl, n, delta_pb), np.float64), 1.0)


@dataclasses.dataclass(frozen=True)
class SigmaChoice:
  """Result of `choose_sigma`.

  Attributes:
    sigma_q: posterior sigma (float32-representable: the draws use it in float32).
    sigma_p: prior sigma, `grid[grid_index]`.
    grid_index: index of sigma_p in the grid as given.
    bound: subset bound B_train at (sigma_q, sigma_p) (full n, final M; ln k included).
    emp_risk: Monte-Carlo risk on the subset at sigma_q.
    kl: KL(Q || P) at (sigma_q, sigma_p), nats (without ln k).
    how: words for the report: how sigma_q and sigma_p were chosen.
    at_grid_edge: sigma_p is the lowest or highest point of a grid of >= 2 points.
    grid_position: "lowest", "highest", "inside" or "single" (a one-point grid).
    trace: one dict per risk evaluation, in order: sigma_q, risk, and the best sigma_p,
      grid index, KL and bound at that sigma_q.
    subset_size, num_draws: rows and posterior draws per evaluation.
    forward_rows: rows x draws scored by the search (its cost in forward passes of a row).
  """

  sigma_q: float
  sigma_p: float
  grid_index: int
  bound: float
  emp_risk: float
  kl: float
  how: str
  at_grid_edge: bool
  grid_position: str
  trace: tuple[dict[str, float], ...]
  subset_size: int
  num_draws: int
  forward_rows: int


def _f32(s: float) -> float:
  return float(np.float32(s))


def choose_sigma(
    loss_fn: LossFn,
    params: Any,
    data: Mapping[str, Any],
    *,
    key: jax.Array,
    sigma_grid: Sequence[float],
    sq_distance: float,
    num_params: int,
    num_mc: int | None = None,
    n: int | None = None,
    delta_mc: float,
    delta_pb: float,
    sigma_q: float | None = None,
    method: str = "maurer",
    subset_size: int | None = 256,
    num_draws: int = 2,
    max_steps: int = 8,
    rel_tol: float = 0.02,
    min_ratio: float = 1e-4,
    batch_size: int = 32,
    draws_per_step: int | None = None,
    mask: Any = None,
    mesh: Mesh | None = None,
    progress: bool = False,
) -> SigmaChoice:
  r"""sigma_p from a fixed grid and sigma_q free, chosen to minimise the bound B_train.

  Q = N(params, sigma_q^2 I) and P = N(w_pre, sigma_p^2 I) on the d = `num_params` perturbed
  parameters, with KL = 1/2 [d r - d - d ln r + ||w_ft - w_pre||^2 / sigma_p^2],
  r = sigma_q^2 / sigma_p^2 (`pacbayes.kl.isotropic_kl`, from `sq_distance` computed once).
  The objective is `subset_bound`: the B_train that the final certificate would report if its
  Monte-Carlo risk (M = `num_mc` draws) equalled the risk measured here on a random subset of
  `subset_size` rows of S with `num_draws` posterior draws (common random numbers: the same
  noise at every sigma, so the risk is a smooth function of sigma).

  Search (each risk evaluation is cached; the KL and bound are closed forms):
  1. Grid points in increasing order of their lower bound B(0, KL(sigma_p, sigma_p)) (a valid
     lower bound over sigma_q <= sigma_p, since risk >= 0 and the KL at fixed sigma_p is
     smallest at sigma_q = sigma_p); the risk is measured at sigma_q = sigma_p unless that
     lower bound already exceeds the best bound found.
  2. For each sigma_p whose lower bound is below the best, golden-section search on
     t = ln(sigma_p / sigma_q) in [0, t_max], where t_max is where B(0, KL) reaches the best
     bound (or ln(1/`min_ratio`)); a branch is dropped early when
     B(risk(sigma_p e^{-t_max}), KL(sigma_p, sigma_p)) is not below the best (this assumes the
     risk grows with sigma, as it does in expectation for a trained model). At most
     `max_steps` steps, stopping when the bracket is below `rel_tol` * t_max.
  Every evaluated sigma_q is scored against every grid point; the smallest bound wins, ties
  (within 1e-12) toward the smaller KL. With `sigma_q` given, only step "score" runs: one risk
  evaluation, then the grid point of the smallest bound.

  Validity: sigma_q may depend on S (PAC-Bayes holds for all Q at once); sigma_p is one of k
  grid points fixed in advance, which costs ln k: the caller's certificate must use
  grid_size = len(sigma_grid) and must compute its Monte-Carlo risk with a key independent
  of `key`, on all of S. A `pacbayes.PacBayesWarning` is issued when sigma_p is at an edge
  of a grid of >= 2 points (a wider grid, fixed in advance, may give a smaller bound).

  Args:
    loss_fn: bounded per-example loss (see `pacbayes.montecarlo.mc_risk`).
    params: posterior mean.
    data: the training set S (a subset is used).
    key: PRNG key for the subset and the search's noise (not the certificate's).
    sigma_grid: prior sigmas fixed in advance (k >= 1 finite values > 0).
    sq_distance: ||params - prior_params||^2 over the perturbed parameters.
    num_params: d, the number of perturbed parameters.
    num_mc: M of the final certificate (default n: chunk scheme with one row per draw).
    n: |S| of the final certificate (default len(data)).
    delta_mc, delta_pb: the certificate's delta shares for the Monte-Carlo and PAC-Bayes
      terms.
    sigma_q: a fixed posterior sigma (then only sigma_p is chosen).
    method: "maurer" (default), "mcallester" or "fquad".
    subset_size: rows of S used (None: all).
    num_draws: posterior draws per risk evaluation.
    max_steps: golden-section steps per grid point.
    rel_tol: stop when the bracket is below rel_tol * t_max.
    min_ratio: smallest sigma_q / sigma_p searched (> 0, < 1).
    batch_size, draws_per_step, mask, mesh: as in `mc_risk`.
    progress: a bar counting risk evaluations (kept in the log).

  Returns:
    A `SigmaChoice`.

  Raises:
    ValueError: bad grid, sigma, sizes or deltas, or any `mc_risk` error.

  References:
    Maurer, "A note on the PAC Bayesian theorem", 2004 (the bound); Dziugaite & Roy, UAI 2017,
    and Perez-Ortiz et al., JMLR 2021 (union bound over a prior-scale grid, a posterior
    scale fitted to the bound); Kiefer, "Sequential minimax search for a maximum", 1953
    (golden section).
  """
  grid = np.asarray(sigma_grid, np.float64).reshape(-1)
  if grid.size == 0 or not np.all(np.isfinite(grid) & (grid > 0)):
    raise ValueError(f"sigma_grid: expected finite values > 0, got {list(sigma_grid)!r}")
  if method not in METHODS:
    raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
  if not (math.isfinite(sq_distance) and sq_distance >= 0):
    raise ValueError(f"sq_distance: expected a finite value >= 0, got {sq_distance!r}")
  num_params = positive_int(num_params, "num_params")
  for name, v in (("delta_mc", delta_mc), ("delta_pb", delta_pb)):
    if not (isinstance(v, (int, float)) and 0 < v < 1):
      raise ValueError(f"{name}: expected a value in (0, 1), got {v!r}")
  if not (0 < min_ratio < 1):
    raise ValueError(f"min_ratio: expected a value in (0, 1), got {min_ratio!r}")
  if not (0 < rel_tol < 1):
    raise ValueError(f"rel_tol: expected a value in (0, 1), got {rel_tol!r}")
  max_steps = positive_int(max_steps, "max_steps")
  num_draws = positive_int(num_draws, "num_draws")
  if sigma_q is not None and not (
      isinstance(sigma_q, (int, float)) and math.isfinite(sigma_q) and sigma_q > 0):
    raise ValueError(f"sigma_q: expected a finite number > 0, got {sigma_q!r}")
  arrays, n_data = check_data(data)
  n = n_data if n is None else positive_int(n, "n")
  num_mc = n if num_mc is None else positive_int(num_mc, "num_mc")
  key_sub, key_noise = jax.random.split(key)
  if subset_size is not None and positive_int(subset_size, "subset_size") < n_data:
    rows = np.sort(np.asarray(jax.random.permutation(key_sub, n_data))[:subset_size])
    arrays = {k: v[rows] for k, v in arrays.items()}
  n_sub = int(next(iter(arrays.values())).shape[0])
  k = grid.size
  bound_kw = dict(delta_mc=delta_mc, delta_pb=delta_pb, grid_size=k, method=method)

  def kl_of(s_q: float, s_p: Any) -> np.ndarray:
    return np.asarray(isotropic_kl(sq_distance, num_params, s_q, s_p), np.float64)

  cache: dict[float, float] = {}
  trace: list[dict[str, float]] = []
  best: dict[str, Any] = {"bound": math.inf, "kl": math.inf}
  bar = progress_bar(None, "sigma search", progress, unit="eval")

  def evaluate(s: float) -> float:
    """Risk at sigma_q = s on the subset; scores s against every grid point."""
    s = _f32(s)
    if s in cache:
      return cache[s]
    r = mc_risk(loss_fn, params, arrays, key=key_noise, sigma=s, scheme="passes",
                num_draws=num_draws, batch_size=batch_size, draws_per_step=draws_per_step,
                mask=mask, mesh=mesh).mean
    cache[s] = r
    kls = kl_of(s, grid)
    bs = subset_bound(r, num_mc, kls, n, **bound_kw)
    j = _argbest(bs, kls)
    trace.append({"sigma_q": s, "risk": r, "sigma_p": float(grid[j]), "grid_index": j,
                  "kl": float(kls[j]), "bound": float(bs[j])})
    if _better(bs[j], kls[j], best["bound"], best["kl"]):
      best.update(bound=float(bs[j]), kl=float(kls[j]), sigma_q=s, index=j, risk=r)
    bar.update(1)
    bar.set_postfix(best=f"{best['bound']:.4f}", refresh=False)
    return r

  if sigma_q is not None:
    evaluate(sigma_q)
    how = (f"sigma_q = {_f32(sigma_q):.6g} fixed by the user; sigma_p = the point of a "
           f"{k}-point grid with the smallest bound (ln {k} paid)")
  else:
    # Lower bound per grid point over sigma_q <= sigma_p: risk 0 and the KL at sigma_q = sigma_p.
    lb = subset_bound(0.0, num_mc, kl_of(grid, grid), n, **bound_kw)
    for p in np.argsort(lb, kind="stable"):
      if lb[p] < best["bound"] - _TIE or not cache:
        evaluate(grid[p])
    for p in np.argsort(lb, kind="stable"):
      if lb[p] >= best["bound"] - _TIE:
        continue
      _golden(evaluate, float(grid[p]), best, kl_of, num_mc, n, bound_kw, min_ratio,
              max_steps, rel_tol)
    how = (f"sigma_q searched to minimise the {method} bound (golden section on "
           f"ln sigma_q, {len(cache)} risk evaluations of {num_draws} draws on {n_sub} rows "
           f"of S); sigma_p = the point of a {k}-point grid fixed in advance with the "
           f"smallest bound (ln {k} paid)")
  bar.close()

  j = int(best["index"])
  position = "single" if k == 1 else (
      "lowest" if grid[j] == grid.min() else "highest" if grid[j] == grid.max() else "inside")
  at_edge = position in ("lowest", "highest")
  if at_edge:
    from pacbayes import PacBayesWarning

    warnings.warn(
        f"sigma_p = {grid[j]:.6g} is the {position} point of the prior grid; a grid reaching "
        f"further (fixed before seeing the data) may give a smaller bound", PacBayesWarning,
        stacklevel=2)
  return SigmaChoice(
      sigma_q=best["sigma_q"], sigma_p=float(grid[j]), grid_index=j, bound=best["bound"],
      emp_risk=best["risk"], kl=best["kl"], how=how, at_grid_edge=at_edge,
      grid_position=position, trace=tuple(trace), subset_size=n_sub, num_draws=num_draws,
      forward_rows=len(cache) * num_draws * n_sub)


def _better(b1: float, kl1: float, b2: float, kl2: float) -> bool:
  """(b1, kl1) beats (b2, kl2): a smaller bound, or a tie and a smaller KL."""
  if b1 < b2 - _TIE:
    return True
  return abs(b1 - b2) <= _TIE and kl1 < kl2


def _argbest(bs: np.ndarray, kls: np.ndarray) -> int:
  j = 0
  for i in range(1, len(bs)):
    if _better(bs[i], kls[i], bs[j], kls[j]):
      j = i
  return j


def _golden(evaluate, s_p: float, best: dict, kl_of, num_mc: int, n: int, bound_kw: dict,
            min_ratio: float, max_steps: int, rel_tol: float) -> None:
  """Golden-section search of B(risk(s_p e^-t), KL(s_p e^-t, s_p)) over t in [0, t_max]."""
  t_cap = math.log(1.0 / min_ratio)

  def lower(t: float) -> float:  # valid lower bound on the objective at t (risk >= 0)
    return float(subset_bound(0.0, num_mc, kl_of(s_p * math.exp(-t), s_p), n, **bound_kw))

  if lower(t_cap) < best["bound"] - _TIE:
    t_max = t_cap
  else:
    lo, hi = 0.0, t_cap
    for _ in range(60):
      mid = 0.5 * (lo + hi)
      lo, hi = (mid, hi) if lower(mid) < best["bound"] - _TIE else (lo, mid)
    t_max = lo
  if t_max <= 0.0:
    return
  # Early drop: even the smallest risk of the bracket with the smallest KL does not win.
  r_low = evaluate(s_p * math.exp(-t_max))
  kl0 = float(kl_of(s_p, s_p))
  if float(subset_bound(r_low, num_mc, kl0, n, **bound_kw)) >= best["bound"] - _TIE:
    return

  def h(t: float) -> tuple[float, float]:
    s = s_p * math.exp(-t)
    kl = float(kl_of(_f32(s), s_p))
    return float(subset_bound(evaluate(s), num_mc, kl, n, **bound_kw)), kl

  a, b = 0.0, t_max
  c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
  hc, hd = h(c), h(d)
  for _ in range(max_steps):
    if b - a <= rel_tol * t_max:
      break
    if _better(hc[0], hc[1], hd[0], hd[1]) or hc == hd:
      b, d, hd = d, c, hc
      c = b - _GOLDEN * (b - a)
      hc = h(c)
    else:
      a, c, hc = c, d, hd
      d = a + _GOLDEN * (b - a)
      hd = h(d)
