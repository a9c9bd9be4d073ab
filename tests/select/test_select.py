"""The selection predictor: constrained fits, known best, calibration of P(best), refusals."""

import numpy as np
import pytest
from scipy import optimize

from pacbayes.select import predict
from pacbayes.select.fit import ALPHA_GRID, auto_family, constrained_line, fit_curves
from pacbayes.select.predict import (
  STATUS_OK,
  STATUS_UNCONSTRAINED,
  VERDICT_CLEAR,
  VERDICT_INDISTINGUISHABLE,
  Pilots,
  SelectOptions,
  resample_means,
  select_bucket,
)


def test_constrained_line_matches_lsq_linear():
  rng = np.random.default_rng(0)
  x_GxP = rng.uniform(0.05, 1.0, (6, 4))
  y_BxP = np.concatenate([rng.uniform(-0.3, 1.3, (30, 4)),   # E hits 0 or 1
                          0.4 + 0.1 * np.sort(rng.random((10, 4)))])  # rising: A hits 0
  w_P = rng.uniform(1, 4, 4)
  e, a, sse = constrained_line(x_GxP, y_BxP, w_P)
  root = np.sqrt(w_P)
  active = 0
  for b in range(y_BxP.shape[0]):
    for g in range(x_GxP.shape[0]):
      design = np.stack([np.ones(4), x_GxP[g]], axis=1) * root[:, None]
      ref = optimize.lsq_linear(design, y_BxP[b] * root, bounds=([0, 0], [1, np.inf]),
                                tol=1e-12, lsmr_tol="auto", max_iter=1000)
      ref_sse = float(np.sum((design @ ref.x - y_BxP[b] * root) ** 2))
      assert sse[b, g] == pytest.approx(ref_sse, abs=1e-9)
      assert [e[b, g], a[b, g]] == pytest.approx(ref.x, abs=1e-6)
      active += ref.active_mask.any()
  assert active > 50  # the constrained edges were exercised, not only interior optima


@pytest.mark.parametrize("family,params,sizes,tol_pred", [
    ("sqrt", dict(E=0.3, A=2.0, alpha=0.5, n0=0.0), [100, 400], 1e-9),
    ("power", dict(E=0.2, A=3.0, alpha=0.7, n0=0.0), [100, 200, 400], 2e-3),
    ("rectified", dict(E=0.25, A=6.0, alpha=0.8, n0=300.0), [100, 200, 400, 800, 1600], 5e-3),
])
def test_fit_recovers_noise_free_curves(family, params, sizes, tol_pred):
  n = np.asarray(sizes, dtype=float)
  y = params["E"] + params["A"] * (n + params["n0"]) ** -params["alpha"]
  fit = fit_curves(n, y[None], np.full(n.size, 3.0), family)
  truth = params["E"] + params["A"] * (16 * n.max() + params["n0"]) ** -params["alpha"]
  assert float(fit.risk(16 * n.max())[0]) == pytest.approx(truth, abs=tol_pred)
  assert float(fit.sse_B[0]) < 1e-6
  if family == "power":
    assert fit.alpha_B[0] == pytest.approx(0.7, rel=0.025)  # grid spacing 2.3 %


def test_fit_needs_as_many_sizes_as_parameters():
  assert [auto_family(d) for d in (1, 2, 3, 4, 7)] == [None, "sqrt", "power", "rectified",
                                                       "rectified"]
  with pytest.raises(ValueError, match="3 free parameters but the pilots have 2"):
    fit_curves([100, 400], np.array([[0.5, 0.4]]), [1, 1], "power")
  with pytest.raises(ValueError, match="unknown curve family"):
    fit_curves([100, 400], np.array([[0.5, 0.4]]), [1, 1], "cubic")


def test_fit_respects_bounds():
  # Risk rising with n: the best constrained fit is flat (A = 0), never a negative slope.
  fit = fit_curves([100, 200, 400], np.array([[0.3, 0.35, 0.4]]), [2, 2, 2], "power")
  assert fit.A_B[0] == 0.0 and fit.E_B[0] == pytest.approx(0.35)
  assert ALPHA_GRID.min() <= fit.alpha_B[0] <= ALPHA_GRID.max()


