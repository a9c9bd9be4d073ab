"""``pacbayes lab``: the synthetic difficulty x size study, its figures and its verdicts."""

from __future__ import annotations


def add_parser(sub) -> None:
  lab = sub.add_parser("lab", help="the synthetic difficulty x size study")
  lab.add_argument("--preset", default="quick", choices=("quick", "full"))
  lab.add_argument("--out", default="experiments/results/quick")
  lab.add_argument("--figures", default="figures", help="folder for figures ('' for none)")
  lab.add_argument("--seed", type=int, default=None)
  lab.add_argument("--quiet", action="store_true")
  lab.set_defaults(func=run)


def run(args) -> int:
  from pacbayes import plots, theory
  from pacbayes.lab import study

  config = study.StudyConfig.preset(args.preset)
  if args.seed is not None:
    config = config.replace(seed=args.seed) if hasattr(config, "replace") else config
  results = study.run_study(config, args.out, progress=not args.quiet)
  if args.figures:
    for path in plots.write_lab_figures(results, args.figures, args.preset):
      print(f"figure written to {path}")
  print()
  for verdict in theory.judge(results):
    print(verdict.line())
  return 0
