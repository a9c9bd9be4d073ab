"""iGSM-style synthetic arithmetic: modular dependency graphs whose difficulty is the op count.

A problem is a set of assignments over single-letter variables, each with exactly one binary
operation modulo a small number (default 7), for example ``b = a * 2`` or ``a = 3 + 4``. The
statements are shuffled in the prompt and the prompt ends by asking for one variable. The
completion is a chain of thought that computes the needed variables one statement at a time,
then states the answer::

  prompt:     <bos> b = a * 2 ; a = 3 + 4 ; ? b <sep>
  completion: a = 3 + 4 = 0 ; b = a * 2 = 0 ; answer 0 <eos>

Every statement holds exactly one operation, and (without distractors) every statement is
needed for the query, so the difficulty (the number of operations on the solution path) equals
the number of statements and the number of chain-of-thought steps. Optional distractor
statements are never needed; they lengthen the prompt but not the difficulty or the solution.

The chain of thought is canonical, so that a small model can learn it: at each step it writes
the needed, not yet computed statement that comes first in the prompt among those whose
variable operands are all computed (Kahn's topological order, ties broken by prompt position).

Lengths are fixed by the op count ``k`` and the number of distractors ``d``: the prompt has
``4 + 6 (k + d)`` tokens, the completion ``8 k + 3`` (so 119 tokens in all at ``k = 8``).

The simplification of Ye et al.'s iGSM (2024): one operation per statement, constants written
inline instead of separate leaf parameters, no natural-language templates, a single-token
vocabulary of 48 symbols.

References:
  Ye, Xu, Li, Allen-Zhu (2024), "Physics of Language Models: Part 2.1, Grade-School Math and
  the Hidden Reasoning Process", arXiv 2407.20311.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from pacbayes.core.atomic import write_atomic

PAD, BOS, EOS, SEP, UNK = "<pad>", "<bos>", "<eos>", "<sep>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, SEP, UNK)
DIGITS = tuple(str(d) for d in range(10))
OPERATORS = ("+", "-", "*")
ANSWER = "answer"
SYMBOLS = ("=", ";", "?", *OPERATORS, ANSWER)
VARIABLES = tuple("abcdefghijklmnopqrstuvwxyz")
VOCAB = SPECIAL_TOKENS + DIGITS + SYMBOLS + VARIABLES
PAD_ID, BOS_ID, EOS_ID, SEP_ID, UNK_ID = range(5)
# Special tokens split off even without surrounding spaces; everything else splits on spaces.
_TOKEN_RE = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS) + r"|[^\s<]+|<")
VOCAB_SIZE = len(VOCAB)

DEFAULT_MODULUS = 7
# Longest sequence the task can make: 26 statements, all needed (prompt 160 + completion 211).
MODEL_MAX_LENGTH = 512
MAX_STATEMENTS = len(VARIABLES)

# Probability that a free operand slot reuses an earlier variable instead of a constant: it
# turns the spanning tree into a DAG (a variable read twice) without making every
# statement depend on two variables.
_REUSE_PROB = 0.25

_APPLY = {
  "+": lambda x, y, m: (x + y) % m,
  "-": lambda x, y, m: (x - y) % m,
  "*": lambda x, y, m: (x * y) % m,
}

Operand = str | int


def prompt_length(num_ops: int, num_distractors: int = 0) -> int:
  """Number of prompt tokens (``<bos>`` to ``<sep>``) for a problem of this size."""
  return 4 + 6 * (num_ops + num_distractors)


def completion_length(num_ops: int) -> int:
  """Number of completion tokens (first step to ``<eos>``) for a problem with ``num_ops``."""
  return 8 * num_ops + 3


def _check_modulus(modulus: int) -> None:
  if not isinstance(modulus, int | np.integer) or not 2 <= modulus <= 10:
    raise ValueError(f"modulus: expected an int in [2, 10] (one digit token), got {modulus!r}")


@dataclasses.dataclass(frozen=True)
class Statement:
  """One assignment ``target = left op right``; an operand is a variable name or a constant."""

  target: str
  left: Operand
  op: str
  right: Operand

  def tokens(self) -> list[str]:
    """The statement's tokens, without the trailing ``;``."""
    return [self.target, "=", str(self.left), self.op, str(self.right)]


