"""Tests for pacbayes.bounds.pac against mpmath references, properties and coverage simulations."""

import math

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
from scipy import stats

from pacbayes.bounds import pac as bounds
from tests.helpers.mp_reference import MP_DPS, mp_inv_lower, mp_inv_upper, mp_kl

kl_inv_upper_jit = jax.jit(bounds.kl_inv_upper)
kl_inv_lower_jit = jax.jit(bounds.kl_inv_lower)
kl_jit = jax.jit(bounds.kl_bernoulli)
grad_upper_jit = jax.jit(jax.grad(bounds.kl_inv_upper, argnums=(0, 1)))
grad_lower_jit = jax.jit(jax.grad(bounds.kl_inv_lower, argnums=(0, 1)))


# ----------------------------------------------------------------------------------------------
# Independent references in mpmath (50 digits): the kl ones are in tests/helpers/mp_reference.py.


def cp_lower(k, trials, alpha):
  """One-sided Clopper-Pearson lower confidence limit for a binomial proportion."""
  return 0.0 if k == 0 else float(stats.beta.ppf(alpha, k, trials - k + 1))


GRID_Q = [0.0, 1e-12, 0.3, 1.0 - 1e-12, 1.0]
GRID_C = [0.0, 1e-10, 0.1, 5.0, 1e3]


def _random_cases(seed, size):
  rng = np.random.default_rng(seed)
  q = np.concatenate(
    [rng.uniform(size=size), 10 ** rng.uniform(-15, 0, size), 1 - 10 ** rng.uniform(-15, 0, size)]
  )
  c = 10 ** rng.uniform(-16, 2.5, size=q.size)
  return q, c


# ----------------------------------------------------------------------------------------------
# kl and its inverses against mpmath.


def test_kl_bernoulli_matches_mpmath():
  q = np.array([0.0, 0.0, 1.0, 0.3, 0.3, 0.3, 0.3, 1e-12, 0.5, 0.0, 1.0])
  p = np.array([0.0, 0.2, 0.7, 0.3, 0.3 + 1e-9, 0.9, 1e-5, 1e-10, 1.0, 1.0, 0.0])
  ours = np.asarray(kl_jit(q, p))
  for qi, pi, oi in zip(q, p, ours, strict=True):
    ref = mp_kl(qi, pi)
    if mpmath.isinf(ref):
      assert np.isinf(oi)
    else:
      assert abs(oi - float(ref)) <= 1e-13 * max(1.0, float(ref)) + 1e-30, (qi, pi)


BATCH = 64  # test batches are padded to one length so the jitted inverses compile once


def _inverses(q, c):
  q = np.asarray(q, dtype=np.float64).ravel()
  c = np.asarray(c, dtype=np.float64).ravel()
  assert q.size == c.size <= BATCH
  pad = BATCH - q.size
  qp, cp = np.pad(q, (0, pad), constant_values=0.5), np.pad(c, (0, pad), constant_values=0.1)
  upper = np.asarray(kl_inv_upper_jit(qp, cp))[: q.size]
  lower = np.asarray(kl_inv_lower_jit(qp, cp))[: q.size]
  return q, c, upper, lower


def _check_inverses(q, c):
  q, c, upper, lower = _inverses(q, c)
  for qi, ci, ui, li in zip(q, c, upper, lower, strict=True):
    ref_u, ref_l = mp_inv_upper(qi, ci), mp_inv_lower(qi, ci)
    assert abs(ui - float(ref_u)) <= 1e-9, ("upper", qi, ci, ui, ref_u)
    assert abs(li - float(ref_l)) <= 1e-9, ("lower", qi, ci, li, ref_l)
    # Conservative direction, with no slack at all: compared exactly in 50 digits.
    assert mpmath.mpf(ui) >= ref_u, ("upper below the supremum", qi, ci, ui, ref_u)
    assert mpmath.mpf(li) <= ref_l, ("lower above the infimum", qi, ci, li, ref_l)
    # And tight: a few 1e-15 at most.
    assert float(mpmath.mpf(ui) - ref_u) <= 1e-14
    assert float(ref_l - mpmath.mpf(li)) <= 1e-14


