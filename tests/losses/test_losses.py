"""Tests for pacbayes.losses: token error, smoothed NLL in [0, 1], answer matching, registry."""

import math
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pacbayes import losses
from pacbayes.data import Dataset, iterate_batches
from pacbayes.losses import (
    LOSSES,
    AnswerExtractor,
    answer_error,
    extract_answer,
    get_loss,
    model_answer_error,
    normalize_answer,
    sequence_error,
    smoothed_nll,
    smoothed_nll_range,
    token_error,
)


def _one_hot_logits(predictions, vocab_size, scale=10.0):
  """Logits whose argmax at [b, t] is predictions[b][t]."""
  return scale * jax.nn.one_hot(jnp.asarray(predictions), vocab_size, dtype=jnp.float32)


def test_token_error_by_hand():
  input_ids = jnp.asarray([[0, 1, 2, 3], [3, 2, 1, 0]])
  loss_mask = jnp.asarray([[0, 1, 1, 1], [0, 0, 1, 1]])
  # Row 0 predicts 1, 2, 0 for targets 1, 2, 3: one wrong of three.
  # Row 1 predicts (ignored), 1, 1 for targets 1, 0: one wrong of two.
  predictions = [[1, 2, 0, 0], [0, 1, 1, 0]]
  logits = _one_hot_logits(predictions, 4)
  out = jax.jit(token_error)(logits, input_ids, loss_mask)
  assert out.dtype == jnp.float32 and out.shape == (2,)
  np.testing.assert_allclose(out, [1 / 3, 1 / 2])
  # bf16 logits give the same argmax.
  np.testing.assert_allclose(token_error(logits.astype(jnp.bfloat16), input_ids, loss_mask), out)


def test_sequence_error_by_hand():
  input_ids = jnp.asarray([[0, 1, 2, 3], [3, 2, 1, 0], [1, 1, 1, 1], [2, 2, 2, 2]])
  loss_mask = jnp.asarray([[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]])
  # Row 0: one target wrong -> 1. Row 1: the wrong position 1 is not a target, targets right
  # -> 0. Row 2: every target right -> 0. Row 3: no targets -> 0.
  predictions = [[1, 2, 0, 0], [0, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]
  logits = _one_hot_logits(predictions, 4)
  out = jax.jit(sequence_error)(logits, input_ids, loss_mask)
  assert out.dtype == jnp.float32 and out.shape == (4,)
  np.testing.assert_array_equal(out, [1.0, 0.0, 0.0, 0.0])
  # Never below the token error; equal to 1[token error > 0] (an independent formulation).
  rng = np.random.default_rng(3)
  logits = jnp.asarray(rng.normal(size=(16, 6, 3)), jnp.float32)
  ids = jnp.asarray(rng.integers(0, 3, size=(16, 6)))
  mask = jnp.asarray(rng.integers(0, 2, size=(16, 6)))
  seq, tok = sequence_error(logits, ids, mask), token_error(logits, ids, mask)
  np.testing.assert_array_equal(seq, (np.asarray(tok) > 0).astype(np.float32))
  assert set(np.unique(seq)) <= {0.0, 1.0} and len(np.unique(seq)) == 2
  np.testing.assert_array_equal(get_loss("sequence_error")(logits, ids, mask), seq)
  # Ties go to the lowest id, as in token_error: a flat prediction predicts id 0.
  flat = jnp.zeros((2, 2, 3))
  np.testing.assert_array_equal(sequence_error(flat, jnp.asarray([[0, 0], [0, 2]]),
                                               jnp.asarray([[0, 1], [0, 1]])), [0.0, 1.0])


def test_losses_use_only_the_loss_mask_and_are_zero_without_targets():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(3, 5, 7)), jnp.float32)
  ids = jnp.asarray(rng.integers(0, 7, size=(3, 5)))
  mask = jnp.asarray([[0, 1, 1, 0, 0], [0, 0, 0, 0, 0], [0, 1, 1, 1, 1]])
  for name in LOSSES:
    fn = get_loss(name)
    base = fn(logits, ids, mask)
    assert float(base[1]) == 0.0
    # Changing tokens and logits outside the targets leaves the loss unchanged.
    ids2 = ids.at[0, 3:].set(0)
    logits2 = logits.at[0, 2:].set(0.0)  # logits[0, 2] predicts ids[0, 3], not a target.
    np.testing.assert_allclose(fn(logits2, ids2, mask)[0], base[0], rtol=1e-6)


