"""Difficulty mixtures: exact or confidence-bounded p_test, p_train, and the mixture-shift term.

Setting (docs/THEORY.md §1, "Tighter, still honest"): train and test examples come from one
pool and differ only in their mixtures ``p_train(d)``, ``p_test(d)`` over a discrete
difficulty ``d``: ``D(z) = sum_d p(d) D(z | d)`` with the same ``D(z | d)`` on both sides, so
the risk of any fixed weights is ``R = sum_d p(d) R_d``. Everything here is host-side NumPy
on a handful of numbers; the public names are re-exported by `pacbayes.bounds`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pacbayes.bounds.concentration import clopper_pearson_lower

__all__ = [
  "MixtureBounds",
  "check_mixture",
  "difficulty_key",
  "load_mixture",
  "mixture_bounds",
  "mixture_shift_bound",
  "mixture_shift_formula",
  "training_columns",
  "training_slices",
  "uniform_mixture",
  "worst_case_mean",
]

# Probabilities must sum to 1 within this tolerance (JSON files written by hand: 1/3 etc.).
_SUM_TOL = 1e-9


def difficulty_key(d: float) -> str:
  """The JSON key of a difficulty value: "3" for 3.0, repr otherwise (round-trips)."""
  d = float(d)
  return str(int(d)) if d.is_integer() and abs(d) < 2**53 else repr(d)


def _number(value: Any, where: str) -> float:
  if isinstance(value, str):
    try:
      value = float(value)
    except ValueError:
      raise ValueError(f"{where}: expected a number, got {value!r}") from None
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ValueError(f"{where}: expected a number, got {value!r}")
  value = float(value)
  if not math.isfinite(value):
    raise ValueError(f"{where}: expected a finite number, got {value!r}")
  return value


def check_mixture(mixture: Mapping[Any, Any], *, name: str = "mixture") -> dict[float, float]:
  """Validates a mixture ``{difficulty: probability}`` and returns it with float keys, sorted.

  Keys may be numbers or numeric strings (JSON object keys). Probabilities must be finite,
  >= 0 and sum to 1 within 1e-9; they are then divided by their sum so they add to 1.

  Args:
    mixture: mapping from difficulty values to probabilities.
    name: how errors name the mapping (e.g. the file it came from).

  Returns:
    ``dict[float, float]`` sorted by difficulty.

  Raises:
    ValueError: naming ``name`` and the offending key.
  """
  if not isinstance(mixture, Mapping) or not mixture:
    raise ValueError(f"{name}: expected a non-empty mapping difficulty -> probability")
  out: dict[float, float] = {}
  for key, prob in mixture.items():
    d = _number(key, f"{name}: key {key!r}")
    p = _number(prob, f"{name}: key {key!r}")
    if p < 0:
      raise ValueError(f"{name}: key {key!r}: probability must be >= 0, got {p!r}")
    if d in out:
      raise ValueError(f"{name}: key {key!r}: difficulty {d!r} given twice")
    out[d] = p
  total = math.fsum(out.values())
  if abs(total - 1.0) > _SUM_TOL:
    raise ValueError(f"{name}: probabilities must sum to 1, got {total!r}")
  return {d: out[d] / total for d in sorted(out)}


def uniform_mixture(support: Sequence[Any]) -> dict[float, float]:
  """The uniform mixture over ``support`` (distinct difficulty values).

  Raises:
    ValueError: empty support, repeated or non-numeric values.
  """
  values = [_number(v, f"support[{i}]") for i, v in enumerate(support)]
  if not values or len(set(values)) != len(values):
    raise ValueError(f"support: expected distinct difficulty values, got {list(support)!r}")
  return {d: 1.0 / len(values) for d in sorted(values)}


def load_mixture(spec: str | os.PathLike, *, support: Sequence[Any] | None = None
                 ) -> dict[float, float]:
  """Reads ``--test-mixture``: ``"uniform"`` (over ``support``) or a JSON file.

  The file holds one object ``{"1": 0.25, "2": 0.75}`` (difficulty -> probability).

  Raises:
    ValueError: naming the file (and key) for unreadable files, bad JSON or bad values, or
      "uniform" without a support.
  """
  if str(spec) == "uniform":
    if support is None:
      raise ValueError("--test-mixture uniform: needs the difficulty support (--support)")
    return uniform_mixture(support)
  path = os.fspath(spec)
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except OSError as e:
    raise ValueError(f"{path}: cannot read mixture ({e.strerror})") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
  if not isinstance(data, dict):
    raise ValueError(f"{path}: expected a JSON object difficulty -> probability")
  mix = check_mixture(data, name=path)
  if support is not None:
    allowed = {_number(v, "support") for v in support}
    for d in mix:
      if d not in allowed:
        raise ValueError(f"{path}: key {difficulty_key(d)!r} is not in the support")
  return mix


@dataclasses.dataclass(frozen=True)
class MixtureBounds:
  """Confidence values for the two mixtures over a common support.

  On an event of probability at least ``1 - delta`` (probability 1 when both sides are
  exact): ``p_test(d) <= test_upper[i]`` and ``p_train(d) >= train_lower[i]`` for every
  ``d = support[i]``.

  Attributes:
    support: sorted difficulty values (every value either side can take).
    test_upper: [k] upper values for p_test (equal to p_test when ``test_exact``).
    train_lower: [k] lower values for p_train (equal to p_train when ``train_exact``).
    test_exact: p_test given exactly (by design), not estimated.
    train_exact: p_train given exactly.
    delta: confidence spent (0 when both are exact).
    method: how the values were obtained, in words (shown in the report).
  """

  support: tuple[float, ...]
  test_upper: tuple[float, ...]
  train_lower: tuple[float, ...]
  test_exact: bool
  train_exact: bool
  delta: float
  method: str

  def __post_init__(self):
    k = len(self.support)
    if k == 0 or len(self.test_upper) != k or len(self.train_lower) != k:
      raise ValueError("MixtureBounds: support, test_upper and train_lower need equal lengths")
    if list(self.support) != sorted(set(self.support)):
      raise ValueError("MixtureBounds: support must be sorted and distinct")
    for name, vals in (("test_upper", self.test_upper), ("train_lower", self.train_lower)):
      if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in vals):
        raise ValueError(f"MixtureBounds: {name} must lie in [0, 1], got {vals!r}")
    if not (math.isfinite(self.delta) and 0.0 <= self.delta < 1.0):
      raise ValueError(f"MixtureBounds: delta must be in [0, 1), got {self.delta!r}")
    if (self.delta == 0.0) != (self.test_exact and self.train_exact):
      raise ValueError("MixtureBounds: delta must be 0 exactly when both mixtures are exact")
    if math.fsum(self.test_upper) < 1.0 - _SUM_TOL:
      raise ValueError("MixtureBounds: test_upper must add up to at least 1")

  @property
  def in_train(self) -> tuple[bool, ...]:
    """Per support value: certified to have p_train(d) > 0 (train_lower > 0)."""
    return tuple(v > 0 for v in self.train_lower)

  @property
  def m_out(self) -> float:
    """Test mass (upper value) outside the certified training support, capped at 1."""
    return min(1.0, math.fsum(u for u, ok in zip(self.test_upper, self.in_train, strict=True)
                              if not ok))

  @property
  def weights(self) -> tuple[float, ...]:
    """w(d) = p_test(d) / p_train(d) (upper values) on the training support, 0 elsewhere."""
    return tuple(u / lo if lo > 0 else 0.0
                 for u, lo in zip(self.test_upper, self.train_lower, strict=True))

  @property
  def w_max(self) -> float:
    """The largest weight (0 when no test mass lies on the training support)."""
    return max(self.weights)

  @property
  def tv(self) -> float | None:
    """TV(p_test, p_train), exact when both mixtures are; None otherwise."""
    if not (self.test_exact and self.train_exact):
      return None
    return 0.5 * math.fsum(abs(u - lo) for u, lo in zip(self.test_upper, self.train_lower,
                                                        strict=True))

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready summary (difficulty keys as strings)."""
    keys = [difficulty_key(d) for d in self.support]
    return {
      "support": list(self.support),
      "test_upper": dict(zip(keys, self.test_upper, strict=True)),
      "train_lower": dict(zip(keys, self.train_lower, strict=True)),
      "test_exact": self.test_exact, "train_exact": self.train_exact,
      "delta": self.delta, "method": self.method,
      "m_out": self.m_out, "w_max": self.w_max, "tv": self.tv,
    }