def test_kl_inverses_match_mpmath_on_grid():
  q, c = np.meshgrid(np.array(GRID_Q), np.array(GRID_C), indexing="ij")
  _check_inverses(q, c)


def test_kl_inverses_match_mpmath_on_random_points():
  _check_inverses(*_random_cases(seed=0, size=15))


def test_kl_inverse_exact_cases():
  cs = np.array([0.0, 1e-300, 1e-10, 0.1, 5.0, 700.0, np.inf])
  qs = np.array([0.0, 1e-12, 0.25, 0.5, 1 - 1e-12, 1.0])
  zeros, ones = np.zeros_like(cs), np.ones_like(cs)
  q = np.concatenate([zeros, ones, qs, qs, [0.3]])
  c = np.concatenate([cs, cs, np.zeros_like(qs), np.full_like(qs, np.inf), [1e3]])
  _, _, upper, lower = _inverses(q, c)
  k = cs.size
  np.testing.assert_allclose(upper[:k], -np.expm1(-cs), rtol=1e-15, atol=0)  # 1 - exp(-c)
  np.testing.assert_array_equal(lower[:k], 0.0)
  np.testing.assert_array_equal(upper[k : 2 * k], 1.0)
  np.testing.assert_allclose(lower[k : 2 * k], np.exp(-cs), rtol=1e-15, atol=0)
  m = qs.size
  np.testing.assert_array_equal(upper[2 * k : 2 * k + m], qs)  # c == 0 returns q exactly
  np.testing.assert_array_equal(lower[2 * k : 2 * k + m], qs)
  np.testing.assert_array_equal(upper[2 * k + m : 2 * k + 2 * m], 1.0)  # c == inf
  np.testing.assert_array_equal(lower[2 * k + m : 2 * k + 2 * m], 0.0)
  assert upper[-1] == 1.0 and lower[-1] == 0.0  # supremum within 1e-600 of 1, infimum of 0
  assert np.isnan(float(kl_inv_upper_jit(jnp.nan, 0.1)))  # NaN propagates under tracing
  with pytest.raises(ValueError, match="got nan"):
    bounds.kl_inv_upper(jnp.nan, 0.1)  # and is refused when concrete


def test_broadcasting_dtype_and_vmap():
  q = jnp.linspace(0.0, 1.0, 7)
  c = jnp.array([[0.01], [0.5]])
  out = kl_inv_upper_jit(q[None, :], c)
  assert out.shape == (2, 7) and out.dtype == jnp.float64
  by_vmap = jax.vmap(bounds.kl_inv_upper, in_axes=(0, None))(q, 0.5)
  np.testing.assert_array_equal(by_vmap, out[1])
  scalar = bounds.kl_inv_upper(0.2, 0.05)
  assert scalar.shape == () and scalar.dtype == jnp.float64


# ----------------------------------------------------------------------------------------------
# Properties (hypothesis).

unit = st.floats(0.0, 1.0, allow_nan=False)
budget = st.one_of(st.floats(0.0, 50.0, allow_nan=False), st.sampled_from([0.0, 1e-14, 1e-8]))
SETTINGS = hypothesis.settings(max_examples=40, deadline=None, derandomize=True)


def _slope(q, p):
  return abs(p - q) / (p * (1 - p)) if 0 < p < 1 else 0.0


@SETTINGS
@hypothesis.given(q=unit, c=budget)
def test_upper_is_a_root_on_the_safe_side(q, c):
  u = float(kl_inv_upper_jit(q, c))
  lo = float(kl_inv_lower_jit(q, c))
  assert lo <= q <= u
  if u < 1.0:
    k = float(mp_kl(q, u))
    # kl(q, u) <= c up to how much one 1e-13 step in p moves kl; and never clearly below c.
    tol = 1e-12 + 1e-13 * _slope(q, u)
    assert k <= c + tol
    assert k >= c - 1e-12 * max(c, 1e-300) or u == q
  if lo > 0.0:
    k = float(mp_kl(q, lo))
    tol = 1e-12 + 1e-13 * _slope(q, lo)
    assert k <= c + tol + 1e-12 * c


