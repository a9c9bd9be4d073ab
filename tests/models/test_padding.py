"""Positions follow the attention mask: every padded row gives what the row gives alone.

For every architecture and both padding sides, each entry point that takes an attention mask
(`Decoder.__call__`, `Decoder.hidden_states`, `features.mean_hidden_states`, and the cached
`greedy_generate`) is compared with the same row run alone, unpadded.
"""

import jax
import numpy as np
import pytest
from flax import nnx

import pacbayes  # noqa: F401  (x64 on, as in real use)
from pacbayes.models import build_model, positions_from_mask
from pacbayes.models.generate import greedy_generate
from pacbayes.shift.features import mean_hidden_states
from tests.helpers.models import tiny_config

MODEL_TYPES = ["llama", "qwen2", "gpt2"]
LENGTHS = [9, 4, 1, 6]
WIDTH = 11  # padded length (wider than the longest row on both sides)


_MODELS = {}


def _model(model_type):
  """One model per architecture for the module, with compiled (cached per shape) forwards."""
  if model_type not in _MODELS:
    config = tiny_config(model_type)
    model = build_model(config, rngs=nnx.Rngs(5))
    graphdef, state = nnx.split(model)

    def jitted(method):
      fn = jax.jit(lambda s, x, m: getattr(nnx.merge(graphdef, s), method)(x, m))
      return lambda ids, mask: np.asarray(fn(state, np.asarray(ids, np.int32),
                                             np.asarray(mask, np.int32)))

    _MODELS[model_type] = model, config, jitted("__call__"), jitted("hidden_states")
  return _MODELS[model_type]


def _batch(config, side, seed=0):
  rng = np.random.default_rng(seed)
  rows = [rng.integers(0, config.vocab_size, n).astype(np.int32) for n in LENGTHS]
  ids = np.full((len(rows), WIDTH), 3, np.int32)  # a real token id as filler: it must not leak
  mask = np.zeros((len(rows), WIDTH), np.int32)
  spans = []
  for b, row in enumerate(rows):
    start = 0 if side == "right" else WIDTH - len(row)
    ids[b, start:start + len(row)] = row
    mask[b, start:start + len(row)] = 1
    spans.append(slice(start, start + len(row)))
  return rows, ids, mask, spans


def test_positions_from_mask():
  mask = np.array([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [0, 1, 0, 1, 1], [0, 0, 0, 0, 0]])
  want = np.array([[0, 1, 2, 0, 0], [0, 0, 0, 1, 2], [0, 0, 0, 1, 2], [0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(np.asarray(positions_from_mask(mask)), want)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_logits_and_hidden_states_of_padded_rows(model_type, side):
  _, config, logits_fn, hidden_fn = _model(model_type)
  rows, ids, mask, spans = _batch(config, side)
  logits, hidden = logits_fn(ids, mask), hidden_fn(ids, mask)
  for b, row in enumerate(rows):
    one = row[None]
    ones = np.ones_like(one)
    np.testing.assert_allclose(logits[b, spans[b]], logits_fn(one, ones)[0], atol=2e-5)
    np.testing.assert_allclose(hidden[b, spans[b]], hidden_fn(one, ones)[0], atol=2e-5)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_mean_hidden_states_of_padded_rows(model_type, side):
  model, config, _, _ = _model(model_type)
  rows, ids, mask, _ = _batch(config, side, seed=1)
  got = mean_hidden_states(model, ids, mask, batch_size=3)
  for b, row in enumerate(rows):
    alone = mean_hidden_states(model, row[None], np.ones((1, len(row)), np.int32), batch_size=1)
    np.testing.assert_allclose(got[b], alone[0], atol=2e-5)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_generate_rows_match_rows_alone(model_type):
  # greedy_generate takes right-padded prompts and their lengths; the cached decode must give
  # each row its own continuation (positions = tokens before it, as the mask says).
  model, config, _, _ = _model(model_type)
  rows, ids, _, _ = _batch(config, "right", seed=2)
  out = np.asarray(greedy_generate(model, ids, np.array(LENGTHS, np.int32), 6))
  for b, row in enumerate(rows):
    alone = np.asarray(greedy_generate(model, row[None], np.array([len(row)], np.int32), 6))
    np.testing.assert_array_equal(out[b], alone[0])
