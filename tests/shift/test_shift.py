"""Tests for pacbayes.shift.report: certified TV, importance-weighted gap, shift reports."""

import json
import math

import mpmath
import numpy as np
import pytest

from pacbayes.data.jsonl import DataError
from pacbayes.shift import report as shift
from pacbayes.shift.report import ShiftError, importance_weighted_gap, tv_discrete, weissman_epsilon
from tests.helpers.jsonl import write_jsonl

# ------------------------------------------------------------------------------------------
# tv_discrete
# ------------------------------------------------------------------------------------------


def test_log_two_pow_k_minus_two_matches_mpmath():
  for k in (2, 3, 10, 60, 1000, 100_000):
    want = float(mpmath.log(mpmath.mpf(2) ** k - 2))
    assert shift.log_two_pow_k_minus_two(k) == pytest.approx(want, rel=1e-13)


def test_weissman_epsilon_inverts_the_tail_bound():
  for k, m, delta in ((2, 10, 0.1), (5, 200, 0.05), (40, 10_000, 1e-3)):
    e = weissman_epsilon(k, m, delta)
    assert (2.0**k - 2.0) * math.exp(-m * e * e / 2.0) == pytest.approx(delta, rel=1e-10)
  assert weissman_epsilon(1, 5, 0.05) == 0.0
  assert weissman_epsilon(3, 1, 1e-9) == 2.0  # Capped at the largest L1 distance.


def test_histogram_tv_by_hand():
  # p_train = {1: 1/2, 2: 1/4, 3: 1/4}, p_test = {2: 1/2, 3: 1/2}:
  # TV = (|1/2 - 0| + |1/4 - 1/2| + |1/4 - 1/2|) / 2 = 1/2.
  res = tv_discrete([1, 1, 2, 3], [2, 2, 3, 3], 0.05)
  assert res.estimate == pytest.approx(0.5)
  assert res.support == (1, 2, 3)
  assert res.train_probs == (0.5, 0.25, 0.25)
  assert res.test_probs == (0.0, 0.5, 0.5)
  assert res.train_counts == (2, 1, 1) and res.test_counts == (0, 2, 2)
  assert res.kind == "certified under difficulty shift (TV)"
  # Three seen values + one "unseen" cell; delta split over the two sampled sides.
  assert res.num_cells == 4
  e = math.sqrt(2.0 * (math.log(2.0**4 - 2.0) - math.log(0.025)) / 4.0)
  assert res.eps_train == pytest.approx(min(2.0, e)) and res.eps_test == res.eps_train
  assert res.upper == 1.0 and res.lower == 0.0
  hist = res.histogram()
  assert hist[1] == {"value": 2, "train_prob": 0.25, "test_prob": 0.5, "train_count": 1,
                     "test_count": 2}


def test_histogram_tv_strings_and_identical():
  res = tv_discrete(["a", "b", "a", "c"], ["c", "a", "b", "a"], 0.1)
  assert res.estimate == 0.0 and res.lower == 0.0
  res = tv_discrete(["easy"] * 3 + ["hard"], ["hard"] * 4, 0.1)
  assert res.estimate == pytest.approx(0.75)


def test_known_mixtures_have_no_sampling_term():
  p = {0: 0.5, 1: 0.3, 2: 0.2}
  q = {0: 0.1, 1: 0.3, 2: 0.6}
  res = tv_discrete(None, None, 0.05, train_probs=p, test_probs=q)
  assert res.estimate == pytest.approx(0.4)
  assert res.upper == pytest.approx(0.4) and res.lower == pytest.approx(0.4)
  # One side known: the other side gets the whole delta, support fixed in advance (k = 3).
  values = [0] * 10 + [1] * 30 + [2] * 60
  res = tv_discrete(None, values, 0.05, train_probs=p, support=[0, 1, 2])
  assert res.estimate == pytest.approx(0.4)
  assert res.eps_train == 0.0
  assert res.eps_test == pytest.approx(math.sqrt(2 * (math.log(6) - math.log(0.05)) / 100))
  assert res.upper == pytest.approx(0.4 + res.eps_test / 2)
  assert res.lower == pytest.approx(0.4 - res.eps_test / 2)
  assert res.num_train == 0 and res.num_test == 100


