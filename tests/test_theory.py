"""Verdicts on hand-made results with known answers."""

import json
import subprocess
import sys

import pytest

from pacbayes import theory
from tests.lab_fixtures import GOOD, make_results


def _verdicts(results):
  return {v.claim: v for v in theory.judge(results)}


def test_all_claims_pass_on_a_study_that_follows_the_paper():
  verdicts = theory.judge(make_results(**GOOD))
  assert len(verdicts) == len(theory.CLAIMS)
  for v in verdicts:
    assert v.judged and v.passed, v.line()
    assert v.line().startswith("PASS")


def test_u_shape_fails_shape_claim():
  acc = [[0.5, 0.3, 0.5], [0.55, 0.60, 0.50], [0.58, 0.66, 0.68]]
  v = theory.claim_shape(make_results(acc))
  assert v.judged and not v.passed
  assert "not unimodal" in v.evidence


def test_best_difficulty_moving_easier_fails():
  acc = [[0.3, 0.4, 0.6], [0.5, 0.6, 0.5], [0.7, 0.6, 0.5]]
  v = theory.claim_best_moves_harder(make_results(acc))
  assert v.judged and not v.passed


def test_bound_violation_is_reported():
  v = theory.claim_bound_holds(make_results(GOOD["acc"], test_risk=0.9, bound=0.5))
  assert not v.passed and "worst" in v.evidence


def test_g_ext_rising_fails():
  v = theory.claim_g_ext_difficulty(make_results(GOOD["acc"], g_ext=(0.1, 0.2, 0.3)))
  assert not v.passed


def test_dft_claim_needs_both_directions():
  res = make_results(GOOD["acc"], dft_acc={0: 0.40, 2: 0.70})  # DFT also wins at large n
  assert not theory.claim_dft(res).passed


def test_missing_cells_are_not_judged():
  res = make_results(GOOD["acc"])  # no strong base, no DFT
  v = _verdicts(res)
  assert not v["a stronger base moves the best difficulty harder"].judged
  assert v["a stronger base moves the best difficulty harder"].line().startswith("FAIL")


@pytest.mark.parametrize("good,code", [(True, 0), (False, 1)])
def test_script_exit_codes(tmp_path, good, code):
  res = make_results(**GOOD) if good else make_results(GOOD["acc"])
  path = tmp_path / "results.json"
  path.write_text(json.dumps(res))
  out = subprocess.run([sys.executable, "experiments/validate_theory.py", str(path)],
                       capture_output=True, text=True)
  assert out.returncode == code, out.stderr
  lines = out.stdout.strip().splitlines()
  assert all(line.startswith(("PASS", "FAIL")) for line in lines[:-1])
  assert len(lines) == len(theory.CLAIMS) + 1


def test_script_rejects_a_bad_file(tmp_path):
  path = tmp_path / "x.json"
  path.write_text("{not json")
  out = subprocess.run([sys.executable, "experiments/validate_theory.py", str(path)],
                       capture_output=True, text=True)
  assert out.returncode == 2
  assert "Traceback" not in out.stderr and "x.json" in out.stderr
