"""``pacbayes bound``: the Proposition 4.1 certificate of a pretrained/fine-tuned pair."""

from __future__ import annotations

import argparse
import os
import re
import sys

from pacbayes.cli.common import (
    CommandError,
    bounded_int,
    check_input_file,
    check_output_path,
    positive_float,
    positive_int,
    probability,
    seed,
)

# Exit status when the one-pool assumption behind a certified extrapolation term is refuted
# by a valid lower bound (the report is written, marked refuted; --force turns it into 0).
EXIT_REFUTED = 3

_SIGMA_HELP = """\
Scales: --sigma fixes the posterior sigma (else it is chosen to minimise the bound; Q may
depend on S). The prior sigma comes from --sigma-prior (one value, k = 1) or --sigma-grid
(a grid fixed in advance, ln k paid); with neither, from the default grid 1e-5 .. 1e-1,
17 points (ln 17 paid), which the report states. --sigma-grid with --sigma-prior is refused.
"""

_SHIFT_HELP = """\
Extrapolation (g_ext): --shift-feature chooses the feature; without it the rule is:
difficulty when the training rows carry `difficulty` (or --test-mixture is given), ngram
otherwise. With the difficulty feature every test row must carry a numeric difficulty (a
row that does not is refused with its file and line); the certified kinds (difficulty-shift
TV, mixture shift, per-slice) assume train and test come from one pool. That assumption is
cross-checked by a domain classifier on n-gram features: when its lower bound on TV exceeds
the certified TV over difficulty, the term is reported REFUTED, g_ext becomes the classifier
estimate, and the exit status is 3 (0 with --force). The mixture-shift and per-slice kinds
need the support fixed in advance (--difficulty-support, or the keys of an exact
--test-mixture covering every training value); the smallest certified kind is the bound.
"""

_LENGTH_HELP = """\
Length: without --max-length a row longer than the model's context
(max_position_embeddings) is refused with its file and line; --max-length N truncates
longer rows on the right to N tokens (N at most the context) and counts them in the report.
"""


def memory_size(flag: str):
  """An argparse type: a byte count such as 512M, 8G or 1.5GiB (K/M/G/T, powers of 1024)."""
  units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}

  def parse(text):
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:I?B)?\s*", text.upper())
    if not m:
      raise argparse.ArgumentTypeError(f"{flag} expects a size such as 512M or 8G, got {text!r}")
    value = int(float(m.group(1)) * units[m.group(2)])
    if not 2**20 <= value <= 2**50:
      raise argparse.ArgumentTypeError(f"{flag} must lie between 1M and 1P, got {text}")
    return value
  return parse


