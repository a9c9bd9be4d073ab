"""``pacbayes shift``: TV between the training and test distributions (the extrapolation gap)."""

from __future__ import annotations

from pacbayes.commands.common import CommandError, probability, write_json


def add_parser(sub) -> None:
  s = sub.add_parser("shift", help="TV between train and test (the extrapolation gap)")
  s.add_argument("--train", required=True)
  s.add_argument("--test", required=True)
  s.add_argument("--feature", default="difficulty", choices=("difficulty", "ngram", "embedding"))
  s.add_argument("--support", type=float, nargs="+",
                 help="every value `difficulty` can take, fixed in advance")
  s.add_argument("--model", help="checkpoint folder for --feature embedding (mean hidden state)")
  s.add_argument("--delta", type=probability("--delta"), default=0.05)
  s.add_argument("--seed", type=int, default=0)
  s.add_argument("--out", help="JSON report path")
  s.set_defaults(func=run)


def run(args) -> int:
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
    write_json(report, args.out)
    print(f"report written to {args.out}")
  return 0
