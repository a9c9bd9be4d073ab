"""Token datasets from JSONL rows: padding, loss masks, fixed-shape batches.

Row formats (docs/THEORY.md §1.2), exactly one per row:

- ``input_ids``: a list of ints, scored whole (every token after the first is a target).
- ``text``: a string, tokenised whole with the checkpoint's tokenizer (see
  `pacbayes.data.tokenize` for BOS/EOS), scored whole.
- ``prompt`` + ``completion``: strings, tokenised; only completion tokens are targets.
- ``prompt_ids`` + ``completion_ids``: lists of ints used verbatim (no BOS/EOS added); only
  completion tokens are targets.

Optional fields: ``difficulty`` (a finite number) and ``answer`` (a string or an int). Each
must be given on every row or on none. Other keys are ignored.

Masks: ``attention_mask[b, t] = 1`` for real tokens (right padding with ``pad_id``);
``loss_mask[b, t] = 1`` iff ``input_ids[b, t]`` is a prediction target, i.e. it is predicted
from ``logits[b, t - 1]``; so ``loss_mask[:, 0] == 0`` and, for split rows, exactly the
completion tokens are targets (the first completion token is predicted from the last prompt
token). Every row must keep at least one target; a row without one is refused at load time,
so per-example losses are never averages over nothing.

Truncation: rows longer than ``max_length`` are cut on the right (the prompt is kept, the end
of the completion goes) and counted in ``Dataset.num_truncated``; ``on_overflow="error"``
refuses them instead. A row that truncation leaves without targets is always refused.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

# Difficulty helpers live in `pacbayes.data.difficulty` (which imports nothing from here);
# re-exported so old imports still work.
from pacbayes.data.difficulty import Buckets as Buckets
from pacbayes.data.difficulty import assign_buckets as assign_buckets
from pacbayes.data.difficulty import bucket_by_quantiles as bucket_by_quantiles
from pacbayes.data.difficulty import completion_lengths as completion_lengths
from pacbayes.data.difficulty import difficulty_values as difficulty_values
from pacbayes.data.jsonl import DataError as DataError
from pacbayes.data.jsonl import read_jsonl_with_lines
from pacbayes.data.rows import DEFAULT_OVERFLOW_HINT, EncodeOptions, encode_rows

_BATCH_EXTRAS = ("prompt_lengths", "index", "difficulty")


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A tokenised dataset held as right-padded NumPy arrays.

  Attributes:
    input_ids: [N, L] int32 token ids, right-padded with the pad id.
    attention_mask: [N, L] int32, 1 on real tokens.
    loss_mask: [N, L] int32, 1 where ``input_ids`` is a target (see module docstring).
    prompt_lengths: [N] int32 length of the prompt part (the full length for unsplit rows).
    difficulty: [N] float64 or None.
    answers: one string per row, or None.
    source: where the rows came from (a path, or a label for in-memory rows).
    line_numbers: [N] int64 line (or 1-based row) number of each row in ``source``.
    num_truncated: how many rows were cut to ``max_length``.
    pad_id: the id on padding positions.
  """

  input_ids: np.ndarray
  attention_mask: np.ndarray
  loss_mask: np.ndarray
  prompt_lengths: np.ndarray
  difficulty: np.ndarray | None = None
  answers: list[str] | None = None
  source: str = "<memory>"
  line_numbers: np.ndarray | None = None
  num_truncated: int = 0
  pad_id: int = 0

  def __post_init__(self):
    ids = self.input_ids
    if not isinstance(ids, np.ndarray) or ids.ndim != 2 or ids.dtype != np.int32:
      raise ValueError("Dataset.input_ids: expected an int32 NumPy array [N, L]")
    n, length = ids.shape
    if n == 0 or length == 0:
      raise ValueError(f"Dataset.input_ids: expected a non-empty [N, L] array, got {ids.shape}")
    for name in ("attention_mask", "loss_mask"):
      arr = getattr(self, name)
      if not isinstance(arr, np.ndarray) or arr.shape != ids.shape or arr.dtype != np.int32:
        raise ValueError(f"Dataset.{name}: expected an int32 array of shape {ids.shape}")
      if arr.min() < 0 or arr.max() > 1:
        raise ValueError(f"Dataset.{name}: expected values 0 or 1")
    att, lm = self.attention_mask, self.loss_mask
    lengths = att.sum(axis=1)
    if (att != (np.arange(length)[None, :] < lengths[:, None])).any():
      raise ValueError("Dataset.attention_mask: expected right padding (ones, then zeros)")
    if lm[:, 0].any():
      raise ValueError("Dataset.loss_mask: position 0 has no prediction, so must be 0")
    if (lm > att).any():
      raise ValueError("Dataset.loss_mask: a target lies on a padding position")
    pl = self.prompt_lengths
    if not isinstance(pl, np.ndarray) or pl.shape != (n,) or pl.dtype != np.int32:
      raise ValueError(f"Dataset.prompt_lengths: expected an int32 array of shape ({n},)")
    if (pl < 0).any() or (pl > lengths).any():
      raise ValueError("Dataset.prompt_lengths: expected 0 <= prompt length <= row length")
    if self.difficulty is not None:
      d = self.difficulty
      if not isinstance(d, np.ndarray) or d.shape != (n,) or d.dtype != np.float64:
        raise ValueError(f"Dataset.difficulty: expected a float64 array of shape ({n},)")
    if self.answers is not None and len(self.answers) != n:
      raise ValueError(f"Dataset.answers: expected {n} strings, got {len(self.answers)}")
    if self.line_numbers is None:
      object.__setattr__(self, "line_numbers", np.arange(1, n + 1, dtype=np.int64))
    elif np.shape(self.line_numbers) != (n,):
      raise ValueError(f"Dataset.line_numbers: expected shape ({n},)")

  def __len__(self) -> int:
    return self.input_ids.shape[0]

  @property
  def max_length(self) -> int:
    """The padded length L."""
    return self.input_ids.shape[1]

  @property
  def lengths(self) -> np.ndarray:
    """[N] int32 number of real tokens per row."""
    return self.attention_mask.sum(axis=1, dtype=np.int32)

  @property
  def num_targets(self) -> np.ndarray:
    """[N] int32 number of target tokens per row."""
    return self.loss_mask.sum(axis=1, dtype=np.int32)

  def subset(self, indices: Sequence[int] | np.ndarray) -> Dataset:
    """The rows at ``indices`` (any order, repeats allowed), same padded length."""
    idx = np.asarray(indices, dtype=np.int64)
    if idx.ndim != 1 or idx.size == 0:
      raise ValueError("subset: indices must be a non-empty 1-D sequence")
    if (idx < -len(self)).any() or (idx >= len(self)).any():
      raise ValueError(f"subset: indices must lie in [0, {len(self)})")
    return dataclasses.replace(
      self,
      input_ids=self.input_ids[idx],
      attention_mask=self.attention_mask[idx],
      loss_mask=self.loss_mask[idx],
      prompt_lengths=self.prompt_lengths[idx],
      difficulty=None if self.difficulty is None else self.difficulty[idx],
      answers=None if self.answers is None else [self.answers[i] for i in idx],
      line_numbers=self.line_numbers[idx],
    )

  @classmethod
  def from_rows(
    cls,
    rows: Sequence[Mapping[str, Any]],
    *,
    tokenizer: Any = None,
    tokenizer_dir: str | os.PathLike | None = None,
    vocab_size: int | None = None,
    options: EncodeOptions | None = None,
    source: str = "<memory>",
    line_numbers: Sequence[int] | None = None,
  ) -> Dataset:
    """Builds a dataset from in-memory rows (same formats and checks as `load_dataset`).

    Args:
      rows: dicts in one of the row formats of the module docstring.
      tokenizer: a loaded ``transformers`` tokenizer for string rows.
      tokenizer_dir: or a local folder to load it from (ignored when ``tokenizer`` is given).
      vocab_size: when given, every token id (and ``options.pad_id``) must lie in
        ``[0, vocab_size)``.
      options: the `pacbayes.data.rows.EncodeOptions`: ``max_length`` (longer rows are
        truncated, or refused under ``on_overflow="error"``), ``pad_id``, ``pad_length``
        (default: the longest row), ``on_overflow``, ``add_eos`` (append the tokenizer's EOS
        to string completions) and ``overflow_hint``. None: the defaults (no maximum
        length, pad id 0, truncate, EOS appended).
      source: a label used in error messages and kept in ``Dataset.source``.
      line_numbers: the line number of each row in ``source`` (default 1, 2, ...).

    Returns:
      The `Dataset`.

    Raises:
      DataError: a row is malformed, longer than ``max_length`` under
        ``on_overflow="error"``, or holds strings but the tokenizer folder holds no tokenizer;
        the message is ``"source:line: what is wrong"``.
    """
    options = EncodeOptions() if options is None else options
    arrays = encode_rows(
      rows,
      source=source,
      line_numbers=line_numbers,
      tokenizer=tokenizer,
      tokenizer_dir=tokenizer_dir,
      vocab_size=vocab_size,
      options=options,
    )
    fields = {f.name: getattr(arrays, f.name) for f in dataclasses.fields(arrays)}
    return cls(**fields, source=source, pad_id=options.pad_id)


