"""Tests for pacbayes.shift.features: difficulty, CoT length, hashed n-grams, embeddings."""

import functools
import zlib

import jax
import numpy as np
import pytest
from flax import nnx

from pacbayes.data.jsonl import DataError
from pacbayes.models import load_pretrained
from pacbayes.shift import features
from pacbayes.shift.features import FeatureError
from tests.helpers.jsonl import write_jsonl


def test_difficulty_values():
  rows = [{"difficulty": 3}, {"difficulty": 1.5}, {"difficulty": 0}]
  d = features.difficulty(rows)
  assert d.dtype == np.float64
  np.testing.assert_array_equal(d, [3.0, 1.5, 0.0])


def test_difficulty_missing_names_file_and_line(tmp_path):
  path = tmp_path / "train.jsonl"
  path.write_text('{"difficulty": 1}\n\n{"difficulty": 2}\n{"text": "a"}\n{"text": "b"}\n')
  rows, lines = features.read_rows(path)
  assert lines == [1, 3, 4, 5]
  with pytest.raises(DataError, match=r"train\.jsonl:4: the row has no 'difficulty'"):
    features.difficulty(rows, source=str(path), lines=lines)
  with pytest.raises(DataError, match=r"rows: row 3: the row has no 'difficulty'"):
    features.difficulty(rows)
  with pytest.raises(DataError, match=r"rows: row 1: the row has no 'difficulty' \(nor"):
    features.difficulty([{"text": "a"}, {"text": "b"}])


@pytest.mark.parametrize("bad", ["3", None, True, float("nan"), [1]])
def test_difficulty_must_be_a_finite_number(bad):
  with pytest.raises(DataError, match="'difficulty' must be a finite number"):
    features.difficulty([{"difficulty": 1}, {"difficulty": bad}])


def test_difficulty_no_rows():
  with pytest.raises(DataError, match="no rows"):
    features.difficulty([])


def test_cot_length_lines_and_tokens():
  rows = [
      {"prompt": "Q", "completion": "step 1\n\nstep 2\nanswer: 4"},
      {"text": "one line only."},
  ]
  np.testing.assert_array_equal(features.cot_length(rows, "lines"), [3, 1])
  # Words and punctuation: "step 1 step 2 answer : 4" and "one line only .".
  np.testing.assert_array_equal(features.cot_length(rows, "tokens"), [7, 4])
  np.testing.assert_array_equal(
      features.cot_length(rows, "tokens", tokenizer=lambda s: list(s.encode())),
      [len(rows[0]["completion"].encode()), len(rows[1]["text"].encode())])


def test_cot_length_errors():
  with pytest.raises(FeatureError, match="unit must be"):
    features.cot_length([{"text": "a"}], "chars")
  with pytest.raises(FeatureError, match=r"f\.jsonl:7: row has no string 'completion'"):
    features.cot_length([{"text": "a"}, {"input_ids": [1]}], source="f.jsonl", lines=[2, 7])


def test_hashed_ngrams_matches_independent_hash():
  dim = 64
  x = features.hashed_ngrams([{"text": "Hello"}], n=1, dim=dim)
  h = zlib.crc32(b"1\x1fhello")
  want = np.zeros(dim, np.float32)
  want[h % dim] = 1.0 if h >> 31 else -1.0
  np.testing.assert_array_equal(x[0], want)


def test_hashed_ngrams_properties():
  rows = [{"text": "the cat sat on the mat"}, {"prompt": "2 + 2", "completion": "= 4"},
          {"input_ids": [5, 6, 7, 5, 6]}, {"text": ""}]
  x = features.hashed_ngrams(rows, n=(1, 2), dim=2**10)
  assert x.shape == (4, 2**10) and x.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(x[:3], axis=1), 1.0, rtol=1e-6)
  assert not x[3].any()  # No tokens: the zero vector.
  np.testing.assert_array_equal(x, features.hashed_ngrams(rows, n=(1, 2), dim=2**10))
  # "the" appears twice: its bucket holds +-2 before normalisation (1-grams only, big dim).
  y = features.hashed_ngrams(rows[:1], n=1, dim=2**20)[0]
  counts = np.sort(np.abs(y[y != 0]) / np.abs(y[y != 0]).min())
  np.testing.assert_allclose(counts, [1, 1, 1, 1, 2])
  # Token ids hash like their decimal strings.
  z = features.hashed_ngrams([{"text": "5 6 7 5 6"}], n=(1, 2), dim=2**10)
  np.testing.assert_array_equal(z[0], x[2])


def test_hashed_ngrams_errors():
  with pytest.raises(FeatureError, match="n must be"):
    features.hashed_ngrams([{"text": "a"}], n=(0,))
  with pytest.raises(FeatureError, match="dim must be"):
    features.hashed_ngrams([{"text": "a"}], dim=0)
  with pytest.raises(FeatureError, match="no rows"):
    features.hashed_ngrams([])
  with pytest.raises(FeatureError, match=r"b\.jsonl: row 2: row has no 'text'"):
    features.hashed_ngrams([{"text": "a"}, {"difficulty": 1}], source="b.jsonl")


