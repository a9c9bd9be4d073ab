"""``pacbayes select``: which difficulty bucket to fine-tune on for a budget, from pilot runs.

Offline mode: the pilots are the cells of a lab results file (``--from-results``). The
output JSON holds every bucket's predicted risk at ``--budget`` with its interval, the
probability that it is best, the fitted curve, the pilots' numbers, the recommendation and
the cost of the pilots against training every bucket at the budget. A selection the pilots
do not constrain is written with ``"status": "unconstrained"`` and no recommendation (exit
0, the reason printed); bad input writes nothing (exit 2, one line).
"""

from __future__ import annotations

from pacbayes.cli.common import (
    CommandError,
    bounded_int,
    check_input_file,
    check_output_path,
    positive_float,
    positive_int,
    probability,
    seed,
    write_json,
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
  s.add_argument("--base", default="base")
  s.add_argument("--method", default="sft")
  s.add_argument("--pilot-sizes", type=positive_int("--pilot-sizes", maximum=BUDGET_MAX),
                 nargs="+", help="pilot sizes n (default: every size below --budget)")
  s.add_argument("--risk", default="error", choices=("error", "seq_error"),
                 help="per-item loss: 1 - correct (greedy answer) or sequence error")
  s.add_argument("--test-mixture", metavar="D:P,...",
                 help="target mixture over the test slices, e.g. 3:0.5,4:0.5 (default: the "
                      "study's test mixture)")
  s.add_argument("--family", default="auto", choices=("auto", "sqrt", "power", "rectified"),
                 help="curve family (auto: the largest the distinct pilot sizes identify)")
  s.add_argument("--bootstrap", type=bounded_int("--bootstrap", 10, 10**6), default=1000)
  s.add_argument("--level", type=probability("--level"), default=0.95)
  s.add_argument("--max-extrapolation", type=positive_float("--max-extrapolation"),
                 default=64.0, help="refuse N beyond this multiple of the largest pilot")
  s.add_argument("--max-interval-width", type=positive_float("--max-interval-width"),
                 default=0.25, help="refuse a prediction interval wider than this (risk)")
  s.add_argument("--seed", type=seed("--seed"), default=0)
  s.set_defaults(func=run)


def parse_mixture(text: str, flag: str = "--test-mixture") -> dict[int, float]:
  """``"3:0.5,4:0.5"`` -> {3: 0.5, 4: 0.5}; raises CommandError naming `flag`."""
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
    check_output_path(args.figure, "--figure", inputs=(args.from_results, args.out))
    check_image_path(args.figure, "--figure")
  mixture = parse_mixture(args.test_mixture) if args.test_mixture else None
  query = StudyQuery(arm=args.arm, base=args.base, method=args.method,
                     pilot_sizes=tuple(args.pilot_sizes) if args.pilot_sizes else None,
                     risk=args.risk, target_mixture=mixture)
  options = SelectOptions(family=args.family, bootstrap=args.bootstrap, level=args.level,
                          max_extrapolation=args.max_extrapolation,
                          max_interval_width=args.max_interval_width, seed=args.seed)
  results = load_study_results(args.from_results)
  selection = select_from_results(results, args.budget, query, options)
  image = None
  if args.figure is not None:  # Rendered before anything is written: all or nothing.
    fig = select_figure.selection_figure(
        selection, title=f"{args.from_results}: {args.arm}/{args.base}/{args.method}")
    buffer = io.BytesIO()
    fmt = args.figure.rsplit(".", 1)[-1].lower()
    fig.savefig(buffer, format=fmt, dpi=130)
    select_figure.close(fig)
    image = buffer.getvalue()
  print(format_selection(selection))
  write_json(selection, args.out)
  print(f"selection written to {args.out}")
  if image is not None:
    write_atomic(args.figure, lambda f: f.write(image), binary=True)
    print(f"figure written to {args.figure}")
  if selection["status"] != STATUS_OK:
    print(f"pacbayes select: unconstrained: {selection['reason']}")
  return 0


def format_selection(selection) -> str:
  """A short table: bucket, family, prediction at N [interval], P(best)."""
  n = selection["budget"]
  lines = [f"{'bucket':<12} {'family':<10} {'risk at N=' + str(n):>16} {'interval':>17} "
           f"{'P(best)':>8}"]
  for row in selection["buckets"]:
    if row["prediction"] is None:
      lines.append(f"{row['bucket']:<12} {'-':<10} {'unconstrained':>16}")
      continue
    lo, hi = row["interval"]
    p = "-" if row["p_best"] is None else f"{row['p_best']:.3f}"
    lines.append(f"{row['bucket']:<12} {row['family']:<10} {row['prediction']:>16.4f} "
                 f"{f'[{lo:.4f}, {hi:.4f}]':>17} {p:>8}")
  rec = selection["recommendation"]
  lines.append(f"recommendation: {rec if rec is not None else 'none (unconstrained)'}")
  return "\n".join(lines)
