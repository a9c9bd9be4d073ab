"""Which bucket to train on at a budget N: bootstrap predictions from pilot runs.

Every candidate bucket k has pilot runs at a few sizes n_p (rows) with several seeds; each
run has a risk on the target (the mean of per-item losses in [0, 1] under item weights, e.g.
the greedy answer error on a test mixture). `select_bucket` fits each bucket's risk against n
(`pacbayes.select.fit`), predicts the risk at N and its interval by a bootstrap that
resamples, jointly for every bucket, the test items (stratified by slice, the same items for
all buckets: the buckets are compared on one test set) and, per pilot cell, the fine-tuning
seeds (independent trainings), refitting each replicate. P(bucket k is best) is the fraction
of replicates in which k has the lowest predicted risk at N.

The seed resampling is rescaled: with S seeds the plain bootstrap variance of a mean is
(S - 1)/S of the unbiased s^2/S, half of it at S = 2, which would make P(best) overconfident;
each replicate's deviation from the sample mean is multiplied by sqrt(S / (S - 1))
(Davison & Hinkley 1997, "Bootstrap Methods and their Application", §3.3, rescaled
residuals). With one seed per cell the interval covers item noise only.

Refusals. The prediction is marked "unconstrained" (no recommendation) when the pilots do
not constrain it: a bucket with fewer than 2 distinct pilot sizes; N more than
`max_extrapolation` (64) times the largest pilot (a power law fitted over a factor of
a few in n says little 6 doublings further out); or a bucket whose interval is wider than
`max_interval_width` (0.25 in risk, a quarter of the scale: wider intervals cannot rank
buckets whose risks differ by a few points). A budget not above the largest pilot is not a
selection question and raises ValueError.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from pacbayes.select.fit import FAMILIES, FREE_PARAMETERS, CurveFit, auto_family, fit_curves

STATUS_OK = "ok"
STATUS_UNCONSTRAINED = "unconstrained"


@dataclasses.dataclass(frozen=True)
class Pilots:
  """Pilot outcomes of K buckets at P sizes with up to S seeds and I test items.

  Attributes:
    buckets: [K] bucket names (in the order shown, e.g. easy -> hard).
    sizes: [P] distinct pilot sizes n in rows, ascending (the union over buckets).
    loss_KxPxSxI: per-item loss in [0, 1] of each run (NaN rows where a bucket has no run at
      that size or fewer seeds); with I = 1 and weight 1 it is simply the run's risk.
    item_weights_I: [I] non-negative weights summing to 1 (target mixture / slice size).
    item_strata_I: [I] stratum (test slice) of each item; items resample within strata.
    seeds: [S] seed labels (for reports only).
  """

  buckets: tuple[str, ...]
  sizes: tuple[int, ...]
  loss_KxPxSxI: np.ndarray
  item_weights_I: np.ndarray
  item_strata_I: np.ndarray
  seeds: tuple[int, ...] = ()

  def __post_init__(self):
    loss = np.asarray(self.loss_KxPxSxI, dtype=np.float64)
    k, p = len(self.buckets), len(self.sizes)
    if loss.ndim != 4 or loss.shape[:2] != (k, p):
      raise ValueError(f"Pilots: loss shape {loss.shape}, expected ({k}, {p}, S, I)")
    if list(self.sizes) != sorted(set(self.sizes)) or (self.sizes and self.sizes[0] < 1):
      raise ValueError(f"Pilots: sizes {list(self.sizes)} must be distinct, >= 1, ascending")
    if len(set(self.buckets)) != k:
      raise ValueError(f"Pilots: bucket names repeat: {list(self.buckets)}")
    w = np.asarray(self.item_weights_I, dtype=np.float64)
    if w.shape != (loss.shape[3],) or np.any(w < 0) or not math.isclose(w.sum(), 1.0,
                                                                           abs_tol=1e-9):
      raise ValueError(f"Pilots: item weights must be [{loss.shape[3]}] >= 0 summing to 1")
    if np.shape(self.item_strata_I) != w.shape:
      raise ValueError("Pilots: item_strata_I must have one stratum per item")
    finite = loss[np.isfinite(loss)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
      raise ValueError("Pilots: losses must lie in [0, 1]")
    run = np.isfinite(loss).all(axis=3)
    if not np.array_equal(run, np.isfinite(loss).any(axis=3)):
      raise ValueError("Pilots: a run has losses for some items only")
    object.__setattr__(self, "loss_KxPxSxI", loss)
    object.__setattr__(self, "item_weights_I", w)
    object.__setattr__(self, "item_strata_I", np.asarray(self.item_strata_I, dtype=np.int64))

  @classmethod
  def from_risks(cls, buckets, sizes, risk_KxPxS, seeds=()) -> Pilots:
    """Pilots known only by each run's risk (no per-item outcomes: seeds resample only)."""
    risk = np.asarray(risk_KxPxS, dtype=np.float64)
    return cls(tuple(buckets), tuple(int(n) for n in sizes), risk[..., None], np.ones(1),
               np.zeros(1, dtype=np.int64), tuple(seeds))

  @property
  def seed_counts_KxP(self) -> np.ndarray:
    """[K, P] number of runs (seeds) of each bucket at each size (0: no pilot there)."""
    return np.isfinite(self.loss_KxPxSxI[..., 0]).sum(axis=2)

  def risk_KxPxS(self) -> np.ndarray:
    """[K, P, S] risk of each run (NaN where there is none)."""
    return np.nan_to_num(self.loss_KxPxSxI, nan=0.0) @ self.item_weights_I + np.where(
        np.isfinite(self.loss_KxPxSxI[..., 0]), 0.0, np.nan)


