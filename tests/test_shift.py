"""Tests for pacbayes.shift: certified TV, classifier TV, density ratios, reports."""

import json
import math

import mpmath
import numpy as np
import pytest
from scipy import stats

from pacbayes import shift
from pacbayes.data.jsonl import DataError
from pacbayes.shift import (
    ShiftError,
    clopper_pearson_lower,
    importance_weighted_gap,
    tv_classifier,
    tv_discrete,
    tv_lower_from_heldout,
    weissman_epsilon,
)


def gaussian_tv(delta_mahalanobis):
  """TV(N(0, S), N(mu, S)) = 2 Phi(Delta / 2) - 1, Delta the Mahalanobis distance."""
  return 2.0 * stats.norm.cdf(delta_mahalanobis / 2.0) - 1.0


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
  assert res.kind == "certified under difficulty shift"
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


# ------------------------------------------------------------------------------------------
# Lower bound from held-out accuracies
# ------------------------------------------------------------------------------------------


def test_clopper_pearson_lower_matches_definition():
  k, n, alpha = np.array([0, 3, 50, 100]), np.array([100, 100, 100, 100]), 0.025
  lo = clopper_pearson_lower(k, n, alpha)
  assert lo[0] == 0.0
  # P(Binomial(n, lo) >= k) = alpha at the one-sided Clopper-Pearson lower limit.
  for ki, ni, li in zip(k[1:], n[1:], lo[1:], strict=True):
    assert stats.binom.sf(ki - 1, ni, li) == pytest.approx(alpha, rel=1e-6)


def test_heldout_lower_bound_coverage_with_bayes_classifier():
  # 1-D mean shift by 1: the Bayes classifier x > 1/2 has tpr = tnr = Phi(1/2), and
  # tpr + tnr - 1 equals the TV exactly, so this is the sharpest case for coverage.
  rng = np.random.default_rng(1)
  true_tv = gaussian_tv(1.0)
  acc = stats.norm.cdf(0.5)
  delta, reps, n_hold = 0.1, 20_000, 300
  k1 = rng.binomial(n_hold, acc, size=reps)
  k0 = rng.binomial(n_hold, acc, size=reps)
  lower = tv_lower_from_heldout(k1, n_hold, k0, n_hold, delta)
  miss = np.mean(lower > true_tv)
  assert miss <= delta
  assert np.mean(lower) > true_tv - 0.15  # Not vacuous.


def test_classifier_lower_bound_real_runs_cover():
  rng = np.random.default_rng(2)
  true_tv = gaussian_tv(1.0)
  for seed in range(4):
    x0 = rng.standard_normal((400, 2))
    x1 = rng.standard_normal((400, 2)) + np.array([[1.0, 0.0]])
    res = tv_classifier(x0, x1, 0.1, seed)
    assert res.lower <= true_tv
    assert res.upper is None and res.kind == "estimate"


# ------------------------------------------------------------------------------------------
# tv_classifier estimates
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 8, 64])
def test_gaussian_mean_shift_estimate(dim):
  # 4000 rows a side, 2000 held out: the held-out tpr + tnr - 1 has sd about
  # sqrt(2 * 0.31 * 0.69 / 2000) = 0.015 around the TV, so 0.06 is 4 sd. Against the Bayes
  # classifier on the same held-out rows the noise mostly cancels and what is left is the
  # learning error (a linear classifier fit on 2000 rows a side in 64 dims): 0.03.
  rng = np.random.default_rng(dim)
  n = 4000
  # Correlated (well-conditioned) covariance: the Mahalanobis distance sets the TV.
  a = 0.5 * rng.standard_normal((dim, dim)) / math.sqrt(dim) + np.eye(dim)
  mu = rng.standard_normal(dim)
  cov = a @ a.T
  mahalanobis = 1.0
  mu *= mahalanobis / math.sqrt(mu @ np.linalg.solve(cov, mu))
  x0 = rng.standard_normal((n, dim)) @ a.T
  x1 = rng.standard_normal((n, dim)) @ a.T + mu[None, :]
  res = tv_classifier(x0, x1, 0.05, 0)
  true_tv = gaussian_tv(mahalanobis)
  w = np.linalg.solve(cov, mu)
  bayes = (np.mean(x1[res.heldout_test] @ w > 0.5 * mu @ w)
           + np.mean(x0[res.heldout_train] @ w <= 0.5 * mu @ w) - 1.0)
  assert res.estimate == pytest.approx(bayes, abs=0.03)
  assert res.estimate == pytest.approx(true_tv, abs=0.06)
  assert res.lower <= res.estimate
  assert res.lower == pytest.approx(true_tv, abs=0.1)
  assert res.plugin_tv == pytest.approx(true_tv, abs=0.06)


