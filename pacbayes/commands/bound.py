"""``pacbayes bound``: the Proposition 4.1 certificate of a pretrained/fine-tuned pair."""

from __future__ import annotations

from pacbayes.commands.common import CommandError, positive_float, probability


def add_parser(sub) -> None:
  b = sub.add_parser("bound", help="certificate for a pretrained/fine-tuned checkpoint pair")
  b.add_argument("--prior", required=True, help="pretrained checkpoint folder (the prior mean)")
  b.add_argument("--posterior", required=True, help="fine-tuned checkpoint folder")
  b.add_argument("--train", required=True, help="SFT training set, JSONL")
  b.add_argument("--test", help="test set, JSONL (for g_ext); without it g_ext = 0")
  b.add_argument("--loss", default="token_error", choices=("token_error", "smoothed_nll"))
  b.add_argument("--sigma", type=positive_float("--sigma"), help="posterior sigma (no search)")
  b.add_argument("--sigma-grid", type=positive_float("--sigma-grid"), nargs="+",
                 help="prior sigma grid fixed in advance (costs ln k)")
  b.add_argument("--sigma-prior", type=positive_float("--sigma-prior"),
                 help="prior sigma (with --sigma: no grid, no search)")
  b.add_argument("--mc-scheme", default="chunk", choices=("chunk", "passes"))
  b.add_argument("--draws", type=int, default=None, help="posterior draws (passes scheme)")
  b.add_argument("--chunk-size", type=int, default=None, help="examples per draw (chunk scheme)")
  b.add_argument("--batch-size", type=int, default=8)
  b.add_argument("--include", nargs="*", help="glob patterns of perturbed parameters")
  b.add_argument("--exclude", nargs="*", help="glob patterns of unperturbed parameters")
  b.add_argument("--difficulty-support", type=float, nargs="+",
                 help="every value `difficulty` can take, fixed in advance (for g_ext)")
  b.add_argument("--delta", type=probability("--delta"), default=0.05)
  b.add_argument("--seed", type=int, default=0)
  b.add_argument("--out", help="JSON report path")
  b.add_argument("--quiet", action="store_true", help="no progress bar")
  b.set_defaults(func=run)


def run(args) -> int:
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
