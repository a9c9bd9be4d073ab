"""Tiny model configs, a compiled forward and a tiny Llama checkpoint shared by the tests."""

import jax
import numpy as np
from flax import nnx

from pacbayes.models import ModelConfig, build_model, save_pretrained


def tiny_config(model_type="llama", **kw):
  """Two-layer model of the architecture tests: vocab 40, hidden 32, 4 heads, 64 positions."""
  base = dict(model_type=model_type, vocab_size=40, hidden_size=32, intermediate_size=48,
              num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
              initializer_range=0.2)
  if model_type == "gpt2":
    base.update(attention_bias=True, attention_out_bias=True, mlp_bias=True,
                tie_word_embeddings=True)
  if model_type == "qwen2":
    base.update(attention_bias=True, num_key_value_heads=2)
  base.update(kw)
  return ModelConfig(**base)


def jit_forward(model):
  """model(input_ids, attention_mask) compiled once per shape (eager NNX is slow op by op)."""
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda s, x, m: nnx.merge(graphdef, s)(x, m))
  def forward(ids, mask=None):
    ids = np.asarray(ids, np.int32)
    return np.asarray(fn(state, ids, np.ones_like(ids) if mask is None else mask))
  return forward


def tiny_llama_config(**kw):
  """One-layer Llama of the checkpoint tests: vocab 32, hidden 16, 2 heads (1 kv), 64 positions."""
  base = dict(model_type="llama", vocab_size=32, hidden_size=16, intermediate_size=32,
              num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
              max_position_embeddings=64)
  base.update(kw)
  return ModelConfig(**base)


def save_tiny_llama(path, *, seed=0, config=None):
  """Writes a random model (nnx.Rngs(seed)) of `config` (default tiny_llama_config()).

  Returns:
    str(path): a folder written by `pacbayes.models.save_pretrained`.
  """
  config = tiny_llama_config() if config is None else config
  save_pretrained(build_model(config, rngs=nnx.Rngs(seed)), config, path)
  return str(path)