@dataclasses.dataclass(frozen=True)
class Problem:
  """A synthetic problem: statements in prompt order, the query variable and the modulus.

  Construction validates the problem (one definition per variable, defined operands,
  constants below the modulus, no cycle) and solves it.

  Attributes:
    statements: the statements, in the order the prompt shows them.
    query: the variable asked for.
    modulus: the arithmetic is modulo this number.
    order: prompt indices of the needed statements, in canonical chain-of-thought order.
    values: the value of every variable.
  """

  statements: tuple[Statement, ...]
  query: str
  modulus: int = DEFAULT_MODULUS
  order: tuple[int, ...] = dataclasses.field(init=False, repr=False)
  values: Mapping[str, int] = dataclasses.field(init=False, repr=False, compare=False)

  def __post_init__(self):
    _check_modulus(self.modulus)
    object.__setattr__(self, "statements", tuple(self.statements))
    order, values = _solve(self.statements, self.query, self.modulus)
    object.__setattr__(self, "order", order)
    object.__setattr__(self, "values", values)

  @property
  def num_ops(self) -> int:
    """Operations on the solution path (one per needed statement): the difficulty."""
    return len(self.order)

  @property
  def num_distractors(self) -> int:
    """Statements that the query does not need."""
    return len(self.statements) - len(self.order)

  @property
  def answer(self) -> int:
    """The value of the query variable."""
    return self.values[self.query]

  def prompt_tokens(self) -> list[str]:
    """``<bos> stmt ; ... stmt ; ? query <sep>``, statements in prompt order."""
    toks = [BOS]
    for s in self.statements:
      toks += s.tokens()
      toks.append(";")
    toks += ["?", self.query, SEP]
    return toks

  def completion_tokens(self) -> list[str]:
    """``v = x op y = value ;`` per needed statement in canonical order, ``answer r <eos>``."""
    toks = []
    for i in self.order:
      s = self.statements[i]
      toks += s.tokens()
      toks += ["=", str(self.values[s.target]), ";"]
    toks += [ANSWER, str(self.answer), EOS]
    return toks

  @property
  def prompt(self) -> str:
    """The prompt as space-separated text."""
    return " ".join(self.prompt_tokens())

  @property
  def completion(self) -> str:
    """The completion as space-separated text (ending in ``<eos>``)."""
    return " ".join(self.completion_tokens())

  def key(self) -> str:
    """A hash identifying the problem up to the order of its statements (for dedup)."""
    parts = sorted(" ".join(s.tokens()) for s in self.statements)
    text = f"{self.modulus}|{self.query}|" + ";".join(parts)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def _solve(
  statements: Sequence[Statement], query: str, modulus: int
) -> tuple[tuple[int, ...], dict[str, int]]:
  """Validates a problem; returns the canonical solution order and all values."""
  index: dict[str, int] = {}
  for i, s in enumerate(statements):
    if s.target not in VARIABLES:
      raise ValueError(f"statements[{i}]: target {s.target!r} is not a variable name a..z")
    if s.target in index:
      raise ValueError(f"statements[{i}]: variable {s.target!r} is assigned twice")
    if s.op not in _APPLY:
      raise ValueError(f"statements[{i}]: operator {s.op!r} is not one of {OPERATORS}")
    index[s.target] = i
  if query not in index:
    raise ValueError(f"query: variable {query!r} is not assigned by any statement")
  deps: list[list[int]] = []
  for i, s in enumerate(statements):
    d = []
    for x in (s.left, s.right):
      if isinstance(x, str):
        if x not in index:
          raise ValueError(f"statements[{i}]: operand {x!r} is never assigned")
        d.append(index[x])
      elif not (isinstance(x, int | np.integer) and 0 <= x < modulus):
        raise ValueError(f"statements[{i}]: constant {x!r} is not an int in [0, {modulus})")
    deps.append(d)

  # Kahn's algorithm with a heap on prompt position: over all statements for the values
  # (and cycle detection), then over the needed ones for the canonical order.
  def kahn(nodes: Iterable[int]) -> list[int]:
    nodes = set(nodes)
    users: dict[int, list[int]] = {i: [] for i in nodes}
    missing = {}
    for i in nodes:
      missing[i] = len(deps[i])
      for j in deps[i]:
        users[j].append(i)
    ready = [i for i in nodes if missing[i] == 0]
    heapq.heapify(ready)
    out = []
    while ready:
      i = heapq.heappop(ready)
      out.append(i)
      for u in users[i]:
        missing[u] -= 1
        if missing[u] == 0:
          heapq.heappush(ready, u)
    return out

  full = kahn(range(len(statements)))
  if len(full) != len(statements):
    raise ValueError("statements: the variables depend on each other in a cycle")
  values: dict[str, int] = {}
  for i in full:
    s = statements[i]
    x = values[s.left] if isinstance(s.left, str) else int(s.left)
    y = values[s.right] if isinstance(s.right, str) else int(s.right)
    values[s.target] = _APPLY[s.op](x, y, modulus)
  needed = {index[query]}
  stack = [index[query]]
  while stack:
    for j in deps[stack.pop()]:
      if j not in needed:
        needed.add(j)
        stack.append(j)
  if len(needed) == len(statements):
    return tuple(full), values
  return tuple(kahn(needed)), values