@dataclasses.dataclass(frozen=True)
class SelectOptions:
  """Settings of `select_bucket`.

  Attributes:
    family: "auto" (the largest family the distinct pilot sizes identify, see
      `pacbayes.select.fit`) or one of FAMILIES.
    bootstrap: bootstrap replicates B.
    level: two-sided level of the percentile intervals.
    max_extrapolation: largest budget / largest pilot ratio predicted.
    max_interval_width: widest interval (risk units) that still counts as constrained.
    rescale_seeds: multiply seed-resampling deviations by sqrt(S / (S - 1)).
    seed: seed of the bootstrap's random numbers.
  """

  family: str = "auto"
  bootstrap: int = 1000
  level: float = 0.95
  max_extrapolation: float = 64.0
  max_interval_width: float = 0.25
  rescale_seeds: bool = True
  seed: int = 0

  def __post_init__(self):
    if self.family != "auto" and self.family not in FAMILIES:
      raise ValueError(f"family must be 'auto' or one of {FAMILIES}, got {self.family!r}")
    if not 10 <= self.bootstrap <= 10**6:
      raise ValueError(f"bootstrap must lie in [10, 1e6], got {self.bootstrap}")
    if not 0 < self.level < 1:
      raise ValueError(f"level must lie in (0, 1), got {self.level}")
    if not self.max_extrapolation > 1 or not self.max_interval_width > 0:
      raise ValueError("max_extrapolation must exceed 1 and max_interval_width be > 0")


DEFAULT_OPTIONS = SelectOptions()