def _sample_counts(values: Any, support: tuple[float, ...], name: str) -> np.ndarray:
  arr = np.asarray(values, dtype=np.float64).reshape(-1)
  if arr.size == 0:
    raise ValueError(f"{name}: no samples")
  if not np.all(np.isfinite(arr)):
    bad = int(np.argmin(np.isfinite(arr)))
    raise ValueError(f"{name}[{bad}]: difficulty must be a finite number, got {arr[bad]!r}")
  index = {d: i for i, d in enumerate(support)}
  counts = np.zeros(len(support), np.int64)
  for i, v in enumerate(arr.tolist()):
    j = index.get(float(v))
    if j is None:
      raise ValueError(f"{name}[{i}]: difficulty {v!r} is not in the support {list(support)}")
    counts[j] += 1
  return counts


def mixture_bounds(
  *,
  test_mixture: Mapping[Any, float] | None = None,
  test_difficulty: Any = None,
  train_mixture: Mapping[Any, float] | None = None,
  train_difficulty: Any = None,
  support: Sequence[Any] | None = None,
  delta: float = 0.0,
) -> MixtureBounds:
  """Upper values for p_test(d) and lower values for p_train(d), exact or from samples.

  Each side is given either exactly (a mapping, e.g. a design or ``--test-mixture``) or by
  samples (the difficulty of each example). A sampled side gets one-sided Clopper-Pearson
  values per support value, ``u(d)`` for the test side (upper) and ``l(d)`` for the train
  side (lower), each at level ``delta / (s k)`` with ``k = len(support)`` and ``s`` the
  number of sampled sides; a union bound over the ``s k`` statements makes all hold at once
  with probability at least ``1 - delta``. A value never seen still gets an upper value (so
  ``support`` must be fixed in advance when a side is sampled). Train-side lower values are
  0 for unseen values: such slices count as outside the training support.

  Args:
    test_mixture: exact p_test (difficulty -> probability).
    test_difficulty: [m_test] difficulty of each test example (instead of `test_mixture`).
    train_mixture: exact p_train.
    train_difficulty: [n] difficulty of each training example (instead of `train_mixture`).
      Note: estimating p_train from S itself makes the weights depend on S; the
      mixture-shift and per-slice bounds stay valid (they only use the lower values on the
      confidence event), the weighted-loss bound then uses weights from the test side only.
    support: every difficulty value, fixed in advance; required when a side is sampled.
    delta: confidence to spend, in (0, 1) when a side is sampled, 0 when both are exact.

  Returns:
    A `MixtureBounds`.

  Raises:
    ValueError: a side given both ways or neither, values outside the support, a delta that
      does not match (must be 0 iff both sides are exact), bad mixtures.

  References:
    Clopper & Pearson, Biometrika 26(4), 1934 (exact binomial confidence limits).
  """
  sides = {}
  for side, mix, samples in (("test", test_mixture, test_difficulty),
                             ("train", train_mixture, train_difficulty)):
    if (mix is None) == (samples is None):
      raise ValueError(f"{side}: give exactly one of {side}_mixture and {side}_difficulty")
    sides[side] = check_mixture(mix, name=f"{side}_mixture") if mix is not None else None
  sampled = [s for s, m in sides.items() if m is None]
  delta = _number(delta, "delta")
  if sampled and not 0.0 < delta < 1.0:
    raise ValueError(f"delta: sampled mixtures ({', '.join(sampled)}) need delta in (0, 1), "
                     f"got {delta!r}")
  if not sampled and delta != 0.0:
    raise ValueError(f"delta: both mixtures are exact, so no delta is spent; got {delta!r}")
  values: set[float] = set()
  for m in sides.values():
    if m is not None:
      values.update(m)
  if support is not None:
    sup = [_number(v, f"support[{i}]") for i, v in enumerate(support)]
    extra = sorted(values - set(sup))
    if extra:
      raise ValueError(f"support: mixture value {extra[0]!r} is not in the support {sup}")
    values.update(sup)
  elif sampled:
    raise ValueError(f"support: required when the {sampled[0]} mixture is estimated from "
                     "samples (every difficulty value, fixed in advance)")
  sup_t = tuple(sorted(values))
  k = len(sup_t)
  level = delta / (len(sampled) * k) if sampled else 0.0
  if sides["test"] is not None:
    test_upper = tuple(sides["test"].get(d, 0.0) for d in sup_t)
  else:
    counts = _sample_counts(test_difficulty, sup_t, "test_difficulty")
    m = int(counts.sum())
    test_upper = tuple(float(x) for x in 1.0 - clopper_pearson_lower(m - counts, m, level))
  if sides["train"] is not None:
    train_lower = tuple(sides["train"].get(d, 0.0) for d in sup_t)
  else:
    counts = _sample_counts(train_difficulty, sup_t, "train_difficulty")
    m = int(counts.sum())
    train_lower = tuple(float(x) for x in clopper_pearson_lower(counts, m, level))
  if sampled:
    method = (f"{' and '.join(sampled)} mixture estimated from samples: one-sided "
              f"Clopper-Pearson per value at level delta/{len(sampled) * k} (union bound over "
              f"{k} values x {len(sampled)} side(s)), delta = {delta:.3g}")
  else:
    method = "both mixtures known exactly (by design): no delta spent"
  return MixtureBounds(support=sup_t, test_upper=test_upper, train_lower=train_lower,
                       test_exact=sides["test"] is not None,
                       train_exact=sides["train"] is not None, delta=delta if sampled else 0.0,
                       method=method)


