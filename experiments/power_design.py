"""Power of the study's verdicts for candidate designs, from a measured study's variances.

Usage: python experiments/power_design.py [experiments/results/full/results.json]
         [--out experiments/results/power] [--reps 1000]

Reads the per-cell accuracies by slice, item flip variances and seed effects of a results file
(`pacbayes.study.power.assume_from_view`), simulates each design through the real verdict code
(Holm over the primary claims included) and writes `power.json` (a "power" block: the designs,
the assumed effects and variances, the power per claim) and `power.md` (a table). Designs:
today's quick and full presets, more seeds at the high-variance corners (n = 200 and 3,200),
4x the test items per slice, and an easier bucket than "easy" (its accuracy is not measured:
medium - easier at n = 200 is set to each of a few assumed values, which is what claim 2 needs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from pacbayes.core.atomic import write_text
from pacbayes.study import power, theory
from pacbayes.study.plots import ResultsError, load_results
from pacbayes.study.view import study_view

SIZES = (200, 800, 3200)
CLAIM1 = "best difficulty"
CLAIM2 = "inverted U at n=200"
EASIER_GAPS = (0.01, 0.02, 0.04)  # assumed medium - easier accuracy at n = 200
EASIER_DESIGNS = ("full (today)", "corners 6 seeds, 4x items", "corners 10 seeds, 4x items")


def designs(buckets) -> list[power.Design]:
  b = tuple(buckets)
  corners = {("*", 200): 6, ("*", 3200): 6}
  return [
    power.Design("quick (today)", b, SIZES, seeds=2),
    power.Design("full (today)", b, SIZES, seeds=3),
    power.Design("full, 4x items", b, SIZES, seeds=3, items_per_slice=1024),
    power.Design("corners 6 seeds", b, SIZES, seeds=3, seeds_at=corners),
    power.Design("corners 6 seeds, 4x items", b, SIZES, seeds=3, seeds_at=corners,
                 items_per_slice=1024),
    power.Design("corners only (n=200, 3200), 6 seeds, 4x items", b, (200, 3200), seeds=6,
                 items_per_slice=1024),
    power.Design("corners 8 seeds, 4x items", b, SIZES, seeds=3,
                 seeds_at={("*", 200): 8, ("*", 3200): 8}, items_per_slice=1024),
    power.Design("corners 10 seeds, 4x items", b, SIZES, seeds=3,
                 seeds_at={("*", 200): 10, ("*", 3200): 10}, items_per_slice=1024),
    power.Design("corners only (n=200, 3200), 10 seeds", b, (200, 3200), seeds=10),
  ]


def with_easier(assume: power.Assumptions, gap: float) -> power.Assumptions:
  """An "easier" bucket below "easy": at every n its accuracy by slice is medium's minus `gap`
  (so medium - easier = gap on any mixture), with easy's flips, seed sd and distance."""
  extra = {}
  for n in SIZES:
    med = assume.index(("base", "sft", "medium", n))
    easy = assume.index(("base", "sft", "easy", n))
    extra[("base", "sft", "easier", n)] = {
      "acc": np.clip(assume.acc_CxK[med] - gap, 0.0, 1.0), "flip": assume.flip_CxK[easy],
      "seed_sd": assume.seed_sd_C[easy], "log_dist": assume.log_dist_C[easy],
      "log_dist_sd": assume.log_dist_sd_C[easy]}
  return assume.with_cells(extra, bucket_mixtures={"easier": [16, 4, 1, 0]},
                           order=("easier",) + tuple(assume.buckets))


