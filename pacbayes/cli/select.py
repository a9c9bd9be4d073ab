"""``pacbayes select``: which difficulty bucket to fine-tune on for a budget, from pilot runs.

Offline mode: the pilots are the cells of a lab results file (``--from-results``). The
output JSON holds every bucket's predicted risk at ``--budget`` with its interval, the
probability that it is best, the fitted curve, the pilots' numbers, the recommendation and
the cost of the pilots against training every bucket at the budget. A selection the pilots
do not constrain is written with ``"status": "unconstrained"`` and no recommendation (exit
0, the reason printed), and so is one whose buckets the bootstrap cannot tell apart
(``"verdict": "indistinguishable"``: P(best) of the lowest prediction below --min-p-best).
Bad input writes nothing (exit 2, one line naming the flag, file or key). An existing --out
or --figure is replaced, and the command says so; the JSON and the figure are committed
together (neither is written when the other fails).
"""

from __future__ import annotations

import argparse
import json
import os

from pacbayes.cli.common import (
    CommandError,
    bounded_float,
    bounded_int,
    check_input_file,
    check_output_folder,
    check_output_path,
    positive_float,
    positive_int,
    probability,
    seed,
)

BUDGET_MAX = 10**12


def add_parser(sub) -> None:
  s = sub.add_parser("select", help="which difficulty bucket to train on for a budget N, "
                     "predicted from pilot runs")
  mode = s.add_mutually_exclusive_group(required=True)
  mode.add_argument("--from-results", metavar="RESULTS",
                    help="offline mode: a lab results.json whose cells are the pilots")
  mode.add_argument("--model", metavar="BASE",
                    help="online mode: base Hugging Face folder; the pilots are fine-tuned")
  s.add_argument("--budget", required=True, type=bounded_int("--budget", 2, BUDGET_MAX),
                 help="N, training rows of the final run (above every pilot size)")
  s.add_argument("--out", required=True, help="JSON output path")
  s.add_argument("--figure", help="image path: pilots, fitted curves to N, recommendation")
  s.add_argument("--arm", help="offline: study arm (family of buckets; default tilted)")
  s.add_argument("--base", help="offline: base model of the pilots (default base)")
  s.add_argument("--method", default="sft",
                 help="fine-tuning method of the pilots (sft or dft)")
  s.add_argument("--pilot-sizes", type=positive_int("--pilot-sizes", maximum=BUDGET_MAX),
                 nargs="+", help="pilot sizes n (offline default: every size below --budget; "
                 "online default: --pilot-fractions of --budget)")
  s.add_argument("--risk", choices=("error", "seq_error", "token_error"),
                 help="per-item loss: offline 'error' (1 - correct greedy answer, default) or "
                      "'seq_error'; online 'seq_error' (default) or 'token_error'")
  s.add_argument("--test-mixture", metavar="D:P,...",
                 help="target mixture over difficulty, e.g. 3:0.5,4:0.5 (offline: over the "
                      "study's test slices, default its test mixture; online: over the pool's "
                      "difficulties, estimated on held-out pool rows)")
  _add_online_flags(s)
  s.add_argument("--family", default="auto", choices=("auto", "sqrt", "power", "rectified"),
                 help="curve family (auto: the largest the distinct pilot sizes identify)")
  s.add_argument("--bootstrap", type=bounded_int("--bootstrap", 10, 10**6), default=1000,
                 help="bootstrap replicates over pilot seeds and test items")
  s.add_argument("--level", type=probability("--level"), default=0.95,
                 help="two-sided level of the intervals")
  s.add_argument("--max-extrapolation", type=positive_float("--max-extrapolation"),
                 default=64.0, help="refuse N beyond this multiple of the largest pilot")
  s.add_argument("--max-interval-width", type=positive_float("--max-interval-width"),
                 default=0.25, help="refuse a prediction interval wider than this (risk)")
  s.add_argument("--min-p-best", type=bounded_float("--min-p-best", 0.5, 1.0), default=0.9,
                 help="smallest P(best) of the lowest prediction for a clear recommendation "
                      "(below: the buckets cannot be told apart)")
  s.add_argument("--seed", type=seed("--seed"), default=0, help="seed of the bootstrap")
  s.set_defaults(func=run)


