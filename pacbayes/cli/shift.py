"""``pacbayes shift``: TV between the training and test distributions (the extrapolation gap)."""

from __future__ import annotations

from pacbayes.cli.common import (
    CommandError,
    check_input_file,
    check_output_path,
    finite_float,
    positive_int,
    probability,
    seed,
    write_json,
)


def add_parser(sub) -> None:
  s = sub.add_parser("shift", help="TV between train and test (the extrapolation gap)")
  s.add_argument("--train", required=True)
  s.add_argument("--test", required=True)
  s.add_argument("--feature", default="difficulty", choices=("difficulty", "ngram", "embedding"))
  s.add_argument("--support", type=finite_float("--support"), nargs="+",
                 help="every value `difficulty` can take, fixed in advance (--feature "
                 "difficulty only; the files must carry `difficulty` on every row)")
  s.add_argument("--model", help="checkpoint folder for --feature embedding (mean hidden state)")
  s.add_argument("--max-length", type=positive_int("--max-length"),
                 help="--feature embedding: longest row in tokens (default: the model's context)")
  s.add_argument("--batch-size", type=positive_int("--batch-size", maximum=4096), default=32,
                 help="--feature embedding: rows per forward pass")
  s.add_argument("--delta", type=probability("--delta"), default=0.05)
  s.add_argument("--seed", type=seed("--seed"), default=0)
  s.add_argument("--out", help="JSON report path")
  s.set_defaults(func=run)


def run(args) -> int:
  from pacbayes import shift

  embedding = args.feature == "embedding"
  if embedding and not args.model:
    raise CommandError("--feature embedding needs --model DIR (a checkpoint folder)")
  if not embedding:
    for flag, value in (("--model", args.model), ("--max-length", args.max_length)):
      if value is not None:
        raise CommandError(f"{flag} applies to --feature embedding only")
  if args.support is not None and args.feature != "difficulty":
    raise CommandError("--support applies to --feature difficulty only")
  check_input_file(args.train, "--train")
  check_input_file(args.test, "--test")
  check_output_path(args.out, "--out", inputs=(args.train, args.test, args.model))
  extra = ({"model_dir": args.model, "features": shift.FeatureOptions(
      max_length=args.max_length, batch_size=args.batch_size)} if embedding else {})
  if args.support is not None:
    extra["support"] = args.support
  report = shift.shift_report(args.train, args.test, feature=args.feature, delta=args.delta,
                              seed=args.seed, **extra)
  print(shift.format_shift_table(report))
  if args.out:
    write_json(report, args.out)
    print(f"report written to {args.out}")
  return 0
