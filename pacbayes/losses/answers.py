"""Answer accuracy (host-side, strings): extract and normalise final answers, 0-1 answer error."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def normalize_answer(text: str) -> str:
  """Canonical form for exact-match comparison.

  Strips whitespace, surrounding ``$``, a trailing period, thousands separators in numbers
  and case; numbers compare by value (``"3.0" == "3"``, ``"1,000" == "1000"``).
  """
  s = " ".join(str(text).split()).strip()
  s = s.strip("$").strip().rstrip(".").strip().lower()
  s = re.sub(r"(?<=\d),(?=\d{3}(\D|$))", "", s)
  if _NUMBER.match(s):
    value = float(s)
    if math.isfinite(value):
      return str(int(value)) if value == int(value) and abs(value) < 2**53 else repr(value)
  return s


def _last_boxed(text: str) -> str | None:
  start = text.rfind("\\boxed{")
  if start < 0:
    return None
  depth, i = 1, start + len("\\boxed{")
  for j in range(i, len(text)):
    if text[j] == "{":
      depth += 1
    elif text[j] == "}":
      depth -= 1
      if depth == 0:
        return text[i:j]
  return None


@dataclasses.dataclass(frozen=True)
class AnswerExtractor:
  r"""Pulls the final answer out of generated text.

  In order: the content of the last ``\boxed{...}`` (when ``boxed``); else the rest of the
  line after the last occurrence of any of ``markers`` (case-insensitive), without leading
  ``:``, ``=`` or ``is`` (the next non-empty line if that line is empty); else the last
  non-empty line. The result goes through `normalize_answer`.

  Attributes:
    markers: answer markers, e.g. ``"####"`` (GSM8K) and ``"answer"`` ("The answer is 7").
    boxed: look for LaTeX ``\boxed{}`` first.
  """

  markers: tuple[str, ...] = ("####", "answer")
  boxed: bool = True

  def __post_init__(self):
    if isinstance(self.markers, str) or not all(isinstance(m, str) and m for m in self.markers):
      raise ValueError(f"markers: expected a tuple of non-empty strings, got {self.markers!r}")

  def __call__(self, text: str) -> str:
    if self.boxed:
      boxed = _last_boxed(text)
      if boxed is not None:
        return normalize_answer(boxed)
    lower = text.lower()
    best = -1
    for marker in self.markers:
      pos = lower.rfind(marker.lower())
      if pos >= 0:
        best = max(best, pos + len(marker))
    if best >= 0:
      rest = text[best:].lstrip(" \t:=")
      rest = re.sub(r"^(is|was)\b", "", rest, flags=re.IGNORECASE).lstrip(" \t:=")
      lines = [ln for ln in rest.splitlines() if ln.strip()]
      return normalize_answer(lines[0] if lines else "")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return normalize_answer(lines[-1] if lines else "")


extract_answer = AnswerExtractor()


def answer_error(
  generated_ids: ArrayLike,
  answers: Sequence[str | None],
  decode_fn: Callable[[list[int]], str],
  *,
  eos_id: int | None = None,
  extract: Callable[[str], str] = extract_answer,
) -> np.ndarray:
  """Per-example 0-1 answer error: 0 iff the extracted answer matches the reference exactly.

  Args:
    generated_ids: [B, T] generated token ids (e.g. from ``greedy_generate``).
    answers: B reference answers (the dataset's ``answer`` field); None marks a padding row
      (loss 0).
    decode_fn: ids -> text, e.g. ``lambda ids: tok.decode(ids, skip_special_tokens=True)``.
    eos_id: generation is cut at the first ``eos_id``.
    extract: text -> normalised answer (an `AnswerExtractor`); references are compared
      after `normalize_answer`.

  Returns:
    [B] float32 errors in {0, 1}.
  """
  ids = np.asarray(generated_ids)
  if ids.ndim != 2 or len(answers) != ids.shape[0]:
    raise ValueError(
      f"generated_ids {ids.shape} must be [B, T] with B = len(answers) = {len(answers)}"
    )
  errors = np.zeros((ids.shape[0],), np.float32)
  for b, reference in enumerate(answers):
    if reference is None:
      continue
    row = ids[b].tolist()
    if eos_id is not None and eos_id in row:
      row = row[: row.index(eos_id)]
    errors[b] = float(extract(decode_fn(row)) != normalize_answer(reference))
  return errors


def model_answer_error(
  model: Any,
  input_ids: ArrayLike,
  prompt_lengths: ArrayLike,
  answers: Sequence[str | None],
  decode_fn: Callable[[list[int]], str],
  *,
  max_new_tokens: int,
  eos_id: int | None = None,
  pad_id: int = 0,
  extract: Callable[[str], str] = extract_answer,
) -> np.ndarray:
  """Greedy-decodes from each row's prompt and scores it with `answer_error`.

  Args:
    model: a `pacbayes.models` decoder.
    input_ids: [B, L] rows (only the first ``prompt_lengths[b]`` tokens are used).
    prompt_lengths: [B] prompt lengths (a `Dataset`'s ``prompt_lengths``); padding rows
      (answer None) may have length 0.
    answers: B reference answers, None for padding rows.
    decode_fn: ids -> text.
    max_new_tokens: generation budget.
    eos_id: stop token.
    pad_id: id written after each prompt.
    extract: the answer extractor.

  Returns:
    [B] float32 errors in {0, 1}.
  """
  from pacbayes.models.generate import greedy_generate

  ids = np.asarray(input_ids)
  lengths = np.asarray(prompt_lengths, np.int32)
  if ids.ndim != 2 or lengths.shape != (ids.shape[0],):
    raise ValueError(f"input_ids {ids.shape} and prompt_lengths {lengths.shape} disagree")
  lengths = np.maximum(lengths, 1)  # Padding rows: decode from one pad token; scored 0.
  width = int(lengths.max())
  prompts = np.where(np.arange(width)[None, :] < lengths[:, None], ids[:, :width], pad_id)
  generated = greedy_generate(
    model, jnp.asarray(prompts, jnp.int32), jnp.asarray(lengths), max_new_tokens, eos_id=eos_id
  )
  return answer_error(generated, answers, decode_fn, eos_id=eos_id, extract=extract)