def test_contamination_gives_epsilon_times_tv():
  # (1 - e) P + e Q vs P has TV = e * TV(P, Q); with P = N(0, 1), Q = N(4, 1) the optimal
  # set {x > 2} is not where a logistic log-ratio crosses 0, so use the MLP.
  rng = np.random.default_rng(3)
  n, eps = 4000, 0.3
  x0 = rng.standard_normal((n, 1))
  x1 = rng.standard_normal((n, 1)) + 4.0 * (rng.random((n, 1)) < eps)
  res = tv_classifier(x0, x1, 0.05, 0, model="mlp")
  assert res.estimate == pytest.approx(eps * gaussian_tv(4.0), abs=0.05)


def test_identical_distributions():
  rng = np.random.default_rng(4)
  x0 = rng.standard_normal((4000, 8))  # Shapes as in the mean-shift test: no new compile.
  x1 = rng.standard_normal((4000, 8))
  res = tv_classifier(x0, x1, 0.05, 0)
  assert res.estimate < 0.05
  assert res.lower == 0.0
  assert res.plugin_tv < 0.05


def test_deterministic_for_a_seed():
  rng = np.random.default_rng(5)
  x0 = rng.standard_normal((400, 2))
  x1 = rng.standard_normal((400, 2)) + 0.5
  a = tv_classifier(x0, x1, 0.05, 7)
  b = tv_classifier(x0, x1, 0.05, 7)
  assert a.estimate == b.estimate and a.lower == b.lower and a.calibration == b.calibration
  np.testing.assert_array_equal(a.params["w"], b.params["w"])
  np.testing.assert_array_equal(a.density_ratio(x0), b.density_ratio(x0))
  c = tv_classifier(x0, x1, 0.05, 8)
  assert not np.array_equal(a.params["w"], c.params["w"])
  m1 = tv_classifier(x0, x1, 0.05, 3, model="mlp", steps=50)
  m2 = tv_classifier(x0, x1, 0.05, 3, model="mlp", steps=50)
  np.testing.assert_array_equal(m1.params["w1"], m2.params["w1"])


def test_density_ratio_calibration_known_ratio():
  # N(0, 1) train vs N(1, 1) test: log r(x) = x - 1/2, whatever the class sizes.
  rng = np.random.default_rng(6)
  x0 = rng.standard_normal((6000, 1))
  x1 = rng.standard_normal((2000, 1)) + 1.0
  res = tv_classifier(x0, x1, 0.05, 0)
  grid = np.array([[-1.0], [0.0], [0.5], [1.0], [2.0]])
  np.testing.assert_allclose(res.log_density_ratio(grid), grid[:, 0] - 0.5, atol=0.15)
  # eta under the empirical prior 2000 / 8000, and r = (n_train / n_test) eta / (1 - eta).
  eta = res.prob_test(grid)
  np.testing.assert_allclose(3.0 * eta / (1 - eta), res.density_ratio(grid), rtol=1e-9)
  # Importance weighting on fresh train rows: loss = 1[x > 1/2] has
  # R_test - R_train = Phi(1/2) - (1 - Phi(1/2)) = TV.
  x_new = rng.standard_normal((20_000, 1))
  gap = importance_weighted_gap(res.density_ratio(x_new), (x_new[:, 0] > 0.5).astype(float))
  assert gap.kind == "estimate"
  assert gap.estimate == pytest.approx(gaussian_tv(1.0), abs=3 * gap.stderr + 0.03)


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


