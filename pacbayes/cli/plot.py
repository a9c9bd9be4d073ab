"""``pacbayes plot``: figures from a lab results file or from bound reports."""

from __future__ import annotations

import math
import os

from pacbayes.cli.common import CommandError, check_input_file, check_output_path

# The report keys `plots.report_terms` draws; each must be a finite number (g_gen / g_ext may be
# null when their status says "saturated" / "vacuous": the figure then draws no term bars).
REPORT_TERMS = ("emp_risk", "epsilon", "g_gen", "g_ext", "bound")


def add_parser(sub) -> None:
  p = sub.add_parser("plot", help="figures from results files")
  p.add_argument("results", nargs="+", help="a lab results.json, or bound reports and "
                 "held-out certificates")
  p.add_argument("--out", required=True, help="image path (.png, .pdf, .svg, ...)")
  p.add_argument("--kind", help="lab results: a figure of pacbayes.study.plots.LAB_FIGURES "
                 "(default the first); bound reports: terms (the default)")
  p.add_argument("--allow-mixed", action="store_true",
                 help="bound reports: stack reports of different posterior spaces (weights vs "
                 "LoRA) or sigmas; the figure then says so (refused by default)")
  p.add_argument("--base", default="base")
  p.add_argument("--method", default="sft")
  p.set_defaults(func=run)


def check_image_path(path: str, flag: str = "--out") -> None:
  """Refuses an image path whose extension matplotlib cannot write, naming the formats."""
  from matplotlib.figure import Figure

  formats = Figure().canvas.get_supported_filetypes()
  ext = os.path.splitext(path)[1].lstrip(".").lower()
  if ext not in formats:
    raise CommandError(f"{flag} {path}: unknown image type {('.' + ext) if ext else '(none)'}; "
                       f"use one of {', '.join('.' + e for e in sorted(formats))}")


def check_text_file(path: str) -> None:
  """Refuses a results file that is not UTF-8 text (a binary file), naming it."""
  with open(path, "rb") as f:
    head = f.read(1 << 16)
  try:
    head.decode("utf-8")
  except UnicodeDecodeError as e:
    if e.start < len(head) - 4:  # Not merely a character cut at the end of the sample.
      raise CommandError(f"{path}: not UTF-8 text (byte {e.start}); expected a JSON results "
                         "file or bound report") from None
  if b"\x00" in head:
    raise CommandError(f"{path}: holds NUL bytes (a binary file?); expected JSON")


def check_bound_report(report: dict, path: str) -> None:
  """Refuses a bound report with a plotted key missing or not a finite number.

  ``g_gen`` / ``g_ext`` may be null when the report's ``g_gen_status`` / ``g_ext_status``
  says "saturated" / "vacuous" (the figure then draws a marker, not a bar).

  A report that names its ``schema`` (as `pacbayes bound` writes it) is then read through
  `pacbayes.certificate.core.Certificate.from_dict`, the one definition of a report, so every
  other key is checked too; a hand-made report needs only the plotted keys.

  Raises:
    CommandError / ValueError: naming the file and the key.
  """
  from pacbayes.certificate.core import Certificate

  for key in REPORT_TERMS:
    if key not in report:
      raise CommandError(f"{path}: the bound report lacks the key {key!r}")
    value = report[key]
    if value is None and report.get(f"{key}_status") in ("saturated", "vacuous"):
      continue  # A saturated / vacuous term is written as null (its value in "raw_terms").
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
      raise CommandError(f"{path}: key {key!r} must be a finite number, got {value!r}")
  if "schema" in report:  # Written by `pacbayes bound`: every key must be as it writes it.
    Certificate.from_dict({k: v for k, v in report.items() if k != "_path"}, source=path)


def check_heldout_report(report: dict, path: str) -> None:
  """Refuses a held-out certificate whose plotted values are missing or not numbers in range.

  Raises:
    CommandError: naming the file and the key.
  """
  for key, optional in (("bound_train", False), ("bound_test", True), ("emp_risk", False)):
    value = report.get(key)
    if optional and value is None:
      continue
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        math.isfinite(value) and value >= 0):
      raise CommandError(f"{path}: key {key!r} must be a finite number >= 0, got {value!r}")


def run(args) -> int:
  from pacbayes.study import plots

  check_output_path(args.out, "--out", inputs=args.results)
  check_image_path(args.out)
  for path in args.results:
    check_input_file(path, "results")
    check_text_file(path)
  loaded = [plots.load_results(p) for p in args.results]
  lab = [r for r in loaded if plots.is_lab_results(r)]
  lab_kinds = list(plots.LAB_FIGURES)
  if lab and len(loaded) > 1:
    raise CommandError("plot takes one lab results file, or several bound reports")
  if lab:
    kind = args.kind or lab_kinds[0]
    if kind not in lab_kinds:
      raise CommandError(f"--kind {kind}: lab results take {', '.join(lab_kinds)}")
  else:
    if args.kind not in (None, "terms"):
      raise CommandError(f"--kind {args.kind}: bound reports take terms; "
                         f"{', '.join(lab_kinds)} need a lab results file")
    kind = "terms"
    for report, path in zip(loaded, args.results, strict=True):
      if plots.is_heldout_report(report):
        check_heldout_report(report, path)
      else:
        check_bound_report(report, path)
        block = report.get("heldout")
        if isinstance(block, dict) and plots.is_heldout_report(block):
          check_heldout_report(block, f"{path}: key 'heldout'")
  try:
    if lab:
      fig = plots.LAB_FIGURES[kind](lab[0], base=args.base, method=args.method)
    else:
      fig = plots.report_terms(loaded, allow_mixed=args.allow_mixed)
  except KeyError as e:  # A key the validation above or in plots.load_results did not cover.
    raise CommandError(f"{args.results[0]}: --kind {kind}: missing key {e.args[0]!r}") from None
  except (TypeError, IndexError, AttributeError) as e:
    raise CommandError(f"{args.results[0]}: --kind {kind}: malformed results ({e})") from None
  plots.save_figure(fig, args.out)
  print(f"figure written to {args.out}")
  if not lab:
    print_statuses(loaded, args.results)
  return 0


def print_statuses(reports: list, paths: list[str]) -> None:
  """One line per vacuous or saturated report: how the figure draws it, and what it means."""
  from pacbayes.study.report_figure import report_status

  for report, path in zip(reports, paths, strict=True):
    status, meaning = report_status(report)
    if status != "ok":
      print(f"{path}: {status} ({meaning}): drawn as a marked column, no term bars")
