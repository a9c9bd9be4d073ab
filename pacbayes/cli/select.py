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

import json
import os

from pacbayes.cli.common import (
    CommandError,
    bounded_float,
    bounded_int,
    check_input_file,
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
  s.add_argument("--from-results", required=True, metavar="RESULTS",
                 help="a lab results.json: its cells are the pilots")
  s.add_argument("--budget", required=True, type=bounded_int("--budget", 2, BUDGET_MAX),
                 help="N, training rows of the final run (above every pilot size)")
  s.add_argument("--out", required=True, help="JSON output path")
  s.add_argument("--figure", help="image path: pilots, fitted curves to N, recommendation")
  s.add_argument("--arm", default="tilted", help="study arm (family of buckets)")
  s.add_argument("--base", default="base", help="base model of the pilots")
  s.add_argument("--method", default="sft", help="fine-tuning method of the pilots")
  s.add_argument("--pilot-sizes", type=positive_int("--pilot-sizes", maximum=BUDGET_MAX),
                 nargs="+", help="pilot sizes n (default: every size below --budget)")
  s.add_argument("--risk", default="error", choices=("error", "seq_error"),
                 help="per-item loss: 1 - correct (greedy answer) or sequence error")
  s.add_argument("--test-mixture", metavar="D:P,...",
                 help="target mixture over the test slices, e.g. 3:0.5,4:0.5 (default: the "
                      "study's test mixture)")
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
  import io

  from pacbayes.cli.plot import check_image_path
  from pacbayes.core.atomic import write_atomic
  from pacbayes.select import figure as select_figure
  from pacbayes.select.offline import StudyQuery, load_study_results, select_from_results
  from pacbayes.select.predict import STATUS_OK, SelectOptions

  check_input_file(args.from_results, "--from-results")
  check_output_path(args.out, "--out", inputs=(args.from_results,))
  if args.figure is not None:
    if _same_path(args.figure, args.out):
      raise CommandError(f"--figure {args.figure}: is the --out file; choose another path")
    check_output_path(args.figure, "--figure", inputs=(args.from_results,))
    check_image_path(args.figure, "--figure")
  replaced = {p for p in (args.out, args.figure) if p is not None and os.path.isfile(p)}
  mixture = parse_mixture(args.test_mixture) if args.test_mixture is not None else None
  query = StudyQuery(arm=args.arm, base=args.base, method=args.method,
                     pilot_sizes=tuple(args.pilot_sizes) if args.pilot_sizes else None,
                     risk=args.risk, target_mixture=mixture)
  options = SelectOptions(family=args.family, bootstrap=args.bootstrap, level=args.level,
                          max_extrapolation=args.max_extrapolation,
                          max_interval_width=args.max_interval_width,
                          min_p_best=args.min_p_best, seed=args.seed)
  results = load_study_results(args.from_results)
  selection = select_from_results(results, args.budget, query, options)
  text = json.dumps(selection, indent=2, sort_keys=True, allow_nan=False) + "\n"
  image = None
  if args.figure is not None:  # Rendered before anything is written: all or nothing.
    fig = select_figure.selection_figure(
        selection, title=f"{args.from_results}: {args.arm}/{args.base}/{args.method}")
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
