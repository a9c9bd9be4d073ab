"""The pool of an online `pacbayes select`: difficulty buckets, held-out rows, pilot samples.

Everything here is NumPy on the rows' ``difficulty`` field and runs before any training, so
that every refusal (one line naming the flag, file or line) comes before anything is written:

- every pool row needs a finite ``difficulty`` (`read_pool` names the file and line);
- buckets are closed difficulty ranges ``[lo, hi]``: by default the thirds of the pool's
  difficulty (`pacbayes.data.difficulty.bucket_by_quantiles`, ties at a threshold go to the
  lower third; a third left empty by ties is dropped), else the ranges of ``--buckets``;
- with a test mixture the target is estimated on held-out pool rows, ``heldout_rows`` of
  every difficulty with mass (drawn once, seeded, before the pilots; no pilot trains on them);
- the pilot of (bucket k, seed s, size n) trains on the first n rows of block s of a seeded
  permutation of the bucket's remaining rows, a block being ``max(sizes)`` rows: the seeds'
  samples are disjoint (independent pilots) and one seed's sizes are nested (its curve is
  not confounded by a new sample at every size). A bucket therefore needs
  ``max(sizes) x seeds`` rows.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pacbayes.data.difficulty import bucket_by_quantiles
from pacbayes.data.jsonl import DataError, read_jsonl_with_lines

THIRDS = ("easy", "medium", "hard")
_RANGE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*(?:-\s*([0-9]+(?:\.[0-9]*)?))?\s*$")
# Seed streams of numpy's PCG64 (`default_rng([seed, stream, ...])`): fixed, so a pilot's
# sample depends only on the seed, the bucket's index and the pool.
_HELDOUT_STREAM = 0x48454C44  # "HELD"
_PILOT_STREAM = 0x50494C54  # "PILT"


@dataclasses.dataclass(frozen=True)
class Pool:
  """The rows of a pool file with their difficulty.

  Attributes:
    path: the file.
    rows: [R] the parsed rows (dicts), in file order.
    lines: [R] 1-based file line of each row.
    difficulty_R: [R] float64 difficulty of each row.
  """

  path: str
  rows: list[dict[str, Any]]
  lines: list[int]
  difficulty_R: np.ndarray

  @property
  def values(self) -> list[float]:
    """The distinct difficulties, ascending."""
    return [float(v) for v in np.unique(self.difficulty_R)]


@dataclasses.dataclass(frozen=True)
class Bucket:
  """A candidate training bucket: the pool rows with difficulty in [lo, hi]."""

  name: str
  lo: float
  hi: float

  def contains(self, difficulty: np.ndarray) -> np.ndarray:
    return (difficulty >= self.lo) & (difficulty <= self.hi)

  def describe(self) -> str:
    return f"difficulty in [{self.lo:g}, {self.hi:g}]"


def read_pool(path: str, flag: str = "--train") -> Pool:
  """Reads a JSONL pool; every row must carry a finite number ``difficulty``.

  Raises:
    DataError: naming `flag`, the file and the line of the first row without one.
  """
  rows, lines = read_jsonl_with_lines(path)
  d = np.zeros(len(rows), np.float64)
  for i, (row, line) in enumerate(zip(rows, lines, strict=True)):
    v = row.get("difficulty")
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
      what = "has no 'difficulty'" if "difficulty" not in row else (
          f"has 'difficulty' {v!r}, not a finite number")
      raise DataError(f"{flag} {path}:{line}: the row {what}; select needs the difficulty of "
                      "every pool row")
    d[i] = float(v)
  return Pool(path, rows, lines, d)


def parse_buckets(texts: Sequence[str], flag: str = "--buckets") -> list[Bucket]:
  """``["1-1", "2-3", "4"]`` -> buckets named by their text, ranges closed and ascending.

  Raises:
    ValueError: a text that is not ``LO-HI`` or ``D``, ``LO > HI``, a repeated range, or
      fewer than two buckets (naming `flag`).
  """
  out = []
  for text in texts:
    m = _RANGE.match(text)
    if m is None:
      raise ValueError(f"{flag}: expected difficulty ranges LO-HI (or one difficulty D), got "
                       f"{text!r}")
    lo = float(m.group(1))
    hi = float(m.group(2)) if m.group(2) is not None else lo
    if lo > hi:
      raise ValueError(f"{flag} {text}: the range is empty (LO {lo:g} > HI {hi:g})")
    name = text.strip()
    if any(b.name == name or (b.lo, b.hi) == (lo, hi) for b in out):
      raise ValueError(f"{flag} {text}: the range is given twice")
    out.append(Bucket(name, lo, hi))
  if len(out) < 2:
    raise ValueError(f"{flag}: give at least two ranges (a selection compares buckets)")
  return out


def default_buckets(pool: Pool) -> list[Bucket]:
  """The thirds of the pool's difficulty by quantiles, named easy/medium/hard.

  Each third is the range [smallest, largest] difficulty of its rows; a third that ties at a
  threshold leave empty is dropped (the others keep their names).

  Raises:
    ValueError: fewer than two non-empty thirds (one difficulty value: give --buckets).
  """
  split = bucket_by_quantiles(pool.difficulty_R, 3, THIRDS)
  out = []
  for k, name in enumerate(THIRDS):
    d = pool.difficulty_R[split.ids == k]
    if d.size:
      out.append(Bucket(name, float(d.min()), float(d.max())))
  if len(out) < 2:
    raise ValueError(f"--train {pool.path}: the pool's difficulty has one value "
                     f"({pool.values}); its thirds give one bucket, nothing to select")
  return out


def check_mixture(pool: Pool, mixture: Mapping[float, float], flag: str = "--test-mixture"
                  ) -> dict[float, float]:
  """The target mixture over pool difficulties, checked: every difficulty with mass occurs in
  the pool, masses sum to 1; zero masses are dropped.

  Raises:
    ValueError: mass outside the pool's difficulties, or masses not summing to 1.
  """
  values = set(pool.values)
  for d, p in mixture.items():
    if p > 0 and float(d) not in values:
      raise ValueError(f"{flag}: difficulty {d:g} has mass {p:g} but no row of --train "
                       f"{pool.path} has that difficulty (pool: {_listed(pool.values)})")
  total = float(sum(mixture.values()))
  if not math.isclose(total, 1.0, abs_tol=1e-6):
    raise ValueError(f"{flag}: masses sum to {total:.6g}, expected 1")
  return {float(d): float(p) for d, p in sorted(mixture.items()) if p > 0}


def heldout_rows(pool: Pool, mixture: Mapping[float, float], per_slice: int, seed: int,
                 flag: str = "--heldout-rows") -> dict[float, np.ndarray]:
  """Indices of `per_slice` held-out pool rows of every difficulty with mass (seeded).

  Raises:
    ValueError: a difficulty with fewer than `per_slice` + 1 pool rows (one must stay for
      training, naming `flag`).
  """
  rng = np.random.default_rng([seed, _HELDOUT_STREAM])
  out = {}
  for d in sorted(mixture):
    idx = np.flatnonzero(pool.difficulty_R == d)
    if idx.size <= per_slice:
      raise ValueError(f"{flag} {per_slice}: difficulty {d:g} has {idx.size} rows in --train "
                       f"{pool.path}; holding {per_slice} out needs at least {per_slice + 1}")
    out[d] = np.sort(rng.permutation(idx)[:per_slice])
  return out


def pilot_samples(pool: Pool, buckets: Sequence[Bucket], sizes: Sequence[int], seeds: int,
                  excluded: np.ndarray, seed: int) -> dict[tuple[int, int], np.ndarray]:
  """(bucket index, seed) -> [max(sizes)] pool row indices of that seed's pilot block.

  The pilot at size n is the first n of them (nested sizes, disjoint seeds; module docstring).

  Raises:
    ValueError: a bucket with fewer than ``max(sizes) x seeds`` rows left after `excluded`
      (naming the bucket, --pilot sizes and --seeds).
  """
  largest = max(sizes)
  mask = np.ones(len(pool.rows), bool)
  mask[np.asarray(excluded, np.int64)] = False
  out = {}
  for k, b in enumerate(buckets):
    idx = np.flatnonzero(b.contains(pool.difficulty_R) & mask)
    need = largest * seeds
    if idx.size < need:
      held = "" if mask.all() else " after the held-out rows"
      raise ValueError(f"bucket {b.name} ({b.describe()}) has {idx.size} rows in --train "
                       f"{pool.path}{held}, but the largest pilot ({largest} rows) times "
                       f"--seeds {seeds} needs {need}")
    perm = np.random.default_rng([seed, _PILOT_STREAM, k]).permutation(idx)
    for s in range(seeds):
      out[(k, s)] = perm[s * largest:(s + 1) * largest]
  return out


def pilot_sizes(budget: int, fractions: Sequence[float] | None,
                sizes: Sequence[int] | None) -> tuple[int, ...]:
  """The pilot sizes n (rows), ascending: `sizes`, or round(fraction x budget).

  Raises:
    ValueError: a size not below the budget, sizes that coincide after rounding, or fewer
      than two (naming the flag).
  """
  if sizes is not None:
    flag, out = "--pilot-sizes", [int(n) for n in sizes]
  else:
    flag, out = "--pilot-fractions", [max(1, round(f * budget)) for f in fractions]
  if max(out) >= budget:
    raise ValueError(f"--budget {budget}: not above the largest pilot ({flag} gives "
                     f"{max(out)} rows): a selection predicts beyond the pilots")
  if len(set(out)) != len(out):
    raise ValueError(f"{flag}: the pilot sizes {out} repeat at --budget {budget}; give "
                     "distinct sizes")
  if len(out) < 2:
    raise ValueError(f"{flag}: one pilot size ({out[0]}); a curve needs at least two")
  return tuple(sorted(out))


def tv_difficulty(p: Mapping[float, float], q: Mapping[float, float]) -> float:
  """Total variation 1/2 sum_d |p(d) - q(d)| between two distributions over difficulty."""
  keys = set(p) | set(q)
  return 0.5 * float(sum(abs(p.get(d, 0.0) - q.get(d, 0.0)) for d in keys))


def histogram(values: np.ndarray) -> dict[float, float]:
  """Empirical distribution of difficulty values (value -> frequency)."""
  v, c = np.unique(np.asarray(values, np.float64), return_counts=True)
  return {float(a): float(b) / float(c.sum()) for a, b in zip(v, c, strict=True)}


def _listed(values: Sequence[float]) -> str:
  return "[" + ", ".join(f"{v:g}" for v in values) + "]"
