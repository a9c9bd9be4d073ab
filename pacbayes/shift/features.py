"""Features of dataset rows for shift estimation: difficulty, CoT length, n-grams, embeddings."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pacbayes.data.dataset import load_dataset
from pacbayes.data.jsonl import DataError, read_jsonl_with_lines
from pacbayes.data.rows import collect_difficulty
from pacbayes.models import load_pretrained


class FeatureError(ValueError):
  """A feature that cannot be computed; the message names the file/row or argument."""


@dataclasses.dataclass(frozen=True)
class FeatureOptions:
  """How feature vectors are computed for a shift estimate (`pacbayes.shift.report.shift_report`).

  Attributes:
    ngram_dim: hashed n-gram dimension (`hashed_ngrams`).
    max_length: the embedding pass truncates longer rows; None: the model's
      `max_position_embeddings` (`checkpoint_embeddings`, which checks it).
    batch_size: rows per compiled forward pass of the embedding (`checkpoint_embeddings`).
  """

  ngram_dim: int = 2**12
  max_length: int | None = None
  batch_size: int = 32


_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_SEP = "\x1f"  # Unit separator: cannot occur inside a word token.


def read_rows(path: str | os.PathLike) -> tuple[list[dict[str, Any]], list[int]]:
  """Reads a JSONL file: (rows, their 1-based line numbers), for located error messages."""
  return read_jsonl_with_lines(path)


def _where(source: str | None, lines: Sequence[int] | None, i: int) -> str:
  src = source if source is not None else "rows"
  if lines is not None and i < len(lines):
    return f"{src}:{lines[i]}"
  return f"{src}: row {i + 1}"


def difficulty(
    rows: Sequence[dict[str, Any]],
    *,
    source: str | None = None,
    lines: Sequence[int] | None = None,
) -> np.ndarray:
  """The `difficulty` field of every row, float64 [N].

  Args:
    rows: dicts as returned by `read_jsonl`.
    source: file name for error messages.
    lines: the rows' line numbers in `source` (see `read_rows`), for error messages.

  Returns:
    float64 array [N].

  Raises:
    DataError: no rows, or a row (named by file and line) lacks a finite numeric
      `difficulty` (`pacbayes.data.rows.collect_difficulty`, the one parser of the field).
  """
  if len(rows) == 0:
    raise DataError(f"{source or 'rows'}: no rows")
  wheres = [_where(source, lines, i) for i in range(len(rows))]
  values = collect_difficulty(rows, wheres)  # the one parser of `difficulty`
  if values is None:
    raise DataError(f"{wheres[0]}: the row has no 'difficulty' (nor does any other); every "
                    "row needs one for the difficulty feature")
  return values


def _text_of(row: dict[str, Any], fields: Sequence[str]) -> str | None:
  for field in fields:
    value = row.get(field)
    if isinstance(value, str):
      return value
  return None


def cot_length(
    rows: Sequence[dict[str, Any]],
    unit: str = "lines",
    *,
    tokenizer: Callable[[str], Sequence[int]] | None = None,
    source: str | None = None,
    lines: Sequence[int] | None = None,
) -> np.ndarray:
  """Length of each row's chain of thought (`completion`, else `text`), int64 [N].

  Args:
    rows: dicts as returned by `read_jsonl`.
    unit: "lines" (non-blank lines) or "tokens" (`tokenizer(text)` ids when a tokenizer is
      given, else words and punctuation marks).
    tokenizer: callable mapping a string to token ids, e.g. a HF tokenizer's `encode`.
    source: file name for error messages.
    lines: the rows' line numbers, for error messages.

  Returns:
    int64 array [N].

  Raises:
    FeatureError: bad unit, no rows, or a row with neither `completion` nor `text`.
  """
  if unit not in ("lines", "tokens"):
    raise FeatureError(f"unit must be 'lines' or 'tokens', got {unit!r}")
  if len(rows) == 0:
    raise FeatureError(f"{source or 'rows'}: no rows")
  out = np.empty(len(rows), dtype=np.int64)
  for i, row in enumerate(rows):
    text = _text_of(row, ("completion", "text"))
    if text is None:
      raise FeatureError(f"{_where(source, lines, i)}: row has no string 'completion' or "
                         "'text' field to measure")
    if unit == "lines":
      out[i] = sum(1 for line in text.splitlines() if line.strip())
    elif tokenizer is not None:
      out[i] = len(tokenizer(text))
    else:
      out[i] = len(_WORD.findall(text))
  return out


def _tokens_of(row: dict[str, Any]) -> list[str] | None:
  parts = [row[f] for f in ("prompt", "completion") if isinstance(row.get(f), str)]
  text = row.get("text") if isinstance(row.get("text"), str) else None
  if text is not None:
    parts = [text]
  if parts:
    return [w.lower() for w in _WORD.findall("\n".join(parts))]
  ids = row.get("input_ids")
  if isinstance(ids, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
    return [str(t) for t in ids]
  return None


def hashed_ngrams(
    rows: Sequence[dict[str, Any]],
    n: Sequence[int] | int = (1, 2),
    dim: int = 2**12,
    *,
    source: str | None = None,
    lines: Sequence[int] | None = None,
) -> np.ndarray:
  """Signed, hashed n-gram counts of each row, L2-normalised, float32 [N, dim].

  Tokens are lower-cased words and punctuation marks of `text` (or `prompt` + `completion`),
  or the row's `input_ids` when it has no text. Each n-gram is hashed with CRC-32 (stable
  across runs and machines, unlike Python's `hash`) into a bucket, and a second CRC-32 bit
  picks its sign so that collisions cancel in expectation (Weinberger et al. 2009). A row
  with no tokens gets the zero vector.

  Args:
    rows: dicts as returned by `read_jsonl`.
    n: n-gram orders, e.g. (1, 2).
    dim: number of buckets (>= 1).
    source: file name for error messages.
    lines: the rows' line numbers, for error messages.

  Returns:
    float32 array [N, dim], rows of unit L2 norm (or zero).

  Raises:
    FeatureError: bad `n` or `dim`, no rows, or a row with no `text`, `prompt`/`completion`
      or `input_ids`.

  References:
    Weinberger, Dasgupta, Langford, Smola & Attenberg (2009), "Feature hashing for large
    scale multitask learning", ICML.
  """
  orders = (n,) if isinstance(n, int) else tuple(n)
  if not orders or any(not isinstance(o, int) or o < 1 for o in orders):
    raise FeatureError(f"n must be a positive int or a sequence of them, got {n!r}")
  if not isinstance(dim, int) or dim < 1:
    raise FeatureError(f"dim must be a positive int, got {dim!r}")
  if len(rows) == 0:
    raise FeatureError(f"{source or 'rows'}: no rows")
  cache: dict[str, int] = {}  # n-gram -> signed bucket (bucket + 1, negated for sign -1).
  row_idx, codes = [], []
  for i, row in enumerate(rows):
    toks = _tokens_of(row)
    if toks is None:
      raise FeatureError(f"{_where(source, lines, i)}: row has no 'text', 'prompt'/"
                         "'completion' or 'input_ids' to hash")
    for order in orders:
      for j in range(len(toks) - order + 1):
        gram = _SEP.join([str(order), *toks[j:j + order]])
        code = cache.get(gram)
        if code is None:
          h = zlib.crc32(gram.encode())
          code = (h % dim + 1) * (1 if (h >> 31) & 1 else -1)
          cache[gram] = code
        codes.append(code)
      row_idx.extend([i] * max(0, len(toks) - order + 1))
  out = np.zeros((len(rows), dim), dtype=np.float32)
  if codes:
    code_arr = np.asarray(codes, dtype=np.int64)
    np.add.at(out, (np.asarray(row_idx, dtype=np.int64), np.abs(code_arr) - 1),
              np.sign(code_arr).astype(np.float32))
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    out /= np.where(norms > 0, norms, 1.0)
  return out


def embed_with(
    fn: Callable[[Sequence[dict[str, Any]]], Any],
    rows: Sequence[dict[str, Any]],
    batch_size: int = 64,
) -> np.ndarray:
  """Applies `fn` (a batch of rows -> vectors [B, D]) over `rows` in batches, float32 [N, D].

  Any embedding model plugs in here, e.g. mean-pooled hidden states of a checkpoint.

  Args:
    fn: callable taking a list of up to `batch_size` rows, returning an array [B, D].
    rows: dicts as returned by `read_jsonl`.
    batch_size: rows per call (>= 1).

  Returns:
    float32 array [N, D].

  Raises:
    FeatureError: no rows, bad batch size, or `fn` returning the wrong shape or non-finite
      values (the message names the batch).
  """
  if not isinstance(batch_size, int) or batch_size < 1:
    raise FeatureError(f"batch_size must be a positive int, got {batch_size!r}")
  if len(rows) == 0:
    raise FeatureError("rows is empty")
  chunks = []
  for start in range(0, len(rows), batch_size):
    batch = list(rows[start:start + batch_size])
    vecs = np.asarray(fn(batch), dtype=np.float32)
    where = f"fn on rows {start}..{start + len(batch) - 1}"
    if vecs.ndim != 2 or vecs.shape[0] != len(batch):
      raise FeatureError(f"{where} returned shape {vecs.shape}; expected ({len(batch)}, D)")
    if chunks and vecs.shape[1] != chunks[0].shape[1]:
      raise FeatureError(f"{where} returned dimension {vecs.shape[1]}, earlier batches "
                         f"{chunks[0].shape[1]}")
    if not np.all(np.isfinite(vecs)):
      raise FeatureError(f"{where} returned NaN or infinite values")
    chunks.append(vecs)
  return np.concatenate(chunks, axis=0)


@functools.partial(jax.jit, static_argnums=0)
def _mean_hidden(graphdef, state, input_ids_BxL, mask_BxL):
  """Mean final hidden state over each row's real tokens, float32 [B, D] (0 for empty rows)."""
  hidden_BxLxD = nnx.merge(graphdef, state).hidden_states(input_ids_BxL, mask_BxL)
  weight_BxL = mask_BxL.astype(jnp.float32)
  total_BxD = jnp.einsum("bld,bl->bd", hidden_BxLxD.astype(jnp.float32), weight_BxL)
  count_B = jnp.maximum(jnp.sum(weight_BxL, axis=1), 1.0)
  return total_BxD / count_B[:, None]


