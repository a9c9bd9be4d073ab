"""sequence_error upper-bounds the greedy answer error, row by row, on a briefly trained model."""

import jax
import numpy as np
from flax import nnx

from pacbayes.data import Dataset, synthetic
from pacbayes.losses import sequence_error, token_error
from pacbayes.models import ModelConfig, build_model, greedy_generate
from pacbayes.study import evaluate as ev
from pacbayes.training import trainer as tr


def _model():
  config = ModelConfig(
    model_type="llama", vocab_size=synthetic.VOCAB_SIZE, hidden_size=48, intermediate_size=96,
    num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=synthetic.MODEL_MAX_LENGTH,
    dtype="float32", bos_token_id=synthetic.BOS_ID, eos_token_id=synthetic.EOS_ID,
    pad_token_id=synthetic.PAD_ID)
  return build_model(config, rngs=nnx.Rngs(0))


def test_greedy_answer_wrong_implies_sequence_error_one():
  # One- and two-operation problems: a short run gets some rows fully right, others not.
  train_rows = synthetic.generate_dataset(512, {1: 0.8, 2: 0.2}, seed=0)
  test_rows = synthetic.generate_dataset(96, {1: 0.5, 2: 0.5}, seed=1)
  model = _model()
  train = Dataset.from_rows(train_rows)
  data = {"input_ids": train.input_ids, "attention_mask": train.attention_mask,
          "loss_mask": train.loss_mask}
  cfg = tr.TrainConfig(steps=200, batch_size=32, learning_rate=1e-2, warmup_steps=10)
  tr.train_model(model, data, cfg, key=jax.random.key(0), progress=False)

  seq_all, right_all, tok_all = [], [], []
  for ops in (1, 2):  # one prompt length per op count
    rows = [r for r in test_rows if r["difficulty"] == ops]
    ds = Dataset.from_rows(rows)
    logits = model(ds.input_ids, attention_mask=ds.attention_mask)
    seq_all.append(np.asarray(sequence_error(logits, ds.input_ids, ds.loss_mask)))
    tok_all.append(np.asarray(token_error(logits, ds.input_ids, ds.loss_mask)))
    p_len = int(ds.prompt_lengths.max())
    gen = greedy_generate(model, ds.input_ids[:, :p_len], ds.prompt_lengths,
                          int(ds.num_targets.max()) + 4, eos_id=synthetic.EOS_ID,
                          pad_id=synthetic.PAD_ID)
    right_all.append(ev.answer_correct(np.asarray(gen), ds.answers))
  seq, right, tok = map(np.concatenate, (seq_all, right_all, tok_all))

  # Both outcomes occur on both sides, so the implication below is tested, not vacuous.
  assert set(np.unique(seq)) == {0.0, 1.0}, np.unique(seq)
  assert right.any() and (~right).any(), right.mean()
  # Greedy answer wrong => sequence error 1 (equivalently: sequence error 0 => answer right).
  assert np.all(seq[~right] == 1.0)
  assert np.all(right[seq == 0.0])
  # It is also never below the token error, and is 1 exactly where some token is wrong.
  np.testing.assert_array_equal(seq, (tok > 0).astype(np.float32))