@pytest.mark.parametrize(
    "x0, x1, kwargs, match",
    [
        (np.zeros((0, 3)), np.ones((5, 3)), {}, "x_train is empty"),
        (np.ones((5, 3)), np.ones((5, 4)), {}, "x_train has 3 features but x_test has 4"),
        (np.ones((5, 3)), np.full((5, 3), np.nan), {}, "x_test holds 15 NaN or infinite"),
        (np.array([[np.inf]] * 3), np.ones((3, 1)), {}, "x_train holds 3 NaN or infinite"),
        (np.ones((5, 3)), np.ones((5, 3)), {}, "constant"),
        (np.ones((1, 2)), np.zeros((5, 2)), {}, "x_train has 1 row"),
        (np.ones((5, 2, 2)), np.zeros((5, 2)), {}, r"shape \[num_rows, num_features\]"),
        (np.array([["a"]] * 3), np.zeros((3, 1)), {}, "numeric"),
        (np.eye(4), np.eye(4), {"model": "svm"}, "model must be"),
        (np.eye(4), np.eye(4), {"test_fraction": 1.0}, "test_fraction"),
        (np.eye(4), np.eye(4), {"delta": 1.5}, "delta"),
    ],
)
def test_tv_classifier_bad_input(x0, x1, kwargs, match):
  delta = kwargs.pop("delta", 0.05)
  with pytest.raises(ShiftError, match=match):
    tv_classifier(x0, x1, delta, 0, **kwargs)


# ------------------------------------------------------------------------------------------
# Reports over JSONL files
# ------------------------------------------------------------------------------------------


def _write(path, rows, blank_first=False):
  with open(path, "w") as f:
    if blank_first:
      f.write("\n")
    for row in rows:
      f.write(json.dumps(row) + "\n")
  return str(path)


def test_shift_report_difficulty(tmp_path):
  train = _write(tmp_path / "train.jsonl", [{"text": "x", "difficulty": d} for d in [1] * 30
                                            + [2] * 10])
  test = _write(tmp_path / "test.jsonl", [{"text": "x", "difficulty": d} for d in [1] * 10
                                          + [2] * 30])
  report = shift.shift_report(train, test, feature="difficulty", delta=0.05)
  json.dumps(report)  # JSON-serialisable.
  assert report["tv"]["estimate"] == {"value": pytest.approx(0.5), "kind": "estimate"}
  assert report["tv"]["upper"]["kind"] == "certified under difficulty shift"
  assert report["tv"]["lower"]["kind"] == "lower bound"
  assert report["g_ext"] == report["tv"]["upper"]["value"]
  assert report["g_ext_kind"] == "certified under difficulty shift"
  assert report["train"]["n"] == 40
  table = shift.format_shift_table(report)
  assert "certified under difficulty shift" in table and "lower bound" in table


def test_shift_report_ngram(tmp_path):
  rng = np.random.default_rng(0)
  words_a = ["add", "plus", "sum", "carry"]
  words_b = ["multiply", "times", "product", "carry"]
  rows_a = [{"text": " ".join(rng.choice(words_a, 6))} for _ in range(150)]
  rows_b = [{"text": " ".join(rng.choice(words_b, 6))} for _ in range(150)]
  train = _write(tmp_path / "a.jsonl", rows_a)
  test = _write(tmp_path / "b.jsonl", rows_b)
  report = shift.shift_report(train, test, feature="ngram", seed=1)
  json.dumps(report)
  assert report["tv"]["estimate"]["value"] > 0.9
  assert report["tv"]["upper"]["value"] is None
  assert report["tv"]["plugin_tv"]["kind"] == "diagnostic"
  assert report["g_ext_kind"] == "estimate"
  assert "n/a" in shift.format_shift_table(report)


def test_shift_report_errors(tmp_path):
  good = _write(tmp_path / "good.jsonl", [{"difficulty": 1}, {"difficulty": 2}])
  bad = _write(tmp_path / "bad.jsonl", [{"difficulty": 1}, {"text": "no d"}], blank_first=True)
  with pytest.raises(DataError, match=r"bad\.jsonl:3: row has no 'difficulty'"):
    shift.shift_report(good, bad)
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  with pytest.raises(DataError, match="empty.jsonl: the file holds no rows"):
    shift.shift_report(str(empty), good)
  with pytest.raises(ShiftError, match="feature must be"):
    shift.shift_report(good, good, feature="length")
  same = _write(tmp_path / "same.jsonl", [{"text": "one two"}] * 4)
  with pytest.raises(ShiftError, match=r"same\.jsonl.*constant"):
    shift.shift_report(same, same, feature="ngram")
