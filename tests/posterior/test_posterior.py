"""Tests for pacbayes.posterior.fit: sigma search, prior sigma grid, fitted diagonal posterior."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pacbayes import PacBayesWarning
from pacbayes.posterior import fit as posterior
from pacbayes.posterior import perturb
from pacbayes.posterior.kl import isotropic_kl
from tests.helpers.linear import FAST, D, make_problem, soft_loss, zero_one


def test_names_still_importable_from_perturb():
  from pacbayes.posterior.perturb import PosteriorFit, SigmaSearch, optimise_posterior, search_sigma

  assert search_sigma is posterior.search_sigma and SigmaSearch is posterior.SigmaSearch
  assert optimise_posterior is posterior.optimise_posterior
  assert PosteriorFit is posterior.PosteriorFit
  assert perturb.sigma_prior_grid is posterior.sigma_prior_grid
  with pytest.raises(AttributeError, match="no_such_name"):
    perturb.no_such_name  # noqa: B018


# ------------------------------------------------------------------------------- sigma


def test_search_sigma_monotone_in_tolerance():
  params, data = make_problem(120, seed=8)
  params = {"w": params["w"] * 5.0, "b": params["b"]}
  kw = dict(key=jax.random.key(3), low=1e-3, high=50.0, num_steps=8, num_draws=8,
            subset_size=80, **FAST)
  found = [posterior.search_sigma(zero_one, params, data, tolerance=t, **kw)
           for t in (0.01, 0.05, 0.2)]
  sigmas = [f.sigma for f in found]
  assert sigmas == sorted(sigmas) and sigmas[0] < sigmas[-1]
  for f, t in zip(found, (0.01, 0.05, 0.2), strict=True):
    assert f.risk <= f.unperturbed + t
    assert 1e-3 <= f.sigma <= 50.0
  with pytest.raises(ValueError, match="low"):
    posterior.search_sigma(zero_one, params, data, tolerance=1e-9,
                         **{**kw, "low": 40.0, "high": 50.0})
  with pytest.raises(ValueError, match="tolerance"):
    posterior.search_sigma(zero_one, params, data, tolerance=0.0, **kw)


def test_sigma_prior_grid():
  g = posterior.sigma_prior_grid(1e-4, 1e-1, 4)
  np.testing.assert_allclose(g, [1e-4, 1e-3, 1e-2, 1e-1])
  assert posterior.sigma_prior_grid(0.5, 0.5, 1).tolist() == [0.5]
  with pytest.raises(ValueError, match="low, high"):
    posterior.sigma_prior_grid(0.0, 1.0, 3)
  with pytest.raises(ValueError, match="k"):
    posterior.sigma_prior_grid(0.1, 1.0, 0)


@pytest.mark.parametrize("objective,per_weight", [("maurer", False), ("fquad", True)])
def test_optimise_posterior_lowers_bound(objective, per_weight):
  params, data = make_problem(200, seed=9)
  prior = {"w": params["w"] * 0.0, "b": params["b"] * 0.0}
  fit = posterior.optimise_posterior(
      soft_loss, params, prior, data, key=jax.random.key(0), sigma_init=0.01,
      sigma_prior=1.0, objective=objective, per_weight=per_weight, num_steps=60,
      learning_rate=0.05, batch_size=64, num_draws=4)
  assert fit.history[-10:].mean() < fit.history[:10].mean()
  assert np.shape(fit.sigma["w"]) == ((D,) if per_weight else ())
  assert np.all(np.asarray(fit.sigma["w"]) > 0.01)  # the KL pushes sigma toward the prior
  # The fitted posterior plugs into mc_risk as a diagonal sigma.
  r = perturb.mc_risk(zero_one, params, data, key=jax.random.key(1), sigma=fit.sigma,
                      chunk_size=10, **FAST)
  assert 0.0 <= r.mean <= 1.0
  if not per_weight:
    # Fresh draws for the certificate of the fitted diagonal posterior.
    from pacbayes.pipeline import run as pipeline

    cert = pipeline.certify_params(zero_one, prior, params, data, key=jax.random.key(2),
                                   sigma_q=fit.sigma, sigma_prior=1.0, chunk_size=10,
                                   **FAST, progress=False)
    assert cert.sigma_q is None and cert.extra["sigma_q"] == "diagonal"
    assert cert.kl > 0 and cert.bound == cert.emp_risk + cert.epsilon + cert.g_gen


# ------------------------------------------------------------------ sigma minimising the bound


def _sigma_problem():
  """Linear classifier 'fine-tuned' a little away from its 'pretrained' prior mean."""
  params, data = make_problem(600, seed=12)
  params = {"w": params["w"] * 3.0, "b": params["b"]}
  rng = np.random.default_rng(0)
  prior = {"w": params["w"] + jnp.asarray(rng.normal(size=D) * 0.3, jnp.float32),
           "b": params["b"] - 0.1}
  return params, prior, data


def _setting(params, prior):
  d2 = perturb.sq_distance(params, prior)
  assert d2 == pytest.approx(float(sum(
      np.sum((np.asarray(params[k], np.float64) - np.asarray(prior[k], np.float64)) ** 2)
      for k in params)))
  return dict(sq_distance=d2, num_params=perturb.count_perturbed(params), num_mc=600,
              delta_mc=0.025, delta_pb=0.025)


def _counting(monkeypatch):
  """Counts rows x draws scored through mc_risk / empirical_risk (the search's cost)."""
  from pacbayes.posterior import montecarlo, sigma

  count = [0]
  real_mc, real_emp = montecarlo.mc_risk, montecarlo.empirical_risk

  def mc(loss_fn, params, data, **kw):
    out = real_mc(loss_fn, params, data, **kw)
    count[0] += out.slot_losses.size
    return out

  def emp(loss_fn, params, data, **kw):
    count[0] += len(next(iter(data.values())))
    return real_emp(loss_fn, params, data, **kw)

  for mod in (sigma, posterior):
    monkeypatch.setattr(mod, "mc_risk", mc)
  monkeypatch.setattr(posterior, "empirical_risk", emp)
  return count


def test_choose_sigma_finds_the_grid_point_of_the_smallest_bound(monkeypatch):
  params, prior, data = _sigma_problem()
  grid = [0.003, 0.03, 0.3, 3.0]
  setting = _setting(params, prior)
  count = _counting(monkeypatch)
  choice = posterior_choose(params, data, grid, setting)
  new_cost = count[0]
  assert new_cost == choice.forward_rows
  # Exhaustive: the same subset risk (same key, all rows) on a fine sigma_q grid x every
  # sigma_p, scored by the same bound.
  key_noise = jax.random.split(jax.random.key(5))[1]
  s_q = np.geomspace(1e-4 * min(grid), max(grid), 90)
  risks = np.array([perturb.mc_risk(zero_one, params, data, key=key_noise, sigma=float(s),
                                    scheme="passes", num_draws=2, **FAST).mean for s in s_q])
  kls = np.asarray(isotropic_kl(setting["sq_distance"], setting["num_params"],
                                s_q[:, None], np.asarray(grid)[None, :]))
  table = np.asarray(perturb.subset_bound(risks[:, None], 600, kls, 600, delta_mc=0.025,
                                          delta_pb=0.025, grid_size=len(grid)))
  i, j = np.unravel_index(np.argmin(table), table.shape)
  assert choice.grid_index == j and choice.sigma_p == grid[j]
  assert choice.bound <= table[i, j] + 5e-3  # tol = 5e-3 (it may also land between points)
  assert choice.bound < 0.2 and not choice.at_grid_edge and choice.grid_position == "inside"
  assert choice.sigma_q <= choice.sigma_p and "branch and bound" in choice.how
  assert choice.trace and min(t["bound"] for t in choice.trace) == choice.bound
  # Much cheaper than the old risk-tolerance search, each with its default sizes.
  count[0] = 0
  choose(params, data, grid, setting)
  new_cost = count[0]
  count[0] = 0
  posterior.search_sigma(zero_one, params, data, key=jax.random.key(5), **FAST)
  assert 4 * new_cost < count[0], (new_cost, count[0])


def choose(params, data, grid, setting, *, subset_size=256, sigma_q=None,
           seed=5, **target):
  """`choose_sigma` with the target's fields as keywords (FAST Monte-Carlo sizes)."""
  target = perturb.BoundTarget(sigma_grid=tuple(grid), **dict(setting, **target))
  return perturb.choose_sigma(zero_one, params, data, key=jax.random.key(seed), target=target,
                              search=perturb.SearchOptions(subset_size=subset_size,
                                                           sigma_q=sigma_q),
                              mc=perturb.MonteCarloOptions(**FAST))


def posterior_choose(params, data, grid, setting, **kw):
  return choose(params, data, grid, setting, subset_size=None, **kw)


def test_choose_sigma_fixed_sigma_q_edge_warning_and_ties():
  params, prior, data = _sigma_problem()
  setting = _setting(params, prior)
  grid = [0.3, 0.03, 3.0]
  fixed = posterior_choose(params, data, grid, setting, sigma_q=0.02)
  assert fixed.sigma_q == pytest.approx(0.02) and len(fixed.trace) == 1
  kls = [float(isotropic_kl(setting["sq_distance"], setting["num_params"], fixed.sigma_q, s))
         for s in grid]
  bs = perturb.subset_bound(fixed.emp_risk, 600, np.asarray(kls), 600, delta_mc=0.025,
                            delta_pb=0.025, grid_size=3)
  assert fixed.grid_index == int(np.argmin(bs)) and "fixed by the user" in fixed.how
  # An optimum at the grid's edge warns in one line.
  with pytest.warns(PacBayesWarning, match="highest point of the prior grid"):
    edge = posterior_choose(params, data, [0.003, 0.03], setting)
  assert edge.at_grid_edge and edge.grid_position == "highest" and edge.grid_index == 1
  # Saturated (vacuous) everywhere at a fixed sigma_q: ties go to the smallest KL, here the
  # largest sigma_p (the posterior is the same at every grid point).
  far = dict(setting, sq_distance=1e9)
  with pytest.warns(PacBayesWarning):
    vac = posterior_choose(params, data, [1e-3, 1e-2, 1e-1], far, sigma_q=1e-3)
  assert vac.bound == 1.0 and vac.grid_index == 2
  # Searched and vacuous everywhere: the tie never picks the noise that destroys the model;
  # the smallest sigma_q measured wins (issue 18).
  with pytest.warns(PacBayesWarning):
    vac = posterior_choose(params, data, [1e-3, 1e-2, 1e-1], far)
  assert vac.bound == 1.0
  assert vac.sigma_q == min(t["sigma_q"] for t in vac.trace)
  assert vac.emp_risk < 0.5
  for bad, match in (({"sigma_grid": ()}, "sigma_grid"), ({"sigma_q": -1.0}, "sigma_q"),
                     ({"delta_mc": 0.0}, "delta_mc"), ({"method": "x"}, "method")):
    kw = dict(bad)
    grid_ = kw.pop("sigma_grid", grid)
    with pytest.raises(ValueError, match=match):
      choose(params, data, grid_, setting, seed=0, **kw)


def test_subset_bound_is_the_certificates_b_train():
  from pacbayes.bounds.delta import DeltaPlan
  from pacbayes.certificate.core import certify

  for emp, kl in ((0.05, 3.0), (0.3, 120.0), (0.0, 0.5)):
    cert = certify(emp, 50, kl, 400, deltas=DeltaPlan((("mc", 0.02), ("pb", 0.03))),
                   grid_size=5)
    want = cert.emp_risk + cert.epsilon + cert.g_gen
    got = float(perturb.subset_bound(emp, 50, kl, 400, delta_mc=0.02, delta_pb=0.03,
                                     grid_size=5))
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