# Online-only flags (default None: given with --from-results they are refused by name).
ONLINE_FLAGS = ("train", "test", "buckets", "pilot_fractions", "seeds", "heldout_rows",
                "lora_rank", "lora_alpha", "lora_targets", "full", "epochs", "min_steps",
                "batch_size", "lr", "max_length", "dtype", "mesh", "work", "sample_seed",
                "eval_batch_size", "no_progress")


def _add_online_flags(s) -> None:
  g = s.add_argument_group("online mode (--model): pilots fine-tuned per bucket")
  g.add_argument("--train", metavar="POOL.jsonl",
                 help="the pool of training rows, each with a 'difficulty'")
  g.add_argument("--test", metavar="TEST.jsonl",
                 help="the target rows (or give --test-mixture)")
  g.add_argument("--buckets", nargs="+", metavar="LO-HI",
                 help="candidate buckets as closed difficulty ranges, e.g. 1-1 2-3 4-4 "
                      "(default: the thirds of the pool's difficulty)")
  g.add_argument("--pilot-fractions", nargs="+", type=fraction("--pilot-fractions"),
                 metavar="F", help="pilot sizes as fractions of --budget (default 1/16 1/8 1/4)")
  g.add_argument("--seeds", type=bounded_int("--seeds", 1, 100),
                 help="pilots per bucket and size (default 2)")
  g.add_argument("--heldout-rows", type=positive_int("--heldout-rows"),
                 help="with --test-mixture: held-out pool rows per difficulty (default 64)")
  g.add_argument("--lora-rank", type=positive_int("--lora-rank"),
                 help="LoRA pilots of this rank (default: rank 8 when the base has more "
                      "than 10M parameters, else full fine-tunes)")
  g.add_argument("--lora-alpha", type=positive_float("--lora-alpha"), help="LoRA alpha")
  g.add_argument("--lora-targets", nargs="+", help="LoRA target modules")
  g.add_argument("--full", action="store_true", default=None,
                 help="full fine-tunes whatever the base's size")
  g.add_argument("--epochs", type=positive_float("--epochs"),
                 help="epochs of every pilot (default 3; steps = max(--min-steps, "
                      "ceil(epochs n / batch)))")
  g.add_argument("--min-steps", type=positive_int("--min-steps"),
                 help="fewest steps of a pilot (default 20)")
  g.add_argument("--batch-size", type=positive_int("--batch-size"),
                 help="rows per step (default 32)")
  g.add_argument("--lr", type=positive_float("--lr"), help="peak learning rate (default 1e-3)")
  g.add_argument("--max-length", type=positive_int("--max-length"),
                 help="truncate training and target rows to this many tokens")
  g.add_argument("--dtype", choices=("float32", "bfloat16"), help="model dtype")
  g.add_argument("--mesh", help="device mesh of the pilots' fine-tunes, e.g. data=1")
  g.add_argument("--work", metavar="DIR",
                 help="keep the pilots here; a rerun reuses finished pilots (default: a "
                      "temporary folder, removed)")
  g.add_argument("--sample-seed", type=seed("--sample-seed"),
                 help="seed of the pilots' samples and the held-out rows (default 0)")
  g.add_argument("--eval-batch-size", type=positive_int("--eval-batch-size"),
                 help="target rows per evaluation batch (default 32)")
  g.add_argument("--no-progress", action="store_true", default=None,
                 help="no progress bar")


def fraction(flag: str):
  """An argparse type: a fraction in (0, 1) written as P/Q or a decimal, naming `flag`."""
  def parse(text):
    num, sep, den = text.partition("/")
    try:
      value = float(num) / float(den) if sep else float(text)
    except (ValueError, ZeroDivisionError):
      raise argparse.ArgumentTypeError(f"{flag} expects fractions like 1/16 or 0.0625, got "
                                       f"{text!r}") from None
    if not 0 < value < 1:
      raise argparse.ArgumentTypeError(f"{flag} must lie in (0, 1), got {text}")
    return value
  return parse


