"""The PAC-Bayes sharpness measure of G_gen (Jiang et al. 2020): a measure, not a certificate.

The largest isotropic sigma at which the Monte-Carlo training risk under ``w + N(0, sigma^2 I)``
rises by at most a stated amount over the unperturbed risk, found by bisection on
``log sigma`` with a fixed number of draws and the same noise at every sigma (common random
numbers); then the KL at that sigma with the prior ``N(w_pre, sigma^2 I)``,
``KL = ||w - w_pre||^2 / (2 sigma^2)``, and ``sqrt(KL / (2 n))``, the size of a McAllester-type
generalization term at that KL. Nothing here holds with a stated probability: the numbers are
reported as "measure (uncertified)", for plotting G_gen across difficulty (docs/THEORY.md §7.1).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

import jax

from pacbayes.posterior.draws import LossFn, check_data, count_perturbed, sq_distance
from pacbayes.posterior.montecarlo import MonteCarloOptions, empirical_risk, mc_risk

__all__ = ["KIND_MEASURE", "SharpnessMeasure", "SharpnessOptions", "sharpness_measure"]

KIND_MEASURE = "measure (uncertified)"


@dataclasses.dataclass(frozen=True)
class SharpnessOptions:
  """Settings of the sharpness search.

  Attributes:
    max_rise: allowed rise of the training risk over the unperturbed risk (Jiang et al.
      use 0.1 on the 0/1 error).
    sigma_low, sigma_high: the search range of sigma (> 0, low < high).
    num_steps: bisection steps on log sigma after the two ends (resolution
      ``ln(high/low) / 2^num_steps`` in log sigma).
    monte_carlo: how each risk is estimated (default 8 full passes); the same key at every
      sigma, so every sigma sees the same standard-normal noise, scaled.
  """

  max_rise: float = 0.1
  sigma_low: float = 1e-5
  sigma_high: float = 1.0
  num_steps: int = 12
  monte_carlo: MonteCarloOptions = dataclasses.field(
      default_factory=lambda: MonteCarloOptions(scheme="passes", num_draws=8))

  def __post_init__(self):
    if not (isinstance(self.max_rise, (int, float)) and 0.0 < self.max_rise < 1.0):
      raise ValueError(f"max_rise: expected a number in (0, 1), got {self.max_rise!r}")
    for name in ("sigma_low", "sigma_high"):
      v = getattr(self, name)
      if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
        raise ValueError(f"{name}: expected a finite number > 0, got {v!r}")
    if not self.sigma_low < self.sigma_high:
      raise ValueError(f"sigma_low {self.sigma_low!r} must be below sigma_high "
                       f"{self.sigma_high!r}")
    if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or \
       self.num_steps < 0:
      raise ValueError(f"num_steps: expected an integer >= 0, got {self.num_steps!r}")
    if not isinstance(self.monte_carlo, MonteCarloOptions):
      raise ValueError("monte_carlo: expected a MonteCarloOptions")


@dataclasses.dataclass(frozen=True)
class SharpnessMeasure:
  """The PAC-Bayes sharpness measure of one fine-tune (uncertified).

  Attributes:
    sigma: the largest sigma found with ``risk - base_risk <= max_rise`` (the lower end of
      the final bracket).
    risk_at_sigma: Monte-Carlo training risk at ``sigma``.
    base_risk: unperturbed training risk R_S(w).
    max_rise: the allowed rise.
    sq_distance: ``||w - w_pre||^2`` over the perturbed parameters.
    num_params: perturbed parameters.
    kl: ``sq_distance / (2 sigma^2)`` nats (prior N(w_pre, sigma^2 I), same sigma).
    n: training-set size used in ``value``.
    value: ``sqrt(kl / (2 n))``: the G_gen measure.
    bracketed: the search found a sigma where the rise exceeds ``max_rise`` (False: the
      answer is an end of the range, see ``at``).
    at: "inside", "sigma_high" (the risk never rose enough: sigma is at least this) or
      "sigma_low" (it rose too much already there: sigma is at most this).
    num_draws: posterior draws per risk evaluation.
    rows: rows of data each evaluation scored.
    trace: (sigma, risk) of every evaluation, in order.
    kind: `KIND_MEASURE`.
  """

  sigma: float
  risk_at_sigma: float
  base_risk: float
  max_rise: float
  sq_distance: float
  num_params: int
  kl: float
  n: int
  value: float
  bracketed: bool
  at: str
  num_draws: int
  rows: int
  trace: tuple[tuple[float, float], ...]
  kind: str = KIND_MEASURE

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready dict, with the measure's name and source."""
    out = dataclasses.asdict(self)
    out["trace"] = [list(t) for t in self.trace]
    out["name"] = "g_gen_sharpness"
    out["formula"] = ("sqrt(KL / (2 n)), KL = ||w - w_pre||^2 / (2 sigma^2) at the largest "
                      "sigma with MC training risk <= unperturbed + max_rise")
    out["reference"] = ("Jiang et al., 'Fantastic generalization measures and where to find "
                        "them', ICLR 2020 (PAC-Bayes sharpness)")
    return out

  def to_json(self, *, indent: int = 2) -> str:
    return json.dumps(self.to_dict(), indent=indent, allow_nan=False) + "\n"


