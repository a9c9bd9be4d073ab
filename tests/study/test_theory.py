"""Verdicts on hand-made results with known answers (schema pacbayes.lab/2)."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from pacbayes.study import theory
from pacbayes.study.view import ResultsError, study_view
from tests.helpers import lab_results
from tests.helpers.lab_results import GOOD, make_results

NUM = r"[+-]\d\.\d{4}"
LINE = re.compile(rf"^(PASS|FAIL|INCONCLUSIVE) +\S.*: ({NUM} \[{NUM}, {NUM}\]|not judged) \(.+\)")


def _by_prefix(verdicts, prefix):
  hits = [v for v in verdicts if v.claim.startswith(prefix)]
  assert hits, prefix
  return hits


def test_every_line_has_the_required_form():
  verdicts = theory.judge(make_results(**GOOD))
  assert len(verdicts) >= 14
  for v in verdicts:
    assert LINE.match(v.line()), v.line()


def test_a_study_that_follows_the_paper_passes_its_claims():
  # 3 seeds: with 2, every cell's seed variance has 1 df and Holm over 13 primary lines leaves
  # the weakest (the inverted U at n=200) undecided
  verdicts = theory.judge(make_results(**GOOD, seeds=(0, 1, 2)))
  words = {v.claim: v.word for v in verdicts}
  assert words["inverted U at n=200 (medium > easy and medium > hard)"] == "PASS"
  assert _by_prefix(verdicts, "best difficulty")[0].word == "PASS"
  assert _by_prefix(verdicts, "stronger base")[0].word == "PASS"
  for v in _by_prefix(verdicts, "G_gen"):
    assert v.word == "PASS", v.line()
  assert _by_prefix(verdicts, "bound")[0].word == "PASS"
  dft = _by_prefix(verdicts, "DFT")
  assert [v.word for v in dft] == ["PASS", "PASS", "PASS"]


def test_reversed_effects_fail():
  acc = [[0.55, 0.72, 0.85], [0.62, 0.75, 0.60], [0.85, 0.70, 0.45]]  # best moves easier
  verdicts = theory.judge(make_results(acc, seeds=(0, 1, 2)))
  assert _by_prefix(verdicts, "best difficulty")[0].word == "FAIL"
  assert "inverted U at n=200" in [v.claim.split(" (")[0] for v in verdicts]
  u = [v for v in verdicts if v.claim.startswith("inverted U at n=200")][0]
  assert u.word == "FAIL"  # medium < hard by 0.13


def test_equal_cells_are_inconclusive_not_pass():
  acc = [[0.6] * 3] * 3
  verdicts = theory.judge(make_results(acc, sq_distance=lambda j, i: 10.0,
                                       gap=lambda j, i: 0.05))
  for v in verdicts:
    if v.claim.startswith(("inverted", "best", "G_gen rises", "G_ext")):
      assert v.word != "PASS", v.line()


def test_bound_violation_fails():
  v = _by_prefix(theory.judge(make_results(GOOD["acc"], bound=0.05)), "bound")[0]
  assert v.word == "FAIL"
  assert "non-vacuous" in v.line()


def test_missing_cells_are_not_judged():
  verdicts = theory.judge(make_results(GOOD["acc"]))  # no strong base, no DFT
  v = _by_prefix(verdicts, "stronger base")[0]
  assert v.word == "INCONCLUSIVE" and "not judged" in v.line()


def test_old_schema_is_refused_with_the_key():
  with pytest.raises(ResultsError, match="schema"):
    study_view({"schema": "pacbayes.lab/1", "_path": "r.json"})


def test_cells_with_different_seed_sets_are_judged_with_their_own_seeds():
  res = make_results(GOOD["acc"], seeds=(0, 1, 2))
  res["cells"] = [c for c in res["cells"]
                  if not (c["bucket"] == "easy" and c["n"] == 200 and c["seed"] == 2)]
  view = study_view(res)
  i = view.index(("base", "sft", "easy", 200))
  assert np.isnan(view.items["correct"][0, i, 2]).all()
  v = _by_prefix(theory.judge_view(view, with_bootstrap=False), "best difficulty")[0]
  assert np.isfinite(v.estimate[0]) and v.word == "PASS"
  # the estimate is the mean over each cell's own seeds
  easy = [c for c in res["cells"] if c["bucket"] == "easy" and c["n"] == 200]
  assert len(easy) == 2


def test_every_primary_line_states_its_holm_decision_and_binding_df():
  verdicts = theory.judge(make_results(**GOOD, seeds=(0, 1, 2)))
  primary = [v for v in verdicts if theory.family_of(v.claim) and np.isfinite(v.estimate[0])]
  # 12: the uniform-test G_ext line is not judged (the fixture's tilts have equal TV)
  assert len(primary) == 12
  for v in primary:
    assert re.search(r"t on \d+\.\d df", v.line()), v.line()
    assert "Holm-adjusted" in v.line() and "over 12 primary tests" in v.line(), v.line()
  for v in verdicts:
    if v.claim.startswith(("saturation", "bound")):
      assert "Holm" not in v.line()


def test_holm_adjusts_as_the_step_down_rule():
  r = 1
  mk = lambda claim, p: theory.Verdict(  # noqa: E731
    claim, np.zeros(r, int), np.zeros(r), np.zeros(r), np.zeros(r), "t", "",
    np.array([p / 2]), np.array([1 - p / 2]))
  ps = [0.01, 0.04, 0.03, 0.005]
  vs = [mk(f"G_gen line {i}", p) for i, p in enumerate(ps)] + [mk("saturation x", 0.001)]
  out = theory.holm(vs)
  # sorted 0.005, 0.01, 0.03, 0.04 -> 0.02, 0.03, 0.06, 0.06 (monotone)
  assert [float(v.holm[0]) for v in out[:4]] == pytest.approx([0.03, 0.06, 0.06, 0.02])
  assert [v.word for v in out[:4]] == ["PASS", "INCONCLUSIVE", "INCONCLUSIVE", "PASS"]
  assert out[4].holm is None and out[4].word == "INCONCLUSIVE"


@pytest.mark.parametrize("good,code", [(True, 0), (False, 1)])
def test_script_exit_codes(tmp_path, good, code):
  res = make_results(**GOOD) if good else make_results(GOOD["acc"])
  path = tmp_path / "results.json"
  path.write_text(json.dumps(res))
  out = subprocess.run([sys.executable, "experiments/validate_theory.py", str(path)],
                       capture_output=True, text=True)
  assert out.returncode == code, out.stderr
  lines = out.stdout.strip().splitlines()
  assert all(LINE.match(line) for line in lines[:-1]), lines


def test_script_rejects_a_bad_file(tmp_path):
  path = tmp_path / "x.json"
  path.write_text("{not json")
  out = subprocess.run([sys.executable, "experiments/validate_theory.py", str(path)],
                       capture_output=True, text=True)
  assert out.returncode == 2
  assert "Traceback" not in out.stderr and "x.json" in out.stderr


def test_vacuous_certificates_are_not_judged():
  # every bound >= 1 holds for a loss in [0, 1] by construction: not evidence, not a PASS
  v = _by_prefix(theory.judge(make_results(GOOD["acc"], bound=1.0)), "bound")[0]
  assert v.word == "INCONCLUSIVE"
  assert "not judged" in v.line() and "0/18 test mixture" in v.line()
  # one non-vacuous cell below its risk is still caught
  res = make_results(GOOD["acc"], bound=1.0)
  res["cells"][0]["certificate"]["bound"] = 0.01
  assert _by_prefix(theory.judge(res), "bound")[0].word == "FAIL"


def test_g_ext_at_equal_tv_is_printed_not_judged():
  # symmetric tilts around a uniform test: TV(easy, test) = TV(hard, test), so G_ext = O(TV)
  # predicts no difference and the line can neither pass nor fail the claim
  res = make_results(GOOD["acc"])
  v = _by_prefix(theory.judge(res), "G_ext")[0]
  assert v.word == "INCONCLUSIVE" and np.isnan(v.estimate).all() and v.holm is None
  assert "not a test of the claim" in v.line() and "measured " in v.line()
  # a test mixture that tilts toward hard ops makes the TVs differ: judged, in Holm's family
  res["test_mixture"] = {"1": 0.1, "2": 0.2, "3": 0.3, "4": 0.4}
  v = _by_prefix(theory.judge(res), "G_ext")[0]
  assert np.isfinite(v.estimate).all() and v.holm is not None


def test_g_ext_removes_the_part_the_mixtures_fix():
  res = make_results(GOOD["acc"])
  res["test_mixture"] = {"1": 0.1, "2": 0.2, "3": 0.3, "4": 0.4}  # unequal TV: judged
  raw = _by_prefix(theory.judge(res), "G_ext")[0]
  assert "minus the base" not in raw.claim
  err = {"1": 0.0, "2": 0.2, "3": 0.8, "4": 1.0}
  res["bases"]["base"]["seq_error_by_slice"] = err
  did = _by_prefix(theory.judge(res), "G_ext")[0]
  p = {b: np.array(w, float) / sum(w) for b, w in lab_results.MIXTURES.items()}
  shift = float(np.dot(p["easy"] - p["hard"], [err[str(k)] for k in lab_results.OPS]))
  assert shift == pytest.approx((2 * 0.2 - 2 * 0.8 - 7 * 1.0) / 15)
  assert "minus the base's own contrast" in did.claim
  np.testing.assert_allclose(did.estimate, raw.estimate - shift)
  np.testing.assert_allclose(did.hi - did.lo, raw.hi - raw.lo)


def test_judge_all_judges_every_arm_and_keeps_not_judged_claims():
  import copy

  res = make_results(**GOOD)
  res["arms"]["disjoint"] = copy.deepcopy(res["arms"]["tilted"])
  res["cells"] += [dict(copy.deepcopy(c), arm="disjoint") for c in res["cells"]
                   if c["base"] == "base" and c["method"] == "sft"]
  for c in res["cells"]:
    if c["arm"] == "disjoint":
      c["certificate"]["bound"] = 1.0  # every certificate vacuous: the bound claim not judged
  verdicts = theory.judge_all(res)
  main = theory.judge(res)
  assert [v.line() for v in verdicts[:len(main)]] == [v.line() for v in main]
  other = verdicts[len(main):]
  assert other and all(v.claim.startswith("disjoint arm: ") for v in other)
  assert not [v for v in other if v.claim.startswith(("disjoint arm: stronger",
                                                      "disjoint arm: DFT"))]
  bound = [v for v in other if v.claim.startswith("disjoint arm: bound")]
  assert len(bound) == 1 and "not judged" in bound[0].line()


def test_schema3_judges_g_ext_on_the_hard_test_and_the_certified_arm():
  from tests.helpers.lab_results_v3 import make_results_v3

  res = make_results_v3(**GOOD, seeds=(0, 1, 2))
  view = study_view(res)
  assert np.isnan(view.scalars["bound"]).all()  # main cells carry no certificate
  verdicts = theory.judge(res)
  for v in verdicts:
    assert LINE.match(v.line()), v.line()
  ext = _by_prefix(verdicts, "G_ext")
  assert len(ext) == 2 and "hard-tilted test mixture" in ext[1].claim
  assert theory.family_of(ext[1].claim) == "claim 3" and ext[1].holm is not None
  # on the hard-tilted test the buckets' TV to the test differs (uniform: equal for the tilts)
  tv = [float(x) for x in re.findall(r"TV (\d\.\d+)", ext[1].note)]
  assert len(tv) == 2 and abs(tv[0] - tv[1]) > 0.1
  hard = study_view(res, test="hard")
  direct = theory.claim_g_ext_difficulty(hard, "hard-tilted")
  np.testing.assert_allclose(ext[1].estimate, direct.estimate)
  bound = _by_prefix(verdicts, "bound")[0]
  assert "certified-arm" in bound.claim and bound.word == "PASS", bound.line()
  assert "3/9 test mixture" in bound.note or "9/9 test mixture" in bound.note
  low = _by_prefix(theory.judge(make_results_v3(**GOOD, bound=0.05)), "bound")[0]
  assert low.word == "FAIL"
  vac = _by_prefix(theory.judge(make_results_v3(**GOOD, bound=1.0)), "bound")[0]
  assert vac.word == "INCONCLUSIVE" and "not judged" in vac.line()


def test_claim_1_compares_easy_and_hard_where_both_exist():
  """Four-bucket arms: claim 1 compares the buckets named hard and easy (not the easiest), at
  the sizes where both have cells, with NaN seeds; the inverted U compares the middle with the
  first and last where all three exist."""
  res = make_results(GOOD["acc"], seeds=(0, 1, 2))
  names = {"easy": "easiest", "medium": "easy", "hard": "hard"}
  arm = res["arms"]["tilted"]
  arm["order"] = [names[b] for b in arm["order"]]
  arm["mixtures"] = {names[b]: m for b, m in arm["mixtures"].items()}
  for c in res["cells"]:
    c["bucket"] = names[c["bucket"]]
  # the easiest bucket only at n = 200 and 800; one seed fewer for easy at n = 800
  res["cells"] = [c for c in res["cells"] if not (c["bucket"] == "easiest" and c["n"] == 3200)
                  and not (c["bucket"] == "easy" and c["n"] == 800 and c["seed"] == 2)]
  view = study_view(res)
  assert theory.claim_pair(view) == ("hard", "easy")
  assert theory.pair_sizes(view, ("hard", "easy")) == [200, 800, 3200]
  v = theory.claim_best_moves_harder(view, with_bootstrap=False)
  assert "acc_hard - acc_easy" in v.claim and "n in [200, 800, 3200]" in v.note
  d = np.log([200, 800, 3200]) - np.log([200, 800, 3200]).mean()
  c = d / np.sum(d**2)
  mean = lambda b, n: np.mean([x["accuracy"] for x in res["cells"]  # noqa: E731
                               if x["bucket"] == b and x["n"] == n and x["method"] == "sft"])
  want = sum(cj * (mean("hard", n) - mean("easy", n))
             for cj, n in zip(c, [200, 800, 3200], strict=True))
  assert v.estimate[0] == pytest.approx(want)
  verdicts = theory.judge(res)
  u = [x for x in verdicts if x.claim.startswith("inverted U")]
  assert [x.claim for x in u] == [f"inverted U at n={n} (easy > easiest and easy > hard)"
                                  for n in (200, 800)]
  assert all(np.isfinite(x.estimate[0]) for x in u)
  for x in _by_prefix(verdicts, "G_gen rises") + _by_prefix(verdicts, "G_ext"):
    assert "hard - easy" in x.claim and np.isfinite(x.estimate[0]), x.line()
