"""A linear classifier whose Gaussian-perturbed risk is exact, for the posterior tests."""

import jax
import jax.numpy as jnp
import numpy as np

D = 8
# Most calls share one step shape (8 draws x 8 rows) so the compiled step is reused.
FAST = dict(batch_size=8, draws_per_step=8)


def zero_one(params, batch):
  """0-1 loss of a linear classifier: error iff y * (x . w + b) <= 0."""
  margin = batch["y"] * (batch["x"] @ params["w"] + params["b"])
  return (margin <= 0).astype(jnp.float32)


def soft_loss(params, batch):
  """Differentiable surrogate in [0, 1]."""
  margin = batch["y"] * (batch["x"] @ params["w"] + params["b"])
  return jax.nn.sigmoid(-4.0 * margin)


def make_problem(n, seed=0):
  """n rows x_NxD ~ N(0, 1), labels y_N = sign(x . w + 0.3 noise); params {w: D, b: ()}."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, D)).astype(np.float32)
  w = rng.normal(size=(D,)).astype(np.float32)
  y = np.sign(x @ w + 0.3 * rng.normal(size=n)).astype(np.float32)
  params = {"w": jnp.asarray(w), "b": jnp.asarray(0.1, jnp.float32)}
  return params, {"x": x, "y": y}