@SETTINGS
@hypothesis.given(q=unit, c1=budget, c2=budget)
def test_monotone_in_c(q, c1, c2):
  c1, c2 = min(c1, c2), max(c1, c2)
  assert float(kl_inv_upper_jit(q, c1)) <= float(kl_inv_upper_jit(q, c2)) + 1e-14
  assert float(kl_inv_lower_jit(q, c1)) >= float(kl_inv_lower_jit(q, c2)) - 1e-14


@SETTINGS
@hypothesis.given(q1=unit, q2=unit, c=budget)
def test_monotone_in_q(q1, q2, c):
  q1, q2 = min(q1, q2), max(q1, q2)
  assert float(kl_inv_upper_jit(q1, c)) <= float(kl_inv_upper_jit(q2, c)) + 1e-14
  assert float(kl_inv_lower_jit(q1, c)) <= float(kl_inv_lower_jit(q2, c)) + 1e-14


@SETTINGS
@hypothesis.given(q=unit, p=unit)
def test_inverse_relations(q, p):
  c = float(kl_jit(q, p))
  hypothesis.assume(math.isfinite(c))
  if p >= q:
    assert abs(float(kl_inv_upper_jit(q, c)) - p) <= 1e-9
  else:
    assert abs(float(kl_inv_lower_jit(q, c)) - p) <= 1e-9
  # Mirror symmetry kl(q || p) = kl(1 - q || 1 - p).
  c2 = min(c, 30.0)
  mirrored = 1.0 - float(kl_inv_upper_jit(1.0 - q, c2))
  assert abs(float(kl_inv_lower_jit(q, c2)) - mirrored) <= 1e-9


# ----------------------------------------------------------------------------------------------
# Gradients.

INTERIOR = [(0.3, 0.1), (0.05, 1e-3), (0.7, 2.0), (1e-4, 0.02), (0.5, 1e-8), (0.9, 0.3)]


def _mp_fd(fn, x, h):
  with mpmath.workdps(MP_DPS):
    return float((fn(x + h) - fn(x - h)) / (2 * h))


@pytest.mark.parametrize("q,c", INTERIOR)
def test_gradients_match_mpmath_finite_differences(q, c):
  grads_u = grad_upper_jit(q, c)
  grads_l = grad_lower_jit(q, c)
  qm, cm = mpmath.mpf(q), mpmath.mpf(c)
  h = mpmath.mpf(10) ** -22
  ref_u = (
    _mp_fd(lambda x: mp_inv_upper(x, cm), qm, h),
    _mp_fd(lambda x: mp_inv_upper(qm, x), cm, h),
  )
  ref_l = (
    _mp_fd(lambda x: mp_inv_lower(x, cm), qm, h),
    _mp_fd(lambda x: mp_inv_lower(qm, x), cm, h),
  )
  np.testing.assert_allclose(np.array(grads_u), np.array(ref_u), rtol=1e-7)
  np.testing.assert_allclose(np.array(grads_l), np.array(ref_l), rtol=1e-7)


def test_maurer_gradient_matches_mpmath():
  n, delta = 1000.0, 0.05
  emp, kl = 0.12, 7.0
  grads = jax.grad(bounds.maurer, argnums=(0, 1))(emp, kl, n, delta)

  def mp_maurer(e, k):
    return mp_inv_upper(e, (k + mpmath.log(2 * mpmath.sqrt(n) / delta)) / n)

  h = mpmath.mpf(10) ** -22
  ref = (
    _mp_fd(lambda x: mp_maurer(x, mpmath.mpf(kl)), mpmath.mpf(emp), h),
    _mp_fd(lambda x: mp_maurer(mpmath.mpf(emp), x), mpmath.mpf(kl), h),
  )
  np.testing.assert_allclose(np.array(grads), np.array(ref), rtol=1e-7)


