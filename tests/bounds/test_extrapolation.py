"""Tests for pacbayes.bounds.extrapolation and mixture: independent references, coverage."""

import json
import math

import mpmath
import numpy as np
import pytest
from scipy import optimize, stats

from pacbayes.bounds import extrapolation as ex
from pacbayes.bounds import mixture as mixtures
from pacbayes.bounds import pac as bounds
from pacbayes.bounds.btrain import maurer_upper
from pacbayes.bounds.delta import split_delta
from tests.helpers.mp_reference import mp_inv_upper

# ---------------------------------------------------------------------------------------------
# Independent references.


def mp_maurer(q, kl, n, delta, k=1):
  with mpmath.workdps(50):
    c = (kl + mpmath.log(2 * mpmath.sqrt(n) / delta) + mpmath.log(k)) / n
  return float(mp_inv_upper(q, c))


def mp_mc_upper(mean, m, delta):
  with mpmath.workdps(50):
    return float(mp_inv_upper(mean, mpmath.log(1 / mpmath.mpf(delta)) / m))


def lp_worst_case(p_test, p_train, b):
  """max sum p_test r + mass outside, s.t. sum p_train r <= b, 0 <= r <= 1 (scipy linprog)."""
  p_test, p_train = np.asarray(p_test), np.asarray(p_train)
  inside = p_train > 0
  res = optimize.linprog(-p_test[inside], A_ub=[p_train[inside]], b_ub=[b],
                         bounds=[(0, 1)] * int(inside.sum()), method="highs")
  assert res.status == 0
  return p_test[~inside].sum() - res.fun


SUPPORT = (1.0, 2.0, 3.0, 4.0)


def exact(p_test, p_train):
  return mixtures.mixture_bounds(test_mixture=dict(zip(SUPPORT, p_test, strict=True)),
                           train_mixture=dict(zip(SUPPORT, p_train, strict=True)))


# ---------------------------------------------------------------------------------------------
# Mixtures.


def test_mixture_helpers_and_errors(tmp_path):
  assert mixtures.uniform_mixture([3, 1, 2]) == {1.0: 1 / 3, 2.0: 1 / 3, 3.0: 1 / 3}
  assert mixtures.check_mixture({"1": 0.25, 2: 0.75}) == {1.0: 0.25, 2.0: 0.75}
  path = tmp_path / "mix.json"
  path.write_text(json.dumps({"1": 0.5, "3": 0.5}))
  assert mixtures.load_mixture(str(path)) == {1.0: 0.5, 3.0: 0.5}
  assert mixtures.load_mixture("uniform", support=[1, 2]) == {1.0: 0.5, 2.0: 0.5}
  with pytest.raises(ValueError, match="needs the difficulty support"):
    mixtures.load_mixture("uniform")
  with pytest.raises(ValueError, match=r"mix.json: key '3' is not in the support"):
    mixtures.load_mixture(str(path), support=[1, 2])
  for text, match in [("{\"1\": 0.5, \"x\": 0.5}", r"mix.json: key 'x': expected a number"),
                      ("{\"1\": null}", r"mix.json: key '1': expected a number, got None"),
                      ("{\"1\": 0.7}", "mix.json: probabilities must sum to 1"),
                      ("{\"1\": -0.5, \"2\": 1.5}", r"mix.json: key '1': probability must be"),
                      ("[1]", "mix.json: expected a JSON object"),
                      ("{\"1\": 1", r"mix.json:1: not valid JSON")]:
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
      mixtures.load_mixture(str(path))
  with pytest.raises(ValueError, match="missing.json: cannot read"):
    mixtures.load_mixture(str(tmp_path / "missing.json"))