def resample_means(pilots: Pilots, replicates: int, rng: np.random.Generator, *,
                   rescale_seeds: bool = True) -> np.ndarray:
  """[B, K, P] bootstrap replicates of each cell's mean risk (NaN where a cell has no run).

  Items: one stratified resample per replicate, shared by every cell (multinomial counts
  within each stratum, turned into item weights). Seeds: resampled with replacement per cell
  (independent trainings), deviations rescaled by sqrt(S / (S - 1)) when `rescale_seeds`.
  """
  loss = np.nan_to_num(pilots.loss_KxPxSxI, nan=0.0)
  k, p, s, n_items = loss.shape
  w_I = pilots.item_weights_I
  strata = pilots.item_strata_I
  counts_IxB = np.zeros((n_items, replicates))
  for stratum in np.unique(strata):
    idx = np.flatnonzero(strata == stratum)
    counts_IxB[idx] = rng.multinomial(idx.size, np.full(idx.size, 1.0 / idx.size),
                                      size=replicates).T
  risk_KxPxSxB = loss @ (w_I[:, None] * counts_IxB)
  have_KxP = pilots.seed_counts_KxP
  # Runs sit at seed positions 0..S-1; compact each cell's runs to the front.
  present_KxPxS = np.isfinite(pilots.loss_KxPxSxI[..., 0])
  order_KxPxS = np.argsort(~present_KxPxS, axis=2, kind="stable")
  risk_KxPxSxB = np.take_along_axis(risk_KxPxSxB, order_KxPxS[..., None], axis=2)
  u_BxKxPxS = rng.random((replicates, k, p, s))
  pick_BxKxPxS = np.floor(u_BxKxPxS * np.maximum(have_KxP, 1)[None, :, :, None]).astype(np.int64)
  risk_BxKxPxS = np.moveaxis(risk_KxPxSxB, 3, 0)
  drawn = np.take_along_axis(risk_BxKxPxS, pick_BxKxPxS, axis=3)
  used_KxPxS = np.arange(s)[None, None, :] < have_KxP[:, :, None]
  denom_KxP = np.maximum(have_KxP, 1)
  boot_BxKxP = (drawn * used_KxPxS).sum(axis=3) / denom_KxP
  mean_BxKxP = (risk_BxKxPxS * used_KxPxS).sum(axis=3) / denom_KxP
  if rescale_seeds:
    c_KxP = np.sqrt(np.where(have_KxP > 1, have_KxP / np.maximum(have_KxP - 1, 1), 0.0))
    boot_BxKxP = mean_BxKxP + c_KxP * (boot_BxKxP - mean_BxKxP)
  return np.where(have_KxP > 0, boot_BxKxP, np.nan)


def bucket_family(options: SelectOptions, distinct: int) -> str | None:
  """The family fitted to a bucket with `distinct` pilot sizes (None: cannot be fitted)."""
  if distinct < 2:
    return None
  if options.family == "auto":
    return auto_family(distinct)
  return options.family if distinct >= FREE_PARAMETERS[options.family] else None


def fit_bucket(sizes_P, means_BxP, counts_P, family: str) -> CurveFit:
  """`fit_curves` on the sizes where the bucket has runs (weights: its seed counts)."""
  keep = np.asarray(counts_P) > 0
  return fit_curves(np.asarray(sizes_P)[keep], np.asarray(means_BxP)[:, keep],
                    np.asarray(counts_P, dtype=np.float64)[keep], family)


def check_budget(pilots: Pilots, budget: int) -> None:
  """Raises ValueError unless `budget` lies above every pilot size."""
  if pilots.sizes and budget <= max(pilots.sizes):
    raise ValueError(f"budget {budget} is not above the largest pilot n={max(pilots.sizes)}: "
                     "a selection predicts beyond the pilots")