def test_no_nan_gradients_at_edges():
  q, c = np.meshgrid(np.array(GRID_Q), np.array(GRID_C), indexing="ij")
  q, c = q.ravel(), c.ravel()

  @jax.jit
  def all_grads(q, c):
    out = []
    for fn in (bounds.kl_inv_upper, bounds.kl_inv_lower):
      out.extend(jax.vmap(jax.grad(fn, argnums=(0, 1)))(q, c))  # reverse mode
      out.append(jax.jvp(fn, (q, c), (jnp.ones_like(q), jnp.zeros_like(c)))[1])  # forward
      out.append(jax.jvp(fn, (q, c), (jnp.zeros_like(q), jnp.ones_like(c)))[1])
    # A zero cotangent through a where-select gives zero, not NaN.
    out.append(jax.grad(lambda c: jnp.where(False, bounds.kl_inv_upper(0.3, c), 0.0))(0.0)[None])
    for emp in (0.0, 0.5, 1.0):
      out.append(jnp.stack(jax.grad(bounds.maurer, argnums=(0, 1, 2, 3))(emp, 3.0, 100.0, 0.05)))
    return out

  parts = all_grads(q, c)
  for part in parts:
    assert np.all(np.isfinite(np.asarray(part)))
  assert float(parts[8][0]) == 0.0
  # Saturated values and the closed forms.
  gq, gc = grad_upper_jit(0.3, 1e3)
  assert float(gq) == 0.0 and float(gc) == 0.0
  _, gc = grad_upper_jit(0.0, 0.5)
  np.testing.assert_allclose(float(gc), math.exp(-0.5), rtol=1e-12)
  _, gc = grad_lower_jit(1.0, 0.5)
  np.testing.assert_allclose(float(gc), -math.exp(-0.5), rtol=1e-12)
  # c == 0: p = q moves with q one for one.
  gq, gc = grad_upper_jit(0.3, 0.0)
  assert float(gq) == 1.0 and float(gc) > 1e12


# ----------------------------------------------------------------------------------------------
# The bounds: closed forms, identities, orderings, monotonicity.

EMP = np.array([0.0, 1e-6, 0.01, 0.1, 0.3, 0.5, 0.9, 1.0])
KL = np.array([0.0, 1.0, 50.0, 5e3])
NS = np.array([1.0, 10.0, 1e3, 1e6])


def _grid():
  e, k, n = np.meshgrid(EMP, KL, NS, indexing="ij")
  return e, k, n, 0.05


def test_maurer_and_mc_bound_definitions():
  e, k, n, delta = _grid()
  c = (k + math.log(2.0) + 0.5 * np.log(n) - math.log(delta)) / n
  # Eager calls share one compiled (8, 4, 4) bisection with the other grid tests.
  np.testing.assert_array_equal(bounds.maurer(e, k, n, delta), bounds.kl_inv_upper(e, c))
  m = np.array([1.0, 10.0, 1e4])
  mean = np.array([0.0, 0.2, 1.0])
  np.testing.assert_array_equal(
    bounds.mc_sample_bound(mean, m, 0.01), bounds.kl_inv_upper(mean, math.log(1 / 0.01) / m)
  )
  np.testing.assert_array_equal(
    bounds.mc_epsilon(mean, m, 0.01), np.asarray(bounds.mc_sample_bound(mean, m, 0.01)) - mean
  )


def test_mcallester_fquad_flamb_closed_forms():
  e, k, n, delta = _grid()
  b = (k + np.log(2 * np.sqrt(n) / delta)) / n
  np.testing.assert_allclose(bounds.mcallester(e, k, n, delta), e + np.sqrt(b / 2), rtol=1e-14)
  np.testing.assert_allclose(
    bounds.fquad(e, k, n, delta), (np.sqrt(e + b / 2) + np.sqrt(b / 2)) ** 2, rtol=1e-14
  )
  np.testing.assert_allclose(
    bounds.flamb(e, k, n, delta, 0.5), e / 0.75 + b / (0.5 * 0.75), rtol=1e-14
  )


