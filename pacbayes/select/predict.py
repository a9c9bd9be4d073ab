"""Which bucket to train on at a budget N: bootstrap predictions from pilot runs.

Every candidate bucket k has pilot runs at a few sizes n_p (rows) with several seeds; each
run has a risk on the target (the mean of per-item losses in [0, 1] under item weights, e.g.
the greedy answer error on a test mixture). `select_bucket` fits each bucket's risk against n
(`pacbayes.select.fit`), predicts the risk at N and its interval by a bootstrap that
resamples, jointly for every bucket, the test items (stratified by slice, the same items for
all buckets: the buckets are compared on one test set) and, per pilot cell, the fine-tuning
seeds (independent trainings), refitting each replicate. P(bucket k is best) is the fraction
of replicates in which k has the lowest predicted risk at N (a replicate where several
buckets tie counts 1/m for each of the m tied).

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

Verdict. A constrained selection is "clear" when the bucket with the lowest predicted risk
is best in at least `min_p_best` (0.9) of the replicates: a calibrated P(best) (tests/
test_select.py) then calls the wrong bucket at most one time in ten. Below that the verdict
is "indistinguishable": the buckets cannot be told apart at this pilot budget, and there is
no recommendation, only the lowest prediction (`lowest_predicted`), every P(best) and the
contenders (the buckets best in at least 1 - `level` of the replicates).

Nothing in the output is certified (docs/THEORY.md §9): the predictions, intervals and
P(best) are forecasts conditional on the curve family, the pilots' numbers are measured.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from pacbayes.select.fit import FAMILIES, FREE_PARAMETERS, CurveFit, auto_family, fit_curves

STATUS_OK = "ok"
STATUS_UNCONSTRAINED = "unconstrained"
VERDICT_CLEAR = "clear"
VERDICT_INDISTINGUISHABLE = "indistinguishable"
_BOOT_CHUNK = 2048  # replicates drawn at once: bounds memory to I x 2048 item counts
# What each number of the output is (docs/THEORY.md §9); callers add their own keys.
NUMBERS = {
  "predicted": "buckets[].params, .prediction, .interval, .p_best, lowest_predicted and "
               "recommendation: forecasts of the fitted curve family at the budget N; the "
               "intervals and P(best) come from a bootstrap over pilot seeds and test items and "
               "are conditional on the curve family (they do not cover a wrong family)",
  "measured": "buckets[].pilots: the pilot runs' risk on the target test items (per seed, "
              "their mean, and a bootstrap interval of the mean)",
  "certified": "none: no number here is a PAC-Bayes or held-out bound",
}


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
    min_p_best: smallest P(best) of the lowest prediction that makes a clear recommendation.
    rescale_seeds: multiply seed-resampling deviations by sqrt(S / (S - 1)).
    seed: seed of the bootstrap's random numbers.
  """

  family: str = "auto"
  bootstrap: int = 1000
  level: float = 0.95
  max_extrapolation: float = 64.0
  max_interval_width: float = 0.25
  min_p_best: float = 0.9
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
    if not 0.5 < self.min_p_best <= 1:
      raise ValueError(f"min_p_best must lie in (0.5, 1], got {self.min_p_best}")


DEFAULT_OPTIONS = SelectOptions()


def resample_means(pilots: Pilots, replicates: int, rng: np.random.Generator, *,
                   rescale_seeds: bool = True) -> np.ndarray:
  """[B, K, P] bootstrap replicates of each cell's mean risk (NaN where a cell has no run).

  Items: one stratified resample per replicate, shared by every cell (multinomial counts
  within each stratum, turned into item weights). Seeds: resampled with replacement per cell
  (independent trainings), deviations rescaled by sqrt(S / (S - 1)) when `rescale_seeds`.
  Vectorised over replicates in chunks of `_BOOT_CHUNK` (memory O(I x chunk), not O(I x B));
  up to one chunk the random stream is that of a single draw.
  """
  loss = np.nan_to_num(pilots.loss_KxPxSxI, nan=0.0)
  k, p, s, _ = loss.shape
  have_KxP = pilots.seed_counts_KxP
  # Runs sit at seed positions 0..S-1; compact each cell's runs to the front.
  present_KxPxS = np.isfinite(pilots.loss_KxPxSxI[..., 0])
  order_KxPxS = np.argsort(~present_KxPxS, axis=2, kind="stable")
  loss = np.take_along_axis(loss, order_KxPxS[..., None], axis=2)
  loss_RxI = loss.reshape(k * p * s, -1)
  used_KxPxS = np.arange(s)[None, None, :] < have_KxP[:, :, None]
  denom_KxP = np.maximum(have_KxP, 1)
  c_KxP = np.sqrt(np.where(have_KxP > 1, have_KxP / np.maximum(have_KxP - 1, 1), 0.0))
  out_BxKxP = np.empty((replicates, k, p))
  for lo in range(0, replicates, _BOOT_CHUNK):
    b = min(_BOOT_CHUNK, replicates - lo)
    # One matrix product [K P S, I] x [I, b] (a stacked matmul of 3-row blocks is 3x slower).
    risk_BxKxPxS = np.moveaxis((loss_RxI @ _item_weights_IxB(pilots, b, rng)).reshape(
        k, p, s, b), 3, 0)
    pick_BxKxPxS = np.floor(rng.random((b, k, p, s))
                            * denom_KxP[None, :, :, None]).astype(np.int64)
    drawn = np.take_along_axis(risk_BxKxPxS, pick_BxKxPxS, axis=3)
    boot_BxKxP = (drawn * used_KxPxS).sum(axis=3) / denom_KxP
    if rescale_seeds:
      mean_BxKxP = (risk_BxKxPxS * used_KxPxS).sum(axis=3) / denom_KxP
      boot_BxKxP = mean_BxKxP + c_KxP * (boot_BxKxP - mean_BxKxP)
    out_BxKxP[lo:lo + b] = boot_BxKxP
  return np.where(have_KxP > 0, out_BxKxP, np.nan)