def test_weissman_interval_coverage_by_simulation():
  rng = np.random.default_rng(0)
  p = np.array([0.4, 0.3, 0.2, 0.1])
  q = np.array([0.1, 0.2, 0.3, 0.4])
  true_tv = 0.5 * np.abs(p - q).sum()
  delta, reps = 0.1, 400
  miss_upper = miss_lower = 0
  for _ in range(reps):
    a = rng.choice(4, size=150, p=p)
    b = rng.choice(4, size=150, p=q)
    res = tv_discrete(a, b, delta, support=range(4))
    miss_upper += res.upper < true_tv
    miss_lower += res.lower > true_tv
  slack = 3 * math.sqrt(delta * (1 - delta) / reps)
  assert (miss_upper + miss_lower) / reps <= delta + slack
  # One side exact: the interval must still cover.
  misses = 0
  for _ in range(reps):
    b = rng.choice(4, size=60, p=q)
    res = tv_discrete(None, b, delta, train_probs=dict(enumerate(p)))
    misses += not res.lower <= true_tv <= res.upper
  assert misses / reps <= delta + slack


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(train_values=[], test_values=[1]), "train_values is empty"),
        (dict(train_values=[1], test_values=[float("nan")]), r"test_values\[0\] is nan"),
        (dict(train_values=None, test_values=[1]), "train_values is None"),
        (dict(train_values=[1], test_values=[[1]]), "not hashable"),
        (dict(train_values=[1, 5], test_values=[1], support=[1, 2]), "not in `support`"),
        (dict(train_values=None, test_values=[1], train_probs={1: 0.5}), "must sum to 1"),
        (dict(train_values=None, test_values=[1], train_probs={1: 1.5, 2: -0.5}), ">= 0"),
        (dict(train_values=[1], test_values=[1], delta=0.0), "delta"),
        (dict(train_values=np.zeros((2, 2)), test_values=[1]), "one-dimensional"),
    ],
)
def test_tv_discrete_bad_input(kwargs, match):
  kwargs = {"delta": 0.05, **kwargs}
  with pytest.raises(ShiftError, match=match):
    tv_discrete(kwargs.pop("train_values"), kwargs.pop("test_values"), kwargs.pop("delta"),
                **kwargs)


def test_importance_weighted_gap_formula():
  gap = importance_weighted_gap([1.0, 2.0, 0.0, 1.0], [0.5, 1.0, 1.0, 0.0])
  terms = np.array([0.0, 1.0, -1.0, 0.0])
  assert gap.estimate == pytest.approx(0.0)
  assert gap.stderr == pytest.approx(np.std(terms, ddof=1) / 2)
  with pytest.raises(ShiftError, match="ratio_train is empty"):
    importance_weighted_gap([], [])
  with pytest.raises(ShiftError, match="losses_train has 1"):
    importance_weighted_gap([1.0, 1.0], [0.5])
  with pytest.raises(ShiftError, match="ratio_train must be finite"):
    importance_weighted_gap([-1.0], [0.5])
  with pytest.raises(ShiftError, match="losses_train must be finite"):
    importance_weighted_gap([1.0], [np.nan])


# ------------------------------------------------------------------------------------------
# Reports over JSONL files
# ------------------------------------------------------------------------------------------


def test_shift_report_difficulty(tmp_path):
  rows = lambda d1, d2: [{"text": "x", "difficulty": d} for d in [1] * d1 + [2] * d2]
  train = write_jsonl(tmp_path / "train.jsonl", rows(30, 10))
  test = write_jsonl(tmp_path / "test.jsonl", rows(10, 30))
  report = shift.shift_report(train, test, feature="difficulty", delta=0.05)
  json.dumps(report)  # JSON-serialisable.
  assert report["tv"]["estimate"] == {"value": pytest.approx(0.5), "kind": "estimate"}
  assert report["tv"]["upper"]["kind"] == "certified under difficulty shift (TV)"
  assert report["tv"]["lower"]["kind"] == "lower bound"
  assert report["g_ext"] == report["tv"]["upper"]["value"]
  assert report["g_ext_kind"] == "certified under difficulty shift (TV)"
  assert report["train"]["n"] == 40
  table = shift.format_shift_table(report)
  assert "certified under difficulty shift (TV)" in table and "lower bound" in table


def test_shift_report_ngram(tmp_path):
  rng = np.random.default_rng(0)
  words_a = ["add", "plus", "sum", "carry"]
  words_b = ["multiply", "times", "product", "carry"]
  rows_a = [{"text": " ".join(rng.choice(words_a, 6))} for _ in range(150)]
  rows_b = [{"text": " ".join(rng.choice(words_b, 6))} for _ in range(150)]
  train = write_jsonl(tmp_path / "a.jsonl", rows_a)
  test = write_jsonl(tmp_path / "b.jsonl", rows_b)
  report = shift.shift_report(train, test, feature="ngram", seed=1)
  json.dumps(report)
  assert report["tv"]["estimate"]["value"] > 0.9
  assert report["tv"]["upper"]["value"] is None
  assert report["tv"]["plugin_tv"]["kind"] == "diagnostic"
  assert report["g_ext_kind"] == "estimate"
  assert "n/a" in shift.format_shift_table(report)


def test_shift_report_errors(tmp_path):
  good = write_jsonl(tmp_path / "good.jsonl", [{"difficulty": 1}, {"difficulty": 2}])
  bad = write_jsonl(tmp_path / "bad.jsonl", [{"difficulty": 1}, {"text": "no d"}], blank_first=True)
  with pytest.raises(DataError, match=r"bad\.jsonl:3: the row has no 'difficulty'"):
    shift.shift_report(good, bad)
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  with pytest.raises(DataError, match="empty.jsonl: the file holds no rows"):
    shift.shift_report(str(empty), good)
  with pytest.raises(ShiftError, match="feature must be"):
    shift.shift_report(good, good, feature="length")
  same = write_jsonl(tmp_path / "same.jsonl", [{"text": "one two"}] * 4)
  with pytest.raises(ShiftError, match=r"same\.jsonl.*constant"):
    shift.shift_report(same, same, feature="ngram")