def parse_mixture(text: str, flag: str = "--test-mixture") -> dict[int, float]:
  """``"3:0.5,4:0.5"`` -> {3: 0.5, 4: 0.5}; raises CommandError naming `flag`."""
  if not text.strip():
    raise CommandError(f"{flag}: empty; expected DIFFICULTY:PROBABILITY pairs, e.g. 3:0.5,4:0.5")
  out: dict[int, float] = {}
  for part in text.split(","):
    d, sep, p = part.strip().partition(":")
    try:
      if not sep:
        raise ValueError
      key, mass = int(d), float(p)
    except ValueError:
      raise CommandError(f"{flag}: expected DIFFICULTY:PROBABILITY pairs separated by commas, "
                         f"got {part.strip()!r}") from None
    if key in out:
      raise CommandError(f"{flag}: difficulty {key} appears twice")
    if not 0 <= mass <= 1:
      raise CommandError(f"{flag}: difficulty {key} has mass {p}, expected a number in [0, 1]")
    out[key] = mass
  return out


def run(args) -> int:
  if args.model is not None:
    return run_online(args)
  given = [f"--{name.replace('_', '-')}" for name in ONLINE_FLAGS
           if getattr(args, name) is not None]
  if given:
    raise CommandError(f"{given[0]}: only with --model (the online mode); --from-results "
                       "reads its pilots from the results file")
  if args.risk == "token_error":
    raise CommandError("--risk token_error: the offline mode reads 'error' or 'seq_error' "
                       "from the results file")
  from pacbayes.select.offline import StudyQuery, load_study_results, select_from_results

  check_input_file(args.from_results, "--from-results")
  _check_outputs(args, inputs=(args.from_results,))
  mixture = parse_mixture(args.test_mixture) if args.test_mixture is not None else None
  query = StudyQuery(arm=args.arm or "tilted", base=args.base or "base", method=args.method,
                     pilot_sizes=tuple(args.pilot_sizes) if args.pilot_sizes else None,
                     risk=args.risk or "error", target_mixture=mixture)
  results = load_study_results(args.from_results)
  selection = select_from_results(results, args.budget, query, _options(args))
  return _write(selection, args, f"{args.from_results}: {query.arm}/{query.base}/{query.method}")


def run_online(args) -> int:
  """The online mode: checks everything, runs the pilots, writes the selection."""
  from pacbayes.select.online import OnlineQuery, PilotProtocol, plan_online, select_online

  for flag, value in (("--arm", args.arm), ("--base", args.base)):
    if value is not None:
      raise CommandError(f"{flag}: only with --from-results (the offline mode)")
  if args.risk == "error":
    raise CommandError("--risk error: the online mode measures 'seq_error' or 'token_error' "
                       "(the answer error needs generation)")
  if not os.path.isdir(args.model):
    raise CommandError(f"--model {args.model}: no such folder")
  if args.train is None:
    raise CommandError("--train: the online mode needs the pool of training rows")
  if (args.test is None) == (args.test_mixture is None):
    raise CommandError("--test or --test-mixture: give exactly one target")
  if args.pilot_sizes is not None and args.pilot_fractions is not None:
    raise CommandError("--pilot-sizes and --pilot-fractions: give one of them")
  check_input_file(args.train, "--train")
  inputs = [args.model, args.train]
  if args.test is not None:
    check_input_file(args.test, "--test")
    inputs.append(args.test)
  _check_outputs(args, inputs=inputs)
  if args.work is not None:
    check_output_folder(args.work, "--work", inputs=inputs)
  mixture = parse_mixture(args.test_mixture) if args.test_mixture is not None else None
  query = OnlineQuery(**_given(
      model=args.model, train=args.train, budget=args.budget, test=args.test,
      test_mixture=mixture, buckets=_tuple(args.buckets),
      pilot_fractions=_tuple(args.pilot_fractions), pilot_sizes=_tuple(args.pilot_sizes),
      seeds=args.seeds, heldout_rows=args.heldout_rows, risk=args.risk,
      sample_seed=args.sample_seed, work=args.work, eval_batch_size=args.eval_batch_size,
      progress=None if args.no_progress is None else False))
  protocol = PilotProtocol(**_given(
      epochs=args.epochs, min_steps=args.min_steps, batch_size=args.batch_size,
      learning_rate=args.lr, method=args.method, lora_rank=args.lora_rank,
      full=args.full, lora_alpha=args.lora_alpha, lora_targets=_tuple(args.lora_targets),
      max_length=args.max_length, dtype=args.dtype, mesh=args.mesh))
  plan = plan_online(query, protocol)  # every refusal before anything is trained or written
  selection = select_online(query, protocol, _options(args), plan=plan)
  return _write(selection, args, f"{args.model}: {args.train}")


