"""The one certificate route: (loss, prior, posterior, data, plan) in, a `Certificate` out.

`pacbayes bound` (`pacbayes.pipeline.run`), the study's cells (`pacbayes.study.cellcert`) and
any later caller go through `certify_posterior`, so the same inputs give the same certificate:
one rule for sigma, one delta plan, one set of extrapolation kinds (those the plan pays for).

Steps (docs/THEORY.md §1.10 and §6):

1. Certifiability before compute (`pacbayes.bounds.feasibility`): from ||w_q - w_p||^2, d, n,
   delta_pb and the grid, the smallest B_train any grid point could reach. When it is at or
   above the plan's threshold (0.99), the sigma search is skipped and sigma_q is the smallest
   grid point (a tie of vacuous bounds never picks the noise that destroys the model).
2. sigma_q: given, or searched on a subset of S with its own key (`posterior.sigma.choose_sigma`).
3. The Monte-Carlo risk on all of S with an independent key (`posterior.montecarlo.mc_risk`),
   and the posterior mean's own risk on S and per slice (measured, not certified).
4. For every prior scale of the grid: the KL and the certificate with every kind the delta
   plan pays for (`certificate.shift.certify_with_shift`, ln k paid); the grid point with the
   smallest full bound is reported (ties toward the smaller KL). All grid points hold at once
   (union bound), so choosing among them after the Monte-Carlo pass is valid.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from pacbayes.bounds.delta import DeltaPlan
from pacbayes.bounds.feasibility import FUTILE, Feasibility, best_possible_bound
from pacbayes.certificate.core import METHODS, Record, ShiftInputs
from pacbayes.certificate.report import Certificate
from pacbayes.certificate.shift import certify_with_shift
from pacbayes.core.memory import release_free_memory
from pacbayes.posterior import draws
from pacbayes.posterior.kl import gaussian_kl, isotropic_kl
from pacbayes.posterior.montecarlo import MonteCarloOptions, mc_risk
from pacbayes.posterior.sigma import (
  DEFAULT_SIGMA_GRID,
  BoundTarget,
  SearchOptions,
  SigmaPlan,
  choose_sigma,
)

__all__ = ["CertifyPlan", "certify_posterior"]


@dataclasses.dataclass(frozen=True)
class CertifyPlan:
  """Everything a certificate is decided by, fixed before the data are seen.

  Attributes:
    sigma: how sigma_q and sigma_p are chosen (`posterior.sigma.SigmaPlan`).
    deltas: the shares of delta (`bounds.delta.DeltaPlan`); they decide the kinds computed.
    mc: the Monte-Carlo scheme and sizes (`MonteCarloOptions`; defaults: one row per draw).
    shift: the extrapolation inputs (`certificate.core.ShiftInputs`).
    method: the PAC-Bayes bound behind g_gen (the search uses Maurer for catoni / flamb).
    search: the sigma search's sizes (`posterior.sigma.SearchOptions`).
    loss_name, loss_options: recorded in the report.
    notes: one-line remarks for the report; extra: JSON details for the report.
    diagonal_sigma: a pytree of posterior sigmas like the posterior (a fitted diagonal
      posterior), instead of an isotropic sigma_q.
    futile: the best possible bound at or above which the search is skipped.
    progress: progress bars and lines on stderr.
  """

  sigma: SigmaPlan
  deltas: DeltaPlan
  mc: MonteCarloOptions = MonteCarloOptions(batch_size=8)
  shift: ShiftInputs = ShiftInputs()
  method: str = "maurer"
  search: SearchOptions = SearchOptions()
  loss_name: str = "custom"
  loss_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  notes: tuple[str, ...] = ()
  extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  diagonal_sigma: Any = None
  futile: float = FUTILE
  progress: bool = False


def say(progress: bool, text: str) -> None:
  """One progress line on stderr, kept in logs (no carriage returns)."""
  if progress:
    print(f"pacbayes bound: {text}", file=sys.stderr, flush=True)


def _check_same_names(names_q: list[str], names_p: list[str], ordered: bool = True) -> None:
  """Refuses a prior whose parameter names differ (in order, unless not `ordered`)."""
  if (names_q != names_p) if ordered else (sorted(names_q) != sorted(names_p)):
    missing = sorted(set(names_q) ^ set(names_p))
    raise ValueError(
        "prior_params and posterior_params have different parameters"
        + (f" (e.g. {missing[0]!r} is in only one)" if missing else " (different order)"))


def _check_same_shape(name: str, a: Any, b: Any) -> None:
  if np.shape(a) != np.shape(b):
    raise ValueError(
        f"parameter {name!r}: posterior shape {np.shape(a)} differs from prior shape "
        f"{np.shape(b)}")


def _check_same_structure(prior: Any, posterior: Any) -> None:
  names_q = draws.leaf_paths(posterior)
  _check_same_names(names_q, draws.leaf_paths(prior))
  for name, a, b in zip(names_q, jax.tree.leaves(posterior), jax.tree.leaves(prior), strict=True):
    _check_same_shape(name, a, b)


def _check_unperturbed_equal(prior: Any, posterior: Any, mask: Any,
                             name_of: Callable[[str], str] | None) -> None:
  """A parameter that moved but is not perturbed makes KL(Q || P) infinite."""
  names = draws.leaf_paths(posterior)
  for name, a, b, m in zip(names, jax.tree.leaves(posterior), jax.tree.leaves(prior),
                           jax.tree.leaves(mask), strict=True):
    if not m:
      _check_leaf_equal(name, a, b, name_of)


def _check_leaf_equal(name: str, a: Any, b: Any, name_of: Callable[[str], str] | None) -> None:
  if not np.array_equal(np.asarray(a), np.asarray(b)):
    shown = name_of(name) if name_of is not None else name
    raise ValueError(
        f"parameter {shown!r} differs between prior and posterior but is excluded from the "
        "perturbation (include/exclude); its KL would be infinite. Perturb it, or keep it "
        "equal in both checkpoints")


def streamed_prior_distance(prior: Any, posterior: Any, mask: Any,
                            name_of: Callable[[str], str] | None = None,
                            progress: bool = False) -> float:
  """The checks and ||w_q - w_p||^2 (`draws.sq_distance`, same terms in the same order) with
  the prior read one leaf at a time from ``prior.leaf(name)`` (a
  `pacbayes.models.checkpoint.ParameterReader`; ``prior.names`` its leaves), so that no whole
  prior sits beside the posterior.

  Raises:
    ValueError: as `certify_posterior` for a loaded prior (different parameters or shapes, a
      moved but excluded parameter).
  """
  names = draws.leaf_paths(posterior)
  _check_same_names(names, list(prior.names), ordered=False)
  total = 0.0
  bar = draws.progress_bar(len(names), "prior: ||w_q - w_p||^2, one tensor at a time", progress,
                           unit="tensor")
  for name, a, m in zip(names, jax.tree.leaves(posterior), jax.tree.leaves(mask), strict=True):
    bar.update(1)
    b = prior.leaf(name)
    _check_same_shape(name, a, b)
    if m:
      total += draws.leaf_sq_distance(a, b)
    else:
      _check_leaf_equal(name, a, b, name_of)
    del b
  bar.close()
  return total


def _masked(tree: Any, mask: Any) -> list[Any]:
  return [x for x, m in zip(jax.tree.leaves(tree), jax.tree.leaves(mask), strict=True) if m]


def _sigma_q(loss_fn, posterior, data, key, plan: CertifyPlan, ctx: dict[str, Any],
             details: dict[str, Any]) -> tuple[float, list[str]]:
  """sigma_q by the one rule: given; or the smallest grid point when the grid is futile; or
  searched. Fills ``details["sigma_search"]``; returns (sigma_q, notes)."""
  grid, feas = plan.sigma.grid, ctx["feasibility"]
  if plan.sigma.sigma_q is not None:
    details["sigma_search"] = {"how": "sigma_q fixed by the caller (no search)"}
    return plan.sigma.sigma_q, []
  if feas is not None and feas.futile:
    s_q = float(min(grid))
    details["sigma_search"] = {
        "how": f"skipped: no grid point can certify (best possible bound "
               f"{feas.best_possible_bound:.4f} >= {plan.futile}); sigma_q = the smallest "
               f"grid point {s_q:.6g}, the posterior closest to the fine-tune"}
    return s_q, []
  n = ctx["n"]
  say(plan.progress, f"choosing sigma on {min(plan.search.subset_size or n, n)} of {n} rows "
                     f"(at most {plan.search.max_evals} evaluations) ...")
  method = plan.method if plan.method in ("maurer", "mcallester", "fquad") else "maurer"
  target = BoundTarget(sigma_grid=tuple(grid), sq_distance=ctx["sq_dist"],
                       num_params=ctx["num_params"], delta_mc=plan.deltas["mc"],
                       delta_pb=plan.deltas["pb"], n=n, num_mc=ctx["num_mc"], method=method)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    choice = choose_sigma(loss_fn, posterior, data, key=key, target=target, search=plan.search,
                          mc=ctx["mc"], mask=ctx["mask"], mesh=ctx["mesh"],
                          progress=plan.progress)
  notes = []
  for i, w in enumerate(caught):
    if choice.at_grid_edge and i == len(caught) - 1:
      continue  # the grid-edge warning is left to the final choice of sigma_p
    notes.append(f"warning: {w.message}")
    say(plan.progress, f"warning: {w.message}")
  details["sigma_search"] = {
      "how": choice.how, "grid_position": choice.grid_position,
      "at_grid_edge": choice.at_grid_edge, "subset": choice.subset_size,
      "search_sigma_p": choice.sigma_p, "search_bound": choice.bound,
      "evaluations": len(choice.trace), "forward_rows": choice.forward_rows}
  say(plan.progress, f"sigma_q = {choice.sigma_q:.6g} (searched; {choice.grid_position} of "
                     "the grid)")
  return choice.sigma_q, notes


def _by_slice(rows: np.ndarray | None, difficulty: Any) -> dict[str, float]:
  """The mean of per-row losses by difficulty value (keys as strings, sorted)."""
  if rows is None or difficulty is None:
    return {}
  d = np.asarray(difficulty, np.float64).reshape(-1)
  return {f"{v:g}": float(rows[d == v].mean()) for v in np.unique(d)}


def certify_posterior(loss_fn: draws.LossFn, prior: Any, posterior: Any,
                      data: Mapping[str, Any], plan: CertifyPlan, *, key: jax.Array,
                      mask: Any = None, name_of: Callable[[str], str] | None = None,
                      mesh: Any = None) -> Certificate:
  """The two-gap certificate (docs/THEORY.md §1) of Q = N(posterior, sigma_q^2 I) against
  P = N(prior, sigma_p^2 I) on the leaves selected by ``mask``; see the module docstring.

  The prior mean is needed only for the checks, ||w_q - w_p||^2 and (diagonal posterior) the
  KL of every grid point, all computed before the sigma search and the Monte-Carlo pass;
  given as a function that loads it, it is loaded then and released before them, so no
  prior copy sits beside the posterior while the Monte Carlo runs (`pacbayes bound`).

  Args:
    loss_fn: `(params, batch) -> [B]` losses in [0, 1].
    prior: prior mean (e.g. the base model's `nnx.Param` state), or a function of no
      arguments that returns it (called once), or a reader of its leaves one at a time
      (``prior.names``, ``prior.leaf(name)``: `pacbayes.models.checkpoint.ParameterReader`;
      isotropic posteriors only), streamed through the checks and ||w_q - w_p||^2.
    posterior: posterior mean, same structure.
    data: the training set S: a mapping of arrays with n rows.
    plan: the `CertifyPlan`.
    key: PRNG key (the search and the Monte Carlo use independent subkeys).
    mask: bool pytree of perturbed leaves (default every floating leaf).
    name_of: maps a leaf path to the name shown in messages (e.g. its HF name).
    mesh: optional ('data', 'fsdp') mesh; numbers are the same with or without it.

  Returns:
    A `Certificate`; its extra holds the sigma choice, the per-grid bounds, the
    certifiability check and the posterior mean's own risk on S (and per slice).

  Raises:
    ValueError: mismatched prior/posterior, a moved but excluded parameter, a bad plan, empty
      data, a loss outside [0, 1], and so on.
  """
  start = time.perf_counter()
  if plan.method not in METHODS:
    raise ValueError(f"method: expected one of {METHODS}, got {plan.method!r}")
  shift = plan.shift
  if shift.difficulty is not None and shift.mixture is None:
    raise ValueError("difficulty: per-slice bounds need a mixture (MixtureBounds)")
  arrays, n = draws.check_data(data)
  prior = prior() if callable(prior) else prior
  mask = draws.perturbation_mask(posterior) if mask is None else mask
  mc = plan.mc.with_defaults()
  diagonal = plan.diagonal_sigma is not None
  grid = plan.sigma.grid
  if hasattr(prior, "leaf") and hasattr(prior, "names"):  # streamed, one leaf at a time
    if diagonal:
      raise ValueError("diagonal_sigma: a diagonal posterior's KL needs the prior loaded, "
                       "not streamed")
    sq_dist = streamed_prior_distance(prior, posterior, mask, name_of, plan.progress)
    release_free_memory()
  else:
    _check_same_structure(prior, posterior)
    _check_unperturbed_equal(prior, posterior, mask, name_of)
    sq_dist = draws.sq_distance(posterior, prior, mask)
  num_params = draws.count_perturbed(posterior, mask)
  # A diagonal posterior's KL needs the prior mean: computed now, for every grid point; the
  # isotropic KL needs only sq_dist. The prior is not used after this.
  diagonal_kls = [float(gaussian_kl(_masked(posterior, mask), _masked(prior, mask),
                                    _masked(plan.diagonal_sigma, mask), sp))
                  for sp in grid] if diagonal else None
  del prior
  feas: Feasibility | None = None
  if not diagonal:
    feas = best_possible_bound(sq_dist, num_params, n, plan.deltas["pb"], grid,
                               threshold=plan.futile)
    # The futile line is printed even without progress output: it explains the report.
    say(plan.progress or feas.futile,
        ("NOT CERTIFIABLE on this grid: " if feas.futile else "certifiability: ")
        + feas.reason() + ("; skipping the sigma search" if feas.futile else ""))
  key_search, key_mc = jax.random.split(key)
  details: dict[str, Any] = {"mc_scheme": mc.scheme, "sigma_choice": plan.sigma.describe(),
                             "sq_distance": sq_dist}
  notes = list(plan.notes)
  if plan.sigma.grid_source == "default":
    notes.append(f"prior sigma grid: the DEFAULT grid {DEFAULT_SIGMA_GRID[0]:g} .. "
                 f"{DEFAULT_SIGMA_GRID[-1]:g} ({len(DEFAULT_SIGMA_GRID)} points, ln "
                 f"{len(DEFAULT_SIGMA_GRID)} paid); give --sigma-grid or --sigma-prior to fix "
                 "your own")
  if feas is not None:
    details["feasibility"] = feas.to_dict()
    if feas.futile:
      notes.append("NOT CERTIFIABLE on this grid: " + feas.reason())
  if diagonal:
    s_q = plan.diagonal_sigma
    details["sigma_q"] = "diagonal"
  else:
    ctx = {"n": n, "sq_dist": sq_dist, "num_params": num_params, "mc": mc, "mask": mask,
           "mesh": mesh, "num_mc": mc.num_samples(n), "feasibility": feas}
    s_q, search_notes = _sigma_q(loss_fn, posterior, arrays, key_search, plan, ctx, details)
    notes += search_notes
  say(plan.progress, f"Monte-Carlo risk on all {n} rows, then the posterior mean's own risk "
                     "(no noise) ...")
  risk = mc_risk(loss_fn, posterior, arrays, key=key_mc, sigma=s_q, options=mc, mask=mask,
                 mesh=mesh, unperturbed=True, progress=plan.progress)
  details.update(chunk_size=risk.chunk_size, num_fillers=risk.num_fillers,
                 draws_per_step=risk.draws_per_step, mc_noise=risk.noise,
                 unperturbed_risk=risk.unperturbed,
                 unperturbed_by_slice=_by_slice(risk.unperturbed_rows, shift.difficulty),
                 mc_seconds=round(risk.seconds, 3))
  if shift.difficulty is not None:
    details["mc_by_slice"] = _by_slice(risk.slot_losses.reshape(-1)[:n], shift.difficulty) \
        if risk.scheme == "chunk" else _by_slice(risk.slot_losses.mean(axis=0), shift.difficulty)
  per_grid, best = [], None
  extra = {**details, "sigma_grid": list(grid), "sigma_grid_source": plan.sigma.grid_source,
           **dict(plan.extra)}
  for j, sp in enumerate(grid):
    kl = (diagonal_kls[j] if diagonal
          else float(isotropic_kl(sq_dist, num_params, s_q, sp)))
    record = Record(sigma_q=None if diagonal else s_q, sigma_p=sp, num_params=num_params,
                    loss=plan.loss_name, loss_options=plan.loss_options, extra=extra,
                    notes=tuple(notes),
                    best_possible_bound=None if feas is None else feas.best_possible_bound)
    cert = certify_with_shift(risk.mean, risk.num_samples, kl, n, deltas=plan.deltas,
                              shift=shift, slots=(risk.slot_losses, risk.slot_rows),
                              grid_size=len(grid), method=plan.method, record=record)
    per_grid.append({"sigma_p": sp, "kl": kl, "b_train": cert.b_train, "bound": cert.bound})
    if best is None or cert.bound < best.bound or (cert.bound == best.bound and
                                                    cert.kl < best.kl):
      best = cert
  return _finish(best, per_grid, grid, details, plan, start)


def _finish(best: Certificate, per_grid: list, grid, details, plan: CertifyPlan,
            start: float) -> Certificate:
  j = [g["sigma_p"] for g in per_grid].index(best.sigma_p)
  position = "single" if len(grid) == 1 else (
      "lowest" if best.sigma_p == min(grid) else
      "highest" if best.sigma_p == max(grid) else "inside")
  how = details.get("sigma_search", {}).get("how") or "sigma_q given (diagonal posterior)"
  lines = [f"sigma: {how}; final choice sigma_p = {best.sigma_p:.6g}, the {position} point "
           f"of the {len(grid)}-point grid (smallest full bound, ties to the smaller KL)"]
  if position in ("lowest", "highest") and best.b_train < 1.0:
    lines.append(f"warning: sigma_p = {best.sigma_p:.6g} is the {position} point of the prior "
                 "grid; a grid reaching further (fixed before seeing the data) may give a "
                 "smaller bound")
    say(plan.progress, lines[-1])
  best = dataclasses.replace(best, notes=(*best.notes, *lines))
  return dataclasses.replace(best, extra={
      **best.extra, "per_grid": per_grid, "grid_index": j, "grid_position": position,
      "seconds": round(time.perf_counter() - start, 3)})
