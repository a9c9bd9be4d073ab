"""JSONL row formats -> token arrays: format checks, tokenisation, truncation, masks.

The row formats, masks and truncation rules are those of `pacbayes.data.dataset` (its module
docstring states them); `encode_rows` does the work, with its settings (length, padding,
overflow, EOS) in one `EncodeOptions`, and `pacbayes.data.dataset.Dataset` holds the result.
Every error names ``file:line``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pacbayes.data import tokenize as _tok
from pacbayes.data.jsonl import DataError

_INT32_MAX = 2**31 - 1
# Files one of which a folder must hold for `transformers.AutoTokenizer` to load offline.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model", "sentencepiece.bpe.model", "tekken.json")
DEFAULT_OVERFLOW_HINT = "pass on_overflow='truncate' to cut such rows"


@dataclasses.dataclass(frozen=True)
class EncodeOptions:
  """How rows become fixed-length token arrays: length, padding, overflow, EOS.

  The settings are checked by `encode_rows` (which knows the vocabulary ``pad_id`` must lie
  in), so a bad value is refused with the same message wherever the options were made.

  Attributes:
    max_length: rows longer than this many tokens are truncated on the right (or refused,
      see ``on_overflow``); None: no limit. At least 2 (one input, one target).
    pad_id: the id written on padding positions (masks make its value irrelevant to
      losses); in ``[0, vocab_size)``.
    pad_length: pad every row to exactly this length (default: the longest row), so that
      several datasets share one compiled shape.
    on_overflow: ``"truncate"`` (counted in ``num_truncated``) or ``"error"`` for rows
      longer than ``max_length``.
    add_eos: append the tokenizer's EOS to string completions.
    overflow_hint: how to ask for truncation, ending the message that refuses a long row
      under ``on_overflow="error"`` (a command names its flag, e.g. "use --max-length N
      --truncate").
  """

  max_length: int | None = None
  pad_id: int = 0
  pad_length: int | None = None
  on_overflow: str = "truncate"
  add_eos: bool = True
  overflow_hint: str = DEFAULT_OVERFLOW_HINT


@dataclasses.dataclass(frozen=True, eq=False)
class RowArrays:
  """The arrays `encode_rows` builds (the fields of `pacbayes.data.dataset.Dataset`).

  Attributes:
    input_ids, attention_mask, loss_mask: [N, L] int32.
    prompt_lengths: [N] int32.
    difficulty: [N] float64 or None.
    answers: N strings or None.
    line_numbers: [N] int64.
    num_truncated: rows cut to ``max_length``.
  """

  input_ids: np.ndarray
  attention_mask: np.ndarray
  loss_mask: np.ndarray
  prompt_lengths: np.ndarray
  difficulty: np.ndarray | None
  answers: list[str] | None
  line_numbers: np.ndarray
  num_truncated: int


def has_tokenizer_files(folder: str | os.PathLike) -> bool:
  """Whether ``folder`` holds one of `TOKENIZER_FILES` (or a ``*.tiktoken`` file)."""
  try:
    names = os.listdir(folder)
  except OSError:
    return False
  return any(n in TOKENIZER_FILES or n.endswith(".tiktoken") for n in names)


def _load_tokenizer(tokenizer_dir, where: str, kind: str) -> Any:
  folder = os.fspath(tokenizer_dir)
  if os.path.isdir(folder) and not has_tokenizer_files(folder):
    raise DataError(
      f"{where}: the row holds {kind!r} strings, but the tokenizer is missing: {folder} holds "
      f"none of {', '.join(TOKENIZER_FILES)} (save the tokenizer beside the checkpoint, or "
      "use token id rows)")
  return _tok.load_tokenizer(folder)


def _check_ids(value: Any, key: str, where: str, *, allow_empty: bool = False) -> np.ndarray:
  if not isinstance(value, list):
    raise DataError(f"{where}: {key!r} must be a list of ints, got {type(value).__name__}")
  if not value:
    if allow_empty:
      return np.zeros((0,), np.int64)
    raise DataError(f"{where}: {key!r} is empty")
  try:
    arr = np.asarray(value)
  except (ValueError, OverflowError):
    arr = np.asarray(value, dtype=object)
  if arr.ndim != 1 or arr.dtype.kind not in "iu":
    raise DataError(f"{where}: {key!r} must be a flat list of ints")
  if arr.min() < 0:
    raise DataError(f"{where}: {key!r} holds a negative token id ({int(arr.min())})")
  if arr.max() > _INT32_MAX:
    raise DataError(f"{where}: {key!r} holds a token id too large for int32 ({arr.max()})")
  return arr.astype(np.int64)


def _check_string(value: Any, key: str, where: str) -> str:
  if not isinstance(value, str):
    raise DataError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
  return value


_FORMATS = {
  "input_ids": ("input_ids",),
  "text": ("text",),
  "prompt": ("prompt", "completion"),
  "prompt_ids": ("prompt_ids", "completion_ids"),
}


def _row_kind(row: Mapping[str, Any], where: str) -> str:
  present = [kind for kind, keys in _FORMATS.items() if any(k in row for k in keys)]
  if not present:
    raise DataError(
      f"{where}: the row has none of 'input_ids', 'text', 'prompt'+'completion', "
      f"'prompt_ids'+'completion_ids' (keys: {sorted(row)})"
    )
  if len(present) > 1:
    raise DataError(
      f"{where}: the row mixes formats {present}; give exactly one of 'input_ids', 'text', "
      "'prompt'+'completion', 'prompt_ids'+'completion_ids'"
    )
  kind = present[0]
  for key in _FORMATS[kind]:
    if key not in row:
      other = [k for k in _FORMATS[kind] if k != key][0]
      raise DataError(f"{where}: the row has {other!r} but no {key!r}")
  return kind


def encode_rows(
  rows: Sequence[Mapping[str, Any]],
  *,
  source: str,
  line_numbers: Sequence[int] | None,
  tokenizer: Any,
  tokenizer_dir: str | os.PathLike | None,
  vocab_size: int | None,
  options: EncodeOptions | None = None,
) -> RowArrays:
  """Checks, tokenises, truncates and pads rows (arguments as `Dataset.from_rows`).

  Args:
    rows, source, line_numbers, tokenizer, tokenizer_dir, vocab_size: see
      `pacbayes.data.dataset.Dataset.from_rows`.
    options: the `EncodeOptions` (maximum length, padding, overflow, EOS, overflow hint);
      None: the defaults.

  Returns:
    The `RowArrays`.

  Raises:
    DataError: ``"source:line: what is wrong"`` for a malformed row, a row longer than
      ``max_length`` (under ``on_overflow="error"``), or string rows whose tokenizer folder
      holds no tokenizer (naming the folder and the files looked for).
    ValueError: a bad setting (naming the argument).
  """
  options = EncodeOptions() if options is None else options
  if not isinstance(options, EncodeOptions):
    raise ValueError(f"options: expected an EncodeOptions, got {type(options).__name__}")
  max_length, pad_id, pad_length = options.max_length, options.pad_id, options.pad_length
  on_overflow, add_eos = options.on_overflow, options.add_eos
  overflow_hint = options.overflow_hint
  if not rows:
    raise DataError(f"{source}: no rows")
  lines = list(range(1, len(rows) + 1)) if line_numbers is None else list(line_numbers)
  if len(lines) != len(rows):
    raise ValueError(f"line_numbers: expected {len(rows)} entries, got {len(lines)}")
  if vocab_size is not None and (not isinstance(vocab_size, int) or vocab_size <= 0):
    raise ValueError(f"vocab_size: expected a positive int, got {vocab_size!r}")
  if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
    raise ValueError(f"max_length: expected an int >= 2, got {max_length!r}")
  if not isinstance(pad_id, int) or pad_id < 0 or (vocab_size is not None and pad_id >= vocab_size):
    raise ValueError(f"pad_id: expected an int in [0, vocab_size), got {pad_id!r}")
  if on_overflow not in ("truncate", "error"):
    raise ValueError(f"on_overflow: expected 'truncate' or 'error', got {on_overflow!r}")

  n = len(rows)
  wheres = [f"{source}:{line}" for line in lines]
  kinds = []
  for row, where in zip(rows, wheres, strict=True):
    if not isinstance(row, Mapping):
      raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    kinds.append(_row_kind(row, where))

  # Each row becomes (prompt ids, completion ids); unsplit rows have an empty completion part
  # and are marked whole, so that every token after the first is a target.
  parts: list[tuple[np.ndarray, np.ndarray] | None] = [None] * n
  whole = [k in ("input_ids", "text") for k in kinds]
  text_rows, pc_rows = [], []
  for i, (row, kind, where) in enumerate(zip(rows, kinds, wheres, strict=True)):
    if kind == "input_ids":
      parts[i] = (_check_ids(row["input_ids"], "input_ids", where), np.zeros((0,), np.int64))
    elif kind == "prompt_ids":
      p = _check_ids(row["prompt_ids"], "prompt_ids", where, allow_empty=True)
      c = _check_ids(row["completion_ids"], "completion_ids", where, allow_empty=True)
      if c.size == 0:
        raise DataError(f"{where}: 'completion_ids' is empty (no target tokens)")
      parts[i] = (p, c)
    elif kind == "text":
      if not _check_string(row["text"], "text", where):
        raise DataError(f"{where}: 'text' is empty")
      text_rows.append(i)
    else:
      _check_string(row["prompt"], "prompt", where)
      if not _check_string(row["completion"], "completion", where):
        raise DataError(f"{where}: 'completion' is empty (no target tokens)")
      pc_rows.append(i)

  from_tokenizer = set(text_rows) | set(pc_rows)
  if from_tokenizer:
    if tokenizer is None:
      if tokenizer_dir is None:
        first = min(from_tokenizer)
        raise DataError(
          f"{wheres[first]}: the row holds {kinds[first]!r} strings but no tokenizer was "
          "given (pass tokenizer_dir, e.g. the checkpoint folder, or use token id rows)"
        )
      first = min(from_tokenizer)
      tokenizer = _load_tokenizer(tokenizer_dir, wheres[first], kinds[first])
    encoded = _tok.encode_texts(tokenizer, [rows[i]["text"] for i in text_rows])
    origin = f"the tokenizer from {os.fspath(tokenizer_dir)}" if tokenizer_dir else "the tokenizer"
    for i, ids in zip(text_rows, encoded, strict=True):
      if not ids:
        raise DataError(f"{wheres[i]}: 'text' encodes to no tokens with {origin} (is it the "
                        "checkpoint's own tokenizer?)")
      parts[i] = (np.asarray(ids, np.int64), np.zeros((0,), np.int64))
    pairs = _tok.encode_prompt_completions(
      tokenizer,
      [rows[i]["prompt"] for i in pc_rows],
      [rows[i]["completion"] for i in pc_rows],
      add_eos=add_eos,
    )
    for i, (p, c) in zip(pc_rows, pairs, strict=True):
      if not c:
        raise DataError(f"{wheres[i]}: 'completion' encodes to no tokens (no target tokens)")
      parts[i] = (np.asarray(p, np.int64), np.asarray(c, np.int64))

  # [N] prompt lengths; every row's token sequence seq_T (T tokens, before padding).
  seqs, prompt_lengths_N, num_truncated = [], np.zeros((n,), np.int32), 0
  for i, (p, c) in enumerate(parts):
    where = wheres[i]
    seq_T = np.concatenate([p, c])
    if seq_T.size == 0:
      raise DataError(f"{where}: the token sequence is empty")
    if vocab_size is not None and seq_T.max() >= vocab_size:
      origin = " (from the tokenizer)" if i in from_tokenizer else ""
      raise DataError(
        f"{where}: token id {int(seq_T.max())}{origin} is outside the vocabulary [0, {vocab_size})"
      )
    truncated = max_length is not None and seq_T.size > max_length
    if truncated:
      if on_overflow == "error":
        raise DataError(f"{where}: {seq_T.size} tokens exceed max_length={max_length}; the row "
                        f"is refused ({overflow_hint})")
      seq_T = seq_T[:max_length]
      num_truncated += 1
    prompt_len = seq_T.size if whole[i] else min(p.size, seq_T.size)
    first_target = 1 if whole[i] else max(prompt_len, 1)
    if seq_T.size <= first_target:
      why = f" after truncation to max_length={max_length}" if truncated else ""
      raise DataError(f"{where}: the row has no target tokens{why} (need a token after the first)")
    seqs.append(seq_T)
    prompt_lengths_N[i] = prompt_len

  longest = max(s.size for s in seqs)
  if pad_length is None:
    pad_length = longest
  elif not isinstance(pad_length, int) or pad_length < longest:
    raise ValueError(
      f"pad_length: expected an int >= the longest row ({longest}), got {pad_length!r}"
    )
  # [N, L] with L = pad_length.
  input_ids_NxL = np.full((n, pad_length), pad_id, np.int32)
  attention_mask_NxL = np.zeros((n, pad_length), np.int32)
  loss_mask_NxL = np.zeros((n, pad_length), np.int32)
  for i, seq_T in enumerate(seqs):
    input_ids_NxL[i, : seq_T.size] = seq_T
    attention_mask_NxL[i, : seq_T.size] = 1
    first_target = 1 if whole[i] else max(int(prompt_lengths_N[i]), 1)
    loss_mask_NxL[i, first_target : seq_T.size] = 1

  return RowArrays(
    input_ids=input_ids_NxL,
    attention_mask=attention_mask_NxL,
    loss_mask=loss_mask_NxL,
    prompt_lengths=prompt_lengths_N,
    difficulty=collect_difficulty(rows, wheres),
    answers=_collect_answers(rows, wheres),
    line_numbers=np.asarray(lines, np.int64),
    num_truncated=num_truncated,
  )


def _all_or_none(rows: Sequence[Mapping[str, Any]], wheres: Sequence[str], key: str) -> bool:
  has = [key in row for row in rows]
  if any(has) and not all(has):
    i = has.index(False)
    j = has.index(True)
    raise DataError(
      f"{wheres[i]}: the row has no {key!r}, but other rows do (e.g. {wheres[j]}); "
      "give it on every row or on none"
    )
  return all(has)


def collect_difficulty(rows: Sequence[Mapping[str, Any]], wheres: Sequence[str]
                       ) -> np.ndarray | None:
  """The ``difficulty`` field of every row, or None when no row has one.

  Args:
    rows: the rows.
    wheres: ``"file:line"`` of each row, for messages.

  Returns:
    [N] float64, or None.

  Raises:
    DataError: naming file and line: a row lacks the field while others have it, or its
      value is not a finite number (a string, null, a bool, a list, nan, inf).
  """
  if not _all_or_none(rows, wheres, "difficulty"):
    return None
  values = np.zeros((len(rows),), np.float64)
  for i, (row, where) in enumerate(zip(rows, wheres, strict=True)):
    v = row["difficulty"]
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
      raise DataError(f"{where}: 'difficulty' must be a finite number, got {v!r}")
    values[i] = float(v)
  return values


def _collect_answers(rows, wheres) -> list[str] | None:
  if not _all_or_none(rows, wheres, "answer"):
    return None
  answers = []
  for row, where in zip(rows, wheres, strict=True):
    v = row["answer"]
    if isinstance(v, bool) or not isinstance(v, str | int):
      raise DataError(f"{where}: 'answer' must be a string (or an int), got {v!r}")
    answers.append(str(v))
  return answers
