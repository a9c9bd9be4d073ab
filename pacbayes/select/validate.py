"""Validation of the offline selection on a study: predicted best bucket against measured best.

For one (arm, base, method) of a lab results file, a target size n_T with every bucket
measured, and pilot sizes below it: the predictor (`select_bucket`, fitted to the pilots
only) picks a bucket; the measured best is the bucket with the lowest mean risk at n_T.

  regret = R_measured(n_T, pick) - min_k R_measured(n_T, k)   (risk = 1 - accuracy: the
           accuracy lost against the measured best);
  hit    = [pick == measured best].

Baselines pick without a fit: "best at the largest pilot" (lowest mean risk at the largest
pilot size) and "always <bucket>". Intervals: a bootstrap that resamples, jointly for pilots
and targets, the test items (stratified by slice, shared by all cells) and each cell's seeds
(`pacbayes.select.predict.resample_means`, deviations rescaled by sqrt(S/(S-1))), then
refits and re-picks in every replicate; the interval is the percentile interval of regret,
and the hit frequency is the share of replicates where the pick is the replicate's best.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pacbayes.select.offline import StudyQuery, study_pilots
from pacbayes.select.predict import (
    DEFAULT_OPTIONS,
    STATUS_OK,
    SelectOptions,
    bucket_family,
    fit_bucket,
    resample_means,
    select_bucket,
)
from pacbayes.study.view import study_view

PREDICTOR = "predictor"
LARGEST_PILOT = "best at largest pilot"


def _picks(mean_BxKxP, counts_KxP, sizes, target, options, buckets):
  """method -> [B] picked bucket index (the predictor's only when every bucket fits)."""
  b_, k_, _ = mean_BxKxP.shape
  picks = {}
  families = [bucket_family(options, int((counts_KxP[k] > 0).sum())) for k in range(k_)]
  if all(f is not None for f in families):
    preds = np.stack([fit_bucket(sizes, mean_BxKxP[:, k], counts_KxP[k], families[k])
                      .risk(float(target)) for k in range(k_)], axis=1)
    picks[PREDICTOR] = np.argmin(preds, axis=1)
  picks[LARGEST_PILOT] = np.argmin(mean_BxKxP[:, :, -1], axis=1)
  for k, name in enumerate(buckets):
    picks[f"always {name}"] = np.full(b_, k)
  return picks


def _summary(regret_B, hit_B, point_regret, point_hit, level):
  a = (1 - level) / 2
  lo, hi = np.quantile(regret_B, [a, 1 - a])
  return {"regret": float(point_regret), "regret_interval": [float(lo), float(hi)],
          "regret_boot_mean": float(regret_B.mean()), "hit": bool(point_hit),
          "hit_frequency": float(hit_B.mean())}


@dataclasses.dataclass(frozen=True)
class Case:
  """One validation: the cells of `query` at `pilot_sizes` predict the best at `target`."""

  label: str
  query: StudyQuery
  pilot_sizes: tuple[int, ...]
  target: int


def validate_case(results: Mapping[str, Any], case: Case,
                  options: SelectOptions = DEFAULT_OPTIONS, *, replicates: int = 2000,
                  seed: int = 0) -> dict[str, Any]:
  """Regret and hit of the predictor and of the baselines for one case (see module docstring).

  Returns:
    A JSON-ready dict: the case, "measured" (risk per bucket at the target, best),
    "selection" (the predictor's output on the pilots), "methods" (per method: regret,
    regret_interval, regret_boot_mean, hit, hit_frequency) and, per replicate, the regret and
    hit arrays under "_boot" (for pooling; dropped from reports).

  Raises:
    ValueError: the study lacks a bucket's cells at the target size.
  """
  view = study_view(results, arm=case.query.arm)
  sizes = tuple(case.pilot_sizes) + (case.target,)
  every = study_pilots(view, case.query, sizes)
  counts = every.seed_counts_KxP
  if np.any(counts[:, -1] == 0):
    raise ValueError(f"{case.label}: no cell at the target n={case.target} for some bucket")
  pilots = study_pilots(view, case.query, case.pilot_sizes)
  selection = select_bucket(pilots, case.target, options)
  risk = every.risk_KxPxS()
  mean_KxP = np.nansum(risk, axis=2) / np.maximum(counts, 1)
  mean_KxP = np.where(counts > 0, mean_KxP, np.nan)
  rng = np.random.default_rng(seed)
  boot = resample_means(every, replicates, rng, rescale_seeds=options.rescale_seeds)
  p_sizes = np.asarray(case.pilot_sizes, dtype=np.float64)
  point_picks = _picks(mean_KxP[None, :, :-1], counts[:, :-1], p_sizes, case.target, options,
                       every.buckets)
  boot_picks = _picks(boot[:, :, :-1], counts[:, :-1], p_sizes, case.target, options,
                      every.buckets)
  target_point, target_boot = mean_KxP[:, -1], boot[:, :, -1]
  best_point, best_boot = int(np.argmin(target_point)), np.argmin(target_boot, axis=1)
  rows = np.arange(replicates)
  methods, raw = {}, {}
  for name, pick_B in boot_picks.items():
    pick = int(point_picks[name][0])
    regret_B = target_boot[rows, pick_B] - target_boot[rows, best_boot]
    hit_B = pick_B == best_boot
    methods[name] = _summary(regret_B, hit_B, target_point[pick] - target_point[best_point],
                             pick == best_point, options.level)
    methods[name]["pick"] = every.buckets[pick]
    raw[name] = (regret_B, hit_B)
  if PREDICTOR in methods and selection["status"] != STATUS_OK:
    methods[PREDICTOR]["note"] = f"the predictor marks this unconstrained: {selection['reason']}"
  return {"label": case.label, "arm": case.query.arm, "base": case.query.base,
          "method": case.query.method, "pilot_sizes": list(case.pilot_sizes),
          "target": case.target, "seeds": int(counts.min()),
          "measured": {"risk": {b: float(r) for b, r in zip(every.buckets, target_point,
                                                             strict=True)},
                       "best": every.buckets[best_point]},
          "selection": selection, "methods": methods, "_boot": raw}


def pool(cases: Sequence[Mapping[str, Any]], level: float = 0.95) -> dict[str, Any]:
  """Mean regret and hit rate over cases (replicates paired by index), per method present in
  every case."""
  names = [m for m in cases[0]["methods"] if m.startswith(("predictor", "best"))
           and all(m in c["methods"] for c in cases)]
  names += [m for m in cases[0]["methods"] if m.startswith("always")
            and all(m in c["methods"] for c in cases)]
  out = {}
  for name in names:
    regret_B = np.mean([c["_boot"][name][0] for c in cases], axis=0)
    hit_B = np.mean([c["_boot"][name][1] for c in cases], axis=0)
    a = (1 - level) / 2
    out[name] = {
      "regret": float(np.mean([c["methods"][name]["regret"] for c in cases])),
      "regret_interval": [float(v) for v in np.quantile(regret_B, [a, 1 - a])],
      "regret_boot_mean": float(regret_B.mean()),
      "hit_rate": float(np.mean([c["methods"][name]["hit"] for c in cases])),
      "hit_rate_interval": [float(v) for v in np.quantile(hit_B, [a, 1 - a])],
    }
  return out


def applicable_groups(results: Mapping[str, Any], target: int) -> dict[tuple, str | None]:
  """(arm, base, method) -> None when it can be validated at `target`, else the reason.

  A group whose pilots are too few for a fit is still validated: the baselines are scored
  and the predictor's refusal is reported.
  """
  groups: dict[tuple, dict[str, set[int]]] = {}
  for c in results["cells"]:
    key = (c.get("arm", "tilted"), c["base"], c["method"])
    groups.setdefault(key, {}).setdefault(c["bucket"], set()).add(int(c["n"]))
  out = {}
  for key, by_bucket in sorted(groups.items()):
    if len(by_bucket) < 2:
      out[key] = f"one bucket only ({', '.join(by_bucket)}): nothing to select"
    elif not all(target in s for s in by_bucket.values()):
      out[key] = f"no measured cell at n={target} for every bucket"
    elif not any(n < target for s in by_bucket.values() for n in s):
      out[key] = f"no pilot cell below n={target}"
    else:
      out[key] = None
  return out
