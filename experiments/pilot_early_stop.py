"""Pilot of the early-stopping protocol (issue 20): the quick preset's corners on two seeds.

Usage: python experiments/pilot_early_stop.py --lr 3e-3 [--epochs 6] --out DIR
       [--bases-from experiments/results/quick]

Runs `pacbayes.study.runner.run_study` on the quick preset with seeds 0 and 1 only (replicas
0 and 1 of the base), no certified arm and no power block, at the given fine-tuning rate and
epoch budget, and prints per cell: the step early stopping kept (0 = the base), the
validation curve, and the uniform-mixture accuracy against the cell's base replica. The bases
are copied from an earlier run's cache when `--bases-from` names one (same pretraining
fields, so the runner's cache accepts them); the pilot's own results.json is in DIR.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--lr", type=float, required=True)
  ap.add_argument("--epochs", type=float, default=6.0)
  ap.add_argument("--seeds", type=int, default=2)
  ap.add_argument("--out", required=True)
  ap.add_argument("--bases-from", default="experiments/results/quick")
  args = ap.parse_args(argv)
  from pacbayes.study.config import StudyConfig
  from pacbayes.study.runner import run_study

  src = os.path.join(args.bases_from, "cache", "bases")
  dst = os.path.join(args.out, "cache", "bases")
  if os.path.isdir(src) and not os.path.isdir(dst):
    shutil.copytree(src, dst)
  config = StudyConfig.preset("quick", seeds=tuple(range(args.seeds)), ft_lr=args.lr,
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


if __name__ == "__main__":
  sys.exit(main())