def mean_hidden_states(
    model: nnx.Module,
    input_ids: Any,
    attention_mask: Any,
    *,
    batch_size: int = 32,
) -> np.ndarray:
  """Embeds each row as the mean of `model.hidden_states` over its real tokens, float32 [N, D].

  Runs under `jax.jit` over the `nnx.split` state with one batch shape [batch_size, L]: the
  last batch is padded with empty rows (all-zero mask) that are dropped afterwards, so a call
  compiles once per (batch_size, L).

  Args:
    model: a decoder with `hidden_states(input_ids, attention_mask) -> [B, L, D]`.
    input_ids: [N, L] int token ids, padded on either side (positions follow the mask, so
      each row gives the vector it gives alone).
    attention_mask: [N, L], 1 on real tokens; every row needs at least one.
    batch_size: rows per compiled call (>= 1).

  Returns:
    float32 array [N, D].

  Raises:
    FeatureError: bad shapes or batch size, a row with no real token, or non-finite
      hidden states (the message names the rows).
  """
  ids_NxL = np.asarray(input_ids, dtype=np.int32)
  mask_NxL = np.asarray(attention_mask, dtype=np.int32)
  if ids_NxL.ndim != 2 or ids_NxL.shape != mask_NxL.shape or ids_NxL.shape[0] == 0:
    raise FeatureError(f"input_ids and attention_mask must share a non-empty shape [N, L], got "
                       f"{ids_NxL.shape} and {mask_NxL.shape}")
  if not isinstance(batch_size, int) or batch_size < 1:
    raise FeatureError(f"batch_size must be a positive int, got {batch_size!r}")
  empty = np.flatnonzero(mask_NxL.sum(axis=1) == 0)
  if empty.size:
    raise FeatureError(f"attention_mask row {int(empty[0])} has no real token "
                       f"({empty.size} such rows)")
  graphdef, state = nnx.split(model)
  n, length = ids_NxL.shape
  chunks = []
  for start in range(0, n, batch_size):
    stop = min(n, start + batch_size)
    ids_BxL = np.zeros((batch_size, length), np.int32)
    mask_BxL = np.zeros((batch_size, length), np.int32)
    ids_BxL[:stop - start] = ids_NxL[start:stop]
    mask_BxL[:stop - start] = mask_NxL[start:stop]
    vecs_BxD = np.asarray(_mean_hidden(graphdef, state, ids_BxL, mask_BxL))[:stop - start]
    if not np.all(np.isfinite(vecs_BxD)):
      raise FeatureError(f"hidden states of rows {start}..{stop - 1} hold NaN or infinite "
                         "values")
    chunks.append(vecs_BxD)
  return np.concatenate(chunks, axis=0)