def _constant(u: float, op: str, modulus: int) -> int:
  # A constant 0 would make a product 0 whatever the other operand: a shortcut that skews
  # answers toward 0, so products take constants from 1..modulus-1.
  if op == "*":
    return 1 + int(u * (modulus - 1))
  return int(u * modulus)


def generate_problem(
  num_ops: int,
  *,
  rng: np.random.Generator,
  modulus: int = DEFAULT_MODULUS,
  num_distractors: int = 0,
) -> Problem:
  """Draws a random problem whose solution path has exactly ``num_ops`` operations.

  The needed statements form a random DAG: node ``i`` (in a hidden topological order, the
  last being the query) is attached as an operand of a random later node with a free
  operand slot, so every node is needed; each remaining slot reads an earlier node with
  probability 1/4 and a uniform constant otherwise. Operators are uniform over ``+ - *``,
  variable names a uniform draw from a..z, the prompt order a uniform shuffle. Distractors
  read needed variables, earlier distractors or constants, and nothing needed reads them.

  Args:
    num_ops: operations on the solution path, in [1, 26 - num_distractors].
    rng: the source of randomness.
    modulus: arithmetic modulus in [2, 10].
    num_distractors: extra statements that the query does not need.

  Returns:
    A `Problem` with ``problem.num_ops == num_ops``.
  """
  _check_modulus(modulus)
  if not isinstance(rng, np.random.Generator):
    raise ValueError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
  k, d = int(num_ops), int(num_distractors)
  if k < 1:
    raise ValueError(f"num_ops: expected an int >= 1, got {num_ops!r}")
  if d < 0 or k + d > MAX_STATEMENTS:
    raise ValueError(
      f"num_distractors: expected 0 <= num_distractors <= {MAX_STATEMENTS} - num_ops, "
      f"got {num_distractors!r} with num_ops={k}"
    )
  n = k + d
  # One draw of uniforms per problem; the loops below consume them in a fixed order.
  u = iter(rng.random(2 * k + 3 * (k + 1) + 5 * d).tolist())
  names = [VARIABLES[i] for i in rng.permutation(MAX_STATEMENTS)[:n]]
  ops = [OPERATORS[int(next(u) * 3)] for _ in range(n)]
  slots: list[list[Operand | None]] = [[None, None] for _ in range(n)]
  free = [(k - 1, 0), (k - 1, 1)]
  for i in range(k - 2, -1, -1):
    j = int(next(u) * len(free))
    node, side = free[j]
    free[j] = free[-1]
    free.pop()
    slots[node][side] = names[i]
    free += [(i, 0), (i, 1)]
  for node, side in free:
    if node > 0 and next(u) < _REUSE_PROB:
      slots[node][side] = names[int(next(u) * node)]
    else:
      slots[node][side] = _constant(next(u), ops[node], modulus)
  for t in range(k, n):
    for side in (0, 1):
      if next(u) < 0.5:
        slots[t][side] = names[int(next(u) * t)]
      else:
        slots[t][side] = _constant(next(u), ops[t], modulus)
  statements = [Statement(names[t], slots[t][0], ops[t], slots[t][1]) for t in range(n)]
  shuffled = tuple(statements[t] for t in rng.permutation(n))
  return Problem(shuffled, names[k - 1], modulus)