def _item_weights_IxB(pilots: Pilots, replicates: int, rng: np.random.Generator) -> np.ndarray:
  """[I, B] item weights of B stratified resamples: w_i x (times item i is drawn)."""
  strata = pilots.item_strata_I
  counts_IxB = np.zeros((strata.size, replicates))
  for stratum in np.unique(strata):
    idx = np.flatnonzero(strata == stratum)
    counts_IxB[idx] = rng.multinomial(idx.size, np.full(idx.size, 1.0 / idx.size),
                                      size=replicates).T
  return pilots.item_weights_I[:, None] * counts_IxB


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
    None), "budget", "verdict" ("clear", "indistinguishable" or "unconstrained", see the
    module docstring), "lowest_predicted" (the bucket with the lowest point prediction; None
    when unconstrained), "contenders" (the buckets with P(best) >= 1 - level, and the lowest),
    "recommendation" (that bucket when the verdict is clear, else None),
    "statement" (one sentence), "options", "numbers" (which numbers are predicted, measured,
    certified), and "buckets": per bucket its "family", "params" (the fit to the pilot
    means), "prediction" (risk at N), "interval" [lo, hi], "p_best", "status", and "pilots"
    (per size: n, seeds, mean risk, its bootstrap interval, per-seed risks).

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
  if fitted.any():  # a tie (e.g. identical pilots) splits the replicate between the tied
    masked = np.where(fitted[:, None], preds_KxB, np.inf)
    tied_KxB = masked == masked.min(axis=0)
    p_best = (tied_KxB / tied_KxB.sum(axis=0)).mean(axis=1)
  for k, row in enumerate(rows):
    row["p_best"] = float(p_best[k]) if fitted.all() else None
  status = STATUS_UNCONSTRAINED if reasons else STATUS_OK
  lowest = None if reasons else min(rows, key=lambda r: r["prediction"])["bucket"]
  verdict = verdict_of(rows, lowest, options)
  contenders = None if lowest is None else [
      r["bucket"] for r in rows if r["p_best"] >= 1 - options.level or r["bucket"] == lowest]
  return {"status": status, "reason": "; ".join(reasons) or None, "budget": int(budget),
          "verdict": verdict, "lowest_predicted": lowest, "contenders": contenders,
          "recommendation": lowest if verdict == VERDICT_CLEAR else None,
          "statement": statement(rows, lowest, verdict, budget, options, reasons),
          "options": dataclasses.asdict(options), "numbers": dict(NUMBERS), "buckets": rows}


def verdict_of(rows, lowest: str | None, options: SelectOptions) -> str:
  """"clear" when the lowest prediction is best in >= min_p_best of the replicates,
  "indistinguishable" below that, "unconstrained" when nothing is predicted."""
  if lowest is None:
    return STATUS_UNCONSTRAINED
  p = next(r["p_best"] for r in rows if r["bucket"] == lowest)
  return VERDICT_CLEAR if p >= options.min_p_best else VERDICT_INDISTINGUISHABLE


def statement(rows, lowest: str | None, verdict: str, budget: int, options: SelectOptions,
              reasons=()) -> str:
  """One sentence saying what the selection concludes (and what it cannot)."""
  if verdict == STATUS_UNCONSTRAINED:
    return ("no recommendation: the pilots do not constrain the prediction at "
            f"N={budget} ({'; '.join(reasons)})")
  row = next(r for r in rows if r["bucket"] == lowest)
  lo, hi = row["interval"]
  p_all = ", ".join(f"{r['bucket']} {r['p_best']:.2f}" for r in rows)
  seeds = min((p["seeds"] for r in rows for p in r["pilots"]), default=0)
  noise = ("test-item noise only (one seed per pilot)" if seeds == 1 else
           "pilot seeds and test items")
  where = (f"{lowest} has the lowest predicted risk at N={budget}, {row['prediction']:.3f} "
           f"({options.level:.0%} interval [{lo:.3f}, {hi:.3f}]), and is best in "
           f"{row['p_best']:.0%} of {options.bootstrap} bootstrap replicates over {noise} "
           f"(P(best): {p_all})")
  if verdict == VERDICT_CLEAR:
    return f"recommend {lowest}: {where}; a forecast from the pilots, not a certificate"
  contenders = [r["bucket"] for r in rows
                if r["p_best"] >= 1 - options.level or r["bucket"] == lowest]
  out = [r["bucket"] for r in rows if r["bucket"] not in contenders]
  who = "the buckets" if not out else " and ".join(contenders)
  ruled = (f" ({', '.join(out)}: best in under {1 - options.level:.0%} of the replicates)"
           if out else "")
  return (f"{who} cannot be told apart at this pilot budget{ruled}: {where}, below the "
          f"{options.min_p_best:.0%} a clear call needs; more pilot seeds, test items or "
          "pilot sizes would narrow the intervals")


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