@pytest.mark.parametrize("feature", ["difficulty", "ngram"])
@pytest.mark.parametrize("value", ["2", None, True, [2], {"d": 2}, "missing"])
def test_one_malformed_difficulty_is_refused_for_every_feature(tmp_path, feature, value):
  """One bad row never silently switches the kind of g_ext: refused with file and line."""
  rows = [{"text": f"row {i} words", "difficulty": i % 3} for i in range(30)]
  good = write_jsonl(tmp_path / "good.jsonl", rows)
  bad_rows = [dict(r) for r in rows]
  if value == "missing":
    del bad_rows[7]["difficulty"]
  else:
    bad_rows[7]["difficulty"] = value
  bad = write_jsonl(tmp_path / "bad.jsonl", bad_rows)
  match = (r"bad\.jsonl:8: the row has no 'difficulty'" if value == "missing" else
           r"bad\.jsonl:8: 'difficulty' must be a finite number")
  for train, test in ((good, bad), (bad, good)):
    with pytest.raises(DataError, match=match):
      shift.shift_report(train, test, feature=feature)


def test_support_needs_difficulty_rows(tmp_path):
  plain = write_jsonl(tmp_path / "plain.jsonl", [{"text": f"row {i}"} for i in range(10)])
  with_d = write_jsonl(tmp_path / "d.jsonl",
                       [{"text": "x", "difficulty": i % 2} for i in range(10)])
  with pytest.raises(ShiftError, match=r"plain\.jsonl: no row has a 'difficulty' field.*support"):
    shift.shift_report(with_d, plain, support=[0, 1])
  with pytest.raises(ShiftError, match=r"plain\.jsonl: no row has a 'difficulty' field"):
    shift.shift_report(plain, with_d)
  with pytest.raises(ShiftError, match="support is used only with feature='difficulty'"):
    shift.shift_report(with_d, with_d, feature="ngram", support=[0, 1])


# ------------------------------------------------------------------------------------------
# Embedding feature
# ------------------------------------------------------------------------------------------


def _token_rows(rng, low, high, num):
  return [{"input_ids": rng.integers(low, high, int(rng.integers(3, 13))).tolist()}
          for _ in range(num)]


def test_shift_report_embedding_separates_token_distributions(tmp_path, tiny_llama):
  rng = np.random.default_rng(0)
  train = write_jsonl(tmp_path / "low.jsonl", _token_rows(rng, 1, 16, 200))
  test = write_jsonl(tmp_path / "high.jsonl", _token_rows(rng, 16, 32, 200))
  report = shift.shift_report(train, test, feature="embedding", model_dir=tiny_llama, seed=0)
  json.dumps(report)
  assert report["feature"] == "embedding" and report["model_dir"] == tiny_llama
  assert report["tv"]["estimate"]["value"] > 0.8
  assert report["tv"]["lower"]["value"] > 0.5
  assert report["tv"]["upper"]["value"] is None
  assert report["g_ext"] == report["tv"]["estimate"]["value"]
  assert report["g_ext_kind"] == "estimate"
  assert report["train"]["n"] == 200 and report["details"]["num_heldout_test"] == 100
  assert "embedding" in shift.format_shift_table(report)


def test_shift_report_embedding_same_distribution(tmp_path, tiny_llama):
  rng = np.random.default_rng(1)
  train = write_jsonl(tmp_path / "a.jsonl", _token_rows(rng, 1, 32, 200))
  test = write_jsonl(tmp_path / "b.jsonl", _token_rows(rng, 1, 32, 200))
  report = shift.shift_report(train, test, feature="embedding", model_dir=tiny_llama, seed=0)
  # 100 held-out rows a side: tpr + tnr - 1 has sd about 0.07 around 0.
  assert report["tv"]["estimate"]["value"] < 0.25
  assert report["tv"]["lower"]["value"] == 0.0


def test_shift_report_embedding_errors(tmp_path, tiny_llama):
  good = write_jsonl(tmp_path / "good.jsonl", [{"input_ids": [1, 2, 3]}] * 4)
  with pytest.raises(ShiftError, match="feature='embedding' needs model_dir"):
    shift.shift_report(good, good, feature="embedding")
  with pytest.raises(ShiftError, match="model_dir is used only with feature='embedding'"):
    shift.shift_report(good, good, feature="ngram", model_dir=tiny_llama)
  big = write_jsonl(tmp_path / "big.jsonl", [{"input_ids": [1, 2, 3]}, {"input_ids": [5, 40]}])
  with pytest.raises(DataError, match=r"big\.jsonl:2"):
    shift.shift_report(good, big, feature="embedding", model_dir=tiny_llama)
  with pytest.raises(ValueError, match="nope"):
    shift.shift_report(good, good, feature="embedding", model_dir=str(tmp_path / "nope"))
  with pytest.raises(ShiftError, match=r"embeddings from .*constant"):
    shift.shift_report(good, good, feature="embedding", model_dir=tiny_llama)
