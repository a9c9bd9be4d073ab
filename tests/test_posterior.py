"""Tests for pacbayes.posterior: sigma search, prior sigma grid, fitted diagonal posterior."""

import jax
import numpy as np
import pytest

from pacbayes import perturb, posterior
from tests.test_perturb import FAST, D, make_problem, soft_loss, zero_one


def test_names_still_importable_from_perturb():
  from pacbayes.perturb import PosteriorFit, SigmaSearch, optimise_posterior, search_sigma

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
    from pacbayes import pipeline

    cert = pipeline.certify_params(zero_one, prior, params, data, key=jax.random.key(2),
                                   sigma_q=fit.sigma, sigma_prior=1.0, chunk_size=10,
                                   **FAST, progress=False)
    assert cert.sigma_q is None and cert.extra["sigma_q"] == "diagonal"
    assert cert.kl > 0 and cert.bound == cert.emp_risk + cert.epsilon + cert.g_gen
