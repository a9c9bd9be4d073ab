"""Synthetic problems: modular dependency graphs whose difficulty is the op count.

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

References:
  Ye, Xu, Li, Allen-Zhu (2024), "Physics of Language Models: Part 2.1, Grade-School Math and
  the Hidden Reasoning Process", arXiv 2407.20311 (iGSM, which this task simplifies).
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from pacbayes.data.synthetic.tokenizer import (
  ANSWER,
  BOS,
  EOS,
  OPERATORS,
  SEP,
  VARIABLES,
  prompt_symbols,
)

DEFAULT_MODULUS = 7
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
# An op-count distribution: one count, counts drawn uniformly, or {count: weight}.
OpsSpec = int | Sequence[int] | Mapping[int, float]


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


def _normalize_ops(ops: OpsSpec) -> tuple[np.ndarray, np.ndarray]:
  """([m] int64 op counts, [m] float64 probabilities summing to 1) of an op-count spec."""
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


def generate_problems(
  num_examples: int,
  ops: OpsSpec,
  *,
  seed: int | np.random.SeedSequence,
  modulus: int = DEFAULT_MODULUS,
  num_distractors: int = 0,
  exclude: Iterable[str] = (),
  unique: bool = False,
  max_tries_factor: int = 100,
) -> list[Problem]:
  """Draws problems with i.i.d. op counts from a mixture, deterministically from ``seed``.

  Args:
    num_examples: number of problems.
    ops: the op-count distribution: an int, a sequence of ints (uniform; ``range(2, 9)``
      works) or a dict ``{op_count: weight}`` (normalised). Each problem draws its op count
      independently, so the problems are i.i.d. from the mixture.
    seed: seed (or `numpy.random.SeedSequence`) of ``numpy.random.default_rng``.
    modulus: arithmetic modulus in [2, 10].
    num_distractors: unneeded statements added to every prompt (default none, so the prompt
      holds exactly the difficulty's statements).
    exclude: problem keys (`Problem.key`) never to emit, e.g. a test set's keys when
      generating its training set; rejected draws are redrawn.
    unique: also never emit a key twice within this call.
    max_tries_factor: bounds the draws (times ``num_examples``) spent avoiding ``exclude``
      and repeats.

  Returns:
    The problems, in the order drawn.
  """
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


def parse_problem(prompt_text: str, *, modulus: int = DEFAULT_MODULUS) -> Problem:
  """Reads a `Problem` back from its prompt text."""
  toks = prompt_symbols(prompt_text)
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


__all__ = [
  "DEFAULT_MODULUS",
  "MAX_STATEMENTS",
  "Operand",
  "OpsSpec",
  "Problem",
  "Statement",
  "completion_length",
  "generate_problem",
  "generate_problems",
  "parse_problem",
  "prompt_length",
]