def _pick(table, prefix):
  hits = [v for c, v in table.items() if c.startswith(prefix)]
  return hits[0] if hits else {"pass": float("nan"), "fail": float("nan"), "se": float("nan")}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("results", nargs="?", default="experiments/results/full/results.json")
  parser.add_argument("--out", default="experiments/results/power")
  parser.add_argument("--reps", type=int, default=1000)
  args = parser.parse_args(argv)
  try:
    results = load_results(args.results)
    view = study_view(results)
    assume = power.assume_from_view(view, source=args.results)
  except (ResultsError, KeyError, ValueError) as e:
    print(f"power_design: error: {e}", file=sys.stderr)
    return 2
  measured = {v.claim: {"estimate": float(v.estimate[0]), "lo": float(v.lo[0]),
                        "hi": float(v.hi[0]), "verdict": v.word}
              for v in theory.judge_view(view, with_bootstrap=False)
              if np.isfinite(v.estimate[0])}
  opts = power.PowerOptions(reps=args.reps, seed=0)
  rows = []
  t0 = time.time()
  for d in designs(assume.buckets):
    table = power.power(assume, d, opts)
    rows.append({"design": d.describe(), "cost": d.cost(assume), "power": table})
    print(f"{d.name}: claim 1 {_pick(table, CLAIM1)['pass']:.3f}, claim 2 "
          f"{_pick(table, CLAIM2)['pass']:.3f} ({time.time() - t0:.0f} s)", flush=True)
  easier = []
  for gap in EASIER_GAPS:
    a2 = with_easier(assume, gap)
    for d in [x for x in designs(a2.buckets) if x.name in EASIER_DESIGNS]:
      table = power.power(a2, d, opts)
      easier.append({"medium_minus_easier": gap, "design": d.describe(), "cost": d.cost(a2),
                     "power": table})
      print(f"easier bucket, medium - easier {gap}: {d.name}: claim 2 "
            f"{_pick(table, CLAIM2)['pass']:.3f}", flush=True)
  block = {"power": {
    "source": args.results, "reps": args.reps, "seed": 0, "alpha": theory.ALPHA,
    "method": "simulation through pacbayes.study.theory.judge_view (Holm over the primary "
              "claims), item model of pacbayes.study.power",
    "assumed": {"keys": [list(k) for k in assume.keys], "acc_by_slice": assume.acc_CxK.tolist(),
                "flip_by_slice": assume.flip_CxK.tolist(), "seed_sd": assume.seed_sd_C.tolist(),
                "log_sq_distance": [v if np.isfinite(v) else None
                                    for v in assume.log_dist_C.tolist()],
                "log_sq_distance_sd": [v if np.isfinite(v) else None
                                       for v in assume.log_dist_sd_C.tolist()], "rho": assume.rho},
    "measured_effects": measured, "designs": rows, "easier_bucket": easier,
    "runtime_s": time.time() - t0}}
  os.makedirs(args.out, exist_ok=True)
  write_text(os.path.join(args.out, "power.json"), json.dumps(block, indent=1) + "\n")
  write_text(os.path.join(args.out, "power.md"), markdown(block["power"]))
  print(f"wrote {args.out}/power.json and power.md")
  return 0


def markdown(p) -> str:
  lines = [f"Power per claim (P(PASS) over {p['reps']} simulated studies; Holm over the primary "
           f"claims), effects and variances from `{p['source']}`.", "",
           "| design | trainings | train examples | claim 1 | claim 2 (n=200) | stronger base "
           "| DFT interaction | G_gen KL/n |", "|---|---|---|---|---|---|---|---|"]
  for row in p["designs"]:
    t = row["power"]
    cells = [_pick(t, CLAIM1), _pick(t, CLAIM2), _pick(t, "stronger base"),
             _pick(t, "DFT - SFT on hard interaction"), _pick(t, "G_gen falls with n: slope of ln")]
    lines.append(f"| {row['design']['name']} | {row['cost']['trainings']} | "
                 f"{row['cost']['train_examples']} | "
                 + " | ".join(f"{c['pass']:.2f}" for c in cells) + " |")
  lines += ["", "Claim 2 with an easier bucket (medium - easier at every n assumed):", "",
            "| medium - easier | design | trainings | claim 2 (n=200) |", "|---|---|---|---|"]
  for row in p["easier_bucket"]:
    lines.append(f"| {row['medium_minus_easier']:+.2f} | {row['design']['name']} | "
                 f"{row['cost']['trainings']} | {_pick(row['power'], CLAIM2)['pass']:.2f} |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  sys.exit(main())
