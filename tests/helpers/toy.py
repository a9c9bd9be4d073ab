"""A separable linear toy for the certificate route: weights, data and a 0/1 loss."""

import jax.numpy as jnp
import numpy as np


def zero_one(params, batch):
  """[B] 0/1 error of the linear classifier sign(x @ w) against labels y in {-1, 1}."""
  margin = batch["y"] * (batch["x"] @ params["w"])
  return (margin <= 0).astype(jnp.float32)


def toy(n=64, seed=0):
  """({"w": [4]}, {"x": [n, 4], "y": [n]}): data labelled by the weights themselves."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 4)).astype(np.float32)
  w = rng.normal(size=(4,)).astype(np.float32)
  return {"w": jnp.asarray(w)}, {"x": x, "y": np.sign(x @ w).astype(np.float32)}
