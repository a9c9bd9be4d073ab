"""``pacbayes lab``: the synthetic difficulty x size study, its figures and its verdicts."""

from __future__ import annotations

from pacbayes.cli.common import bounded_int, check_output_folder, seed


def add_parser(sub) -> None:
  lab = sub.add_parser("lab", help="the synthetic difficulty x size study")
  lab.add_argument("--preset", default="quick", choices=("quick", "smoke", "micro", "full"),
                   help="quick: `make run` (claim 1, <= 15 min on 2 idle cores); full: every "
                        "claim (hours); smoke/micro: check the pipeline (decide nothing)")
  lab.add_argument("--out", default=None,
                   help="results folder (default: experiments/results/<preset>)")
  lab.add_argument("--figures", default=None,
                   help="folder for figures (default: <out>/figures; '' for none)")
  lab.add_argument("--seed", type=seed("--seed"), default=None)
  lab.add_argument("--workers", type=bounded_int("--workers", 0, 64), default=1,
                   help="worker processes, each single-threaded (default 1); results.json does "
                        "not depend on it (more help only where cores do not share "
                        "floating-point units); 0 computes in this process with XLA's default "
                        "threads")
  lab.add_argument("--quiet", action="store_true")
  lab.set_defaults(func=run)


def run(args) -> int:
  import os

  from pacbayes.core.atomic import write_text
  from pacbayes.study import plots, theory
  from pacbayes.study import runner as study
  from pacbayes.study.config import StudyConfig

  # On a GPU, the parent and a worker each hold a client: without this, the first to start
  # would take 75% of the device's memory (JAX's default) and the other could not start.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  if args.out is None:
    args.out = os.path.join("experiments", "results", args.preset)
  if args.figures is None:
    args.figures = os.path.join(args.out, "figures")
  check_output_folder(args.out, "--out")
  check_output_folder(args.figures, "--figures")
  config = StudyConfig.preset(args.preset)
  if args.seed is not None:
    config = config.replace(seed=args.seed)
  results = study.run_study(config, args.out, progress=not args.quiet, workers=args.workers)
  print(study.summary_table(results))
  if args.figures:
    for path in plots.write_lab_figures(results, args.figures, args.preset):
      print(f"figure written to {path}")
  lines = [v.line() for v in theory.judge_all(results)]
  write_text(os.path.join(args.out, "verdicts.txt"), "\n".join(lines) + "\n")
  print()
  print("\n".join(lines))
  print(f"\nruntime: {results['runtime_s']:.0f} s ({args.preset} preset)")
  return 0