def _given(**kw):
  """The keyword arguments that were given (None: the dataclass's default)."""
  return {k: v for k, v in kw.items() if v is not None}


def _tuple(values):
  return None if values is None else tuple(values)


def _options(args):
  from pacbayes.select.predict import SelectOptions

  return SelectOptions(family=args.family, bootstrap=args.bootstrap, level=args.level,
                       max_extrapolation=args.max_extrapolation,
                       max_interval_width=args.max_interval_width,
                       min_p_best=args.min_p_best, seed=args.seed)


def _check_outputs(args, inputs) -> None:
  from pacbayes.cli.plot import check_image_path

  check_output_path(args.out, "--out", inputs=inputs)
  if args.figure is not None:
    if _same_path(args.figure, args.out):
      raise CommandError(f"--figure {args.figure}: is the --out file; choose another path")
    check_output_path(args.figure, "--figure", inputs=inputs)
    check_image_path(args.figure, "--figure")


def _write(selection, args, title: str) -> int:
  """Prints the table and writes the JSON (and the figure) all or nothing."""
  import io

  from pacbayes.core.atomic import write_atomic
  from pacbayes.select import figure as select_figure
  from pacbayes.select.predict import STATUS_OK

  replaced = {p for p in (args.out, args.figure) if p is not None and os.path.isfile(p)}
  text = json.dumps(selection, indent=2, sort_keys=True, allow_nan=False) + "\n"
  image = None
  if args.figure is not None:  # Rendered before anything is written: all or nothing.
    fig = select_figure.selection_figure(selection, title=title)
    buffer = io.BytesIO()
    fmt = os.path.splitext(args.figure)[1].lstrip(".").lower()
    fig.savefig(buffer, format=fmt, dpi=130)
    select_figure.close(fig)
    image = buffer.getvalue()
  print(format_selection(selection))

  def write_json_file() -> None:
    write_atomic(args.out, lambda g: g.write(text))

  if image is None:
    write_json_file()
  else:
    # The JSON is committed inside the figure's write: when either fails neither is
    # written (the figure's temporary file is dropped on the JSON's error).
    write_atomic(args.figure, lambda f: (f.write(image), write_json_file()), binary=True)
  for what, path in (("selection", args.out), ("figure", args.figure)):
    if path is not None:
      note = " (replaced the existing file)" if path in replaced else ""
      print(f"{what} written to {path}{note}")
  if selection["status"] != STATUS_OK:
    print(f"pacbayes select: unconstrained: {selection['reason']}")
  return 0


def _same_path(a: str, b: str) -> bool:
  return os.path.realpath(a) == os.path.realpath(b) or (
      os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b))


def format_selection(selection) -> str:
  """A short table (bucket, family, prediction at N [interval], P(best)), the verdict and
  the cost, each line saying whether it is predicted or measured."""
  n = selection["budget"]
  lines = [f"{'bucket':<12} {'family':<10} {'predicted risk at N=' + str(n):>26} "
           f"{'interval':>17} {'P(best)':>8}"]
  measured = (selection.get("measured_at_budget") or {}).get("risk", {})
  for row in selection["buckets"]:
    pilots = ", ".join(f"n={p['n']}: {p['mean']:.4f}" for p in row["pilots"])
    if row["prediction"] is None:
      lines.append(f"{row['bucket']:<12} {'-':<10} {'unconstrained':>26}   "
                   f"(measured pilots {pilots})")
      continue
    lo, hi = row["interval"]
    p = "-" if row["p_best"] is None else f"{row['p_best']:.3f}"
    extra = (f"   (measured at N: {measured[row['bucket']]:.4f})" if row["bucket"] in measured
             else "")
    lines.append(f"{row['bucket']:<12} {row['family']:<10} {row['prediction']:>26.4f} "
                 f"{f'[{lo:.4f}, {hi:.4f}]':>17} {p:>8}{extra}")
  lines.append(f"verdict: {selection.get('verdict', selection['status'])}: "
               f"{selection.get('statement', '')}")
  if selection.get("cost"):
    lines.append(f"cost: {selection['cost']['statement']}")
  lines.append("nothing here is certified: predictions are forecasts of the fitted curves; "
               "the pilot and at-N risks are measured")
  return "\n".join(lines)
