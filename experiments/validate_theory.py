"""Says which of the paper's claims held in a lab results file.

Usage: python experiments/validate_theory.py experiments/results/quick/results.json

Prints one line per claim, starting with PASS or FAIL, then the numbers behind the verdict.
Exits 0 when every claim could be judged, 1 when some could not (missing cells), and 2 on
a file that is not a lab results file.
"""

import argparse
import sys

from pacbayes.plots import ResultsError, load_results
from pacbayes.theory import judge


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("results", help="results.json written by `pacbayes lab`")
  args = parser.parse_args(argv)
  try:
    results = load_results(args.results)
    if results.get("schema") != "pacbayes.lab/1":
      raise ResultsError(f"{args.results}: not a lab results file (schema 'pacbayes.lab/1')")
    verdicts = judge(results)
  except (ResultsError, KeyError) as e:
    print(f"validate_theory: error: {e}", file=sys.stderr)
    return 2
  for v in verdicts:
    print(v.line())
  passed = sum(v.passed for v in verdicts)
  print(f"{passed}/{len(verdicts)} claims held ({results.get('preset', '?')} study, "
        f"{results.get('runtime_s', float('nan')):.0f} s)")
  return 0 if all(v.judged for v in verdicts) else 1


if __name__ == "__main__":
  sys.exit(main())
