"""The ``pacbayes`` command: parses arguments, calls the library, prints one line on error."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from pacbayes.atomic import write_text


class CommandError(ValueError):
  """A bad command line (the message names the flag)."""


class _Parser(argparse.ArgumentParser):
  """An argument parser whose errors are one line (no usage block), exit status 2."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_float(flag):
  def parse(text):
    try:
      value = float(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"{flag} expects a number, got {text!r}") from None
    if not value > 0:
      raise argparse.ArgumentTypeError(f"{flag} must be > 0, got {text}")
    return value
  return parse


def _delta(text):
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"--delta expects a number, got {text!r}") from None
  if not 0 < value < 1:
    raise argparse.ArgumentTypeError(f"--delta must lie in (0, 1), got {text}")
  return value


def _write_json(obj, path):
  """Writes JSON atomically, so a failure never leaves a half-written report."""
  write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def cmd_bound(args) -> int:
  from pacbayes import pipeline, sharding

  sharding.maybe_initialize_distributed()

  if args.sigma is not None and args.sigma_grid:
    raise CommandError("give --sigma or --sigma-grid, not both")
  cert = pipeline.run_bound(
      args.prior, args.posterior, args.train, args.test,
      loss=args.loss, sigma=args.sigma, sigma_grid=args.sigma_grid,
      sigma_prior=args.sigma_prior, mc_scheme=args.mc_scheme, num_draws=args.draws,
      chunk_size=args.chunk_size, batch_size=args.batch_size, delta=args.delta,
      seed=args.seed, include=args.include, exclude=args.exclude, progress=not args.quiet,
      difficulty_support=args.difficulty_support,
  )
  print(cert.to_table())
  if args.out:
    cert.to_json(args.out)
    print(f"report written to {args.out}")
  return 0


def cmd_shift(args) -> int:
  from pacbayes import shift

  if args.feature == "embedding" and not args.model:
    raise CommandError("--feature embedding needs --model DIR (a checkpoint folder)")
  extra = {"model_dir": args.model} if args.feature == "embedding" else {}
  if args.support is not None:
    if args.feature != "difficulty":
      raise CommandError("--support applies to --feature difficulty only")
    extra["support"] = args.support
  report = shift.shift_report(args.train, args.test, feature=args.feature, delta=args.delta,
                              seed=args.seed, **extra)
  print(shift.format_shift_table(report))
  if args.out:
    _write_json(report, args.out)
    print(f"report written to {args.out}")
  return 0


def cmd_lab(args) -> int:
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


def cmd_plot(args) -> int:
  from pacbayes import plots

  loaded = [plots.load_results(p) for p in args.results]
  lab = [r for r in loaded if r.get("schema") == "pacbayes.lab/1"]
  if lab and len(loaded) > 1:
    raise CommandError("plot takes one lab results file, or several bound reports")
  if lab:
    if args.kind == "terms":
      raise CommandError("--kind terms is for bound reports; lab results take "
                         "heatmap, slices, gaps or g_gen")
    kind = args.kind or "heatmap"
    if kind == "g_gen":
      fig = plots.accuracy_heatmap(lab[0], field="g_gen", base=args.base, method=args.method)
    else:
      fig = plots.LAB_FIGURES[kind](lab[0], base=args.base, method=args.method)
  else:
    if args.kind not in (None, "terms"):
      raise CommandError(f"--kind {args.kind} needs a lab results file")
    fig = plots.report_terms(loaded)
  plots.save_figure(fig, args.out)
  print(f"figure written to {args.out}")
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(
      prog="pacbayes",
      description="Two-gap PAC-Bayes bounds (Proposition 4.1 of arXiv 2605.12906) for "
      "fine-tuned checkpoints, and the difficulty study.")
  sub = parser.add_subparsers(dest="command", required=True)

  b = sub.add_parser("bound", help="certificate for a pretrained/fine-tuned checkpoint pair")
  b.add_argument("--prior", required=True, help="pretrained checkpoint folder (the prior mean)")
  b.add_argument("--posterior", required=True, help="fine-tuned checkpoint folder")
  b.add_argument("--train", required=True, help="SFT training set, JSONL")
  b.add_argument("--test", help="test set, JSONL (for g_ext); without it g_ext = 0")
  b.add_argument("--loss", default="token_error", choices=("token_error", "smoothed_nll"))
  b.add_argument("--sigma", type=_positive_float("--sigma"), help="posterior sigma (no search)")
  b.add_argument("--sigma-grid", type=_positive_float("--sigma-grid"), nargs="+",
                 help="prior sigma grid fixed in advance (costs ln k)")
  b.add_argument("--sigma-prior", type=_positive_float("--sigma-prior"),
                 help="prior sigma (with --sigma: no grid, no search)")
  b.add_argument("--mc-scheme", default="chunk", choices=("chunk", "passes"))
  b.add_argument("--draws", type=int, default=None, help="posterior draws (passes scheme)")
  b.add_argument("--chunk-size", type=int, default=None, help="examples per draw (chunk scheme)")
  b.add_argument("--batch-size", type=int, default=8)
  b.add_argument("--include", nargs="*", help="glob patterns of perturbed parameters")
  b.add_argument("--exclude", nargs="*", help="glob patterns of unperturbed parameters")
  b.add_argument("--difficulty-support", type=float, nargs="+",
                 help="every value `difficulty` can take, fixed in advance (for g_ext)")
  b.add_argument("--delta", type=_delta, default=0.05)
  b.add_argument("--seed", type=int, default=0)
  b.add_argument("--out", help="JSON report path")
  b.add_argument("--quiet", action="store_true", help="no progress bar")
  b.set_defaults(func=cmd_bound)

  s = sub.add_parser("shift", help="TV between train and test (the extrapolation gap)")
  s.add_argument("--train", required=True)
  s.add_argument("--test", required=True)
  s.add_argument("--feature", default="difficulty", choices=("difficulty", "ngram", "embedding"))
  s.add_argument("--support", type=float, nargs="+",
                 help="every value `difficulty` can take, fixed in advance")
  s.add_argument("--model", help="checkpoint folder for --feature embedding (mean hidden state)")
  s.add_argument("--delta", type=_delta, default=0.05)
  s.add_argument("--seed", type=int, default=0)
  s.add_argument("--out", help="JSON report path")
  s.set_defaults(func=cmd_shift)

  lab = sub.add_parser("lab", help="the synthetic difficulty x size study")
  lab.add_argument("--preset", default="quick", choices=("quick", "full"))
  lab.add_argument("--out", default="experiments/results/quick")
  lab.add_argument("--figures", default="figures", help="folder for figures ('' for none)")
  lab.add_argument("--seed", type=int, default=None)
  lab.add_argument("--quiet", action="store_true")
  lab.set_defaults(func=cmd_lab)

  p = sub.add_parser("plot", help="figures from results files")
  p.add_argument("results", nargs="+", help="a lab results.json, or bound reports")
  p.add_argument("--out", required=True, help="PNG path")
  p.add_argument("--kind", choices=("heatmap", "slices", "gaps", "g_gen", "terms"))
  p.add_argument("--base", default="base")
  p.add_argument("--method", default="sft")
  p.set_defaults(func=cmd_plot)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line; returns the exit status (0 on success, 2 on bad input)."""
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    return args.func(args)
  except (ValueError, FileNotFoundError, KeyError) as e:
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    print(f"pacbayes {args.command}: error: {message}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"pacbayes {args.command}: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
