"""Grading the synthetic task: the answer a completion states, and a prompt's true answer.

`extract_answer` reads the answer out of a (generated) completion; the study compares it with
the row's ``answer`` field (`pacbayes.study.evaluate.answer_correct`). `evaluate_answer`
solves a prompt from its text alone, as an independent check of the generator.
"""

from __future__ import annotations

from pacbayes.data.synthetic.problems import DEFAULT_MODULUS
from pacbayes.data.synthetic.tokenizer import ANSWER, DIGITS, EOS, prompt_symbols, split_symbols


def evaluate_answer(prompt_text: str, *, modulus: int = DEFAULT_MODULUS) -> int:
  """Solves a prompt from its text alone, by memoised recursion from the query.

  Independent of the generator and of `Problem` (it shares only the token spelling), so tests
  can check generated answers against it.

  Args:
    prompt_text: ``<bos> stmt ; ... ; ? var <sep>`` (anything after ``<sep>`` is ignored).
    modulus: arithmetic modulus.

  Returns:
    The value of the query variable.
  """
  toks = prompt_symbols(prompt_text)
  if len(toks) < 2 or toks[-2] != "?":
    raise ValueError(f"prompt_text: expected it to end with '? <var>', got {prompt_text!r}")
  query = toks[-1]
  defs = {}
  for chunk in " ".join(toks[:-2]).split(";"):
    words = chunk.split()
    if not words:
      continue
    if len(words) != 5 or words[1] != "=":
      raise ValueError(f"prompt_text: cannot read statement {chunk.strip()!r}")
    defs[words[0]] = (words[2], words[3], words[4])
  memo: dict[str, int] = {}
  busy: set[str] = set()

  def value(x: str) -> int:
    if x.isdigit():
      return int(x)
    if x in memo:
      return memo[x]
    if x not in defs or x in busy:
      raise ValueError(f"prompt_text: variable {x!r} is undefined or on a cycle")
    busy.add(x)
    a, op, b = defs[x]
    va, vb = value(a), value(b)
    r = {"+": va + vb, "-": va - vb, "*": va * vb}[op] % modulus
    busy.discard(x)
    memo[x] = r
    return r

  return value(query)


def extract_answer(completion_text: str) -> str | None:
  """The answer a completion states: the token after its first ``answer``, if a digit.

  Text after the first ``<eos>`` is ignored; returns None when no digit follows ``answer``.
  """
  toks = split_symbols(completion_text)
  if EOS in toks:
    toks = toks[: toks.index(EOS)]
  if ANSWER not in toks:
    return None
  i = toks.index(ANSWER)
  if i + 1 < len(toks) and toks[i + 1] in DIGITS:
    return toks[i + 1]
  return None


__all__ = ["evaluate_answer", "extract_answer"]