def _numpy_smoothed_nll(logits, ids, mask, alpha):
  logits = np.asarray(logits, np.float64)
  vocab = logits.shape[-1]
  z = logits - logits.max(-1, keepdims=True)
  p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
  out = []
  for b in range(logits.shape[0]):
    vals = []
    for t in range(1, logits.shape[1]):
      if mask[b, t]:
        ps = (1 - alpha) * p[b, t - 1, ids[b, t]] + alpha / vocab
        lo = -math.log(1 - alpha + alpha / vocab)
        width = math.log(1 + (1 - alpha) * vocab / alpha)
        vals.append((-math.log(ps) - lo) / width)
    out.append(np.mean(vals) if vals else 0.0)
  return np.asarray(out)


@pytest.mark.parametrize("alpha", [1e-4, 0.01, 0.1, 0.5])
@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])
def test_smoothed_nll_matches_numpy(alpha, scale):
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(4, 6, 11)) * scale
  ids = rng.integers(0, 11, size=(4, 6))
  mask = (rng.random((4, 6)) < 0.7).astype(np.int32)
  mask[:, 0] = 0
  got = jax.jit(smoothed_nll)(jnp.asarray(logits, jnp.float32), ids, mask, alpha)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, _numpy_smoothed_nll(logits, ids, mask, alpha), atol=2e-6)
  assert (np.asarray(got) >= 0).all() and (np.asarray(got) <= 1).all()


@pytest.mark.parametrize("alpha", [1e-6, 0.01, 0.9])
@pytest.mark.parametrize("vocab", [2, 50, 50_000])
def test_smoothed_nll_extremes(alpha, vocab):
  ids = jnp.asarray([[0, 1, 1]])
  mask = jnp.asarray([[0, 1, 1]])
  perfect = _one_hot_logits([[1, 1, 0]], vocab, scale=1e4)
  worst = -perfect  # The target gets probability exp(-1e4) = 0 in float32.
  worst = worst.at[..., 1].set(-jnp.inf)  # and exactly 0 via -inf.
  assert float(smoothed_nll(perfect, ids, mask, alpha)[0]) == pytest.approx(0.0, abs=1e-6)
  assert float(smoothed_nll(worst, ids, mask, alpha)[0]) == pytest.approx(1.0, abs=1e-6)
  assert 0.0 <= float(smoothed_nll(perfect, ids, mask, alpha)[0])
  assert float(smoothed_nll(worst, ids, mask, alpha)[0]) <= 1.0
  # A uniform prediction sits strictly inside.
  flat = smoothed_nll(jnp.zeros((1, 3, vocab)), ids, mask, alpha)
  assert 0.0 < float(flat[0]) < 1.0


def test_smoothed_nll_range_recovers_nats():
  alpha, vocab = 0.05, 13
  lo, hi = smoothed_nll_range(alpha, vocab)
  assert hi - lo == pytest.approx(math.log(1 + (1 - alpha) * vocab / alpha))
  rng = np.random.default_rng(2)
  logits = jnp.asarray(rng.normal(size=(1, 2, vocab)), jnp.float32)
  ids, mask = jnp.asarray([[0, 5]]), jnp.asarray([[0, 1]])
  p = jax.nn.softmax(logits[0, 0])[5]
  nats = -math.log((1 - alpha) * float(p) + alpha / vocab)
  loss = float(smoothed_nll(logits, ids, mask, alpha)[0])
  assert lo + (hi - lo) * loss == pytest.approx(nats, rel=1e-5)