def worst_case_mean(values: Any, mix: MixtureBounds) -> Any:
  """max sum_d p(d) values[d] over mixtures p with p(d) <= test_upper(d) and sum p = 1.

  With an exact test mixture this is simply ``sum_d p_test(d) values[d]``. Otherwise the
  maximiser puts mass on the largest values first (a fractional knapsack), which is >= the
  true ``sum_d p_test(d) values[d]`` on the confidence event.

  Args:
    values: [..., k] finite values >= 0 per support value (e.g. per-slice bounds, 1 outside
      the training support); leading axes are batch axes (e.g. simulation trials).
    mix: the mixtures.

  Returns:
    float (for 1-D ``values``) or a [...] float64 array.
  """
  vals = np.asarray(values, dtype=np.float64)
  k = len(mix.support)
  if vals.ndim == 0 or vals.shape[-1] != k or not np.all(np.isfinite(vals) & (vals >= 0)):
    raise ValueError(f"values: expected [..., {k}] finite values >= 0, got shape {vals.shape}")
  u = np.asarray(mix.test_upper)
  if mix.test_exact:
    out = vals @ u
  else:
    order = np.argsort(-vals, axis=-1, kind="stable")
    v_sorted = np.take_along_axis(vals, order, axis=-1)
    u_sorted = u[order]
    before = np.cumsum(u_sorted, axis=-1) - u_sorted
    take = np.clip(np.minimum(u_sorted, 1.0 - before), 0.0, None)
    out = np.sum(take * v_sorted, axis=-1)
  return float(out) if np.ndim(out) == 0 else out


