"""Synthetic problems as JSONL rows: token ids or text, whole data sets and train/test splits."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from pacbayes.core.atomic import write_atomic
from pacbayes.data.synthetic.problems import (
  DEFAULT_MODULUS,
  OpsSpec,
  Problem,
  generate_problems,
)
from pacbayes.data.synthetic.tokenizer import SyntheticTokenizer

ROW_FORMATS = ("ids", "text")


def problem_to_row(
  problem: Problem, *, row_format: str = "ids", tokenizer: SyntheticTokenizer | None = None
) -> dict[str, Any]:
  """One JSONL row (docs/THEORY.md §1.2, as `pacbayes.data.dataset` reads it) for a problem.

  Both formats give the same token ids to `pacbayes.data.dataset.load_dataset` (with the
  tokenizer of `save_tokenizer` and the default ``add_eos=True`` for text rows), and the loss
  falls on the completion only.

  Args:
    problem: the problem.
    row_format: ``"ids"``: ``prompt_ids`` (``<bos>`` .. ``<sep>``) and ``completion_ids``
      (.. ``<eos>``), used verbatim, with the text beside them as ``prompt_text`` and
      ``completion_text`` (ignored by the loader); no tokenizer is needed to load them.
      ``"text"``: ``prompt`` and ``completion`` strings, the completion without its final
      ``<eos>``, which the loader appends from the tokenizer.
    tokenizer: reused across rows for speed (default: a new `SyntheticTokenizer`).

  Returns:
    The row; both formats also hold ``difficulty`` (the op count, int), ``answer`` (the
    digit as a string), ``num_distractors``, ``modulus`` and ``key`` (`Problem.key`).
  """
  p_toks, c_toks = problem.prompt_tokens(), problem.completion_tokens()
  if row_format == "ids":
    tokenizer = tokenizer or SyntheticTokenizer()
    row = {
      "prompt_ids": tokenizer.convert_tokens_to_ids(p_toks),
      "completion_ids": tokenizer.convert_tokens_to_ids(c_toks),
      "prompt_text": " ".join(p_toks),
      "completion_text": " ".join(c_toks),
    }
  elif row_format == "text":
    row = {"prompt": " ".join(p_toks), "completion": " ".join(c_toks[:-1])}
  else:
    raise ValueError(f"row_format: expected one of {ROW_FORMATS}, got {row_format!r}")
  row.update(
    difficulty=problem.num_ops,
    answer=str(problem.answer),
    num_distractors=problem.num_distractors,
    modulus=problem.modulus,
    key=problem.key(),
  )
  return row


def generate_dataset(
  num_examples: int,
  ops: OpsSpec,
  *,
  seed: int | np.random.SeedSequence,
  row_format: str = "ids",
  **draw: Any,
) -> list[dict[str, Any]]:
  """Generates JSONL rows of synthetic problems, deterministically from ``seed``.

  Args:
    num_examples, ops, seed: as in `pacbayes.data.synthetic.problems.generate_problems` (the
      rows are i.i.d. from the op-count mixture).
    row_format: ``"ids"`` or ``"text"``, see `problem_to_row`.
    **draw: the other keywords of `generate_problems`: ``modulus``, ``num_distractors``,
      ``exclude`` (e.g. a test set's keys when generating its training set), ``unique``.

  Returns:
    Rows as made by `problem_to_row`.
  """
  if row_format not in ROW_FORMATS:
    raise ValueError(f"row_format: expected one of {ROW_FORMATS}, got {row_format!r}")
  problems = generate_problems(num_examples, ops, seed=seed, **draw)
  tokenizer = SyntheticTokenizer()
  return [problem_to_row(p, row_format=row_format, tokenizer=tokenizer) for p in problems]


def generate_splits(
  train_size: int,
  test_size: int,
  train_ops: OpsSpec,
  test_ops: OpsSpec | None = None,
  *,
  seed: int,
  modulus: int = DEFAULT_MODULUS,
  num_distractors: int = 0,
  dedup: bool = True,
  row_format: str = "ids",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
  """Train and test rows from independent child seeds; train avoids test problems if ``dedup``.

  Returns:
    ``(train_rows, test_rows)``; test uses ``test_ops`` (default ``train_ops``).
  """
  train_seed, test_seed = np.random.SeedSequence(seed).spawn(2)
  test = generate_dataset(
    test_size,
    train_ops if test_ops is None else test_ops,
    seed=test_seed,
    modulus=modulus,
    num_distractors=num_distractors,
    row_format=row_format,
  )
  exclude = {r["key"] for r in test} if dedup else ()
  train = generate_dataset(
    train_size,
    train_ops,
    seed=train_seed,
    modulus=modulus,
    num_distractors=num_distractors,
    exclude=exclude,
    row_format=row_format,
  )
  return train, test


def write_jsonl(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> None:
  """Writes rows as JSONL atomically (a temporary file in the same folder, then a rename)."""

  def write(f):
    for row in rows:
      f.write(json.dumps(row, separators=(",", ":")))
      f.write("\n")

  write_atomic(path, write, suffix=".jsonl")


__all__ = [
  "ROW_FORMATS",
  "generate_dataset",
  "generate_splits",
  "problem_to_row",
  "write_jsonl",
]