def test_mixture_bounds_exact_and_sampled():
  mix = exact((0.1, 0.2, 0.3, 0.4), (0.5, 0.5, 0.0, 0.0))
  assert mix.delta == 0.0 and mix.test_exact and mix.train_exact
  assert mix.m_out == pytest.approx(0.7) and mix.w_max == pytest.approx(0.4)
  assert mix.tv == pytest.approx(0.7)
  with pytest.raises(ValueError, match="both mixtures are exact"):
    mixtures.mixture_bounds(test_mixture={1: 1.0}, train_mixture={1: 1.0}, delta=0.1)
  with pytest.raises(ValueError, match="support: required"):
    mixtures.mixture_bounds(test_difficulty=[1, 2], train_mixture={1: 1.0}, delta=0.1)
  with pytest.raises(ValueError, match=r"test_difficulty\[1\]: difficulty 7.0 is not in"):
    mixtures.mixture_bounds(test_difficulty=[1, 7], train_mixture={1: 1.0}, support=[1, 2],
                      delta=0.1)
  with pytest.raises(ValueError, match=r"train_difficulty\[0\]: difficulty must be a finite"):
    mixtures.mixture_bounds(test_mixture={1: 1.0}, train_difficulty=[float("nan")], support=[1],
                      delta=0.1)
  with pytest.raises(ValueError, match="give exactly one"):
    mixtures.mixture_bounds(test_mixture={1: 1.0}, test_difficulty=[1], train_mixture={1: 1.0})
  # Sampled sides: one-sided Clopper-Pearson at delta / (sides * k), from scipy directly.
  rng = np.random.default_rng(0)
  test = rng.choice([1, 2, 3], size=300, p=[0.2, 0.3, 0.5])
  train = rng.choice([1, 2], size=200, p=[0.6, 0.4])
  mix = mixtures.mixture_bounds(test_difficulty=test, train_difficulty=train, support=SUPPORT,
                          delta=0.08)
  level = 0.08 / 8
  for i, d in enumerate(SUPPORT):
    k_te, k_tr = int(np.sum(test == d)), int(np.sum(train == d))
    up = 1.0 if k_te == 300 else stats.beta.ppf(1 - level, k_te + 1, 300 - k_te)
    lo = 0.0 if k_tr == 0 else stats.beta.ppf(level, k_tr, 200 - k_tr + 1)
    assert mix.test_upper[i] == pytest.approx(up, rel=1e-10)
    assert mix.train_lower[i] == pytest.approx(lo, rel=1e-10, abs=1e-300)
  assert "Clopper-Pearson" in mix.method and mix.tv is None
  assert mix.in_train == (True, True, False, False)


# ---------------------------------------------------------------------------------------------
# The mixture-shift term.


def test_mixture_shift_matches_brute_force_sum_over_slices():
  """E_test = sum_d p_test R_d <= m_out + E_train[w l] <= m_out + w_max R_train, by hand."""
  rng = np.random.default_rng(1)
  p_test, p_train = (0.1, 0.2, 0.3, 0.4), (0.5, 0.3, 0.2, 0.0)
  mix = exact(p_test, p_train)
  w = {d: (pt / pr if pr > 0 else 0.0) for d, pt, pr in zip(SUPPORT, p_test, p_train,
                                                             strict=True)}
  assert mix.w_max == pytest.approx(max(w.values())) and mix.m_out == pytest.approx(0.4)
  # Synthetic losses: a large sample per slice, so slice means stand in for slice risks.
  losses = {d: (rng.random(20000) < r).astype(float) for d, r in zip(SUPPORT, (0.1, 0.3, 0.5,
                                                                              0.9), strict=True)}
  r_d = {d: losses[d].mean() for d in SUPPORT}
  e_test = sum(pt * r_d[d] for d, pt in zip(SUPPORT, p_test, strict=True))
  e_train = sum(pr * r_d[d] for d, pr in zip(SUPPORT, p_train, strict=True))
  weighted = sum(pr * w[d] * losses[d].mean() for d, pr in zip(SUPPORT, p_train, strict=True))
  m_out = sum(pt for pt, pr in zip(p_test, p_train, strict=True) if pr == 0)
  assert e_test <= m_out + weighted + 1e-12
  assert m_out + weighted <= m_out + mix.w_max * e_train + 1e-12
  assert mixtures.mixture_shift_formula(e_train, mix) == pytest.approx(m_out + mix.w_max * e_train)
  value = mixtures.mixture_shift_bound(e_train, mix)
  assert e_test <= value <= m_out + mix.w_max * e_train + 1e-12
  assert value == pytest.approx(lp_worst_case(p_test, p_train, e_train), abs=1e-9)


