"""Held-out test-set bounds: mpmath's binomial tail inversion, coverage, per-slice and mixture."""

import math

import mpmath
import numpy as np
import pytest
from scipy import stats

from pacbayes.bounds import pac
from pacbayes.bounds.mixture import mixture_bounds
from pacbayes.bounds.testset import (
  METHOD_BINOMIAL,
  METHOD_KL,
  binomial_upper,
  holdout_bound,
  slice_holdout_bounds,
)
from pacbayes.core.precision import float64_scope

CASES = [(k, m, d) for m in (1, 7, 60, 400, 3000) for k in sorted({0, 1, m // 3, m - 1, m})
         for d in (0.5, 0.05, 1e-3, 1e-9)]


def _tail(k: int, m: int, p: mpmath.mpf) -> mpmath.mpf:
  """P(Binomial(m, p) <= k) by the finite sum, terms by the ratio recurrence (exact arithmetic
  at the working precision; the side with fewer terms is summed)."""
  if k >= m:
    return mpmath.mpf(1)
  if k > m - k:  # P(X <= k) = 1 - P(m - X <= m - k - 1) with m - X ~ Bin(m, 1 - p)
    return 1 - _tail(m - k - 1, m, 1 - p)
  term = (1 - p) ** m
  total = term
  for i in range(1, k + 1):
    term = term * (m - i + 1) / i * p / (1 - p)
    total += term
  return total


def _exact_upper(k: int, m: int, delta: float, guess: float) -> float:
  """The largest p with P(Bin(m, p) <= k) >= delta: bisection on the exact tail at 50 digits,
  inside a bracket around ``guess`` that is checked to contain the crossing."""
  if k == m:
    return 1.0
  with mpmath.workdps(50):
    target = mpmath.mpf(delta)
    lo = mpmath.mpf(guess) * (1 - mpmath.mpf("1e-6"))
    hi = min(mpmath.mpf(guess) * (1 + mpmath.mpf("1e-6")), mpmath.mpf(1))
    assert _tail(k, m, lo) >= target > _tail(k, m, hi), "the crossing is not near the guess"
    for _ in range(50):
      mid = (lo + hi) / 2
      if _tail(k, m, mid) >= target:
        lo = mid
      else:
        hi = mid
    return float(lo)


@pytest.mark.parametrize("k,m,delta", CASES)
def test_binomial_upper_matches_mpmath_tail_inversion(k, m, delta):
  got = binomial_upper(k, m, delta)
  want = _exact_upper(k, m, delta, got)
  assert got == pytest.approx(want, rel=1e-9, abs=1e-15)


def test_binomial_upper_vectorised_and_edges():
  k = np.array([[0, 3], [10, 10]])
  m = np.array([10, 10])
  out = binomial_upper(k, m, 0.05)
  assert out.shape == (2, 2)
  assert out[1, 0] == out[1, 1] == 1.0
  assert out[0, 0] == pytest.approx(1 - 0.05 ** (1 / 10), rel=1e-12)  # k = 0: 1 - delta^(1/m)
  assert np.all(np.diff(binomial_upper(np.arange(11), 10, 0.05)) > 0)  # monotone in k
  assert binomial_upper(3, 10, 0.01) > binomial_upper(3, 10, 0.1)  # monotone in delta


@pytest.mark.parametrize("args,match", [
  ((11, 10, 0.05), "errors"), ((1.5, 10, 0.05), "errors"), ((0, 0, 0.05), "m:"),
  ((1, 10, 0.0), "delta"), ((1, 10, 1.0), "delta")])
def test_binomial_upper_refuses_bad_input(args, match):
  with pytest.raises(ValueError, match=match):
    binomial_upper(*args)


TRIALS = 4000
DELTA = 0.1


def _coverage(bound_fn, p: float, m: int, seed: int) -> tuple[float, float]:
  """(fraction of trials with p <= bound, 3 binomial s.d. of that fraction at 1 - DELTA)."""
  rng = np.random.default_rng(seed)
  k = rng.binomial(m, p, size=TRIALS)
  covered = float(np.mean(p <= bound_fn(k, m)))
  return covered, 3 * math.sqrt(DELTA * (1 - DELTA) / TRIALS)


@pytest.mark.parametrize("p,m", [(0.1, 25), (0.3, 40), (0.5, 200), (0.71, 25)])
def test_binomial_bound_covers_and_anti_conservative_variants_fail(p, m):
  """P(R <= bound) >= 1 - delta over 4,000 simulated held-out sets; the plug-in k/m and the
  bound at 3 delta (an optimistic confidence) fall below 1 - delta by more than 3 s.d."""
  ok, slack = _coverage(lambda k, m: binomial_upper(k, m, DELTA), p, m, seed=1)
  assert ok >= 1 - DELTA - slack, ok
  plug, _ = _coverage(lambda k, m: k / m, p, m, seed=1)
  assert plug < 1 - DELTA - slack, plug
  loose, _ = _coverage(lambda k, m: binomial_upper(k, m, 3 * DELTA), p, m, seed=1)
  assert loose < 1 - DELTA - slack, loose


def test_exact_coverage_is_at_least_one_minus_delta():
  """Exact coverage sum_k P(k) [p <= B(k)] over a fine grid of p (no simulation noise)."""
  m = 30
  bnd = binomial_upper(np.arange(m + 1), m, DELTA)
  for p in np.linspace(0.0, 0.999, 400):
    cover = stats.binom.pmf(np.arange(m + 1), m, p) @ (p <= bnd)
    assert cover >= 1 - DELTA - 1e-12, p


def test_kl_bound_for_fractional_losses_covers():
  """[0, 1]-valued losses (Beta distributed, mean 0.2): kl-Chernoff coverage >= 1 - delta."""
  rng = np.random.default_rng(2)
  m, mean = 50, 0.2
  losses = rng.beta(0.5, 2.0, size=(TRIALS, m))  # mean 0.5 / 2.5 = 0.2
  with float64_scope():
    up = np.asarray(pac.mc_sample_bound(losses.mean(axis=1), m, DELTA))
  cover = float(np.mean(mean <= up))
  assert cover >= 1 - DELTA - 3 * math.sqrt(DELTA * (1 - DELTA) / TRIALS)
  assert float(np.mean(mean <= losses.mean(axis=1))) < 0.8  # the plug-in fails
  b = holdout_bound(losses[0], DELTA)
  assert b.method == METHOD_KL and b.value == pytest.approx(float(up[0]), rel=1e-12)


def test_holdout_bound_zero_one_and_refusals():
  losses = np.array([0, 1, 0, 0, 1, 0, 0, 0, 0, 0], float)
  b = holdout_bound(losses, 0.05, zero_one=True)
  assert b.method == METHOD_BINOMIAL and b.m == 10 and b.errors == 2
  assert b.value == binomial_upper(2, 10, 0.05) and b.non_vacuous
  assert holdout_bound(losses, 0.05).value > b.value  # kl is looser than the exact tail
  with pytest.raises(ValueError, match=r"losses\[1\].*0/1"):
    holdout_bound([0.0, 0.5], 0.05, zero_one=True)
  with pytest.raises(ValueError, match=r"losses\[0\]"):
    holdout_bound([1.5], 0.05)
  with pytest.raises(ValueError, match="no held-out rows"):
    holdout_bound([], 0.05)


def test_slice_bounds_union_and_mixture():
  mix = mixture_bounds(train_mixture={1: 0.5, 2: 0.5}, test_mixture={1: 0.2, 2: 0.3, 3: 0.5})
  diff = np.array([1] * 40 + [2] * 60)
  losses = np.array([0] * 36 + [1] * 4 + [0] * 30 + [1] * 30, float)
  out = slice_holdout_bounds(losses, diff, mix, 0.05, zero_one=True)
  assert out.difficulties == (1.0, 2.0) and out.delta_per_slice == 0.025
  b1, b2 = binomial_upper(4, 40, 0.025), binomial_upper(30, 60, 0.025)
  assert out.bounds == (b1, b2)
  assert out.value == pytest.approx(0.5 * 1.0 + 0.2 * b1 + 0.3 * b2, rel=1e-12)  # m_out = 0.5
  d = out.to_dict()
  assert d["slices"][0]["m"] == 40 and d["slices"][1]["errors"] == 30
  with pytest.raises(ValueError, match=r"difficulty\[0\].*p_train = 0"):
    slice_holdout_bounds([0.0], [3], mix, 0.05)
  with pytest.raises(ValueError, match=r"difficulty\[0\].*not in the mixture support"):
    slice_holdout_bounds([0.0], [7], mix, 0.05)


def test_slice_bound_with_an_empty_slice_is_one():
  mix = mixture_bounds(train_mixture={1: 0.5, 2: 0.5}, test_mixture={1: 0.5, 2: 0.5})
  out = slice_holdout_bounds([0.0, 0.0], [1, 1], mix, 0.1, zero_one=True)
  assert out.slices[1] is None and out.bounds[1] == 1.0
  assert out.value == pytest.approx(0.5 * binomial_upper(0, 2, 0.05) + 0.5)


def test_slice_mixture_bound_covers_the_test_risk():
  """2,000 simulated held-out sets over three slices: P(E_test <= value) >= 1 - delta; the
  same construction with the per-slice plug-in risks fails."""
  rng = np.random.default_rng(3)
  p_train = np.array([0.5, 0.3, 0.2])
  p_test = np.array([0.1, 0.3, 0.6])
  risk = np.array([0.05, 0.3, 0.6])
  mix = mixture_bounds(train_mixture=dict(zip((1, 2, 3), p_train, strict=True)),
                       test_mixture=dict(zip((1, 2, 3), p_test, strict=True)))
  target = float(p_test @ risk)
  trials, m = 2000, 60
  diff = rng.choice(3, size=(trials, m), p=p_train)
  losses = (rng.random((trials, m)) < risk[diff]).astype(float)
  hits, plug_hits = 0, 0
  for t in range(trials):
    out = slice_holdout_bounds(losses[t], diff[t] + 1, mix, DELTA, zero_one=True)
    hits += target <= out.value
    plug = [losses[t][diff[t] == j].mean() if np.any(diff[t] == j) else 1.0 for j in range(3)]
    plug_hits += target <= float(p_test @ plug)
  slack = 3 * math.sqrt(DELTA * (1 - DELTA) / trials)
  assert hits / trials >= 1 - DELTA - slack
  assert plug_hits / trials < 1 - DELTA - slack