def test_fquad_equals_flamb_at_optimal_lambda():
  e, k, n, delta = _grid()
  lam = jax.jit(bounds.flamb_optimal_lam)(e, k, n, delta)
  assert np.all((lam > 0) & (lam <= 1))
  np.testing.assert_allclose(
    jax.jit(bounds.flamb)(e, k, n, delta, lam), bounds.fquad(e, k, n, delta), rtol=1e-12
  )
  # lam* minimises flamb over (0, 2): no point of a dense grid does better.
  lams = np.linspace(1e-3, 2 - 1e-3, 2001).reshape((-1, 1, 1, 1))
  dense = np.asarray(bounds.flamb(e[None], k[None], n[None], delta, lams))
  best = np.asarray(bounds.flamb(e, k, n, delta, lam))
  assert np.all(dense >= best[None] * (1 - 1e-12))


def test_catoni_formula_and_grid():
  e, k, n, delta = _grid()
  grid = (0.5, 1.0, 3.0)
  expected = np.min(
    [np.expm1(-cc * e - (k + np.log(len(grid) / delta)) / n) / np.expm1(-cc) for cc in grid],
    axis=0,
  )
  np.testing.assert_allclose(bounds.catoni(e, k, n, delta, grid=grid), expected, rtol=1e-12)
  single = bounds.catoni(0.1, 5.0, 1000.0, 0.05, grid=(2.0,))
  ref = -math.expm1(-2.0 * 0.1 - (5.0 + math.log(1 / 0.05)) / 1000.0) / -math.expm1(-2.0)
  np.testing.assert_allclose(float(single), ref, rtol=1e-14)
  assert np.all(np.asarray(bounds.catoni(e, k, n, delta)) >= e)  # never below emp_risk
  with pytest.raises(ValueError, match="grid"):
    bounds.catoni(0.1, 1.0, 10, 0.05, grid=())
  with pytest.raises(ValueError, match="grid"):
    bounds.catoni(0.1, 1.0, 10, 0.05, grid=(1.0, -2.0))


def test_bound_orderings():
  e, k, n, delta = _grid()
  maurer = np.asarray(bounds.maurer(e, k, n, delta))
  assert np.all(maurer >= e)
  assert np.all(np.asarray(bounds.mcallester(e, k, n, delta)) >= maurer)  # Pinsker
  fq = np.asarray(bounds.fquad(e, k, n, delta))
  assert np.all(fq >= maurer * (1 - 1e-12))  # kl(q||p) >= (p - q)^2 / (2p)
  for lam in (0.1, 0.7, 1.5):
    assert np.all(np.asarray(bounds.flamb(e, k, n, delta, lam)) >= fq * (1 - 1e-12))


@pytest.mark.parametrize(
  "fn",
  [
    bounds.maurer,
    bounds.mcallester,
    bounds.fquad,
    bounds.catoni,
    lambda e, k, n, d: bounds.flamb(e, k, n, d, bounds.flamb_optimal_lam(e, k, n, d)),
  ],
  ids=["maurer", "mcallester", "fquad", "catoni", "flamb_opt"],
)
def test_bounds_monotone_in_kl_and_n(fn):
  e, k, n, delta = _grid()
  values = np.asarray(fn(e, k, n, delta))
  tol = 1e-12
  assert np.all(np.diff(values, axis=1) >= -tol)  # more KL, larger bound
  assert np.all(np.diff(values, axis=2) <= tol)  # more data, smaller bound
  assert np.all(np.diff(values, axis=0) >= -tol)  # larger empirical risk, larger bound
  tighter = np.asarray(fn(e, k, n, 0.2))
  assert np.all(tighter <= values + tol)  # larger delta, smaller bound


def test_bounds_under_jit_with_traced_arguments():
  @jax.jit
  def all_bounds(e, k, n, d):
    return jnp.stack(
      [
        bounds.maurer(e, k, n, d),
        bounds.mcallester(e, k, n, d),
        bounds.catoni(e, k, n, d),
        bounds.fquad(e, k, n, d),
        bounds.flamb(e, k, n, d, 1.0),
        bounds.mc_sample_bound(e, n, d),
      ]
    )

  out = all_bounds(jnp.array([0.1, 0.2]), jnp.array([1.0, 2.0]), 500.0, 0.05)
  assert out.shape == (6, 2) and bool(jnp.all(jnp.isfinite(out)))