def training_slices(mix: MixtureBounds) -> list[int]:
  """Support indices that can hold training mass, fixed before any row is seen: those with
  ``p_train(d) > 0`` when p_train is exact, every support value when it is estimated."""
  if mix.train_exact:
    return [i for i, lo in enumerate(mix.train_lower) if lo > 0]
  return list(range(len(mix.support)))


def training_columns(difficulty: Any, mix: MixtureBounds) -> np.ndarray:
  """[n] int64 index into ``mix.support`` of the difficulty of each row drawn from D_train.

  Args:
    difficulty: [n] difficulty of each row (of S, or of held-out training rows).
    mix: the mixtures.

  Raises:
    ValueError: a value outside the support, or one whose exact ``p_train`` is 0 (a training
      row there contradicts the stated mixture).
  """
  diff = np.asarray(difficulty, dtype=np.float64).reshape(-1)
  index = {d: i for i, d in enumerate(mix.support)}
  col = np.empty(diff.size, np.int64)
  for i, d in enumerate(diff.tolist()):
    j = index.get(d)
    if j is None:
      raise ValueError(f"difficulty[{i}]: value {d!r} is not in the mixture support "
                       f"{list(mix.support)}")
    col[i] = j
  if mix.train_exact:
    outside = np.flatnonzero(~np.isin(col, training_slices(mix)))
    if outside.size:
      i = int(outside[0])
      raise ValueError(f"difficulty[{i}]: value {float(diff[i])!r} has p_train = 0 in the "
                       "training mixture")
  return col