def _normalize_ops(ops: int | Sequence[int] | Mapping[int, float]) -> tuple[np.ndarray, np.ndarray]:
  if isinstance(ops, int | np.integer):
    values, probs = [int(ops)], [1.0]
  elif isinstance(ops, Mapping):
    values = [int(k) for k in ops]
    probs = [float(p) for p in ops.values()]
  elif isinstance(ops, Sequence | np.ndarray) and not isinstance(ops, str):
    values = [int(k) for k in ops]
    probs = [1.0] * len(values)
  else:
    raise ValueError(
      f"ops: expected an int, a sequence of ints or a dict {{ops: prob}}, got {ops!r}"
    )
  p = np.asarray(probs, dtype=np.float64)
  if not values or np.any(p < 0) or not np.isfinite(p).all() or p.sum() <= 0:
    raise ValueError(f"ops: expected a non-empty mixture with non-negative weights, got {ops!r}")
  if min(values) < 1 or max(values) > MAX_STATEMENTS:
    raise ValueError(f"ops: op counts must lie in [1, {MAX_STATEMENTS}], got {ops!r}")
  return np.asarray(values, dtype=np.int64), p / p.sum()


ROW_FORMATS = ("ids", "text")


def problem_to_row(
  problem: Problem, *, row_format: str = "ids", tokenizer: SyntheticTokenizer | None = None
) -> dict[str, Any]:
  """One JSONL row (DESIGN.md §3, as `pacbayes.data.dataset` reads it) for a problem.

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


def generate_problems(
  num_examples: int,
  ops: int | Sequence[int] | Mapping[int, float],
  *,
  seed: int | np.random.SeedSequence,
  modulus: int = DEFAULT_MODULUS,
  num_distractors: int = 0,
  exclude: Iterable[str] = (),
  unique: bool = False,
  max_tries_factor: int = 100,
) -> list[Problem]:
  """Draws problems with i.i.d. op counts from a mixture; see `generate_dataset`."""
  if not isinstance(num_examples, int | np.integer) or num_examples < 0:
    raise ValueError(f"num_examples: expected an int >= 0, got {num_examples!r}")
  values, probs = _normalize_ops(ops)
  if num_distractors < 0 or values.max() + num_distractors > MAX_STATEMENTS:
    raise ValueError(
      f"num_distractors: {num_distractors!r} does not fit with op counts up to {values.max()} "
      f"in {MAX_STATEMENTS} variables"
    )
  rng = np.random.default_rng(seed)
  counts = rng.choice(values, size=num_examples, p=probs)
  banned = set(exclude)
  problems = []
  tries = 0
  for k in counts.tolist():
    while True:
      tries += 1
      if tries > max_tries_factor * max(num_examples, 1):
        raise ValueError(
          f"exclude/unique: could not find {num_examples} admissible problems in {tries - 1} "
          f"draws (op count {k} may have too few distinct problems)"
        )
      problem = generate_problem(k, rng=rng, modulus=modulus, num_distractors=num_distractors)
      if not banned and not unique:
        break
      key = problem.key()
      if key not in banned:
        if unique:
          banned.add(key)
        break
    problems.append(problem)
  return problems


def generate_dataset(
  num_examples: int,
  ops: int | Sequence[int] | Mapping[int, float],
  *,
  seed: int | np.random.SeedSequence,
  modulus: int = DEFAULT_MODULUS,
  num_distractors: int = 0,
  exclude: Iterable[str] = (),
  unique: bool = False,
  row_format: str = "ids",
) -> list[dict[str, Any]]:
  """Generates JSONL rows of synthetic problems, deterministically from ``seed``.

  Args:
    num_examples: number of rows.
    ops: the op-count distribution: an int, a sequence of ints (uniform; ``range(2, 9)``
      works) or a dict ``{op_count: weight}`` (normalised). Each row draws its op count
      independently, so the rows are i.i.d. from the mixture.
    seed: seed (or `numpy.random.SeedSequence`) of ``numpy.random.default_rng``.
    modulus: arithmetic modulus in [2, 10].
    num_distractors: unneeded statements added to every prompt (default none, so the prompt
      holds exactly the difficulty's statements).
    exclude: problem keys (`Problem.key`, the rows' ``key``) never to emit, e.g. a test
      set's keys when generating its training set; rejected draws are redrawn.
    unique: also never emit a key twice within this dataset.
    row_format: ``"ids"`` or ``"text"``, see `problem_to_row`.

  Returns:
    Rows as made by `problem_to_row`.
  """
  if row_format not in ROW_FORMATS:
    raise ValueError(f"row_format: expected one of {ROW_FORMATS}, got {row_format!r}")
  problems = generate_problems(
    num_examples,
    ops,
    seed=seed,
    modulus=modulus,
    num_distractors=num_distractors,
    exclude=exclude,
    unique=unique,
  )
  tokenizer = SyntheticTokenizer()
  return [problem_to_row(p, row_format=row_format, tokenizer=tokenizer) for p in problems]


def generate_splits(
  train_size: int,
  test_size: int,
  train_ops: int | Sequence[int] | Mapping[int, float],
  test_ops: int | Sequence[int] | Mapping[int, float] | None = None,
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


class SyntheticTokenizer:
  """Word-level tokenizer of the synthetic task: one token per whitespace-separated symbol.

  Special tokens are also split off where no space surrounds them (``"<sep>a"``), as the
  Hugging Face tokenizer written by `save_pretrained` does; any other unknown symbol raises.
  """

  vocab = VOCAB
  pad_id, bos_id, eos_id, sep_id, unk_id = PAD_ID, BOS_ID, EOS_ID, SEP_ID, UNK_ID

  def __init__(self):
    self.token_to_id = {t: i for i, t in enumerate(VOCAB)}

  @property
  def vocab_size(self) -> int:
    """48: 5 special tokens, digits 0-9, ``= ; ? + - * answer`` and a-z."""
    return len(VOCAB)

  def tokenize(self, text: str) -> list[str]:
    """The symbols of ``text``."""
    return _TOKEN_RE.findall(text)

  def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
    """Ids of symbols; raises `ValueError` on a symbol outside the vocabulary."""
    try:
      return [self.token_to_id[t] for t in tokens]
    except KeyError as e:
      raise ValueError(f"text: symbol {e.args[0]!r} is not in the synthetic vocabulary") from None

  def encode(self, text: str) -> list[int]:
    """Token ids of ``text``; no special token is added."""
    return self.convert_tokens_to_ids(self.tokenize(text))

  def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
    """Space-joined tokens of ``ids`` (the inverse of `encode` on space-separated text)."""
    out = []
    for i in ids:
      i = int(i)
      if not 0 <= i < len(VOCAB):
        raise ValueError(f"ids: {i} is outside the vocabulary [0, {len(VOCAB)})")
      if skip_special_tokens and i < len(SPECIAL_TOKENS):
        continue
      out.append(VOCAB[i])
    return " ".join(out)

  def to_hf(self):
    """The same tokenizer as a `transformers.PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=dict(self.token_to_id), unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
      tokenizer_object=tok,
      pad_token=PAD,
      bos_token=BOS,
      eos_token=EOS,
      sep_token=SEP,
      unk_token=UNK,
      clean_up_tokenization_spaces=False,
      padding_side="right",
    )

  def save_pretrained(self, directory: str | os.PathLike) -> None:
    """Writes ``tokenizer.json`` and its config for ``AutoTokenizer.from_pretrained``."""
    directory = os.fspath(directory)
    self.to_hf().save_pretrained(directory)
    # transformers 5 records its own backend class name; the generic fast class loads in
    # both 4.x and 5.x.
    config_path = os.path.join(directory, "tokenizer_config.json")
    with open(config_path, encoding="utf-8") as f:
      config = json.load(f)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["model_max_length"] = MODEL_MAX_LENGTH
    with open(config_path, "w", encoding="utf-8") as f:
      json.dump(config, f, indent=2)
      f.write("\n")


def save_tokenizer(directory: str | os.PathLike) -> None:
  """Writes the synthetic task's Hugging Face tokenizer files into ``directory``."""
  SyntheticTokenizer().save_pretrained(directory)


def _prompt_symbols(text: str) -> list[str]:
  toks = text.split()
  if SEP in toks:
    toks = toks[: toks.index(SEP)]
  return [t for t in toks if t != BOS]


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
  toks = _prompt_symbols(prompt_text)
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


def parse_problem(prompt_text: str, *, modulus: int = DEFAULT_MODULUS) -> Problem:
  """Reads a `Problem` back from its prompt text."""
  toks = _prompt_symbols(prompt_text)
  if len(toks) < 2 or toks[-2] != "?":
    raise ValueError(f"prompt_text: expected it to end with '? <var>', got {prompt_text!r}")
  statements = []
  body = toks[:-2]
  if len(body) % 6:
    raise ValueError(f"prompt_text: statements must be 'v = x op y ;', got {prompt_text!r}")
  for i in range(0, len(body), 6):
    t, eq, a, op, b, semi = body[i : i + 6]
    if eq != "=" or semi != ";":
      raise ValueError(f"prompt_text: cannot read statement {' '.join(body[i : i + 6])!r}")
    a_ = int(a) if a.isdigit() else a
    b_ = int(b) if b.isdigit() else b
    statements.append(Statement(t, a_, op, b_))
  return Problem(tuple(statements), toks[-1], modulus)


def extract_answer(completion_text: str) -> str | None:
  """The answer a completion states: the token after its first ``answer``, if a digit.

  Text after the first ``<eos>`` is ignored; returns None when no digit follows ``answer``.
  """
  toks = _TOKEN_RE.findall(completion_text)
  if EOS in toks:
    toks = toks[: toks.index(EOS)]
  if ANSWER not in toks:
    return None
  i = toks.index(ANSWER)
  if i + 1 < len(toks) and toks[i + 1] in DIGITS:
    return toks[i + 1]
  return None


def verify_cot(completion_text: str, prompt_text: str, *, modulus: int = DEFAULT_MODULUS) -> bool:
  """Whether a completion is a valid solution of the prompt (not necessarily the canonical one).

  Valid means: every step copies a prompt statement as ``v = x op y = r ;`` with each
  variable operand computed by an earlier step, ``r`` is correct, no variable is computed
  twice, the query is computed, and ``answer r <eos>`` states its value.
  """
  try:
    problem = parse_problem(prompt_text, modulus=modulus)
  except ValueError:
    return False
  stated = {s.target: s for s in problem.statements}
  toks = completion_text.split()
  if len(toks) < 3 or toks[-3] != ANSWER or toks[-1] != EOS:
    return False
  body, answer = toks[:-3], toks[-2]
  if len(body) % 8:
    return False
  known: dict[str, int] = {}
  for i in range(0, len(body), 8):
    t, eq1, a, op, b, eq2, r, semi = body[i : i + 8]
    s = stated.get(t)
    if s is None or t in known or (eq1, eq2, semi) != ("=", "=", ";"):
      return False
    if [a, op, b] != [str(s.left), s.op, str(s.right)]:
      return False
    if any(x not in known for x in (a, b) if not x.isdigit()):
      return False
    if r != str(problem.values[t]):
      return False
    known[t] = int(r)
  return problem.query in known and answer == str(known[problem.query])


__all__ = [
  "BOS_ID",
  "DEFAULT_MODULUS",
  "EOS_ID",
  "MAX_STATEMENTS",
  "MODEL_MAX_LENGTH",
  "PAD_ID",
  "Problem",
  "ROW_FORMATS",
  "SEP_ID",
  "Statement",
  "SyntheticTokenizer",
  "VOCAB",
  "VOCAB_SIZE",
  "completion_length",
  "evaluate_answer",
  "extract_answer",
  "generate_dataset",
  "generate_problem",
  "generate_problems",
  "generate_splits",
  "parse_problem",
  "problem_to_row",
  "prompt_length",
  "save_tokenizer",
  "verify_cot",
  "write_jsonl",
]