def _simulate(rng, sizes, truth_E, truth_A, truth_alpha, seeds, sigma):
  n = np.asarray(sizes, dtype=float)
  mean = truth_E[:, None] + truth_A[:, None] * n[None] ** -truth_alpha[:, None]
  return np.clip(mean[:, :, None] + rng.normal(0, sigma, mean.shape + (seeds,)), 0, 1)


def test_predictor_finds_the_known_best_where_the_largest_pilot_misleads():
  # Bucket "easy" learns early and plateaus high; "hard" starts worse and ends lower (the
  # ranking flips between the pilots and N, as in a pre-power phase).
  rng = np.random.default_rng(1)
  E = np.array([0.40, 0.30, 0.15])
  alpha = np.array([1.0, 0.6, 0.3])
  A = np.array([0.05, 0.20, 0.40]) * 200.0 ** alpha  # risk at n=200 is E + this gap
  sizes, budget = [200, 400, 800], 12800
  risk = _simulate(rng, sizes, E, A, alpha, seeds=4, sigma=0.005)
  truth_N = E + A * budget ** -alpha
  assert np.argmin(truth_N) == 2 and np.argmin(risk[:, -1].mean(axis=1)) != 2
  out = select_bucket(Pilots.from_risks(("easy", "medium", "hard"), sizes, risk), budget,
                      SelectOptions(bootstrap=400))
  assert out["status"] == STATUS_OK and out["recommendation"] == "hard"
  hard = out["buckets"][2]
  assert hard["family"] == "power" and hard["p_best"] > 0.9
  assert hard["interval"][0] <= truth_N[2] <= hard["interval"][1]
  assert sum(r["p_best"] for r in out["buckets"]) == pytest.approx(1.0)


def _reliability_ok(p, best, tol=0.05, z=2.5, min_count=30):
  """Per bin of P(best): |frequency of best - mean P(best)| <= tol + z SE."""
  edges = np.array([0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0 + 1e-9])
  bins = np.digitize(p, edges) - 1
  checked = 0
  for b in range(len(edges) - 1):
    m = bins == b
    if m.sum() < min_count:
      continue
    mean_p, freq = p[m].mean(), best[m].mean()
    se = np.sqrt(max(mean_p * (1 - mean_p), 1e-4) / m.sum())
    checked += 1
    if abs(freq - mean_p) > tol + z * se:
      return False
  return checked >= 4


@pytest.mark.parametrize("sizes,random_alpha,seeds", [([200, 800], False, 2),
                                                      ([200, 400, 800], True, 4)])
def test_p_best_is_calibrated(sizes, random_alpha, seeds):
  """Over 500 simulated studies (true curves in the fitted family), the bucket given P(best)=p
  is the true best about p of the time, bin by bin; hard 0/1 calls fail the same check."""
  rng = np.random.default_rng(2)
  budget, studies = 3200, 500
  options = SelectOptions(bootstrap=100 if random_alpha else 200, max_interval_width=10.0)
  p_all, best_all, hard_all = [], [], []
  for i in range(studies):
    E = rng.uniform(0.2, 0.4, 3)
    alpha = rng.uniform(0.2, 1.0, 3) if random_alpha else np.full(3, 0.5)
    A = rng.uniform(0.05, 0.3, 3) * float(sizes[0]) ** alpha
    risk = _simulate(rng, sizes, E, A, alpha, seeds, sigma=0.02)
    out = select_bucket(Pilots.from_risks("abc", sizes, risk), budget,
                        options.__class__(**{**options.__dict__, "seed": i}))
    p = np.array([r["p_best"] for r in out["buckets"]])
    truth = np.zeros(3)
    truth[np.argmin(E + A * budget ** -alpha)] = 1
    p_all.append(p)
    best_all.append(truth)
    hard_all.append((np.arange(3) == np.argmax(p)).astype(float))
  p, best, hard = (np.concatenate(v) for v in (p_all, best_all, hard_all))
  assert _reliability_ok(p, best)
  assert not _reliability_ok(hard, best)  # the check has the power to see overconfidence


