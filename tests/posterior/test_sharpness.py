"""PAC-Bayes sharpness measure on a toy loss with E[loss] = c + a sigma^2 exactly."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pacbayes.posterior.montecarlo import MonteCarloOptions, mc_risk
from pacbayes.posterior.sharpness import KIND_MEASURE, SharpnessOptions, sharpness_measure

D = 20_000  # parameters: mean(eps^2) over D coordinates is 1 within about 1%
W_STAR = np.linspace(-1.0, 1.0, D)
ROWS = 16
DATA = {"c": np.linspace(0.05, 0.15, ROWS)}  # per-row offset, mean 0.1


def _quadratic(a: float):
  """loss(theta, row) = min(c_row + a * mean((theta - w*)^2), 1): under theta = w* + sigma eps,
  E = c + a sigma^2 (below the clip)."""

  def loss_fn(params, batch):
    sq = jnp.mean(jnp.square(params["w"] - W_STAR))
    return jnp.minimum(batch["c"] + a * sq, 1.0)

  return loss_fn


LOSS_A10 = _quadratic(10.0)
LOSS_A05 = _quadratic(0.5)
OPTS = SharpnessOptions(max_rise=0.1, sigma_low=1e-4, sigma_high=10.0, num_steps=22,
                        monte_carlo=MonteCarloOptions(scheme="passes", num_draws=4,
                                                      batch_size=ROWS))
PARAMS = {"w": jnp.asarray(W_STAR)}
PRIOR = {"w": jnp.asarray(W_STAR - 0.01)}  # ||w - w_pre||^2 = D * 1e-4 = 2


def test_sigma_matches_the_closed_form():
  key = jax.random.key(0)
  m = sharpness_measure(LOSS_A10, PARAMS, PRIOR, DATA, key=key, options=OPTS, n=1000)
  # Closed form: a sigma^2 = max_rise -> sigma = sqrt(0.1 / 10) = 0.1 (up to the noise's
  # mean(eps^2) = 1 +- 0.5% over 4 draws x 20,000 coordinates).
  assert m.sigma == pytest.approx(0.1, rel=0.02)
  assert m.base_risk == pytest.approx(0.1, abs=1e-12)
  assert m.at == "inside" and m.bracketed and m.num_draws == 4 and m.rows == ROWS
  assert m.risk_at_sigma - m.base_risk <= 0.1
  # Exact, with the same noise: r(sigma) = c + a sigma^2 S, S read off at sigma = 1 with a
  # small a (no clip); the bisection then lands within its resolution of sqrt(0.1 / (a S)).
  s = mc_risk(LOSS_A05, PARAMS, DATA, key=key, sigma=1.0, options=OPTS.monte_carlo).mean
  s_noise = (s - 0.1) / 0.5
  assert m.sigma == pytest.approx(math.sqrt(0.1 / (10.0 * s_noise)), rel=1e-4)
  assert m.sq_distance == pytest.approx(D * 1e-4, rel=1e-9) and m.num_params == D
  assert m.kl == pytest.approx(m.sq_distance / (2 * m.sigma**2), rel=1e-12)
  assert m.value == pytest.approx(math.sqrt(m.kl / 2000), rel=1e-12)
  sigmas = [t[0] for t in m.trace]
  assert sigmas[:2] == [1e-4, 10.0] and len(sigmas) == 2 + 22


def test_a_flatter_loss_gives_a_larger_sigma_and_smaller_measure():
  key = jax.random.key(1)
  sharp = sharpness_measure(LOSS_A10, PARAMS, PRIOR, DATA, key=key, options=OPTS)
  flat = sharpness_measure(_quadratic(1.0), PARAMS, PRIOR, DATA, key=key, options=OPTS)
  assert flat.sigma == pytest.approx(math.sqrt(10) * sharp.sigma, rel=1e-3)  # sqrt(a ratio)
  assert flat.value == pytest.approx(sharp.value / math.sqrt(10), rel=1e-3)


def test_ends_of_the_range_are_flagged():
  key = jax.random.key(2)
  flat = sharpness_measure(lambda p, b: b["c"] + 0.0 * jnp.sum(p["w"]), PARAMS, PRIOR, DATA,
                           key=key, options=OPTS)
  assert flat.at == "sigma_high" and not flat.bracketed and flat.sigma == 10.0
  steep = sharpness_measure(_quadratic(1e9), PARAMS, PRIOR, DATA, key=key, options=OPTS)
  assert steep.at == "sigma_low" and steep.sigma == 1e-4 and len(steep.trace) == 2


def test_json_is_labelled_uncertified():
  m = sharpness_measure(LOSS_A10, PARAMS, PRIOR, DATA, key=jax.random.key(0),
                        options=SharpnessOptions(num_steps=3, monte_carlo=OPTS.monte_carlo))
  d = json.loads(m.to_json())
  assert d["kind"] == KIND_MEASURE == "measure (uncertified)"
  assert d["name"] == "g_gen_sharpness" and "Jiang" in d["reference"]
  assert d["value"] == m.value and len(d["trace"]) == 5


@pytest.mark.parametrize("kw,match", [
  ({"max_rise": 0.0}, "max_rise"), ({"sigma_low": 1.0, "sigma_high": 0.5}, "sigma_low"),
  ({"num_steps": -1}, "num_steps"), ({"monte_carlo": {"scheme": "passes"}}, "monte_carlo")])
def test_bad_options(kw, match):
  with pytest.raises(ValueError, match=match):
    SharpnessOptions(**kw)