def select_bucket(pilots: Pilots, budget: int, options: SelectOptions = DEFAULT_OPTIONS
                  ) -> dict[str, Any]:
  """Predicts every bucket's risk at `budget` rows and the probability that each is best.

  Args:
    pilots: the pilot runs.
    budget: N, the number of training rows of the final run (> every pilot size).
    options: fit family, bootstrap size, level and refusal limits.

  Returns:
    A JSON-ready dict: "status" ("ok" or "unconstrained"), "reason" (why unconstrained, else
    None), "budget", "recommendation" (the bucket with the lowest point prediction; None
    when unconstrained), "options", and "buckets": per bucket its "family", "params" (the fit
    to the pilot means), "prediction" (risk at N), "interval" [lo, hi], "p_best", "status",
    and "pilots" (per size: n, seeds, mean risk, its bootstrap interval, per-seed risks).

  Raises:
    ValueError: fewer than two buckets, or a budget not above the largest pilot.
  """
  if len(pilots.buckets) < 2:
    raise ValueError(f"selection needs at least two buckets, got {list(pilots.buckets)}")
  check_budget(pilots, budget)
  rng = np.random.default_rng(options.seed)
  counts_KxP = pilots.seed_counts_KxP
  risk_KxPxS = pilots.risk_KxPxS()
  mean_KxP = np.where(counts_KxP > 0, np.nansum(risk_KxPxS, axis=2) / np.maximum(counts_KxP, 1),
                      np.nan)
  boot_BxKxP = resample_means(pilots, options.bootstrap, rng, rescale_seeds=options.rescale_seeds)
  alpha = (1 - options.level) / 2
  sizes = np.asarray(pilots.sizes, dtype=np.float64)
  reasons, rows = [], []
  preds_KxB = np.full((len(pilots.buckets), options.bootstrap), np.nan)
  largest = max(pilots.sizes)
  if budget > options.max_extrapolation * largest:
    reasons.append(f"budget {budget} is more than {options.max_extrapolation:g}x the largest "
                   f"pilot n={largest}")
  need = 2 if options.family == "auto" else FREE_PARAMETERS[options.family]
  too_few = []
  for k, name in enumerate(pilots.buckets):
    distinct = int((counts_KxP[k] > 0).sum())
    family = bucket_family(options, distinct)
    row: dict[str, Any] = {"bucket": name, "family": family, "status": STATUS_OK,
                           "pilots": _pilot_rows(pilots, k, mean_KxP, boot_BxKxP, risk_KxPxS,
                                                 alpha)}
    if family is None:
      row.update(status=STATUS_UNCONSTRAINED, params=None, prediction=None, interval=None)
      too_few.append(f"{name} ({distinct})")
      rows.append(row)
      continue
    point = fit_bucket(sizes, mean_KxP[k][None], counts_KxP[k], family)
    boot = fit_bucket(sizes, boot_BxKxP[:, k], counts_KxP[k], family)
    preds_KxB[k] = boot.risk(float(budget))
    lo, hi = np.quantile(preds_KxB[k], [alpha, 1 - alpha])
    row.update(params=point.params(0), prediction=float(point.risk(float(budget))[0]),
               interval=[float(lo), float(hi)])
    if hi - lo > options.max_interval_width:
      row["status"] = STATUS_UNCONSTRAINED
      reasons.append(f"bucket {name!r}: the {options.level:.0%} interval at N={budget} is "
                     f"{hi - lo:.3f} wide (limit {options.max_interval_width:g})")
    rows.append(row)
  if too_few:
    family = options.family if options.family != "auto" else "any curve"
    reasons.insert(0, f"too few distinct pilot sizes for {family} (needs {need}): "
                   f"{', '.join(too_few)}")
  fitted = np.isfinite(preds_KxB).all(axis=1)
  p_best = np.zeros(len(pilots.buckets))
  if fitted.any():
    masked = np.where(fitted[:, None], preds_KxB, np.inf)
    p_best = np.bincount(np.argmin(masked, axis=0), minlength=len(pilots.buckets)) / (
        options.bootstrap)
  for k, row in enumerate(rows):
    row["p_best"] = float(p_best[k]) if fitted.all() else None
  status = STATUS_UNCONSTRAINED if reasons else STATUS_OK
  recommendation = None
  if not reasons:
    recommendation = min(rows, key=lambda r: r["prediction"])["bucket"]
  return {"status": status, "reason": "; ".join(reasons) or None, "budget": int(budget),
          "recommendation": recommendation, "options": dataclasses.asdict(options),
          "buckets": rows}


def _pilot_rows(pilots: Pilots, k: int, mean_KxP, boot_BxKxP, risk_KxPxS, alpha: float):
  rows = []
  for p, n in enumerate(pilots.sizes):
    if not np.isfinite(mean_KxP[k, p]):
      continue
    lo, hi = np.quantile(boot_BxKxP[:, k, p], [alpha, 1 - alpha])
    per_seed = risk_KxPxS[k, p]
    rows.append({"n": int(n), "seeds": int(np.isfinite(per_seed).sum()),
                 "mean": float(mean_KxP[k, p]), "interval": [float(lo), float(hi)],
                 "per_seed": [float(v) for v in per_seed[np.isfinite(per_seed)]]})
  return rows
