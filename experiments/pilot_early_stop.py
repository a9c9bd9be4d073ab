"""Pilot of the early-stopping protocol (issue 20): the quick preset's corners on two seeds.

Usage: python experiments/pilot_early_stop.py --lr 3e-3 [--epochs 6] --out DIR
       [--bases-from experiments/results/quick]
       python experiments/pilot_early_stop.py --power DIR/results.json [--reps 1000]

Runs `pacbayes.study.runner.run_study` on the quick preset with seeds 0 and 1 only (replicas
0 and 1 of the base), no certified arm and no power block, at the given fine-tuning rate and
epoch budget, and prints per cell: the step early stopping kept (0 = the base), the
validation curve, and the uniform-mixture accuracy against the cell's base replica. The bases
are copied from an earlier run's cache when `--bases-from` names one (same pretraining
fields, so the runner's cache accepts them); the pilot's own results.json is in DIR.

`--power` reads a pilot's results.json and prints the power of claim 1 for candidate quick
designs (seeds at n = 200 x seeds at n = 3200, 1024 test items per slice), simulated through
the real verdict code (`pacbayes.study.power.power`) with the pilot's per-cell estimates as
the truth: with two seeds per cell the seed variances are crude, so the table is a sizing
aid, and the run's own results.json carries the power at its own estimates.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--lr", type=float)
  ap.add_argument("--power", metavar="RESULTS_JSON")
  ap.add_argument("--reps", type=int, default=1000)
  ap.add_argument("--epochs", type=float, default=6.0)
  ap.add_argument("--seeds", type=int, default=2)
  ap.add_argument("--out")
  ap.add_argument("--bases-from", default="experiments/results/quick")
  args = ap.parse_args(argv)
  if args.power:
    return power_table(args.power, args.reps)
  if args.lr is None or args.out is None:
    ap.error("--lr and --out are required (or --power)")
  from pacbayes.study.config import StudyConfig
  from pacbayes.study.runner import run_study

  src = os.path.join(args.bases_from, "cache", "bases")
  dst = os.path.join(args.out, "cache", "bases")
  if os.path.isdir(src) and not os.path.isdir(dst):
    shutil.copytree(src, dst)
  config = StudyConfig.preset("quick", seeds=tuple(range(args.seeds)), seeds_at=(),
                              ft_lr=args.lr,
                              ft_epochs=args.epochs, power_reps=0, certified_sizes=())
  res = run_study(config, args.out, progress=False)
  base_acc = {b["replica"]: b["accuracy"] for b in res["bases"]["base"]["replicas"]}
  for c in res["cells"]:
    if c.get("certified_arm"):
      continue
    base = base_acc[c["base_replica"]]
    curve = " ".join(f"{s}:{v:.3f}" for s, v in c["val_curve"])
    print(f"{c['bucket']:5s} n={c['n']:5d} s{c['seed']} stop {c['stopped_at']:4d}/"
          f"{c['ft_steps']} acc {c['accuracy']:.3f} by slice "
          f"{[round(v, 3) for v in c['accuracy_by_slice'].values()]} vs base {base:.3f}  "
          f"val {curve}")
  return 0


def power_table(path: str, reps: int) -> int:
  """Prints P(claim 1 PASS) for quick designs at the pilot's estimates (see the docstring)."""
  from pacbayes.select.offline import load_study_results
  from pacbayes.study import power
  from pacbayes.study.view import study_view

  view = study_view(load_study_results(path))
  assume = power.assume_from_view(view, source=path)
  print(f"claim 1 power at the estimates of {path} ({reps} simulated studies each):")
  for s200, s3200 in ((6, 4), (8, 6), (12, 6), (12, 8), (12, 12)):
    design = power.Design(f"{s200} seeds at n=200, {s3200} at n=3200", tuple(view.buckets),
                          (200, 3200), seeds=s200, seeds_at={("*", 3200): s3200},
                          items_per_slice=1024)
    table = power.power(assume, design, power.PowerOptions(reps=reps, seed=0))
    claim = [k for k in table if "best difficulty" in k]
    p = table[claim[0]] if claim else None
    print(f"  {design.name:32s} " + (f"P(PASS) {p['pass']:.3f} +- {p['se']:.3f}, "
                                     f"P(FAIL) {p['fail']:.3f}" if p else "not judged"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