def test_embed_with_batches():
  rows = [{"text": "x" * i} for i in range(10)]
  calls = []

  def fn(batch):
    calls.append(len(batch))
    return np.array([[len(r["text"]), 1.0] for r in batch])

  out = features.embed_with(fn, rows, batch_size=4)
  assert calls == [4, 4, 2]
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out[:, 0], np.arange(10))


def test_embed_with_errors():
  rows = [{"text": "a"}] * 5
  with pytest.raises(FeatureError, match="batch_size"):
    features.embed_with(lambda b: np.zeros((len(b), 2)), rows, batch_size=0)
  with pytest.raises(FeatureError, match=r"returned shape \(2,\)"):
    features.embed_with(lambda b: np.zeros(2), rows, batch_size=2)
  dims = iter([3, 4, 4])
  with pytest.raises(FeatureError, match="rows 2..3 returned dimension 4, earlier batches 3"):
    features.embed_with(lambda b: np.zeros((len(b), next(dims))), rows, batch_size=2)
  with pytest.raises(FeatureError, match="NaN or infinite"):
    features.embed_with(lambda b: np.full((len(b), 2), np.inf), rows, batch_size=2)
  with pytest.raises(FeatureError, match="rows is empty"):
    features.embed_with(lambda b: b, [], batch_size=2)


def test_read_rows_roundtrip(tmp_path):
  path = tmp_path / "d.jsonl"
  write_jsonl(path, [{"difficulty": i} for i in range(3)])
  rows, lines = features.read_rows(path)
  assert [r["difficulty"] for r in rows] == [0, 1, 2] and lines == [1, 2, 3]


@functools.partial(jax.jit, static_argnums=0)
def _hidden(graphdef, state, ids):
  return nnx.merge(graphdef, state).hidden_states(ids)


def _row_means(model, rows):
  """Reference: rows without padding or mask (grouped by length), mean over positions."""
  graphdef, state = nnx.split(model)
  out = [None] * len(rows)
  for length in sorted({len(r) for r in rows}):
    idx = [i for i, r in enumerate(rows) if len(r) == length]
    ids = np.asarray([rows[i] for i in idx], np.int32)
    hidden = np.asarray(_hidden(graphdef, state, ids), np.float64)
    for i, h in zip(idx, hidden, strict=True):
      out[i] = h.mean(axis=0)
  return np.stack(out)


def test_mean_hidden_states_matches_rows_run_alone(tiny_llama):
  model, _ = load_pretrained(tiny_llama)
  rng = np.random.default_rng(0)
  rows = [rng.integers(0, 32, n).tolist() for n in (3, 1, 9, 3, 1, 9, 3)]
  ids = np.zeros((7, 12), np.int32)
  mask = np.zeros((7, 12), np.int32)
  for i, r in enumerate(rows):
    ids[i, :len(r)], mask[i, :len(r)] = r, 1
  want = _row_means(model, rows)
  for batch_size in (1, 3, 16):  # The last batch is padded with empty rows.
    got = features.mean_hidden_states(model, ids, mask, batch_size=batch_size)
    assert got.dtype == np.float32 and got.shape == (7, 16)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_mean_hidden_states_errors(tiny_llama):
  model, _ = load_pretrained(tiny_llama)
  ids = np.ones((2, 3), np.int32)
  with pytest.raises(FeatureError, match="share a non-empty shape"):
    features.mean_hidden_states(model, ids, np.ones((2, 4)))
  with pytest.raises(FeatureError, match="batch_size"):
    features.mean_hidden_states(model, ids, np.ones((2, 3)), batch_size=0)
  with pytest.raises(FeatureError, match="row 1 has no real token"):
    features.mean_hidden_states(model, ids, np.array([[1, 1, 0], [0, 0, 0]]))


def test_checkpoint_embeddings_of_files(tmp_path, tiny_llama):
  model, _ = load_pretrained(tiny_llama)
  rows_a = [[1, 2, 3], [4, 5, 0], [6, 7, 8, 9, 10, 11]]
  rows_b = [[30, 31, 29], [2, 2, 2, 2, 6, 2]]
  a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
  write_jsonl(a, [{"input_ids": r} for r in rows_a])
  write_jsonl(b, [{"input_ids": r} for r in rows_b])
  xa, xb = features.checkpoint_embeddings(tiny_llama, [a, b], batch_size=2)
  np.testing.assert_allclose(xa, _row_means(model, rows_a), atol=1e-5)
  np.testing.assert_allclose(xb, _row_means(model, rows_b), atol=1e-5)
  # Rows longer than max_length are cut on the right.
  (xb3,) = features.checkpoint_embeddings(tiny_llama, [b], max_length=3)
  np.testing.assert_allclose(xb3, _row_means(model, [r[:3] for r in rows_b]), atol=1e-5)
  with pytest.raises(FeatureError, match="max_length"):
    features.checkpoint_embeddings(tiny_llama, [a], max_length=0)
  text = tmp_path / "text.jsonl"
  text.write_text('{"text": "no tokenizer files in the folder"}\n')
  with pytest.raises(DataError, match="tokenizer"):
    features.checkpoint_embeddings(tiny_llama, [text])
