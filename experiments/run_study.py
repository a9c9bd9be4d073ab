"""The synthetic difficulty x size study (every cell, bases, bounds): writes DIR/results.json.

Usage: python experiments/run_study.py --preset quick --out experiments/results/quick
"""

import argparse
import json
import sys

from pacbayes.study.runner import PRESETS, StudyConfig, run_study, summary_table


def parse_args(argv=None, *, description=__doc__):
  parser = argparse.ArgumentParser(description=description.splitlines()[0])
  parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
  parser.add_argument("--out", required=True, help="output folder (results.json, cache/)")
  parser.add_argument("--seed", type=int, default=None, help="override the preset's seed")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                      help="override a StudyConfig field, e.g. --set 'sizes=[200,800]'")
  parser.add_argument("--no-progress", action="store_true")
  return parser.parse_args(argv)


def overrides_from(args) -> dict:
  out = {}
  for item in args.set:
    field, sep, value = item.partition("=")
    if not sep:
      raise SystemExit(f"--set {item!r}: expected FIELD=JSON")
    try:
      out[field] = json.loads(value)
    except json.JSONDecodeError:
      out[field] = value
  if args.seed is not None:
    out["seed"] = args.seed
  return out


def main(argv=None, *, extra_overrides=None, description=__doc__):
  args = parse_args(argv, description=description)
  overrides = {**(extra_overrides or {}), **overrides_from(args)}
  try:
    config = StudyConfig.preset(args.preset, **overrides)
  except (TypeError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  results = run_study(config, args.out, progress=not args.no_progress)
  print(summary_table(results))
  return 0


if __name__ == "__main__":
  sys.exit(main())
