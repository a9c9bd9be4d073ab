"""``pacbayes plot``: figures from a lab results file or from bound reports."""

from __future__ import annotations

from pacbayes.commands.common import CommandError


def add_parser(sub) -> None:
  p = sub.add_parser("plot", help="figures from results files")
  p.add_argument("results", nargs="+", help="a lab results.json, or bound reports")
  p.add_argument("--out", required=True, help="PNG path")
  p.add_argument("--kind", choices=("heatmap", "slices", "gaps", "g_gen", "terms"))
  p.add_argument("--base", default="base")
  p.add_argument("--method", default="sft")
  p.set_defaults(func=run)


def run(args) -> int:
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