# ----------------------------------------------------------------------------------------------
# Coverage: the bounds hold at least 1 - delta of the time on problems with a known true risk.

TRUE_RISKS = np.array([0.02, 0.1, 0.3, 0.5, 0.8])
TRIALS = 4000
CP_ALPHA = 1e-3  # a rate is flagged only when its CP lower limit at this level exceeds delta


def _flagged(fails, delta):
  """Per true risk: is the failure rate significantly above delta?"""
  return [cp_lower(int(f), TRIALS, CP_ALPHA) > delta for f in np.asarray(fails).sum(axis=1)]


def _empirical_risks(seed, n):
  # A point posterior (KL = 0): the empirical risk is the mean of n Bernoulli(p) losses.
  rng = np.random.default_rng(seed)
  return rng.binomial(n, TRUE_RISKS[:, None], size=(TRUE_RISKS.size, TRIALS)) / n


def test_pac_bayes_bounds_cover_true_risk():
  n, delta = 200, 0.1
  emp = _empirical_risks(seed=2024, n=n)
  p = TRUE_RISKS[:, None]
  candidates = {
    "maurer": bounds.maurer(emp, 0.0, n, delta),
    "mcallester": bounds.mcallester(emp, 0.0, n, delta),
    "catoni": bounds.catoni(emp, 0.0, n, delta),
    "fquad": bounds.fquad(emp, 0.0, n, delta),
    "flamb": bounds.flamb(emp, 0.0, n, delta, bounds.flamb_optimal_lam(emp, 0.0, n, delta)),
  }
  for name, bound in candidates.items():
    fails = np.asarray(bound) < p
    assert not any(_flagged(fails, delta)), (name, fails.mean(axis=1))
  # Power: the same check catches anti-conservative variants.
  c = (math.log(2 * math.sqrt(n) / delta)) / n
  no_log_term = np.asarray(bounds.kl_inv_upper(emp, 0.0)) < p
  assert all(_flagged(no_log_term, delta))
  budget_over_8 = np.asarray(bounds.kl_inv_upper(emp, c / 8)) < p
  assert any(_flagged(budget_over_8, delta))


def test_mc_sample_bound_covers_true_mean():
  """One-sided ln(1/delta)/M: holds in >= 1 - delta of trials; a quarter of the budget fails."""
  m, delta = 100, 0.1
  mean = _empirical_risks(seed=7, n=m)
  p = TRUE_RISKS[:, None]
  fails = np.asarray(bounds.mc_sample_bound(mean, m, delta)) < p
  assert not any(_flagged(fails, delta)), fails.mean(axis=1)
  bad = np.asarray(bounds.kl_inv_upper(mean, math.log(1 / delta) / m / 4)) < p
  assert any(_flagged(bad, delta))


def test_mc_sample_bound_covers_non_identical_draws():
  """Chunk-scheme draws: independent [0, 1] means with different expectations (one-sided)."""
  rng = np.random.default_rng(11)
  m, chunk, delta = 60, 4, 0.1
  mus = rng.uniform(0.0, 0.5, size=m)  # each draw's own mean; their average is the target
  x = rng.binomial(chunk, mus, size=(TRIALS, m)) / chunk  # [T, M] chunk means in [0, 1]
  mean = x.mean(axis=1)
  target = mus.mean()
  fails = np.asarray(bounds.mc_sample_bound(mean, m, delta)) < target
  assert cp_lower(int(fails.sum()), TRIALS, CP_ALPHA) <= delta, fails.mean()
  # Same test, anti-conservative: a normal-approximation interval with a tenth of the width.
  sd = x.std(axis=1, ddof=1) / math.sqrt(m)
  bad = mean + 0.1 * stats.norm.ppf(1 - delta) * sd < target
  assert cp_lower(int(bad.sum()), TRIALS, CP_ALPHA) > delta, bad.mean()


@pytest.mark.parametrize(("mean", "m", "delta"), [(0.0, 10, 0.05), (0.13, 200, 0.01),
                                                  (0.5, 3, 0.2), (0.97, 1000, 1e-6)])