def test_registry_and_argument_errors():
  assert set(LOSSES) == {"token_error", "smoothed_nll", "sequence_error"}
  with pytest.raises(ValueError, match="unknown name 'nope'.*smoothed_nll"):
    get_loss("nope")
  with pytest.raises(ValueError, match="unknown option 'beta'"):
    get_loss("smoothed_nll", beta=1)
  with pytest.raises(ValueError, match="alpha"):
    get_loss("smoothed_nll", alpha=1.5)
  logits = jnp.zeros((1, 3, 4))
  ids = jnp.asarray([[0, 1, 2]])
  fn = get_loss("smoothed_nll", alpha=0.2)
  np.testing.assert_allclose(fn(logits, ids, ids), smoothed_nll(logits, ids, ids, alpha=0.2))
  with pytest.raises(ValueError, match="alpha"):
    smoothed_nll(logits, ids, ids, alpha=0.0)
  with pytest.raises(ValueError, match=r"logits: expected shape \[B, L, V\]"):
    token_error(jnp.zeros((3, 4)), ids, ids)
  with pytest.raises(ValueError, match="must both have shape"):
    token_error(logits, ids[:, :2], ids[:, :2])
  # alpha may be traced (e.g. optimised).
  out = jax.jit(lambda a: smoothed_nll(logits, ids, ids, a))(0.3)
  np.testing.assert_allclose(out, smoothed_nll(logits, ids, ids, 0.3), rtol=1e-6)


def test_losses_on_dataset_batches_with_padding_rows():
  ds = Dataset.from_rows([{"prompt_ids": [1, 2], "completion_ids": [3, 4]}] * 3)
  batch = next(iterate_batches(ds, 4))
  logits = _one_hot_logits(np.roll(batch["input_ids"], -1, axis=1), 5)  # Perfect next-token.
  err = token_error(logits, batch["input_ids"], batch["loss_mask"])
  np.testing.assert_array_equal(err, [0, 0, 0, 0])
  logits = _one_hot_logits(np.zeros_like(batch["input_ids"]), 5)  # Always predicts id 0.
  err = token_error(logits, batch["input_ids"], batch["loss_mask"])
  np.testing.assert_array_equal(err, [1, 1, 1, 0])  # The padding row (weight 0) scores 0.
  np.testing.assert_array_equal(batch["weight"], [1, 1, 1, 0])


@pytest.mark.parametrize(
  "text,expected",
  [
    ("so x = 3\nThe answer is 42.", "42"),
    ("Final Answer: $1,234$", "1234"),
    ("work...\n#### 17\n", "17"),
    ("a = 3 + 4 = 0 ; answer 0", "0"),
    ("we get \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}"),
    ("line one\n  3.0  \n\n", "3"),
    ("Answer:\n  Paris", "paris"),
    ("", ""),
  ],
)
def test_extract_answer(text, expected):
  assert extract_answer(text) == expected


def test_extractor_is_configurable_and_normalises():
  ex = AnswerExtractor(markers=("=>",), boxed=False)
  assert ex("x \\boxed{1} => 2") == "2"
  assert ex("no marker\nlast") == "last"
  assert normalize_answer(" 0.50 ") == "0.5" and normalize_answer("-7.") == "-7"
  with pytest.raises(ValueError, match="markers"):
    AnswerExtractor(markers="answer")


def test_answer_error_with_eos_and_padding_rows():
  words = {1: "the", 2: "answer", 3: "is", 4: "7", 5: "8", 9: "<eos>"}
  decode = lambda ids: " ".join(words[i] for i in ids)
  generated = np.asarray([[1, 2, 3, 4, 9, 5], [1, 2, 3, 5, 9, 4], [1, 1, 1, 1, 1, 1]])
  err = answer_error(generated, ["7", "7", None], decode, eos_id=9)
  np.testing.assert_array_equal(err, [0.0, 1.0, 0.0])
  assert err.dtype == np.float32
  # Without the EOS cut, the last line of row 0 still ends "... 7 <eos> 8": the marker rules.
  np.testing.assert_array_equal(answer_error(generated[:1], ["7"], decode), [1.0])
  with pytest.raises(ValueError, match="len\\(answers\\)"):
    answer_error(generated, ["7"], decode)