def mixture_shift_formula(b_train: Any, mix: MixtureBounds) -> Any:
  """The relaxation ``m_out + w_max * b_train`` of docs/THEORY.md §1 (not capped; float or
  array)."""
  out = mix.m_out + mix.w_max * np.asarray(b_train, dtype=np.float64)
  return float(out) if np.ndim(out) == 0 else out


def mixture_shift_bound(b_train: Any, mix: MixtureBounds) -> Any:
  """Upper bound on E_test[R] from an upper value ``b_train`` of E_train[R], one pool.

  ``E_test[R] = sum_d p_test(d) R_d`` with ``R_d in [0, 1]``. Outside the (certified)
  training support, ``R_d <= 1`` gives ``m_out``. Inside it, the slice risks must satisfy
  ``sum_d p_train(d) R_d = E_train[R] <= b_train``, so

    sum_{d in A} p_test(d) R_d <= max { sum_A u(d) r_d : 0 <= r_d <= 1,
                                        sum_A l(d) r_d <= b_train },

  a fractional knapsack solved greedily by the weight ``w(d) = u(d) / l(d)`` (u, l: the upper /
  lower mixture values; exact ones when known). Each unit of budget buys at most ``w_max``,
  so the value is at most ``m_out + w_max * b_train`` (the formula of docs/THEORY.md §1,
  attained while
  ``b_train <= l(argmax w)``), and since ``u r <= l r + (u - l)_+`` it is at most
  ``b_train + TV`` (exact mixtures): never looser than the TV term, and never above
  ``m_out + sum_A u``. The raw formula alone can exceed ``b_train + TV`` (p_train = (1/2,
  1/2), p_test = (0.99, 0.01), b_train = 0.9: 1.78 vs 1.39), which is why the exact worst
  case is used (and the minimum of the three is returned, all valid on the same event).
  Valid on the event of ``b_train`` and of ``mix`` (no extra delta).

  Args:
    b_train: upper value(s) of E_Q[R_train] (e.g. the certificate's B_train), >= 0; a float
      or an array (e.g. one per simulation trial).
    mix: the mixtures.

  Returns:
    float (or float64 array shaped like ``b_train``) upper value of E_Q[R_test].

  References:
    docs/THEORY.md §1 ("mixture-shift term"); Dantzig, "Discrete-variable extremum
    problems", Operations Research 5(2), 1957 (greedy fractional knapsack).
  """
  b = np.asarray(b_train, dtype=np.float64)
  if not np.all(np.isfinite(b) & (b >= 0)):
    raise ValueError(f"b_train: expected finite values >= 0, got {b_train!r}")
  u = np.asarray(mix.test_upper)
  lo = np.asarray(mix.train_lower)
  keep = lo > 0
  u, lo = u[keep], lo[keep]
  order = np.argsort(-(u / lo), kind="stable")
  u, lo = u[order], lo[order]
  before = np.cumsum(lo) - lo  # budget used by the items ahead of each one
  frac = np.clip((b[..., None] - before) / lo, 0.0, 1.0)  # [..., |A|]
  value = mix.m_out + np.sum(frac * u, axis=-1)
  value = np.minimum(value, mixture_shift_formula(b, mix))
  if mix.tv is not None:
    value = np.minimum(value, b + mix.tv)
  return float(value) if np.ndim(value) == 0 else value
