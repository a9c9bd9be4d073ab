"""Judges the paper's claims on a lab results file, as statistical tests.

Usage: python experiments/validate_theory.py experiments/results/quick/results.json

Prints one line per verdict, `PASS|FAIL|INCONCLUSIVE  <claim>: <estimate> [<lo>, <hi>] (<test>)`,
then a count. Exits 0 when every claim could be judged (whatever the verdicts; a G_ext line at equal
TV, not a test of the claim by design, counts as judged), 1 when some could not (missing
cells), 2 on a file that is not a lab results file (schema lab/3 or lab/2).
"""

import argparse
import sys

import numpy as np

from pacbayes.study.plots import ResultsError, load_results
from pacbayes.study.theory import judge_all


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("results", help="results.json written by `pacbayes lab`")
  args = parser.parse_args(argv)
  try:
    verdicts = judge_all(load_results(args.results))
  except (ResultsError, KeyError) as e:
    print(f"validate_theory: error: {e}", file=sys.stderr)
    return 2
  for v in verdicts:
    print(v.line())
  words = [v.word for v in verdicts]
  judged = [bool(np.isfinite(v.estimate[0])) or "not a test of the claim" in v.test
            for v in verdicts]
  print(f"{words.count('PASS')} PASS, {words.count('FAIL')} FAIL, "
        f"{words.count('INCONCLUSIVE')} INCONCLUSIVE ({sum(judged)}/{len(verdicts)} judged)")
  return 0 if all(judged) else 1


if __name__ == "__main__":
  sys.exit(main())