def test_model_answer_error_passes_prompts_to_greedy_generate(monkeypatch):
  seen = {}

  def fake_generate(model, prompt_ids, prompt_lengths, max_new_tokens, *, eos_id=None):
    seen.update(prompt_ids=np.asarray(prompt_ids), lengths=np.asarray(prompt_lengths))
    # "Generates" the prompt's first token, then EOS.
    first = np.asarray(prompt_ids)[:, :1]
    return jnp.asarray(np.concatenate([first, np.full_like(first, 9)], axis=1))

  module = types.ModuleType("pacbayes.models.generate")
  module.greedy_generate = fake_generate
  monkeypatch.setitem(sys.modules, "pacbayes.models.generate", module)
  ds = Dataset.from_rows(
    [
      {"prompt_ids": [4, 1], "completion_ids": [2, 3], "answer": "4"},
      {"prompt_ids": [5, 1, 1], "completion_ids": [2], "answer": "4"},
    ]
  )
  batch = next(iterate_batches(ds, 3, extra=("prompt_lengths",)))
  answers = ds.answers + [None]
  err = model_answer_error(
    None,
    batch["input_ids"],
    batch["prompt_lengths"],
    answers,
    lambda ids: str(ids[0]),
    max_new_tokens=2,
    eos_id=9,
  )
  np.testing.assert_array_equal(err, [0.0, 1.0, 0.0])
  np.testing.assert_array_equal(seen["prompt_ids"], [[4, 1, 0], [5, 1, 1], [0, 0, 0]])
  np.testing.assert_array_equal(seen["lengths"], [2, 3, 1])


def test_module_namespace():
  assert losses.LOSSES["token_error"] is token_error


def test_model_loss_fn_matches_direct_call():
  models = pytest.importorskip("pacbayes.models")
  from flax import nnx

  config = models.ModelConfig(
    model_type="llama",
    vocab_size=13,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    max_position_embeddings=16,
  )
  model = models.build_model(config, rngs=nnx.Rngs(0))
  ds = Dataset.from_rows([{"prompt_ids": [1, 2, 3], "completion_ids": [4, 5, 6]}] * 3)
  batch = {k: jnp.asarray(v) for k, v in next(iterate_batches(ds, 4)).items()}
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  loss_fn = losses.model_loss_fn(graphdef, rest, loss="smoothed_nll", alpha=0.1)
  got = jax.jit(loss_fn)(params, batch)
  forward = jax.jit(lambda p, x, m: nnx.merge(graphdef, p, rest)(x, m))
  logits = forward(params, batch["input_ids"], batch["attention_mask"])
  want = smoothed_nll(logits, batch["input_ids"], batch["loss_mask"], alpha=0.1)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert got.shape == (4,) and float(got[3]) == 0.0
  assert (np.asarray(got[:3]) > 0).all() and (np.asarray(got[:3]) < 1).all()


def test_model_loss_refuses_one_dimensional_rows():
  from flax import nnx

  from pacbayes.models import build_model
  from tests.helpers.models import tiny_config

  graphdef, params, rest = nnx.split(build_model(tiny_config(), rngs=nnx.Rngs(0)), nnx.Param, ...)
  loss_fn = losses.model_loss_fn(graphdef, rest)
  ids = np.ones(7, np.int32)
  batch = {"input_ids": ids, "attention_mask": ids, "loss_mask": ids, "weight": np.ones(1)}
  with pytest.raises(ValueError, match=r"input_ids: expected \[batch, length\]"):
    loss_fn(params, batch)