def add_parser(sub) -> None:
  b = sub.add_parser(
      "bound", help="certificate for a pretrained/fine-tuned checkpoint pair",
      description="Two-gap PAC-Bayes certificate (Proposition 4.1 of arXiv 2605.12906).",
      epilog=_SIGMA_HELP + "\n" + _SHIFT_HELP + "\n" + _LENGTH_HELP,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  b.add_argument("--prior", required=True, help="pretrained checkpoint folder (the prior mean)")
  b.add_argument("--posterior", required=True,
                 help="fine-tuned checkpoint folder, or a PEFT LoRA adapter folder of --prior")
  b.add_argument("--train", required=True, help="SFT training set, JSONL")
  b.add_argument("--test", help="test set, JSONL (for g_ext); without it and without "
                 "--test-mixture g_ext = 0 and the bound is on the training distribution")
  b.add_argument("--loss", default="token_error",
                 choices=("token_error", "smoothed_nll", "sequence_error"),
                 help="[0, 1] loss; sequence_error upper-bounds the greedy answer error")
  b.add_argument("--alpha", type=probability("--alpha"),
                 help="smoothing of --loss smoothed_nll (default that of pacbayes.losses)")
  b.add_argument("--method", default="maurer",
                 choices=("maurer", "mcallester", "catoni", "fquad", "flamb"),
                 help="PAC-Bayes bound behind g_gen (all are reported as baselines)")
  b.add_argument("--sigma", type=positive_float("--sigma"), help="posterior sigma (fixed)")
  b.add_argument("--sigma-grid", type=positive_float("--sigma-grid"), nargs="+",
                 help="prior sigma grid fixed in advance (costs ln k)")
  b.add_argument("--sigma-prior", type=positive_float("--sigma-prior"),
                 help="one fixed prior sigma (k = 1)")
  b.add_argument("--mc-scheme", default="chunk", choices=("chunk", "passes"),
                 help="chunk: one posterior draw per --chunk-size rows (one pass); passes: "
                 "--draws full passes")
  b.add_argument("--draws", type=positive_int("--draws"),
                 help="posterior draws M: full passes (passes scheme, default 20) or, in the "
                 "chunk scheme, chunk size = ceil(n / M) (give --draws or --chunk-size)")
  b.add_argument("--chunk-size", type=positive_int("--chunk-size"),
                 help="rows per posterior draw (chunk scheme only; default 1)")
  b.add_argument("--batch-size", type=positive_int("--batch-size", 4096), default=8,
                 help="rows per forward pass")
  b.add_argument("--draws-per-step", type=positive_int("--draws-per-step", 1024),
                 help="posterior draws evaluated at once (memory grows with it)")
  b.add_argument("--max-memory", type=memory_size("--max-memory"),
                 help="memory budget for the draws in flight, e.g. 8G (sets draws per step)")
  b.add_argument("--include", nargs="+", metavar="GLOB",
                 help="Hugging Face parameter names to perturb (fnmatch globs, e.g. "
                 "'model.layers.*.mlp.*'); a pattern matching nothing is an error")
  b.add_argument("--exclude", nargs="+", metavar="GLOB",
                 help="Hugging Face parameter names to leave unperturbed (globs)")
  b.add_argument("--shift-feature", choices=("difficulty", "ngram", "embedding"),
                 help="feature behind g_ext (rule when absent: see below); embedding uses "
                 "the mean final hidden state of --prior")
  b.add_argument("--test-mixture", metavar="FILE.json|uniform",
                 help="the test mixture over difficulty, known exactly: a JSON object "
                 "{difficulty: probability}, or 'uniform' (over --difficulty-support, else "
                 "over the difficulty values seen in --test)")
  b.add_argument("--train-mixture", metavar="FILE.json",
                 help="the training mixture over difficulty when it is known exactly (by "
                 "design): a JSON object {difficulty: probability}; needs --test-mixture. Then "
                 "the TV is exact and the weighted-loss kind is computed too")
  b.add_argument("--difficulty-support", type=float, nargs="+",
                 help="every value `difficulty` can take, fixed in advance")
  b.add_argument("--max-length", type=positive_int("--max-length", 2**20),
                 help="truncate rows to N tokens (see below)")
  b.add_argument("--dtype", choices=("float32", "bfloat16"),
                 help="evaluation dtype of both checkpoints (default: the posterior's "
                 "config); any cast is stated in the report")
  b.add_argument("--chat-template", action="store_true",
                 help="render each `prompt` with the posterior tokenizer's chat template (the "
                 "prior's for a LoRA adapter)")
  b.add_argument("--space", choices=("weights", "lora"), default="weights",
                 help="for a LoRA adapter posterior: weights (the merged weights, prior the "
                 "base; default) or lora (the LoRA parameters, prior their recorded "
                 "initialisation, for adapters written by pacbayes finetune); both are valid")
  b.add_argument("--held-out", action="store_true",
                 help="also certify the fine-tuned weights themselves on the rows `pacbayes "
                 "finetune --holdout` kept out of training (POSTERIOR/holdout.json; the "
                 "training file's sha256 must match): a held-out test-set bound, per slice "
                 "and on the test mixture; the PAC-Bayes part then uses the other rows only")
  b.add_argument("--accept-base", action="store_true",
                 help="the adapter records no content fingerprint and its "
                 "base_model_name_or_path does not name --prior: accept --prior as its base "
                 "(recorded in the report)")
  b.add_argument("--measure-rows", type=bounded_int("--measure-rows", 0, 2**20), default=256,
                 help="rows of the training set (a seeded random subset) for the G_gen "
                 "sharpness measure, uncertified; 0: not computed")
  b.add_argument("--measure-steps", type=bounded_int("--measure-steps", 0, 64), default=6,
                 help="bisection steps on log sigma of the sharpness measure (each one pass "
                 "over --measure-rows rows, after the two ends of 1e-5 .. 1)")
  b.add_argument("--delta", type=probability("--delta"), default=0.05)
  b.add_argument("--seed", type=seed("--seed"), default=0)
  b.add_argument("--out", help="JSON report path")
  b.add_argument("--force", action="store_true",
                 help="exit 0 even when the shift check refutes the one-pool assumption")
  b.add_argument("--quiet", action="store_true", help="no progress output")
  b.set_defaults(func=run)


def check_args(args) -> None:
  """The checks that need no file contents: flag combinations, inputs, the output path."""
  if args.sigma_grid and args.sigma_prior is not None:
    raise CommandError("--sigma-grid and --sigma-prior: give one (a grid to choose the prior "
                       "sigma from, or one fixed prior sigma), not both")
  if args.mc_scheme == "passes" and args.chunk_size is not None:
    raise CommandError("--chunk-size applies to --mc-scheme chunk only; use --draws with "
                       "--mc-scheme passes")
  if args.draws is not None and args.chunk_size is not None:
    raise CommandError("--draws and --chunk-size both set the number of draws in the chunk "
                       "scheme; give one")
  if args.alpha is not None and args.loss != "smoothed_nll":
    raise CommandError(f"--alpha applies to --loss smoothed_nll only, not {args.loss}")
  if args.draws_per_step is not None and args.max_memory is not None:
    raise CommandError("--draws-per-step and --max-memory both set the draws in flight; "
                       "give one")
  mixture_file = None
  if args.test_mixture is not None and args.test_mixture != "uniform":
    mixture_file = args.test_mixture
    check_input_file(mixture_file, "--test-mixture")
  if args.train_mixture is not None:
    if args.test_mixture is None:
      raise CommandError("--train-mixture needs --test-mixture (both mixtures exact)")
    check_input_file(args.train_mixture, "--train-mixture")
  check_input_file(args.train, "--train")
  for flag, folder in (("--prior", args.prior), ("--posterior", args.posterior)):
    if not os.path.isdir(folder):
      raise CommandError(f"{flag} {folder}: no such folder (a Hugging Face checkpoint folder"
                         + (", or a PEFT LoRA adapter folder" if flag == "--posterior" else "")
                         + ")")
  if args.held_out:
    if not os.path.isfile(os.path.join(args.posterior, "holdout.json")):
      raise CommandError(f"--held-out: {args.posterior} has no holdout.json (no rows were kept "
                         "out of training; fine-tune with `pacbayes finetune --holdout F`)")
  if args.test is not None:
    check_input_file(args.test, "--test")
  check_output_path(args.out, "--out",
                    inputs=[args.prior, args.posterior, args.train, args.test, mixture_file,
                            args.train_mixture])


# Python argument names in library messages -> the flags that set them.
_FLAGS = {
    "sigma_grid": "--sigma-grid", "sigma_prior": "--sigma-prior", "sigma": "--sigma",
    "difficulty_support": "--difficulty-support", "test_mixture": "--test-mixture",
    "train_mixture": "--train-mixture",
    "shift_feature": "--shift-feature", "max_length": "--max-length", "include": "--include",
    "exclude": "--exclude", "chunk_size": "--chunk-size", "num_draws": "--draws",
    "draws_per_step": "--draws-per-step", "max_memory": "--max-memory",
    "batch_size": "--batch-size", "alpha": "--alpha", "seed": "--seed", "delta": "--delta",
    "measure_rows": "--measure-rows", "measure_steps": "--measure-steps", "space": "--space",
}
_NAME = re.compile(r"(?<![\w-])(" + "|".join(sorted(_FLAGS, key=len, reverse=True)) +
                   r")(?=[:=\[]|$)")


def flag_message(text: str) -> str:
  """A library message with its argument names spelled as the command's flags."""
  return _NAME.sub(lambda m: _FLAGS[m.group(1)], text)


def _config_dtype(folder: str) -> str | None:
  from pacbayes.models.checkpoint import load_config

  try:
    return load_config(folder).dtype
  except (ValueError, OSError):
    return None  # Reported by the library, with its own message.


def run(args) -> int:
  check_args(args)
  from pacbayes.core import sharding
  from pacbayes.pipeline import run as pipeline
  from pacbayes.posterior.kl import check_sigmas

  dtype = args.dtype or _config_dtype(args.posterior) or _config_dtype(args.prior) or "float32"
  check_sigmas({"--sigma": args.sigma, "--sigma-grid": args.sigma_grid,
                "--sigma-prior": args.sigma_prior}, dtype=dtype)
  sharding.maybe_initialize_distributed()
  try:
    cert = _certify(args, pipeline)
  except CommandError:
    raise
  except ValueError as e:
    raise CommandError(flag_message(str(e))) from None
  print(cert.to_table())
  import jax  # noqa: PLC0415  (already loaded by the pipeline; here for the process index)

  if args.out and jax.process_index() == 0:  # one writer in a multi-host job
    cert.to_json(args.out)
    print(f"report written to {args.out}")
  check = cert.extra.get("shift_check") or {}
  if check.get("refuted"):
    line = (f"pacbayes bound: refuted: {check['reason']}" + ("" if not args.force else
            " (--force: exit status 0)"))
    print(line, file=sys.stderr)
    return 0 if args.force else EXIT_REFUTED
  return 0


def _certify(args, pipeline):
  from pacbayes.pipeline.config import BoundConfig

  return pipeline.run_bound(BoundConfig.from_args(args))
