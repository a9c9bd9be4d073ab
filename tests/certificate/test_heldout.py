"""Held-out certificate of the fine-tuned weights: numbers, JSON, coverage, the holdout record."""

import hashlib
import json
import math

import numpy as np
import pytest

from pacbayes.bounds.mixture import mixture_bounds, mixture_shift_bound
from pacbayes.bounds.testset import METHOD_BINOMIAL, binomial_upper
from pacbayes.certificate.heldout import (
  KIND_HELDOUT,
  check_holdout_record,
  heldout_certificate,
  read_holdout_record,
)

MIX = dict(train_mixture={1: 0.5, 2: 0.5}, test_mixture={1: 0.25, 2: 0.25, 3: 0.5})


def _rows():
  diff = np.array([1] * 100 + [2] * 100)
  losses = np.zeros(200)
  losses[:10] = 1  # 10% errors on d = 1
  losses[100:140] = 1  # 40% on d = 2
  return losses, diff


def test_without_mixture_all_delta_on_one_binomial_bound():
  losses, _ = _rows()
  c = heldout_certificate(losses, delta=0.05, zero_one=True)
  assert c.kind == KIND_HELDOUT == "held-out test-set bound on the fine-tuned weights"
  assert c.method == METHOD_BINOMIAL and c.m == 200 and c.errors == 50
  assert c.bound_train == binomial_upper(50, 200, 0.05)
  assert c.bound_test is None and c.delta_parts == (("heldout", 0.05),)
  assert c.posterior_noise is None and c.monte_carlo is None and c.non_vacuous
  assert "200 held-out rows were not used for training" in c.not_used_for_training


def test_with_mixture_per_slice_and_shift_both_paid_min_taken():
  losses, diff = _rows()
  mix = mixture_bounds(**MIX)
  c = heldout_certificate(losses, delta=0.06, difficulty=diff, mixture=mix, zero_one=True)
  assert dict(c.delta_parts) == pytest.approx({"heldout": 0.03, "slices": 0.03, "mixture": 0.0})
  assert c.bound_train == binomial_upper(50, 200, 0.03)
  b1, b2 = binomial_upper(10, 100, 0.015), binomial_upper(40, 100, 0.015)
  assert [s["bound"] for s in c.slices] == [b1, b2]
  assert c.per_slice_value == pytest.approx(0.5 + 0.25 * b1 + 0.25 * b2, rel=1e-12)
  assert c.mixture_shift_value == mixture_shift_bound(c.bound_train, mix)
  assert c.bound_test == min(c.per_slice_value, c.mixture_shift_value)
  assert c.test_kind == ("per_slice" if c.per_slice_value <= c.mixture_shift_value
                         else "mixture_shift")
  assert c.bound_test > 0.5  # m_out = 0.5: the unseen difficulty 3 counts as risk 1
  assert not c.non_vacuous or c.bound_test < 1


def test_json_flags_and_table():
  losses, diff = _rows()
  mix = mixture_bounds(train_mixture={1: 0.5, 2: 0.5}, test_mixture={1: 0.5, 2: 0.5})
  c = heldout_certificate(losses, delta=0.05, difficulty=diff, mixture=mix, zero_one=True,
                          notes=["toy"])
  d = json.loads(c.to_json())
  assert d["schema"] == "pacbayes.certificate.heldout/1" and d["kind"] == KIND_HELDOUT
  assert d["posterior_noise"] is None and d["monte_carlo"] is None
  assert d["non_vacuous"] and d["bound_train_non_vacuous"] and d["bound_test_non_vacuous"]
  assert [s["non_vacuous"] for s in d["slices"]] == [True, True]
  assert math.isclose(sum(v for _, v in d["delta_parts"]), d["delta"])
  table = c.to_table()
  assert KIND_HELDOUT in table and "not used for training" in table and "no Monte-Carlo" in table


def test_vacuous_slice_is_flagged():
  mix = mixture_bounds(train_mixture={1: 0.5, 2: 0.5}, test_mixture={1: 0.5, 2: 0.5})
  c = heldout_certificate([0.0] * 50 + [1.0] * 3, delta=0.05, difficulty=[1] * 50 + [2] * 3,
                          mixture=mix, zero_one=True)
  d = c.to_dict()
  assert d["slices"][0]["non_vacuous"]
  assert d["slices"][1]["bound"] == 1.0 and not d["slices"][1]["non_vacuous"]  # k = m


