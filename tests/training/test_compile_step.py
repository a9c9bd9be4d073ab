"""`compile_step`: the step compiled ahead of its first call (then the C heap trimmed) gives the
same training run, compiles once per step and shape, and leaves non-jit wrappers alone."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pacbayes.core.memory import release_free_memory
from pacbayes.models import ModelConfig, build_model
from pacbayes.training import step as st
from pacbayes.training import trainer as tr


def test_compile_step_once_per_shape_and_same_numbers():
  f = jax.jit(lambda x, y: jnp.sin(x) @ y)
  x, y = jnp.ones((3, 4)), jnp.full((4, 2), 0.5)
  assert not st.compile_step(f, x, y)  # small arguments: compiled by the call itself
  assert st.compile_step(f, x, y, min_bytes=0)
  assert not st.compile_step(f, x + 1, y, min_bytes=0)  # same shapes: already compiled
  assert st.compile_step(f, jnp.ones((5, 4)), y, min_bytes=0)  # a new shape
  np.testing.assert_array_equal(f(x, y), jnp.sin(x) @ y)
  assert not st.compile_step(lambda a: a, x, min_bytes=0)  # not a jax.jit function
  assert isinstance(release_free_memory(), bool)


def test_train_is_unchanged_by_the_ahead_of_time_compile(monkeypatch):
  cfg = ModelConfig(model_type="llama", vocab_size=32, hidden_size=16, intermediate_size=32,
                    num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32)
  graphdef, params, rest = nnx.split(build_model(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 32, size=(4, 8)).astype(np.int32)
  data = {"input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": np.ones_like(ids)}
  tcfg = tr.TrainConfig(steps=3, batch_size=2, learning_rate=1e-2)

  def run():
    apply = tr.model_apply(graphdef, rest)  # a new apply: a new, uncompiled step
    return tr.train(apply, params, data, tcfg, key=jax.random.key(1), progress=False)

  calls = []
  monkeypatch.setattr(tr, "compile_step", lambda *a: calls.append(st.compile_step(*a, min_bytes=0)))
  ahead = run()
  monkeypatch.setattr(tr, "compile_step", lambda *a: False)
  plain = run()
  assert calls == [True]  # once, before the first step
  np.testing.assert_array_equal(ahead.losses, plain.losses)
  for a, b in zip(jax.tree.leaves(ahead.params), jax.tree.leaves(plain.params), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