def test_mixture_shift_is_the_lp_optimum_and_never_looser_than_tv():
  rng = np.random.default_rng(2)
  looser_formula = 0
  for _ in range(300):
    k = int(rng.integers(2, 6))
    support = tuple(float(x) for x in range(k))
    p_test = rng.dirichlet(np.ones(k) * 0.7)
    p_train = rng.dirichlet(np.ones(k) * 0.7) * (rng.random(k) < 0.7)
    if p_train.sum() == 0:
      continue
    p_train /= p_train.sum()
    mix = mixtures.mixture_bounds(test_mixture=dict(zip(support, p_test, strict=True)),
                            train_mixture=dict(zip(support, p_train, strict=True)))
    r = rng.random(k) * (rng.random(k) < 0.8)  # true slice risks
    b = float(p_train @ r) + float(rng.random()) * 0.3  # any upper value of R_train
    value = mixtures.mixture_shift_bound(b, mix)
    tv = 0.5 * np.abs(p_test - p_train).sum()
    assert value <= b + tv  # the TV bound, exactly as the certificate forms it
    assert value <= mixtures.mixture_shift_formula(b, mix)
    assert value >= p_test @ r - 1e-12  # valid whenever b >= R_train
    assert value == pytest.approx(min(lp_worst_case(p_test, p_train, b), b + tv), abs=1e-9)
    looser_formula += mixtures.mixture_shift_formula(b, mix) > b + tv + 1e-12
  assert looser_formula > 0  # the raw formula alone would sometimes exceed B + TV
  # Vectorised over b, equal to the scalar calls.
  bs = np.linspace(0.0, 1.0, 7)
  np.testing.assert_allclose(mixtures.mixture_shift_bound(bs, mix),
                             [mixtures.mixture_shift_bound(float(x), mix) for x in bs], rtol=0,
                             atol=0)
  with pytest.raises(ValueError, match="b_train"):
    mixtures.mixture_shift_bound(-0.1, mix)


def test_worst_case_mean_exact_and_box():
  mix = exact((0.1, 0.2, 0.3, 0.4), (0.25,) * 4)
  vals = np.array([0.5, 0.2, 0.9, 0.1])
  assert mixtures.worst_case_mean(vals, mix) == pytest.approx(vals @ (0.1, 0.2, 0.3, 0.4))
  boxed = mixtures.MixtureBounds(support=SUPPORT, test_upper=(0.5, 0.5, 0.5, 0.5),
                           train_lower=(0.2, 0.2, 0.2, 0.2), test_exact=False, train_exact=True,
                           delta=0.01, method="test")
  # Greedy: 0.5 on the 0.9 slice, 0.5 on the 0.5 slice.
  assert mixtures.worst_case_mean(vals, boxed) == pytest.approx(0.5 * 0.9 + 0.5 * 0.5)
  res = optimize.linprog(-vals, A_eq=[np.ones(4)], b_eq=[1], bounds=[(0, 0.5)] * 4)
  assert mixtures.worst_case_mean(vals, boxed) == pytest.approx(-res.fun)
  np.testing.assert_allclose(mixtures.worst_case_mean(np.stack([vals, vals[::-1]]), boxed),
                             [0.7, 0.7])


# ---------------------------------------------------------------------------------------------
# Weighted-loss and per-slice bounds against independent implementations.


def _data(n, p_train, risks, seed, chunk=1):
  rng = np.random.default_rng(seed)
  diff = rng.choice(SUPPORT, size=n, p=p_train)
  risk = np.asarray(risks)[np.searchsorted(SUPPORT, diff)]
  m = math.ceil(n / chunk)
  rows = np.concatenate([np.arange(n), rng.integers(0, n, size=m * chunk - n)]).reshape(m, chunk)
  losses = (rng.random(rows.shape) < risk[rows]).astype(np.float64)
  return diff, rows, losses


