"""Do the uncertified measures rank the measured gaps? Kendall tau over a study's cells.

For every SFT cell from the base of a lab results file (`pacbayes lab`, schema lab/2 or 3):

  measured G_gen = in-bucket sequence error - training sequence error
                   (fresh rows from the training mixture vs the n rows trained on);
  measured G_ext = sequence error on a test mixture - in-bucket sequence error,
                   once per test mixture the results carry (uniform, and hard-tilted for lab/3);
                   also minus the base's own value of that difference ("ext_gap_vs_base"), since
                   with slices of unequal difficulty any model, the base included, shows a
                   gap fixed by the two mixtures (the study's G_ext verdict judges that one);
  G_gen measure  = ||w_ft - w_base||^2 / n. The paper's term is sqrt(KL/n) and for isotropic
                   Gaussians at one sigma KL = ||dw||^2 / (2 sigma^2) (docs/THEORY.md §2), so
                   any sigma gives the same ranking: Kendall tau is invariant to monotone maps;
  G_ext measure  = TV(train mixture, test mixture) over op counts (exact: both are known).

Kendall's tau-b (scipy.stats.kendalltau) with a 95% percentile interval from 2000 bootstrap
resamples of cells. The cells are not independent draws of one population (buckets and sizes
are a design), so the interval says how stable the ranking is over this design's seeds, not a
population rank correlation. Measures are labelled uncertified everywhere in the toolkit.

Run: `python experiments/measures_vs_gaps.py experiments/results/quick/results.json
      [--out experiments/results/quick/measures_vs_gaps.json]`.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np
from scipy import stats

from pacbayes.select.offline import load_study_results
from pacbayes.shift.discrete import tv_discrete
from pacbayes.study.plots import ResultsError


def _mixture(weights):
  w = {int(k): float(v) for k, v in weights.items()}
  total = sum(w.values())
  return {k: v / total for k, v in w.items() if v > 0}


def _tv(p, q):
  """Exact TV of two known mixtures (the toolkit's one TV, no delta spent when both are exact)."""
  return tv_discrete(None, None, 0.05, train_probs=p, test_probs=q).estimate


def _mixtures(results):
  if results.get("test_mixtures"):
    return {name: _mixture(m) for name, m in results["test_mixtures"].items()}
  return {"uniform": _mixture(results["test_mixture"])}


def _train_mixtures(results):
  """{(arm, bucket): mixture over op counts} from the config's arms."""
  config = results["config"]
  lo, _ = config["test_ops"]
  out = {}
  for arm, buckets in config["arms"]:
    for bucket, weights in buckets:
      out[(arm, bucket)] = _mixture({lo + i: w for i, w in enumerate(weights)})
  return out


def rows(results):
  """One record per (cell, test mixture) with the measured gaps and the two measures."""
  tests = _mixtures(results)
  trains = _train_mixtures(results)
  base = results["bases"]["base"]
  replicas = base.get("replicas") or [base]
  out = []
  for c in results["cells"]:
    if c["base"] != "base" or c["method"] != "sft" or c.get("certified_arm"):
      continue
    by = {int(k): v for k, v in c["seq_error_by_slice"].items()}
    train_mix = trains[(c["arm"], c["bucket"])]
    rep = replicas[c.get("base_replica", 0) % len(replicas)]
    base_by = {int(k): v for k, v in rep["seq_error_by_slice"].items()}
    base_bucket = sum(p * base_by[k] for k, p in train_mix.items())
    for name, mix in tests.items():
      test_err = sum(p * by[k] for k, p in mix.items())
      base_gap = sum(p * base_by[k] for k, p in mix.items()) - base_bucket
      out.append({
        "arm": c["arm"], "bucket": c["bucket"], "n": c["n"], "seed": c["seed"],
        "test_mixture": name,
        "gen_gap": c["in_bucket_seq_error"] - c["train_seq_error"],
        "ext_gap": test_err - c["in_bucket_seq_error"],
        "ext_gap_vs_base": test_err - c["in_bucket_seq_error"] - base_gap,
        "gen_measure": c["sq_distance"] / c["n"],
        "ext_measure": _tv(train_mix, mix),
      })
  return out


def tau_with_interval(x, y, *, reps=2000, seed=0):
  """Kendall tau-b of (x, y) and a 95% percentile bootstrap interval over pairs."""
  x, y = np.asarray(x, float), np.asarray(y, float)
  tau = float(stats.kendalltau(x, y).statistic)
  if not np.isfinite(tau):  # a constant measure or gap (e.g. one TV value): no ranking
    return {"tau": None, "ci95": [None, None], "pairs": int(len(x)), "bootstrap_reps": 0,
            "note": "undefined: the measure or the gap is constant over these cells"}
  rng = np.random.default_rng(seed)
  boots = []
  for _ in range(reps):
    i = rng.integers(0, len(x), len(x))
    t = stats.kendalltau(x[i], y[i]).statistic
    if np.isfinite(t):
      boots.append(t)
  lo, hi = np.percentile(boots, [2.5, 97.5]) if boots else (np.nan, np.nan)
  return {"tau": tau, "ci95": [float(lo), float(hi)], "pairs": int(len(x)),
          "bootstrap_reps": len(boots)}


def analyse(results):
  recs = rows(results)
  first = [r for r in recs if r["test_mixture"] == recs[0]["test_mixture"]]  # one per cell
  out = {
    "source_preset": results.get("preset"),
    "cells": len(first),
    "g_gen": tau_with_interval([r["gen_measure"] for r in first], [r["gen_gap"] for r in first]),
    "g_ext": tau_with_interval([r["ext_measure"] for r in recs], [r["ext_gap"] for r in recs]),
    "g_ext_vs_base": tau_with_interval([r["ext_measure"] for r in recs],
                                       [r["ext_gap_vs_base"] for r in recs]),
    "g_ext_by_mixture": {},
    "records": recs,
  }
  for name in sorted({r["test_mixture"] for r in recs}):
    sub = [r for r in recs if r["test_mixture"] == name]
    if len({r["ext_measure"] for r in sub}) > 1:
      out["g_ext_by_mixture"][name] = {
        "raw": tau_with_interval([r["ext_measure"] for r in sub], [r["ext_gap"] for r in sub]),
        "vs_base": tau_with_interval([r["ext_measure"] for r in sub],
                                     [r["ext_gap_vs_base"] for r in sub])}
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("results", type=pathlib.Path)
  parser.add_argument("--out", type=pathlib.Path)
  args = parser.parse_args(argv)
  try:
    results = load_study_results(args.results)
  except ResultsError as e:
    print(f"measures_vs_gaps: {e}", file=sys.stderr)
    return 2
  out = analyse(results)
  def show(label, t):
    if t["tau"] is None:
      print(f"{label}: Kendall tau undefined over {t['pairs']} pairs ({t['note']})")
      return
    print(f"{label}: Kendall tau {t['tau']:+.3f} [{t['ci95'][0]:+.3f}, {t['ci95'][1]:+.3f}] "
          f"over {t['pairs']} pairs")
  show("g_gen (||dw||^2/n vs in-bucket - train)", out["g_gen"])
  show("g_ext (TV vs test - in-bucket), all mixtures", out["g_ext"])
  show("g_ext (TV vs test - in-bucket minus the base's), all mixtures", out["g_ext_vs_base"])
  for name, t in out["g_ext_by_mixture"].items():
    show(f"g_ext {name} mixture, raw", t["raw"])
    show(f"g_ext {name} mixture, minus the base's", t["vs_base"])
  if args.out:
    args.out.write_text(json.dumps(out, indent=1, allow_nan=False) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
