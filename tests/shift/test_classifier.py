"""Tests for pacbayes.shift.classifier: domain-classifier TV, HPLB lower bound, density ratios."""

import math

import numpy as np
import pytest
from scipy import stats

from pacbayes import shift
from pacbayes.shift import classifier
from pacbayes.shift.classifier import (
  ClassifierOptions,
  ShiftError,
  clopper_pearson_lower,
  tv_classifier,
  tv_lower_from_heldout,
)
from pacbayes.shift.report import importance_weighted_gap


def gaussian_tv(delta_mahalanobis):
  """TV(N(0, S), N(mu, S)) = 2 Phi(Delta / 2) - 1, Delta the Mahalanobis distance."""
  return 2.0 * stats.norm.cdf(delta_mahalanobis / 2.0) - 1.0


def test_shift_reexports_the_classifier_names():
  for name in ("ClassifierTVResult", "ShiftError", "clopper_pearson_lower", "tv_classifier",
               "tv_lower_from_heldout", "KIND_ESTIMATE", "KIND_LOWER", "KIND_CERTIFIED",
               "KIND_DIAGNOSTIC"):
    assert getattr(shift, name) is getattr(classifier, name), name


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
  res = tv_classifier(x0, x1, 0.05, 0, options=ClassifierOptions(model="mlp"))
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
  m1 = tv_classifier(x0, x1, 0.05, 3, options=ClassifierOptions(model="mlp", steps=50))
  m2 = tv_classifier(x0, x1, 0.05, 3, options=ClassifierOptions(model="mlp", steps=50))
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
    tv_classifier(x0, x1, delta, 0, options=ClassifierOptions(**kwargs))