@pytest.mark.parametrize("chunk", [1, 3])
def test_weighted_loss_bound_matches_mpmath(chunk):
  p_test, p_train = (0.1, 0.2, 0.3, 0.4), (0.4, 0.3, 0.2, 0.1)
  mix = exact(p_test, p_train)
  diff, rows, losses = _data(301, p_train, (0.05, 0.1, 0.3, 0.5), seed=3, chunk=chunk)
  kl, k, d_mc, d_pb = 7.5, 4, 0.01, 0.02
  got = ex.weighted_loss_bound(losses, rows, diff, mix, kl=kl, grid_size=k, delta_mc=d_mc,
                               delta_pb=d_pb)
  w = np.array(p_test) / np.array(p_train)
  v = w / w.max()
  x = [np.mean([v[SUPPORT.index(diff[r])] * losses[m, j] for j, r in enumerate(rows[m])])
       for m in range(rows.shape[0])]
  emp = float(np.mean(x))
  b_w = mp_maurer(mp_mc_upper(emp, len(x), d_mc), kl, 301, d_pb, k)
  assert got.details["emp_weighted"] == pytest.approx(emp, abs=1e-15)
  assert got.details["b_w"] == pytest.approx(b_w, abs=1e-12) and got.details["b_w"] >= b_w - 1e-15
  assert got.value == pytest.approx(w.max() * b_w, abs=1e-12)
  assert got.delta == d_mc + d_pb and dict(got.delta_parts) == {"weighted_mc": d_mc,
                                                                "weighted_pb": d_pb}
  assert got.details["scheme"] == "chunk"