def sharpness_measure(
    loss_fn: LossFn,
    params: Any,
    prior_params: Any,
    data: Mapping[str, Any],
    *,
    key: jax.Array,
    options: SharpnessOptions | None = None,
    mask: Any = None,
    n: int | None = None,
    progress: bool = False,
    sq_dist: float | None = None,
) -> SharpnessMeasure:
  """The PAC-Bayes sharpness measure: sigma*, KL at sigma* and ``sqrt(KL / (2 n))``.

  Steps: ``r0 = R_S(w)`` (no noise); ``r(sigma)`` = `mc_risk` under ``w + N(0, sigma^2 I)``
  on the masked leaves with the fixed options and the same ``key`` at every sigma; the two
  ends of the range first, then ``num_steps`` bisection steps on ``log sigma`` keeping
  ``r(lo) - r0 <= max_rise < r(hi) - r0``; ``sigma* = lo``. If the risk is not monotone in
  sigma this finds one crossing, not necessarily the first. Then ``KL = ||w - w_pre||^2 /
  (2 sigma*^2)`` (the isotropic Gaussian KL with equal sigmas, `pacbayes.posterior.kl.
  isotropic_kl` with ``sigma_q = sigma_p``) and ``value = sqrt(KL / (2 n))``.

  Args:
    loss_fn: ``(params, batch) -> [B]`` losses in [0, 1].
    params: the fine-tuned weights w (pytree).
    prior_params: the pretrained weights w_pre (same structure); may be None with `sq_dist`.
    data: training rows (a mapping of arrays; may be a subset of S).
    key: PRNG key of the draws (reused at every sigma).
    options: `SharpnessOptions` (default ``SharpnessOptions()``).
    mask: perturbed leaves (`pacbayes.posterior.draws.perturbation_mask`; default all
      floating leaves).
    n: training-set size for ``sqrt(KL / (2 n))`` (default: the rows of ``data``).
    progress: progress bars of the risk evaluations.
    sq_dist: ``||w - w_pre||^2`` on the masked leaves when already known (e.g. the
      certificate's ``extra["sq_distance"]``); then `prior_params` is not read.

  Returns:
    A `SharpnessMeasure` (uncertified).

  Raises:
    ValueError: bad options, data, structures or losses.

  References:
    Jiang, Neyshabur, Mobahi, Krishnan, Bengio, "Fantastic generalization measures and where
    to find them", ICLR 2020 (the "PAC-Bayes sharpness" measure; sigma by binary search with
    a 0.1 deviation); McAllester, "PAC-Bayesian model averaging", COLT 1999 (the sqrt(KL/2n)
    form).
  """
  opts = SharpnessOptions() if options is None else options
  if not isinstance(opts, SharpnessOptions):
    raise ValueError("options: expected a SharpnessOptions")
  _, rows = check_data(data)
  n = rows if n is None else int(n)
  if n < 1:
    raise ValueError(f"n: expected an integer >= 1, got {n!r}")
  sq = sq_distance(params, prior_params, mask) if sq_dist is None else float(sq_dist)
  num_params = count_perturbed(params, mask)
  mc = opts.monte_carlo
  base = empirical_risk(loss_fn, params, data, batch_size=mc.batch_size, progress=progress)
  trace: list[tuple[float, float]] = []
  num_draws = [0]

  def risk(sigma: float) -> float:
    out = mc_risk(loss_fn, params, data, key=key, sigma=sigma, options=mc, mask=mask,
                  progress=progress and f"sharpness: risk at sigma {sigma:.3g}")
    trace.append((sigma, out.mean))
    num_draws[0] = out.num_samples
    return out.mean

  lo, hi = float(opts.sigma_low), float(opts.sigma_high)
  r_lo, r_hi = risk(lo), risk(hi)
  if r_hi - base <= opts.max_rise:
    sigma, r_sigma, at = hi, r_hi, "sigma_high"
  elif r_lo - base > opts.max_rise:
    sigma, r_sigma, at = lo, r_lo, "sigma_low"
  else:
    for _ in range(opts.num_steps):
      mid = math.exp(0.5 * (math.log(lo) + math.log(hi)))
      r_mid = risk(mid)
      if r_mid - base <= opts.max_rise:
        lo, r_lo = mid, r_mid
      else:
        hi = mid
    sigma, r_sigma, at = lo, r_lo, "inside"
  kl = sq / (2.0 * sigma * sigma)
  return SharpnessMeasure(
      sigma=sigma, risk_at_sigma=float(r_sigma), base_risk=float(base),
      max_rise=float(opts.max_rise), sq_distance=float(sq), num_params=num_params, kl=kl, n=n,
      value=math.sqrt(kl / (2.0 * n)), bracketed=at == "inside", at=at, num_draws=num_draws[0],
      rows=rows, trace=tuple(trace))