def test_seed_resampling_is_rescaled_to_the_unbiased_variance():
  rng = np.random.default_rng(3)
  risk = rng.uniform(0.2, 0.6, (1, 1, 3))  # S = 3 seeds, one cell
  pilots = Pilots.from_risks(["a"], [100], risk)
  s2 = risk.var(ddof=1)
  for rescale, factor in ((True, 1.0), (False, 2 / 3)):
    boot = resample_means(pilots, 200_000, np.random.default_rng(4), rescale_seeds=rescale)
    assert boot[:, 0, 0].var() == pytest.approx(factor * s2 / 3, rel=0.02)
    assert boot[:, 0, 0].mean() == pytest.approx(risk.mean(), abs=1e-3)


def test_item_resampling_is_stratified_and_shared():
  # One seed per cell: only the items move. Two buckets with identical items move together.
  rng = np.random.default_rng(5)
  loss = (rng.random((1, 1, 1, 400)) < 0.3).astype(float)
  loss = np.concatenate([loss, loss], axis=0)
  strata = np.repeat([0, 1], 200)
  w = np.full(400, 1 / 400)
  pilots = Pilots(("a", "b"), (100,), loss, w, strata)
  boot = resample_means(pilots, 20_000, np.random.default_rng(6))
  assert np.array_equal(boot[:, 0, 0], boot[:, 1, 0])
  # Stratified: var = sum_k w_k^2 var_k / n_k with w_k = 1/2, n_k = 200 (plug-in variances).
  x = loss[0, 0, 0]
  ref = sum(0.25 * x[strata == k].var() / 200 for k in (0, 1))
  assert boot[:, 0, 0].var() == pytest.approx(ref, rel=0.05)


def test_refusals():
  rng = np.random.default_rng(7)
  sizes = [200, 800]
  risk = _simulate(rng, sizes, np.array([0.3, 0.2]), np.array([2.0, 5.0]),
                   np.array([0.5, 0.5]), seeds=3, sigma=0.01)
  pilots = Pilots.from_risks(["easy", "hard"], sizes, risk)
  with pytest.raises(ValueError, match="budget 800 is not above the largest pilot n=800"):
    select_bucket(pilots, 800)
  far = select_bucket(pilots, 800 * 65)
  assert far["status"] == STATUS_UNCONSTRAINED and far["recommendation"] is None
  assert "more than 64x the largest pilot" in far["reason"]
  one = Pilots.from_risks(["easy", "hard"], [200], risk[:, :1])
  out = select_bucket(one, 3200)
  assert out["status"] == STATUS_UNCONSTRAINED and out["recommendation"] is None
  assert "too few distinct pilot sizes" in out["reason"]
  assert all(r["prediction"] is None and r["p_best"] is None for r in out["buckets"])
  noisy = Pilots.from_risks(["easy", "hard"], sizes, np.clip(
      0.5 + rng.normal(0, 0.3, (2, 2, 3)), 0, 1))
  wide = select_bucket(noisy, 3200, SelectOptions(max_interval_width=0.05))
  assert wide["status"] == STATUS_UNCONSTRAINED and "interval at N=3200" in wide["reason"]
  with pytest.raises(ValueError, match="at least two buckets"):
    select_bucket(Pilots.from_risks(["hard"], sizes, risk[:1]), 3200)
  assert select_bucket(pilots, 3200)["status"] == STATUS_OK