def _independent_per_slice(losses, rows, diff, mix, kl, k, d_mc, d_pb):
  """A per-slice bound written from the docstring's maths with loops and mpmath."""
  n = diff.size
  slices = [d for d, lo in zip(mix.support, mix.train_lower, strict=True) if lo > 0]
  out = {}
  passes = rows.shape[1] == n and all((r == np.arange(n)).all() for r in rows)
  for d in slices:
    members = [i for i in range(n) if diff[i] == d]
    nd = len(members)
    if passes:
      z = [np.mean([losses[m, i] for i in members]) for m in range(rows.shape[0])]
      mean, up = float(np.mean(z)), mp_mc_upper(float(np.mean(z)), len(z), d_mc / len(slices))
    else:
      chunk = rows.shape[1]
      by_draw = {}
      for i in members:  # primary slot of row i is slot i: draw i // chunk
        by_draw.setdefault(i // chunk, []).append(losses.reshape(-1)[i])
      mean = sum(sum(v) for v in by_draw.values()) / nd
      sizes = {len(v) for v in by_draw.values()}
      if len(sizes) == 1:
        up = mp_mc_upper(mean, len(by_draw), d_mc / len(slices))
      else:
        sq = sum((len(v) / nd) ** 2 for v in by_draw.values())
        up = min(1.0, mean + math.sqrt(sq * math.log(len(slices) / d_mc) / 2))
    out[d] = (nd, mean, mp_maurer(up, kl, nd, d_pb / len(slices), k))
  value = sum(p * (out[d][2] if d in out else 1.0) for d, p in zip(mix.support, mix.test_upper,
                                                                    strict=True))
  return out, value


@pytest.mark.parametrize(("chunk", "passes"), [(1, False), (4, False), (None, True)])
def test_per_slice_bounds_match_an_independent_implementation(chunk, passes):
  p_test, p_train = (0.1, 0.2, 0.3, 0.4), (0.5, 0.3, 0.2, 0.0)
  mix = exact(p_test, p_train)
  if passes:
    diff, _, _ = _data(90, p_train, (0.1,) * 4, seed=4)
    rng = np.random.default_rng(5)
    rows = np.tile(np.arange(90), (6, 1))
    losses = (rng.random(rows.shape) < 0.2).astype(float)
  else:
    diff, rows, losses = _data(157, p_train, (0.05, 0.2, 0.4, 0.0), seed=4, chunk=chunk)
  got = ex.per_slice_bounds(losses, rows, diff, mix, kl=3.0, grid_size=2, delta_mc=0.02,
                            delta_pb=0.03)
  want, value = _independent_per_slice(losses, rows, diff, mix, 3.0, 2, 0.02, 0.03)
  assert [s.difficulty for s in got.slices] == list(want)
  for s in got.slices:
    nd, mean, b = want[s.difficulty]
    assert s.n == nd and s.emp_risk == pytest.approx(mean, abs=1e-14)
    assert s.bound == pytest.approx(b, abs=1e-12)
  assert {s.mc_method for s in got.slices} == ({"hoeffding"} if chunk == 4 else {"kl"})
  assert got.value == pytest.approx(value, abs=1e-12)
  assert got.details["scheme"] == ("passes" if passes else "chunk")


def test_slot_layout_and_input_errors():
  mix = exact((0.5, 0.5, 0, 0), (0.5, 0.5, 0, 0))
  diff = np.array([1.0, 2.0, 1.0])
  ok = dict(kl=1.0, delta_mc=0.01, delta_pb=0.01)
  with pytest.raises(ValueError, match="neither 'passes'"):
    ex.per_slice_bounds(np.zeros((3, 1)), np.array([[0], [2], [1]]), diff, mix, **ok)
  with pytest.raises(ValueError, match="must have one shape"):
    ex.per_slice_bounds(np.zeros((3, 2)), np.arange(3)[:, None], diff, mix, **ok)
  with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
    ex.weighted_loss_bound(np.full((3, 1), 1.5), np.arange(3)[:, None], diff, mix, **ok)
  with pytest.raises(ValueError, match=r"difficulty\[1\]: value 3.0 has p_train = 0"):
    ex.per_slice_bounds(np.zeros((3, 1)), np.arange(3)[:, None], [1, 3, 1], mix, **ok)
  with pytest.raises(ValueError, match=r"difficulty\[1\]: value 3.0 has p_train = 0"):
    ex.weighted_loss_bound(np.zeros((3, 1)), np.arange(3)[:, None], [1, 3, 1], mix, **ok)
  with pytest.raises(ValueError, match=r"difficulty\[2\]: value 9.0 is not in the mixture"):
    ex.weighted_loss_bound(np.zeros((3, 1)), np.arange(3)[:, None], [1, 2, 9], mix, **ok)
  with pytest.raises(ValueError, match=r"difficulty\[0\]: expected a finite"):
    ex.weighted_loss_bound(np.zeros((3, 1)), np.arange(3)[:, None], [np.nan, 2, 1], mix, **ok)
  with pytest.raises(ValueError, match="delta_pb"):
    ex.weighted_loss_bound(np.zeros((3, 1)), np.arange(3)[:, None], diff, mix, kl=1.0,
                           delta_mc=0.01, delta_pb=0.0)
  assert ex.detect_scheme(np.tile(np.arange(3), (2, 1)), 3) == "passes"
  assert ex.detect_scheme(np.array([[0, 1], [2, 0]]), 3) == "chunk"
  parts = split_delta(0.05, ["mc", "pb", "x"], {"x": 2.0})
  assert math.fsum(parts.values()) == 0.05 and parts["x"] == pytest.approx(0.025)
  with pytest.raises(ValueError, match="not among the parts"):
    split_delta(0.05, ["mc"], {"pb": 1.0})


# ---------------------------------------------------------------------------------------------
# Coverage: known slice risks, a known mixture shift, >= 2,000 trials, vectorised.

TRIALS = 4000
CP_ALPHA = 1e-3
# Full support; the risk sits on the slice with the largest weight, so w_max * R_train is
# exactly E_test and only the confidence terms keep the bounds above it.
P_TRAIN = np.array([0.4, 0.3, 0.2, 0.1])
P_TEST = np.array([0.1, 0.2, 0.3, 0.4])
RISKS = np.array([0.0, 0.0, 0.0, 0.8])
N = 300


def _rate_above(fails, delta):
  """True when the failure rate is significantly above delta (CP lower limit > delta)."""
  k = int(np.sum(fails))
  return k > 0 and stats.beta.ppf(CP_ALPHA, k, TRIALS - k + 1) > delta


def _simulate(seed):
  """Chunk scheme with chunk size 1 (M = n), a point posterior (KL = 0): [T, n] arrays."""
  rng = np.random.default_rng(seed)
  idx = rng.choice(4, size=(TRIALS, N), p=P_TRAIN)
  losses = (rng.random((TRIALS, N)) < RISKS[idx]).astype(np.float64)
  return idx, losses


def test_coverage_of_mixture_shift_weighted_and_per_slice_bounds():
  mix = exact(P_TEST, P_TRAIN)
  e_test = float(P_TEST @ RISKS)
  d_mc, d_pb = 0.05, 0.05
  delta = d_mc + d_pb
  idx, losses = _simulate(seed=10)
  emp = losses.mean(axis=1)

  # Mixture shift on the B_train event: B_train = Maurer(MC upper) (KL = 0, k = 1).
  b_train = maurer_upper(bounds.mc_sample_bound(emp, N, d_mc), 0.0, N, d_pb)
  fails = mixtures.mixture_shift_bound(b_train, mix) < e_test
  assert not _rate_above(fails, delta), fails.mean()
  anti = mixtures.mixture_shift_bound(emp, mix) < e_test  # plug-in: no confidence terms
  assert _rate_above(anti, delta), anti.mean()

  # Weighted loss.
  v, c, _ = ex.loss_weights(mix)
  emp_w = (v[idx] * losses).mean(axis=1)
  value, _, _ = ex.weighted_value(emp_w, N, N, mix, kl=0.0, delta_mc=d_mc, delta_pb=d_pb)
  fails = value < e_test
  assert not _rate_above(fails, delta), fails.mean()
  assert _rate_above(mix.m_out + c * emp_w < e_test, delta)

  # Per slice (chunk size 1: each slice's n_d draws are its own kl sample).
  k = len(mixtures.training_slices(mix))
  onehot = idx[..., None] == np.arange(4)  # [T, n, 4]
  n_d = onehot.sum(axis=1)
  mean_d = np.where(n_d > 0, (onehot * losses[..., None]).sum(axis=1) / np.maximum(n_d, 1), 0.0)
  up = np.asarray(bounds.mc_sample_bound(mean_d, np.maximum(n_d, 1), d_mc / k))
  b_d = ex.slice_values(up, n_d, kl=0.0, delta_pb=d_pb / k)
  fails = mixtures.worst_case_mean(b_d, mix) < e_test
  assert not _rate_above(fails, delta), fails.mean()
  anti = mixtures.worst_case_mean(mean_d, mix) < e_test
  assert _rate_above(anti, delta), anti.mean()

  # The vectorised path is the library's slot path: same numbers on a few trials.
  for t in range(3):
    got = ex.per_slice_bounds(losses[t][:, None], np.arange(N)[:, None],
                              np.array(SUPPORT)[idx[t]], mix, kl=0.0, delta_mc=d_mc,
                              delta_pb=d_pb)
    assert got.value == pytest.approx(float(mixtures.worst_case_mean(b_d[t], mix)), abs=1e-13)
    got = ex.weighted_loss_bound(losses[t][:, None], np.arange(N)[:, None],
                                 np.array(SUPPORT)[idx[t]], mix, kl=0.0, delta_mc=d_mc,
                                 delta_pb=d_pb)
    assert got.value == pytest.approx(float(value[t]), abs=1e-13)


def test_coverage_with_estimated_mixtures():
  """Test mixture from a test sample, train mixture from S: delta_ext pays for both."""
  rng = np.random.default_rng(11)
  idx, losses = _simulate(seed=12)
  test_idx = rng.choice(4, size=(TRIALS, 400), p=P_TEST)
  e_test = float(P_TEST @ RISKS)
  d_mc, d_pb, d_mix = 0.03, 0.03, 0.04
  emp = losses.mean(axis=1)
  b_train = maurer_upper(bounds.mc_sample_bound(emp, N, d_mc), 0.0, N, d_pb)
  fails = np.zeros(TRIALS, bool)
  anti = np.zeros(TRIALS, bool)
  # Per slice: with p_train estimated every support value is a slice (K = 4), chunk size 1.
  onehot = idx[..., None] == np.arange(4)
  n_d = onehot.sum(axis=1)
  mean_d = np.where(n_d > 0, (onehot * losses[..., None]).sum(axis=1) / np.maximum(n_d, 1), 0.0)
  up = np.asarray(bounds.mc_sample_bound(mean_d, np.maximum(n_d, 1), d_mc / 4))
  b_d = ex.slice_values(up, n_d, kl=0.0, delta_pb=d_pb / 4)
  slice_fails = np.zeros(TRIALS, bool)
  weighted_fails = np.zeros(TRIALS, bool)
  for t in range(TRIALS):
    mix = mixtures.mixture_bounds(test_difficulty=np.array(SUPPORT)[test_idx[t]],
                            train_difficulty=np.array(SUPPORT)[idx[t]], support=SUPPORT,
                            delta=d_mix)
    fails[t] = mixtures.mixture_shift_bound(b_train[t], mix) < e_test
    slice_fails[t] = mixtures.worst_case_mean(b_d[t], mix) < e_test
    if t < 400:  # the weighted bound through the library's slot path (weights per trial)
      got = ex.weighted_loss_bound(losses[t][:, None], np.arange(N)[:, None],
                                   np.array(SUPPORT)[idx[t]], mix, kl=0.0, delta_mc=d_mc,
                                   delta_pb=d_pb)
      weighted_fails[t] = got.value < e_test
    # Anti-conservative: plug-in mixtures (empirical frequencies as if exact).
    plug = mixtures.mixture_bounds(
      test_mixture=dict(zip(SUPPORT, np.bincount(test_idx[t], minlength=4) / 400, strict=True)),
      train_mixture=dict(zip(SUPPORT, np.bincount(idx[t], minlength=4) / N, strict=True)))
    anti[t] = mixtures.mixture_shift_bound(emp[t], plug) < e_test
  assert not _rate_above(fails, d_mc + d_pb + d_mix), fails.mean()
  assert _rate_above(anti, d_mc + d_pb + d_mix), anti.mean()
  assert not _rate_above(slice_fails, d_mc + d_pb + d_mix), slice_fails.mean()
  # 400 trials only (one library call each); checked against delta with the same CP rule.
  k = int(weighted_fails.sum())
  assert k == 0 or stats.beta.ppf(CP_ALPHA, k, 400 - k + 1) <= d_mc + d_pb + d_mix


def test_per_slice_monte_carlo_term_under_unequal_chunks():
  """Fixed S, repeated Monte Carlo: the Hoeffding per-slice value holds; a narrowed one fails."""
  rng = np.random.default_rng(13)
  n, chunk, delta = 203, 5, 0.1
  members = np.flatnonzero(rng.random(n) < 0.35)  # one slice, spread unevenly over chunks
  rho = rng.uniform(0.2, 0.6, size=n)  # per-row Q-risks: E_Q[R_{S_d}] = mean rho[members]
  m = math.ceil(n / chunk)
  rows = np.concatenate([np.arange(n), rng.integers(0, n, m * chunk - n)]).reshape(m, chunk)
  losses = (rng.random((2000,) + rows.shape) < rho[rows]).astype(float)  # [T, M, K]
  mean, up, how = ex.slice_mc_upper(losses, rows, members, delta)
  assert how == "hoeffding" and up.shape == (2000,)
  target = rho[members].mean()
  fails = up < target
  k = int(fails.sum())
  assert k == 0 or stats.beta.ppf(CP_ALPHA, k, 2000 - k + 1) <= delta
  narrow = mean + (up - mean) / 4 < target
  k = int(narrow.sum())
  assert stats.beta.ppf(CP_ALPHA, k, 2000 - k + 1) > delta