def test_certificate_covers_the_test_risk_in_2000_trials():
  rng = np.random.default_rng(7)
  risk, p_train = np.array([0.1, 0.5]), np.array([0.6, 0.4])
  mix = mixture_bounds(train_mixture={1: 0.6, 2: 0.4}, test_mixture={1: 0.3, 2: 0.7})
  target = 0.3 * 0.1 + 0.7 * 0.5
  trials, m, delta = 2000, 80, 0.1
  diff = rng.choice(2, size=(trials, m), p=p_train)
  losses = (rng.random((trials, m)) < risk[diff]).astype(float)
  hits = sum(target <= heldout_certificate(losses[t], delta=delta, difficulty=diff[t] + 1,
                                           mixture=mix, zero_one=True).bound_test
             for t in range(trials))
  assert hits / trials >= 1 - delta - 3 * math.sqrt(delta * (1 - delta) / trials)


def test_bad_inputs():
  with pytest.raises(ValueError, match="difficulty, mixture"):
    heldout_certificate([0.0], difficulty=[1])
  with pytest.raises(ValueError, match="delta"):
    heldout_certificate([0.0], delta=1.5)


# ------------------------------------------------------------------------------ the record


def _write(tmp_path, text="{\"prompt\": \"a\"}\n{\"prompt\": \"b\"}\n", **over):
  train = tmp_path / "train.jsonl"
  train.write_text(text)
  rec = {"train_sha256": hashlib.sha256(text.encode()).hexdigest(), "heldout_lines": [1],
         "fraction": 0.5, "seed": 3, **over}
  path = tmp_path / "holdout.json"
  path.write_text(json.dumps(rec))
  return train, path


def test_record_accepts_the_same_file_and_refuses_a_changed_one(tmp_path):
  train, rec_path = _write(tmp_path)
  rec = check_holdout_record(train, rec_path)
  assert rec.heldout_lines == (1,) and rec.fraction == 0.5 and rec.seed == 3
  c = heldout_certificate([0.0], zero_one=True, record=rec)
  assert "--holdout 0.5" in c.not_used_for_training and c.record["seed"] == 3
  train.write_text(train.read_text().replace("b", "c"))
  with pytest.raises(ValueError) as err:
    check_holdout_record(train, rec_path)
  msg = str(err.value)
  assert "\n" not in msg and msg.startswith(str(train)) and "differs" in msg


def test_record_with_more_lines_than_losses_is_refused(tmp_path):
  train, rec_path = _write(tmp_path, heldout_lines=[0, 1])
  rec = check_holdout_record(train, rec_path)
  with pytest.raises(ValueError, match="heldout_lines.*2 rows recorded, but 1 losses"):
    heldout_certificate([0.0], zero_one=True, record=rec)


@pytest.mark.parametrize("over,match", [
  ({"train_sha256": "abc"}, "'train_sha256': expected 64 hex"),
  ({"heldout_lines": []}, "'heldout_lines'"),
  ({"heldout_lines": [1, 1]}, "listed twice"),
  ({"heldout_lines": [-1]}, r"heldout_lines\[0\]"),
  ({"fraction": 1.0}, "'fraction'"),
  ({"seed": "x"}, "'seed'")])
def test_malformed_record_names_the_key(tmp_path, over, match):
  _, rec_path = _write(tmp_path, **over)
  with pytest.raises(ValueError, match=match):
    read_holdout_record(rec_path)


def test_missing_and_non_json_record(tmp_path):
  with pytest.raises(ValueError, match="cannot read the holdout record"):
    read_holdout_record(tmp_path / "nope.json")
  bad = tmp_path / "bad.json"
  bad.write_text("{")
  with pytest.raises(ValueError, match="bad.json:1: not valid JSON"):
    read_holdout_record(bad)
  _, rec_path = _write(tmp_path)
  data = json.loads(rec_path.read_text())
  del data["seed"]
  rec_path.write_text(json.dumps(data))
  with pytest.raises(ValueError, match="'seed': missing"):
    read_holdout_record(rec_path)