def test_pilots_reject_malformed_input():
  with pytest.raises(ValueError, match="losses must lie in"):
    Pilots.from_risks(["a", "b"], [100, 200], np.full((2, 2, 1), 1.5))
  with pytest.raises(ValueError, match="distinct, >= 1, ascending"):
    Pilots.from_risks(["a", "b"], [200, 100], np.full((2, 2, 1), 0.5))
  with pytest.raises(ValueError, match="repeat"):
    Pilots.from_risks(["a", "a"], [100, 200], np.full((2, 2, 1), 0.5))
  loss = np.full((2, 1, 1, 4), 0.5)
  loss[0, 0, 0, 1] = np.nan
  with pytest.raises(ValueError, match="some items only"):
    Pilots(("a", "b"), (100,), loss, np.full(4, 0.25), np.zeros(4))
  with pytest.raises(ValueError, match="family must be"):
    SelectOptions(family="cubic")


def test_verdict_says_when_the_buckets_cannot_be_told_apart():
  """Two buckets with the same pilots (one seed: every replicate ties): P(best) = 1/2 each,
  so no recommendation, only the lowest prediction and a statement that says so; curves far
  apart: a clear call."""
  rng = np.random.default_rng(8)
  loss = (rng.random((1, 2, 1, 400)) < np.array([0.5, 0.4])[None, :, None, None]).astype(float)
  worse = np.minimum(loss + (rng.random(loss.shape) < 0.5), 1.0)  # far above the others
  same = Pilots(("easy", "medium", "hard"), (200, 800), np.concatenate([loss, worse, loss]),
                np.full(400, 1 / 400), np.repeat([0, 1], 200))
  out = select_bucket(same, 3200, SelectOptions(bootstrap=200))
  assert out["status"] == STATUS_OK
  assert [r["p_best"] for r in out["buckets"]] == [0.5, 0.0, 0.5]
  assert out["verdict"] == VERDICT_INDISTINGUISHABLE and out["recommendation"] is None
  assert out["lowest_predicted"] == "easy"  # the first of equal predictions
  assert out["contenders"] == ["easy", "hard"]
  assert out["statement"].startswith("easy and hard cannot be told apart at this pilot budget "
                                     "(medium: best in under 5% of the replicates)")
  assert "P(best): easy 0.50, medium 0.00, hard 0.50" in out["statement"]
  assert out["numbers"]["certified"].startswith("none")
  sizes = [200, 800]
  apart = _simulate(rng, sizes, np.array([0.3, 0.1]), np.array([2.0, 2.0]),
                    np.array([0.5, 0.5]), seeds=3, sigma=0.02)
  out = select_bucket(Pilots.from_risks(["easy", "hard"], sizes, apart), 3200,
                      SelectOptions(bootstrap=400))
  assert out["verdict"] == VERDICT_CLEAR and out["recommendation"] == "hard"
  assert out["statement"].startswith("recommend hard")
  with pytest.raises(ValueError, match="min_p_best"):
    SelectOptions(min_p_best=0.5)


def test_bootstrap_in_chunks_matches_one_draw(monkeypatch):
  """Up to one chunk the replicates are those of a single draw; in chunks of 7 they are
  other draws of the same distribution (means and variances agree)."""
  rng = np.random.default_rng(9)
  loss = (rng.random((2, 2, 3, 60)) < 0.4).astype(float)
  loss[1, 0, 2] = np.nan  # a cell with two seeds
  pilots = Pilots(("a", "b"), (100, 400), loss, np.full(60, 1 / 60), np.repeat([0, 1], 30))
  one = resample_means(pilots, 3000, np.random.default_rng(1))
  first7 = resample_means(pilots, 7, np.random.default_rng(2))
  monkeypatch.setattr(predict, "_BOOT_CHUNK", 7)
  assert np.array_equal(resample_means(pilots, 7, np.random.default_rng(2)), first7)
  chunked = resample_means(pilots, 3000, np.random.default_rng(1))
  assert chunked.shape == one.shape == (3000, 2, 2) and not np.array_equal(chunked, one)
  assert chunked.mean(axis=0) == pytest.approx(one.mean(axis=0), abs=0.01)
  assert chunked.var(axis=0) == pytest.approx(one.var(axis=0), rel=0.15)
