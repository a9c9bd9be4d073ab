"""The trained tiny-Llama checkpoint pair of the `pacbayes bound` tests (Hugging Face folders).

The prior is a tiny Llama trained on a deterministic successor task (token t is followed by
t % 31 + 1), so its token error is 0 and survives small Gaussian noise; the posterior is the
prior moved a little (a fixed Gaussian step of MOVE = 3e-5 per weight), as a short fine-tune
would.
"""

import functools
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pacbayes.models import ModelConfig, build_model, save_pretrained
from tests.helpers.jsonl import write_jsonl

VOCAB = 32
LENGTH = 8
MOVE = 3e-5


def config(**kw):
  """The pair's one-layer Llama: vocab VOCAB, hidden 32, 2 heads (1 kv), 16 positions."""
  base = dict(model_type="llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
              num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
              max_position_embeddings=16)
  base.update(kw)
  return ModelConfig(**base)


def successor_rows(n, seed, *, step=1, difficulty=None, length=LENGTH):
  """Rows of the task: a random start, then t -> (t - 1 + step) % 31 + 1 (ids 1..31)."""
  rng = np.random.default_rng(seed)
  rows = []
  for i in range(n):
    t = int(rng.integers(1, VOCAB))
    ids = [t]
    for _ in range(length - 1):
      t = (t - 1 + step) % (VOCAB - 1) + 1
      ids.append(t)
    row = {"input_ids": ids}
    if difficulty is not None:
      row["difficulty"] = difficulty[i % len(difficulty)]
    rows.append(row)
  return rows


def _train(model, steps=120, seed=0):
  """Adam (lr 3e-2) on the successor task, batches of 64: the returned model's token error is 0."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  data = np.asarray([r["input_ids"] for r in successor_rows(512, seed + 100)], np.int32)
  opt = optax.adam(3e-2)

  def loss(p, ids):
    logits = nnx.merge(graphdef, p, rest)(ids, jnp.ones_like(ids))
    lp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32))
    return -jnp.mean(jnp.take_along_axis(lp, ids[:, 1:, None], axis=-1))

  @jax.jit
  def step(p, s, ids):
    g = jax.grad(loss)(p, ids)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s

  state = opt.init(params)
  rng = np.random.default_rng(seed)
  for _ in range(steps):
    params, state = step(params, state, data[rng.integers(0, len(data), 64)])
  return nnx.merge(graphdef, params, rest)


def _moved(model, only=None):
  """The model with every parameter (or those whose path contains `only`) moved by MOVE."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(jax.random.key(7), len(flat))
  out = []
  for (path, x), k in zip(flat, keys, strict=True):
    hit = only is None or only in jax.tree_util.keystr(path)
    out.append(x + MOVE * jax.random.normal(k, x.shape, x.dtype) if hit else x)
  return nnx.merge(graphdef, jax.tree.unflatten(treedef, out), rest)


@functools.cache
def build():
  """A folder with the checkpoints and files of the `pacbayes bound` tests, built once per process.

  prior/ (trained), posterior/ (prior moved by MOVE), mlp_only/ (only the MLP moved),
  wide/ (another architecture); train.jsonl (n = 200, difficulty 1-3), test.jsonl (same pool,
  difficulty 2-4), other_pool.jsonl (the predecessor task, training mixture), plain.jsonl
  (no difficulty).

  Returns:
    {name: path}.
  """
  root = tempfile.mkdtemp(prefix="bound_pairs_")
  cfg = config()
  model = _train(build_model(cfg, rngs=nnx.Rngs(0)))
  save_pretrained(model, cfg, os.path.join(root, "prior"))
  save_pretrained(_moved(model), cfg, os.path.join(root, "posterior"))
  save_pretrained(_moved(model, only="mlp"), cfg, os.path.join(root, "mlp_only"))
  wide = config(hidden_size=48)
  save_pretrained(build_model(wide, rngs=nnx.Rngs(1)), wide, os.path.join(root, "wide"))
  paths = {k: os.path.join(root, k) for k in ("prior", "posterior", "mlp_only", "wide")}
  paths["train"] = write_jsonl(os.path.join(root, "train.jsonl"),
                               successor_rows(200, 1, difficulty=[1, 2, 3]))
  paths["test"] = write_jsonl(os.path.join(root, "test.jsonl"),
                              successor_rows(200, 2, difficulty=[2, 3, 3, 4]))
  paths["other_pool"] = write_jsonl(os.path.join(root, "other_pool.jsonl"),
                                    successor_rows(200, 3, step=-1, difficulty=[1, 2, 3]))
  paths["plain"] = write_jsonl(os.path.join(root, "plain.jsonl"), successor_rows(200, 4))
  return paths

