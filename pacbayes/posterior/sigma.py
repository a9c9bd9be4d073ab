"""Posterior and prior scales (sigma_q, sigma_p): the plan, and the choice that minimises the bound.

`SigmaPlan` says from the arguments alone how each scale is chosen; `choose_sigma` searches
sigma_q (and the grid point sigma_p) that minimise B_train on a subset of S; `subset_bound` is
that objective, B_train of `pacbayes.bounds.btrain` (one definition for every caller).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from pacbayes.bounds import pac as bounds
from pacbayes.bounds.btrain import b_train_upper
from pacbayes.posterior.draws import LossFn, check_data, positive_int, progress_bar
from pacbayes.posterior.kl import isotropic_kl
from pacbayes.posterior.montecarlo import MonteCarloOptions, mc_risk

__all__ = ["DEFAULT_SIGMA_GRID", "METHODS", "BoundTarget", "SearchOptions", "SigmaChoice",
           "SigmaPlan", "check_grid", "check_sigma", "choose_sigma", "plan_sigma",
           "subset_bound"]

METHODS = ("maurer", "mcallester", "fquad")
# Two subset bounds closer than this count as tied (see `choose_sigma` for the tie rule).
_TIE = 1e-12
# Prior scales used when neither a prior sigma nor a grid is given. Fixed here, in advance of
# any data, as the union bound over the grid requires: 1e-5 .. 1e-1, four points per decade
# (ln 17 = 2.8 nats). Every report that uses it says so.
DEFAULT_SIGMA_GRID = tuple(float(s) for s in np.geomspace(1e-5, 1e-1, 17))


def subset_bound(
    emp_risk: Any, num_mc: int, kl: Any, n: int, *, delta_mc: float, delta_pb: float,
    grid_size: int = 1, method: str = "maurer") -> np.ndarray:
  """B_train for a Monte-Carlo risk and a KL: the in-distribution bound a certificate gives.

  B_train = `pacbayes.bounds.btrain.b_train_upper`(mc_sample_bound(emp_risk, num_mc,
  delta_mc), kl, n, delta_pb, k, method), i.e. emp_risk + epsilon + g_gen of docs/THEORY.md §1
  (Maurer 2004, Thm 5; Langford & Caruana 2001 for epsilon), clipped at 1. Vectorised over
  `emp_risk` and `kl` (broadcast).

  Returns:
    float64 array of bounds in [0, 1].
  """
  if method not in METHODS:
    raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
  q_up = np.asarray(bounds.mc_sample_bound(np.clip(emp_risk, 0.0, 1.0), num_mc, delta_mc))
  out = b_train_upper(q_up, kl, n, delta_pb, grid_size=grid_size, method=method)
  return np.minimum(np.asarray(out, np.float64), 1.0)


# --------------------------------------------------------------------------- sigma plan


def check_sigma(value: Any, name: str) -> float | None:
  """None, or a finite float > 0 (kept as the float64 the caller gave)."""
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not (
      math.isfinite(value) and value > 0):
    raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
  return float(value)


def check_grid(grid: Any, name: str = "sigma_grid") -> tuple[float, ...] | None:
  """None, or a tuple of distinct positive float64 sigmas, in the order given."""
  if grid is None:
    return None
  try:
    values = tuple(float(v) for v in np.asarray(grid, dtype=np.float64).ravel().tolist())
  except (TypeError, ValueError):
    raise ValueError(f"{name}: expected numbers, got {grid!r}") from None
  if not values:
    raise ValueError(f"{name}: expected at least one prior sigma")
  for v in values:
    check_sigma(v, name)
  if len(set(values)) != len(values):
    raise ValueError(f"{name}: values must be distinct, got {list(values)}")
  return values


@dataclasses.dataclass(frozen=True)
class SigmaPlan:
  """How the posterior and prior scales are chosen, decided from the arguments alone.

  Attributes:
    sigma_q: the posterior sigma when fixed (float64 as given), else None (searched).
    grid: the prior sigmas the certificate chooses from (k = len(grid), ln k paid).
    grid_source: "sigma_prior" (one fixed value), "sigma_grid" (the user's grid) or
      "default" (`DEFAULT_SIGMA_GRID`, stated in the report).
  """

  sigma_q: float | None
  grid: tuple[float, ...]
  grid_source: str

  def describe(self) -> str:
    """One sentence for the report."""
    post = ("posterior sigma fixed by the caller" if self.sigma_q is not None else
            "posterior sigma chosen to minimise the bound (free: Q may depend on S)")
    if self.grid_source == "sigma_prior":
      prior = f"prior sigma fixed at {self.grid[0]!r} (k = 1)"
    elif self.grid_source == "sigma_grid":
      prior = f"prior sigma from the given grid of k = {len(self.grid)}, ln k paid"
    else:
      prior = (f"prior sigma from the DEFAULT grid ({self.grid[0]:g} .. {self.grid[-1]:g}, "
               f"k = {len(self.grid)}, ln k = {math.log(len(self.grid)):.3g} paid)")
    return f"{post}; {prior}"


def plan_sigma(sigma: Any, sigma_grid: Any, sigma_prior: Any,
               default_grid: Sequence[float] = DEFAULT_SIGMA_GRID) -> SigmaPlan:
  """Checks the sigma arguments together and says how each scale will be chosen.

  Rules: `sigma_prior` fixes the prior (k = 1); `sigma_grid` is a prior grid fixed in
  advance (ln k paid); neither gives `default_grid`, which the report states; both are
  refused. `sigma` fixes the posterior scale, with either prior choice; without it the
  posterior scale is searched.

  Raises:
    ValueError: naming the argument.
  """
  sigma = check_sigma(sigma, "sigma")
  sigma_prior = check_sigma(sigma_prior, "sigma_prior")
  grid = check_grid(sigma_grid)
  if grid is not None and sigma_prior is not None:
    raise ValueError("sigma_grid and sigma_prior: give one (a grid to choose the prior sigma "
                     "from, or one fixed prior sigma), not both")
  if sigma_prior is not None:
    return SigmaPlan(sigma, (sigma_prior,), "sigma_prior")
  if grid is not None:
    return SigmaPlan(sigma, grid, "sigma_grid")
  return SigmaPlan(sigma, tuple(float(v) for v in default_grid), "default")


# --------------------------------------------------------------------------- the search


@dataclasses.dataclass(frozen=True)
class BoundTarget:
  """The certificate the search works for: what B_train at (sigma_q, sigma_p) depends on.

  Attributes:
    sigma_grid: prior sigmas fixed in advance (k >= 1 finite values > 0).
    sq_distance: ||w_q - w_p||^2 over the perturbed parameters.
    num_params: d, the number of perturbed parameters.
    n: |S| of the final certificate (None: the rows of the data given).
    num_mc: M of the final certificate (None: n, the chunk scheme with one row per draw).
    delta_mc, delta_pb: the certificate's Monte-Carlo and PAC-Bayes shares of delta.
    method: "maurer" (default), "mcallester" or "fquad".
  """

  sigma_grid: tuple[float, ...]
  sq_distance: float
  num_params: int
  delta_mc: float
  delta_pb: float
  n: int | None = None
  num_mc: int | None = None
  method: str = "maurer"


@dataclasses.dataclass(frozen=True)
class SearchOptions:
  """The sizes of the sigma search (see `choose_sigma`), or the sigma_q that replaces it.

  Attributes:
    subset_size: rows of S used (None: all).
    num_draws: posterior draws per risk evaluation.
    max_evals: most risk evaluations.
    tol: an interval is split only when its lower bound is at least `tol` below the best
      bound found (bound units).
    min_ratio: smallest sigma_q / sigma_p searched (> 0, < 1).
    sigma_q: a fixed posterior sigma: no search, one risk evaluation, and only sigma_p is
      chosen (None: sigma_q is searched).
  """

  subset_size: int | None = 256
  num_draws: int = 2
  max_evals: int = 12
  tol: float = 5e-3
  min_ratio: float = 1e-4
  sigma_q: float | None = None


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
    target: BoundTarget,
    search: SearchOptions | None = None,
    mc: MonteCarloOptions | None = None,
    mask: Any = None,
    mesh: Mesh | None = None,
    progress: bool = False,
) -> SigmaChoice:
  r"""sigma_p from a fixed grid and sigma_q free, chosen to minimise the bound B_train.

  Q = N(params, sigma_q^2 I) and P = N(w_pre, sigma_p^2 I) on the d = `num_params` perturbed
  parameters, with KL = 1/2 [d r - d - d ln r + ||w_ft - w_pre||^2 / sigma_p^2],
  r = sigma_q^2 / sigma_p^2 (`pacbayes.posterior.kl.isotropic_kl`, from `sq_distance`
  computed once).
  The objective is `subset_bound`: the B_train that the final certificate would report if its
  Monte-Carlo risk (M = `num_mc` draws) equalled the risk measured here on a random subset of
  `subset_size` rows of S with `num_draws` posterior draws (common random numbers: the same
  noise at every sigma, so the risk is a smooth function of sigma).

  Search: branch and bound on ln sigma_q over [min_ratio * min(grid), max(grid)] (each risk
  evaluation is cached; the KL and the bound are closed forms). Between two measured
  sigmas a < b, the risk is at least the smallest risk measured at or above a (0 below the
  first measured point: risk >= 0), and for each sigma_p the KL is at least its value at
  sigma_q = sigma_p clipped to [a, b]; that gives a lower bound of the objective on every
  interval. The first risks are measured at the grid point of the smallest lower bound and
  at the low end; then the interval with the smallest lower bound is split (at the geometric
  middle of the part where that lower bound stays below the best bound) until
  no interval can beat the best bound by `tol`, or after `max_evals` risk evaluations. The
  lower bounds assume the risk grows with sigma, which holds in expectation for a trained
  model; the search finds the minimum up to `tol` under that assumption. Every measured
  sigma_q is scored against every grid point; the smallest bound wins, ties (within 1e-12)
  toward the smaller KL, except between vacuous bounds (1 after clipping): then the smaller
  sigma_q wins, so that a tie of bounds that say nothing never picks a posterior whose noise
  destroys the model. With `search.sigma_q` given: one risk evaluation, then the grid point
  of the smallest bound.

  Validity: sigma_q may depend on S (PAC-Bayes holds for all Q at once); sigma_p is one of k
  grid points fixed in advance, which costs ln k: the caller's certificate must use
  grid_size = len(sigma_grid) and must compute its Monte-Carlo risk with a key independent
  of `key`, on all of S. A `pacbayes.PacBayesWarning` is issued when sigma_p is at an edge
  of a grid of >= 2 points (a wider grid, fixed in advance, may give a smaller bound).

  Args:
    loss_fn: bounded per-example loss (see `pacbayes.posterior.montecarlo.mc_risk`).
    params: posterior mean.
    data: the training set S (a subset is used).
    key: PRNG key for the subset and the search's noise (not the certificate's).
    target: the grid, ||w_q - w_p||^2, d, n, M, the delta shares and the method of the
      final certificate (`BoundTarget`).
    search: subset size, draws per evaluation, evaluations, tolerance, or a fixed sigma_q
      (`SearchOptions`).
    mc: batch size and draws per step of the risk evaluations (`MonteCarloOptions`; its
      scheme and sizes are the search's own: `search.num_draws` full passes of the subset).
    mask, mesh: as in `mc_risk`.
    progress: a bar counting risk evaluations, with its total (kept in the log).

  Returns:
    A `SigmaChoice`.

  Raises:
    ValueError: bad grid, sigma, sizes or deltas, or any `mc_risk` error.

  References:
    Maurer, "A note on the PAC Bayesian theorem", 2004 (the bound); Dziugaite & Roy, UAI 2017,
    and Perez-Ortiz et al., JMLR 2021 (union bound over a prior-scale grid, a posterior
    scale fitted to the bound); Land & Doig, "An automatic method of solving discrete
    programming problems", Econometrica 1960 (branch and bound).
  """
  search = SearchOptions() if search is None else search
  mc = MonteCarloOptions() if mc is None else mc
  grid = np.asarray(target.sigma_grid, np.float64).reshape(-1)
  if grid.size == 0 or not np.all(np.isfinite(grid) & (grid > 0)):
    raise ValueError(f"sigma_grid: expected finite values > 0, got {list(target.sigma_grid)!r}")
  method, sq_distance = target.method, target.sq_distance
  if method not in METHODS:
    raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
  if not (math.isfinite(sq_distance) and sq_distance >= 0):
    raise ValueError(f"sq_distance: expected a finite value >= 0, got {sq_distance!r}")
  num_params = positive_int(target.num_params, "num_params")
  delta_mc, delta_pb = target.delta_mc, target.delta_pb
  for name, v in (("delta_mc", delta_mc), ("delta_pb", delta_pb)):
    if not (isinstance(v, (int, float)) and 0 < v < 1):
      raise ValueError(f"{name}: expected a value in (0, 1), got {v!r}")
  min_ratio, tol, subset_size = search.min_ratio, search.tol, search.subset_size
  sigma_q = search.sigma_q
  if not (0 < min_ratio < 1):
    raise ValueError(f"min_ratio: expected a value in (0, 1), got {min_ratio!r}")
  if not (isinstance(tol, (int, float)) and 0 <= tol < 1):
    raise ValueError(f"tol: expected a value in [0, 1), got {tol!r}")
  max_evals = positive_int(search.max_evals, "max_evals")
  num_draws = positive_int(search.num_draws, "num_draws")
  if sigma_q is not None and not (
      isinstance(sigma_q, (int, float)) and math.isfinite(sigma_q) and sigma_q > 0):
    raise ValueError(f"sigma_q: expected a finite number > 0, got {sigma_q!r}")
  arrays, n_data = check_data(data)
  n = n_data if target.n is None else positive_int(target.n, "n")
  num_mc = n if target.num_mc is None else positive_int(target.num_mc, "num_mc")
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
  bar = progress_bar(1 if sigma_q is not None else max_evals, "sigma search (at most)",
                     progress, unit="eval")
  eval_mc = dataclasses.replace(mc, scheme="passes", num_draws=num_draws, chunk_size=None,
                                max_memory=None)

  def evaluate(s: float) -> float:
    """Risk at sigma_q = s on the subset; scores s against every grid point."""
    s = _f32(s)
    if s in cache:
      return cache[s]
    r = mc_risk(loss_fn, params, arrays, key=key_noise, sigma=s, options=eval_mc, mask=mask,
                mesh=mesh).mean
    cache[s] = r
    kls = kl_of(s, grid)
    bs = subset_bound(r, num_mc, kls, n, **bound_kw)
    j = _argbest(bs, kls)
    trace.append({"sigma_q": s, "risk": r, "sigma_p": float(grid[j]), "grid_index": j,
                  "kl": float(kls[j]), "bound": float(bs[j])})
    if _better((bs[j], kls[j], s), (best["bound"], best["kl"], best.get("sigma_q", math.inf))):
      best.update(bound=float(bs[j]), kl=float(kls[j]), sigma_q=s, index=j, risk=r)
    bar.update(1)
    bar.set_postfix(best=f"{best['bound']:.4f}", refresh=False)
    return r

  if sigma_q is not None:
    evaluate(sigma_q)
    how = (f"sigma_q = {_f32(sigma_q):.6g} fixed by the user; sigma_p = the point of a "
           f"{k}-point grid with the smallest bound (ln {k} paid)")
  else:
    def score(e: Any, kl: Any) -> np.ndarray:
      return subset_bound(e, num_mc, kl, n, **bound_kw)

    s_min = min_ratio * float(grid.min())
    evaluate(grid[int(np.argmin(score(0.0, kl_of(grid, grid))))])
    evaluate(s_min)  # near the unperturbed risk: a risk floor for every interval
    _branch_and_bound(evaluate, cache, best, grid, kl_of, score, s_min, float(grid.max()), tol,
                      max_evals)
    how = (f"sigma_q searched to minimise the {method} bound (branch and bound on "
           f"ln sigma_q, {len(cache)} risk evaluations of {num_draws} draws on {n_sub} rows "
           f"of S); sigma_p = the point of a {k}-point grid fixed in advance with the "
           f"smallest bound (ln {k} paid)")
  bar.close()

  j = int(best["index"])
  position = "single" if k == 1 else (
      "lowest" if grid[j] == grid.min() else "highest" if grid[j] == grid.max() else "inside")
  at_edge = position in ("lowest", "highest")
  if at_edge:
    from pacbayes.core.errors import PacBayesWarning

    warnings.warn(
        f"sigma_p = {grid[j]:.6g} is the {position} point of the prior grid; a grid reaching "
        f"further (fixed before seeing the data) may give a smaller bound", PacBayesWarning,
        stacklevel=2)
  return SigmaChoice(
      sigma_q=best["sigma_q"], sigma_p=float(grid[j]), grid_index=j, bound=best["bound"],
      emp_risk=best["risk"], kl=best["kl"], how=how, at_grid_edge=at_edge,
      grid_position=position, trace=tuple(trace), subset_size=n_sub, num_draws=num_draws,
      forward_rows=len(cache) * num_draws * n_sub)


def _better(one: tuple[float, float, float], other: tuple[float, float, float]) -> bool:
  """(bound, KL, sigma) ``one`` beats ``other``: a smaller bound; on a tie, the smaller
  sigma when both bounds are vacuous (>= 1: the smaller noise keeps the model that says
  something), else the smaller KL."""
  (b1, kl1, s1), (b2, kl2, s2) = one, other
  if b1 < b2 - _TIE:
    return True
  if abs(b1 - b2) > _TIE:
    return False
  if min(b1, b2) >= 1.0 - _TIE and s1 != s2:
    return s1 < s2
  return kl1 < kl2


def _argbest(bs: np.ndarray, kls: np.ndarray) -> int:
  """The grid point of the best (bound, KL) at one sigma_q (ties: the smaller KL)."""
  j = 0
  for i in range(1, len(bs)):
    if _better((bs[i], kls[i], 0.0), (bs[j], kls[j], 0.0)):
      j = i
  return j


def _lower_bounds(lo: np.ndarray, hi: np.ndarray, e_lo: np.ndarray, grid: np.ndarray, kl_of,
                  score) -> np.ndarray:
  """[I, k] lower bounds of the bound over sigma_q in [lo_i, hi_i] for each grid point.

  Valid when the risk on the interval is >= e_lo_i: the KL at fixed sigma_p is smallest at
  sigma_q = sigma_p (clipped to the interval) and the bound grows with risk and KL.
  """
  s = np.clip(grid[None, :], lo[:, None], hi[:, None])
  return score(e_lo[:, None], kl_of(s, grid[None, :]))


def _feasible(a: float, b: float, s_p: float, e_lo: float, target: float, kl_of,
              score) -> tuple[float, float]:
  """Sub-interval of [a, b] where bound(e_lo, KL(s, s_p)) < target (the KL is unimodal in
  ln s with its minimum at s_p), to 1/64 of the interval's log-width on each side; one
  vectorised bound evaluation."""
  c = min(max(s_p, a), b)
  ends = []
  for far in (a, b):
    xs = np.exp(np.linspace(math.log(c), math.log(far), 65))
    ok = np.asarray(score(e_lo, kl_of(xs, s_p))) < target
    last = len(ok) - 1 if ok.all() else max(int(np.argmin(ok)) - 1, 0)
    ends.append(float(xs[last]))
  return ends[0], ends[1]


def _branch_and_bound(evaluate, cache: dict, best: dict, grid: np.ndarray, kl_of, score,
                      s_min: float, s_max: float, tol: float, max_evals: int) -> None:
  """Splits the interval of ln sigma_q whose lower bound is smallest until no interval can
  beat the best bound by `tol` (or `max_evals` risk evaluations): see `choose_sigma`."""
  done: set[tuple[float, float]] = set()
  while len(cache) < max_evals:
    xs = sorted(cache)
    pts = sorted({s_min, s_max, *xs})
    lo, hi = np.asarray(pts[:-1]), np.asarray(pts[1:])
    # Risk lower bound on [lo, hi]: the smallest risk measured at or above lo (0 below the
    # first measured point); the minimum over points to the right tolerates Monte-Carlo noise.
    env = {x: min(cache[y] for y in xs if y >= x) for x in xs}
    e_lo = np.asarray([env.get(a, 0.0) for a in pts[:-1]])
    lbs = _lower_bounds(lo, hi, e_lo, grid, kl_of, score)
    lbs[[(float(a), float(b)) in done for a, b in zip(lo, hi, strict=True)]] = np.inf
    i, p = np.unravel_index(np.argmin(lbs), lbs.shape)
    if not lbs[i, p] < best["bound"] - tol:
      return
    a, b = float(lo[i]), float(hi[i])
    fa, fb = _feasible(a, b, float(grid[p]), float(e_lo[i]), best["bound"] - tol, kl_of, score)
    split = math.sqrt(fa * fb)
    if not (a < _f32(split) < b) or _f32(split) in cache:
      done.add((a, b))
      continue
    evaluate(split)