def load_dataset(
  path: str | os.PathLike,
  *,
  tokenizer_dir: str | os.PathLike | None = None,
  vocab_size: int | None = None,
  max_length: int | None = None,
  pad_id: int = 0,
  tokenizer: Any = None,
  pad_length: int | None = None,
  on_overflow: str = "truncate",
  add_eos: bool = True,
  overflow_hint: str = DEFAULT_OVERFLOW_HINT,
) -> Dataset:
  """Reads a JSONL dataset (docs/THEORY.md §1.2) into a `Dataset`.

  Args:
    path: the JSONL file.
    tokenizer_dir: a local folder with the checkpoint's tokenizer files; needed only when
      rows hold strings (``text`` or ``prompt``/``completion``). Loaded offline.
    vocab_size: when given, every token id must lie in ``[0, vocab_size)`` (use the model's).
    max_length: rows longer than this are truncated on the right and counted in
      ``num_truncated`` (or refused when ``on_overflow="error"``).
    pad_id: the id written on padding positions (masks make its value irrelevant to losses).
    tokenizer: an already loaded tokenizer, instead of ``tokenizer_dir``.
    pad_length: pad every row to exactly this length (default: the longest row), so that
      several datasets share one compiled shape.
    on_overflow: ``"truncate"`` or ``"error"``.
    add_eos: append the tokenizer's EOS to string completions.
    overflow_hint: see `pacbayes.data.rows.EncodeOptions`.

  Returns:
    The `Dataset`, with ``source`` the path and ``line_numbers`` the file lines.

  Raises:
    DataError: with ``"path:line: ..."`` for a malformed row: not JSON; none of the row
      formats; more than one; token ids that are not ints, negative, or outside the
      vocabulary; an empty sequence or completion; no target token left; a non-numeric
      difficulty; a field given on some rows only; strings but no tokenizer. And
      ``"path: ..."`` for a missing or empty file.
  """
  path = os.fspath(path)
  rows, lines = read_jsonl_with_lines(path)
  return Dataset.from_rows(
    rows, source=path, line_numbers=lines, tokenizer=tokenizer, tokenizer_dir=tokenizer_dir,
    vocab_size=vocab_size, options=EncodeOptions(
      max_length=max_length, pad_id=pad_id, pad_length=pad_length, on_overflow=on_overflow,
      add_eos=add_eos, overflow_hint=overflow_hint))