def test_mc_sample_bound_matches_mpmath(mean, m, delta):
  want = mp_inv_upper(mean, mpmath.log(1 / mpmath.mpf(delta)) / m)
  got = float(bounds.mc_sample_bound(mean, m, delta))
  assert got >= float(want) - 1e-15 and got == pytest.approx(float(want), abs=1e-13)
  assert float(bounds.mc_epsilon(mean, m, delta)) == pytest.approx(float(want) - mean, abs=1e-13)


def test_hoeffding_upper_closed_form_and_coverage():
  assert float(bounds.hoeffding_upper(0.3, 0.02, 0.05)) == pytest.approx(
    0.3 + math.sqrt(0.5 * 0.02 * math.log(20)), rel=1e-14)
  # Sum of independent terms with unequal ranges a_m, each a_m * Bernoulli(0.4).
  rng = np.random.default_rng(5)
  a = rng.uniform(0.0, 1.0, size=30)
  a /= a.sum()
  y = (rng.random((TRIALS, a.size)) < 0.4) @ a
  delta = 0.1
  fails = np.asarray(bounds.hoeffding_upper(y, np.sum(a**2), delta)) < 0.4
  assert cp_lower(int(fails.sum()), TRIALS, CP_ALPHA) <= delta
  bad = np.asarray(bounds.hoeffding_upper(y, np.sum(a**2) / 25, delta)) < 0.4
  assert cp_lower(int(bad.sum()), TRIALS, CP_ALPHA) > delta
  with pytest.raises(ValueError, match="^sum_sq_ranges must"):
    bounds.hoeffding_upper(0.1, -1.0, 0.1)


# ----------------------------------------------------------------------------------------------
# Input validation.


@pytest.mark.parametrize(
  "call,name",
  [
    (lambda: bounds.kl_bernoulli(1.5, 0.2), "q"),
    (lambda: bounds.kl_bernoulli(0.5, -0.1), "p"),
    (lambda: bounds.kl_inv_upper(-0.1, 0.2), "q"),
    (lambda: bounds.kl_inv_upper(0.5, -1.0), "c"),
    (lambda: bounds.kl_inv_lower(0.5, float("nan")), "c"),
    (lambda: bounds.maurer(1.2, 1.0, 10, 0.05), "emp_risk"),
    (lambda: bounds.maurer(0.2, -1.0, 10, 0.05), "kl"),
    (lambda: bounds.maurer(0.2, 1.0, 0, 0.05), "n"),
    (lambda: bounds.maurer(0.2, 1.0, 10, 1.0), "delta"),
    (lambda: bounds.mcallester(0.2, 1.0, 10, 0.0), "delta"),
    (lambda: bounds.catoni(0.2, 1.0, 0.5, 0.05), "n"),
    (lambda: bounds.fquad(np.array([0.1, 2.0]), 1.0, 10, 0.05), "emp_risk"),
    (lambda: bounds.flamb(0.2, 1.0, 10, 0.05, 2.0), "lam"),
    (lambda: bounds.flamb_optimal_lam(0.2, 1.0, 10, -0.5), "delta"),
    (lambda: bounds.mc_sample_bound(0.2, 0, 0.05), "num_samples"),
    (lambda: bounds.mc_sample_bound(1.01, 10, 0.05), "mean"),
    (lambda: bounds.maurer("high", 1.0, 10, 0.05), "emp_risk"),
  ],
)
def test_invalid_input_names_the_argument(call, name):
  with pytest.raises(ValueError, match=rf"^{name} must"):
    call()


def test_error_message_format():
  with pytest.raises(ValueError, match=r"^emp_risk must lie in \[0, 1\], got 1\.2$"):
    bounds.maurer(1.2, 1.0, 10, 0.05)
  with pytest.raises(ValueError, match=r"at index \(1,\)"):
    bounds.maurer(np.array([0.1, 0.2]), np.array([1.0, -2.0]), 10, 0.05)
  with pytest.raises(ValueError, match=r"^delta must lie in \(0, 1\), got 0\.0$"):
    bounds.mc_sample_bound(0.1, 10, 0.0)
