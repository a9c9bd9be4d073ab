"""Held-out (test-set) certificates of every study cell on each test mixture, and how many are
non-vacuous or certify a gain over the base.

A study cell's test items were never trained on; the protocol, though, was chosen between
`--protocols` candidates (default 2) by a pilot that ran the study's own seeds 0 and 1 and saw
their test accuracies (experiments/results/pilot_early_stop: lr 3e-3 with 6 epochs or 2e-3
with 8). A union bound over the candidates pays for that choice: every statement below is
made at delta / protocols. Given the weights, per slice k, the cell's m_k sequence errors are i.i.d.
Bernoulli(R_k) given the weights, and the exact binomial tail bound at delta / K
(`pacbayes.bounds.testset.holdout_bound`, Langford 2005, Theorem 3.3) holds for the K slices
together with probability >= 1 - delta; the test mixture's risk sum_k p(k) R_k is then at most
sum_k p(k) B_k (docs/THEORY.md §5.2). delta = the study's (0.05), per cell and mixture: the
counts below are of statements each holding with probability >= 0.95, not jointly.

A cell "certifies a gain over the base" when its bound is below the measured sequence error of
its own base replica on that mixture (the base's number is a measurement on the same items,
not a bound: a statement that the fine-tune is certifiably better than what the base scored).

Run: `python experiments/heldout_cells.py experiments/results/quick/results.json
      [--out experiments/results/quick/heldout_cells.json]`.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

from pacbayes.bounds.checks import is_vacuous
from pacbayes.bounds.testset import holdout_bound
from pacbayes.select.offline import load_study_results
from pacbayes.study.plots import ResultsError
from pacbayes.study.stats import decode_u8


def cell_bounds(results, delta=None, protocols=1):
  """Per cell and test mixture: the held-out bound at delta / protocols (see the docstring)."""
  delta = (results["config"]["delta"] if delta is None else delta) / protocols
  ops, counts = results["test_items"]["ops"], results["test_items"]["counts"]
  mixtures = results.get("test_mixtures") or {"uniform": results["test_mixture"]}
  base = results["bases"]["base"]
  replicas = base.get("replicas") or [base]
  edges = np.cumsum([0, *counts])
  out = []
  for c in results["cells"]:
    seq = decode_u8(c["items"]["seq_error"], sum(counts)).astype(np.float64)
    per_slice = [holdout_bound(seq[edges[j]:edges[j + 1]], delta / len(ops), zero_one=True)
                 for j in range(len(ops))]
    rep = replicas[c.get("base_replica", 0) % len(replicas)]
    rec = {k: c[k] for k in ("arm", "base", "method", "bucket", "n", "seed")}
    rec["certified_arm"] = bool(c.get("certified_arm"))
    rec["slice_bounds"] = {str(k): b.value for k, b in zip(ops, per_slice, strict=True)}
    for name, mix in mixtures.items():
      p = np.array([float(mix[str(k)]) for k in ops])
      bound = float(np.dot(p, [b.value for b in per_slice]))
      measured = float(np.dot(p, [b.emp_risk for b in per_slice]))
      base_err = float(np.dot(p, [rep["seq_error_by_slice"][str(k)] for k in ops]))
      rec[name] = {"bound": bound, "measured": measured, "base_measured": base_err,
                   "non_vacuous": not is_vacuous(bound), "beats_base": bound < base_err}
    out.append(rec)
  return {"delta": delta, "protocols": protocols, "mixtures": sorted(mixtures), "cells": out}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("results", type=pathlib.Path)
  parser.add_argument("--out", type=pathlib.Path)
  parser.add_argument("--protocols", type=int, default=2,
                      help="candidate protocols the pilot chose among on these test items")
  args = parser.parse_args(argv)
  if args.protocols < 1:
    print(f"heldout_cells: --protocols must be >= 1, got {args.protocols}", file=sys.stderr)
    return 2
  try:
    results = load_study_results(args.results)
  except ResultsError as e:
    print(f"heldout_cells: {e}", file=sys.stderr)
    return 2
  out = cell_bounds(results, protocols=args.protocols)
  cells = out["cells"]
  print(f"delta per cell and mixture: {out['delta']:g} (study delta / {args.protocols} "
        f"candidate protocols)")
  for name in out["mixtures"]:
    nv = sum(c[name]["non_vacuous"] for c in cells)
    beats = sum(c[name]["beats_base"] for c in cells)
    slack = np.median([c[name]["bound"] - c[name]["measured"] for c in cells])
    print(f"{name} test mixture: {nv}/{len(cells)} cells non-vacuous (bound < 1), {beats} "
          f"certify a gain over their base's measured error; median bound - measured "
          f"{slack:.3f}")
  if args.out:
    args.out.write_text(json.dumps(out, indent=1, allow_nan=False) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
