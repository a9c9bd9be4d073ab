"""Test-set bounds on the risk of fixed weights from held-out rows (numbers only: NumPy/SciPy).

A deterministic predictor (the fine-tuned weights themselves, no posterior noise) scored on
``m`` rows that played no part in choosing it: the row losses are i.i.d. with mean the true
risk ``R``, and one inversion of their tail bounds ``R`` (Langford 2005, Theorem 3.3). No
PAC-Bayes term, no Monte-Carlo term. Per difficulty slice the same holds for the rows of each
slice given the rows' difficulties; a union bound over slices fixed in advance and the
test-mixture worst case of `pacbayes.bounds.mixture` then bound the risk on a test mixture
(docs/THEORY.md §5.1, §5.2).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from scipy import stats

from pacbayes.bounds import mixture as mixtures
from pacbayes.bounds import pac
from pacbayes.bounds.checks import is_vacuous
from pacbayes.bounds.mixture import MixtureBounds, difficulty_key, worst_case_mean
from pacbayes.core.precision import float64_scope

__all__ = [
  "METHOD_BINOMIAL",
  "METHOD_KL",
  "SliceHoldoutBounds",
  "HoldoutBound",
  "binomial_upper",
  "slice_holdout_bounds",
  "holdout_bound",
]

METHOD_BINOMIAL = "exact binomial tail (0/1 loss; Langford 2005, Theorem 3.3)"
METHOD_KL = "kl-Chernoff tail (loss in [0, 1]; Hoeffding 1963, Theorem 1)"
# Losses within this of 0 or 1 count as 0/1 (float32 round-off from a model).
_BINARY_TOL = 1e-6


def binomial_upper(errors: Any, m: Any, delta: Any) -> Any:
  """The exact binomial test-set bound: the largest p with P(Binomial(m, p) <= k) >= delta.

  With probability at least ``1 - delta`` over ``m`` i.i.d. 0/1 losses of mean ``R``, ``R <=
  binomial_upper(k, m, delta)`` where ``k`` is the number of errors (Langford 2005, Theorem
  3.3). Since ``P(Binomial(m, p) <= k) = 1 - I_p(k + 1, m - k)`` (regularised incomplete beta)
  decreases in ``p``, the largest such ``p`` is ``Beta.ppf(1 - delta; k + 1, m - k)``: the
  one-sided Clopper-Pearson upper limit; it is 1 when ``k = m``. Vectorised (broadcast).

  Args:
    errors: k, integer number(s) of errors, ``0 <= k <= m``.
    m: number(s) of held-out rows, integers >= 1.
    delta: confidence parameter(s) in (0, 1).

  Returns:
    float for scalar inputs, else a float64 array, in (0, 1].

  Raises:
    ValueError: naming the argument, for non-integer or out-of-range values.

  Numerical note: computed as ``Beta.isf(delta; k + 1, m - k)`` (the inverse of the upper
  tail), not ``ppf(1 - delta)``: forming ``1 - delta`` in float64 loses the digits of a small
  delta (at delta = 1e-9, m = 60 the ppf form is off by 1e-9 relative). Tests compare it with
  mpmath's bisection on the exact binomial sum to 1e-9 relative.

  References:
    Langford, "Tutorial on practical prediction theory for classification", JMLR 6, 2005,
    Theorem 3.3 (test-set bound); Clopper & Pearson, Biometrika 26(4), 1934.
  """
  k = np.asarray(errors, dtype=np.float64)
  m_ = np.asarray(m, dtype=np.float64)
  d = np.asarray(delta, dtype=np.float64)
  if not np.all(np.isfinite(m_) & (m_ >= 1) & (m_ == np.round(m_))):
    raise ValueError(f"m: expected integers >= 1, got {m!r}")
  if not np.all(np.isfinite(k) & (k >= 0) & (k == np.round(k)) & (k <= m_)):
    raise ValueError(f"errors: expected integers in [0, m], got {errors!r}")
  if not np.all(np.isfinite(d) & (d > 0) & (d < 1)):
    raise ValueError(f"delta: expected values in (0, 1), got {delta!r}")
  full = k >= m_
  b = np.where(full, 1.0, m_ - k)  # a valid beta parameter where k = m (value replaced by 1)
  up = np.where(full, 1.0, stats.beta.isf(d, k + 1.0, b))
  return float(up) if up.ndim == 0 else up


def _losses(losses: Any, name: str = "losses") -> np.ndarray:
  arr = np.asarray(losses, dtype=np.float64).reshape(-1)
  if arr.size == 0:
    raise ValueError(f"{name}: no held-out rows")
  ok = np.isfinite(arr) & (arr >= -_BINARY_TOL) & (arr <= 1 + _BINARY_TOL)
  if not np.all(ok):
    i = int(np.argmin(ok))
    raise ValueError(f"{name}[{i}]: expected a loss in [0, 1], got {arr[i]!r}")
  return np.clip(arr, 0.0, 1.0)


def _binary(arr: np.ndarray, zero_one: bool, name: str = "losses") -> np.ndarray:
  """``arr`` rounded to 0/1 when ``zero_one`` (refusing other values), else unchanged."""
  if not zero_one:
    return arr
  ok = (arr <= _BINARY_TOL) | (arr >= 1 - _BINARY_TOL)
  if not np.all(ok):
    i = int(np.argmin(ok))
    raise ValueError(f"{name}[{i}]: zero_one=True needs 0/1 losses, got {arr[i]!r}")
  return np.round(arr)


@dataclasses.dataclass(frozen=True)
class HoldoutBound:
  """A test-set bound on the risk of fixed weights.

  Attributes:
    value: upper value of the true risk, in [0, 1].
    m: held-out rows.
    errors: sum of the row losses (the number of errors for 0/1 losses).
    emp_risk: ``errors / m``.
    delta: confidence spent.
    method: `METHOD_BINOMIAL` or `METHOD_KL`, in words.
  """

  value: float
  m: int
  errors: float
  emp_risk: float
  delta: float
  method: str

  @property
  def non_vacuous(self) -> bool:
    """True when the bound is below 1 (`checks.is_vacuous`)."""
    return not is_vacuous(self.value)

  def to_dict(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), "non_vacuous": self.non_vacuous}


def _upper(errors: float, mean: float, m: int, delta: float, binary: bool) -> float:
  if binary:
    return float(binomial_upper(round(errors), m, delta))
  with float64_scope():
    return float(pac.mc_sample_bound(mean, m, delta))


def holdout_bound(losses: Any, delta: float, *, zero_one: bool = False) -> HoldoutBound:
  """Bounds the true risk of fixed weights from their losses on ``m`` held-out rows.

  ``zero_one=True`` (a 0/1 loss such as sequence error): the exact binomial tail,
  `binomial_upper` (Langford 2005, Theorem 3.3). Otherwise (losses in [0, 1], e.g. token
  error): the kl-Chernoff bound ``kl_inv_upper(mean, ln(1/delta)/m)``
  (`pacbayes.bounds.pac.mc_sample_bound`; Hoeffding 1963, Theorem 1), valid for any i.i.d.
  [0, 1] losses, 0/1 included, and slightly looser. The method is fixed by the loss, stated
  by the caller, never chosen from the values seen: a [0, 1] loss whose sample happens to be
  0/1 does not get the binomial tail.

  Args:
    losses: [m] per-row losses in [0, 1] of the fixed weights on rows not used to choose
      them (held out before training).
    delta: confidence in (0, 1).
    zero_one: the loss takes only the values 0 and 1 (checked, within 1e-6).

  Returns:
    A `HoldoutBound`.

  Raises:
    ValueError: no rows, a loss outside [0, 1] (or not 0/1 with ``zero_one``), delta outside
      (0, 1).
  """
  arr = _binary(_losses(losses), zero_one)
  delta = _delta(delta, "delta")
  binary = bool(zero_one)
  m = int(arr.size)
  errors = float(math.fsum(arr.tolist()))
  mean = errors / m
  return HoldoutBound(value=_upper(errors, mean, m, delta, binary), m=m, errors=errors,
                      emp_risk=mean, delta=delta,
                      method=METHOD_BINOMIAL if binary else METHOD_KL)


def _delta(value: Any, name: str) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not (
      0.0 < float(value) < 1.0):
    raise ValueError(f"{name}: expected a value in (0, 1), got {value!r}")
  return float(value)


@dataclasses.dataclass(frozen=True)
class SliceHoldoutBounds:
  """Test-set bounds per difficulty slice and their worst case over the test mixture.

  Attributes:
    slices: per slice (support values that can hold training mass, fixed in advance): a
      `HoldoutBound` at ``delta / K``, or None for a slice without held-out rows (bound 1).
    difficulties: the slices' difficulty values, aligned with ``slices``.
    value: ``worst_case_mean`` of the slice bounds (1 off the slices) over the test
      mixture: ``m_out + sum_d p_test(d) B_d`` for an exact test mixture.
    delta: confidence spent by the slices (the mixture's own delta is not included).
    delta_per_slice: ``delta / K``.
  """

  slices: tuple[HoldoutBound | None, ...]
  difficulties: tuple[float, ...]
  value: float
  delta: float
  delta_per_slice: float

  @property
  def bounds(self) -> tuple[float, ...]:
    """B_d per slice (1 for a slice without rows)."""
    return tuple(1.0 if s is None else s.value for s in self.slices)

  def to_dict(self) -> dict[str, Any]:
    rows = []
    for d, s in zip(self.difficulties, self.slices, strict=True):
      rows.append({"difficulty": d, "key": difficulty_key(d), "m": 0 if s is None else s.m,
                   "errors": 0.0 if s is None else s.errors,
                   "emp_risk": None if s is None else s.emp_risk,
                   "bound": 1.0 if s is None else s.value,
                   "method": "none (no held-out rows)" if s is None else s.method,
                   "non_vacuous": s is not None and s.non_vacuous})
    return {"value": self.value, "delta": self.delta, "delta_per_slice": self.delta_per_slice,
            "non_vacuous": self.value < 1.0, "slices": rows}


def slice_holdout_bounds(losses: Any, difficulty: Any, mix: MixtureBounds,
                          delta: float, *, zero_one: bool = False) -> SliceHoldoutBounds:
  """Per-slice test-set bounds B_d and ``E_test[R] <= worst_case_mean(B, mix)``.

  Slices: the support values that can hold training mass, fixed before the held-out rows are
  seen (those with ``p_train(d) > 0`` when p_train is exact, every support value when it is
  estimated; `pacbayes.bounds.mixture.training_slices`), K of them. Given the rows'
  difficulties, the ``m_d`` held-out rows of slice d are i.i.d. from ``D_d``, so
  `holdout_bound` at ``delta / K`` bounds ``R_d``; a union bound makes the K statements hold
  together with probability ``>= 1 - delta``. A slice without rows gets ``B_d = 1``, and so
  does every support value outside the slices; ``E_test[R] = sum_d p_test(d) R_d`` is then at
  most the worst case of `pacbayes.bounds.mixture.worst_case_mean` (on the mixture's event).

  Args:
    losses: [m] per-row losses in [0, 1] on the held-out rows.
    difficulty: [m] difficulty of each held-out row (values of ``mix.support``).
    mix: the train/test mixtures (`pacbayes.bounds.mixture.mixture_bounds`).
    delta: confidence for all slices together, in (0, 1).
    zero_one: the loss is 0/1 (the exact binomial tail per slice; see `holdout_bound`).

  Returns:
    A `SliceHoldoutBounds`.

  Raises:
    ValueError: mismatched lengths, a difficulty outside the support, or one with exact
      ``p_train = 0`` (the held-out rows come from the training mixture), bad losses or delta.

  References:
    Langford 2005, Theorem 3.3; docs/THEORY.md §5.2 (per-slice and mixture-shift kinds).
  """
  arr = _losses(losses)
  delta = _delta(delta, "delta")
  diff = np.asarray(difficulty, dtype=np.float64).reshape(-1)
  if diff.size != arr.size:
    raise ValueError(f"difficulty: expected {arr.size} values (one per held-out row), got "
                     f"{diff.size}")
  col = mixtures.training_columns(diff, mix)
  slices = mixtures.training_slices(mix)
  per = delta / len(slices)
  out: list[HoldoutBound | None] = []
  values = np.ones(len(mix.support))
  for j in slices:
    members = arr[col == j]
    b = holdout_bound(members, per, zero_one=zero_one) if members.size else None
    out.append(b)
    values[j] = 1.0 if b is None else b.value
  return SliceHoldoutBounds(slices=tuple(out),
                           difficulties=tuple(mix.support[j] for j in slices),
                           value=float(worst_case_mean(values, mix)), delta=delta,
                           delta_per_slice=per)
