"""Writes every standard figure of a lab results file (what `pacbayes lab --figures` writes).

Usage: python experiments/make_figures.py experiments/results/quick/results.json --out figures
"""

import argparse
import sys

from pacbayes.study import plots


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("results", help="results.json written by `pacbayes lab`")
  parser.add_argument("--out", default="figures", help="folder for the PNG files")
  parser.add_argument("--prefix", default=None, help="file-name prefix (default: the preset)")
  args = parser.parse_args(argv)
  try:
    results = plots.load_results(args.results)
    prefix = args.prefix or results.get("preset", "lab")
    for path in plots.write_lab_figures(results, args.out, prefix):
      print(f"figure written to {path}")
  except (ValueError, KeyError) as e:
    print(f"make_figures: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