def checkpoint_embeddings(
    model_dir: str | os.PathLike,
    paths: Sequence[str | os.PathLike],
    *,
    max_length: int | None = None,
    batch_size: int = 32,
) -> list[np.ndarray]:
  """Mean-pooled final hidden states of a checkpoint over the rows of JSONL files.

  Each file is read with `pacbayes.data.dataset.load_dataset` (token ids checked against the
  model's vocabulary; `text` and `prompt`/`completion` rows tokenised with the tokenizer
  files in `model_dir`), all files are padded to one length so that they share one compiled
  shape, and each row becomes the mean of `model.hidden_states` over its real tokens.

  Args:
    model_dir: a Hugging Face checkpoint folder (see `pacbayes.models.load_pretrained`).
    paths: the JSONL files.
    max_length: longer rows are truncated on the right; default the model's
      `max_position_embeddings`.
    batch_size: rows per compiled call; capped at the largest file's row count.

  Returns:
    One float32 array [N_i, D] per file, in the order of `paths`.

  Raises:
    ValueError: an unreadable checkpoint, or (DataError, naming file and line) a bad row.
    FeatureError: a bad `max_length` or `batch_size`, or non-finite hidden states.
  """
  if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
    raise FeatureError(f"max_length must be a positive int or None, got {max_length!r}")
  if not isinstance(batch_size, int) or batch_size < 1:
    raise FeatureError(f"batch_size must be a positive int, got {batch_size!r}")
  model, config = load_pretrained(model_dir)
  if max_length is None:
    max_length = config.max_position_embeddings
  datasets = [load_dataset(path, tokenizer_dir=model_dir, vocab_size=config.vocab_size,
                           max_length=max_length) for path in paths]
  length = max(d.input_ids.shape[1] for d in datasets)
  batch = min(batch_size, max(d.input_ids.shape[0] for d in datasets))
  out = []
  for d in datasets:
    pad = ((0, 0), (0, length - d.input_ids.shape[1]))
    out.append(mean_hidden_states(model, np.pad(d.input_ids, pad, constant_values=d.pad_id),
                                  np.pad(d.attention_mask, pad), batch_size=batch))
  return out


__all__ = [
    "FeatureError", "FeatureOptions", "checkpoint_embeddings", "cot_length", "difficulty",
    "embed_with", "hashed_ngrams", "mean_hidden_states", "read_rows",
]