def iterate_batches(
  dataset: Dataset,
  batch_size: int,
  *,
  pad_to_multiple: bool = True,
  key: Any = None,
  extra: Sequence[str] = (),
) -> Iterator[dict[str, np.ndarray]]:
  """Yields the dataset in batches of a fixed shape.

  Args:
    dataset: the `Dataset`.
    batch_size: rows per batch.
    pad_to_multiple: pad the last batch with empty rows (pad ids, all-zero masks, weight 0)
      up to ``batch_size``, so every batch has one shape and one compiled program; otherwise
      the last batch is shorter.
    key: a ``jax.random`` key to visit the rows in a random order; None keeps file order.
    extra: more keys to include, from ``"prompt_lengths"`` ([B] int32), ``"index"`` ([B]
      int64 row index, -1 on padding rows) and ``"difficulty"`` ([B] float64, 0 on padding).

  Yields:
    Dicts with ``input_ids``, ``attention_mask``, ``loss_mask`` ([B, L] int32) and
    ``weight`` ([B] float32, 1 for real rows and 0 for padding rows), plus ``extra``.
  """
  if not isinstance(batch_size, int) or batch_size <= 0:
    raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
  for name in extra:
    if name not in _BATCH_EXTRAS:
      raise ValueError(f"extra: unknown key {name!r}; expected some of {_BATCH_EXTRAS}")
  if "difficulty" in extra and dataset.difficulty is None:
    raise ValueError(f"extra: {dataset.source} has no 'difficulty' values")
  n = len(dataset)
  if key is None:
    order = np.arange(n)
  else:
    import jax

    order = np.asarray(jax.random.permutation(key, n))
  for start in range(0, n, batch_size):
    idx = order[start : start + batch_size]
    real = idx.size
    size = batch_size if pad_to_multiple else real
    batch = {
      "input_ids": np.full((size, dataset.max_length), dataset.pad_id, np.int32),
      "attention_mask": np.zeros((size, dataset.max_length), np.int32),
      "loss_mask": np.zeros((size, dataset.max_length), np.int32),
      "weight": np.zeros((size,), np.float32),
    }
    batch["input_ids"][:real] = dataset.input_ids[idx]
    batch["attention_mask"][:real] = dataset.attention_mask[idx]
    batch["loss_mask"][:real] = dataset.loss_mask[idx]
    batch["weight"][:real] = 1.0
    if "prompt_lengths" in extra:
      batch["prompt_lengths"] = np.zeros((size,), np.int32)
      batch["prompt_lengths"][:real] = dataset.prompt_lengths[idx]
    if "index" in extra:
      batch["index"] = np.full((size,), -1, np.int64)
      batch["index"][:real] = idx
    if "difficulty" in extra:
      batch["difficulty"] = np.zeros((size,), np.float64)
      batch["difficulty"][:real] = dataset.difficulty[idx]
    yield batch


def num_batches(dataset: Dataset, batch_size: int) -> int:
  """How many batches `iterate_batches` yields."""
  return -(-len(dataset) // batch_size)
