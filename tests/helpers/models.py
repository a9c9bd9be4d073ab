"""Tiny model configs and a compiled forward shared by the model tests."""

import jax
import numpy as np
from flax import nnx

import pacbayes  # noqa: F401  (x64 on, as in real use)
from pacbayes.models import ModelConfig


def tiny_config(model_type="llama", **kw):
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
