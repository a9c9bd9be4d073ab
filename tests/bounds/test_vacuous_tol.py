"""One definition of "vacuous" (`pacbayes.bounds.checks.is_vacuous`): a mixture of per-slice
ceilings that rounds to 1 - 1 ulp is vacuous, everywhere a certificate is counted."""

import numpy as np

from pacbayes.bounds import VACUOUS_TOL, is_vacuous
from pacbayes.study.bound_verdicts import claim_certified_bound


def test_a_mixture_of_ceilings_is_vacuous():
  p = np.array([1.0, 4.0, 9.0]) / 14.0
  ceiling = float(np.dot(p, [1.0, 1.0, 1.0]))
  assert is_vacuous(ceiling) and is_vacuous(1.0) and is_vacuous(float("nan"))
  assert not is_vacuous(1.0 - 10 * VACUOUS_TOL) and not is_vacuous(0.3)


def test_certified_arm_does_not_judge_ceilings_that_round_below_one():
  results = {
    "test_items": {"ops": [1, 2, 3], "counts": [8, 8, 8]},
    "test_mixture": {"1": 1 / 3, "2": 1 / 3, "3": 1 / 3},
    "certified": [{"bucket": "medium", "n": 32, "seed": 0, "budgets": [
      {"steps": 4, "bound": 0.9999999999999999, "b_train": 1.0, "q_test_risk": 0.2}]}],
  }
  v = claim_certified_bound(results)
  assert "0/1 test mixture" in v.line() and "vacuous" in v.line()
  assert v.line().split()[0] == "INCONCLUSIVE"
