"""Extrapolation terms beside TV: mixture shift, weighted-loss and per-slice PAC-Bayes bounds.

All bounds here are upper values of ``E_Q[R_test]`` under the one-pool assumption of
DESIGN.md section 1 (train and test differ only in their mixtures over a discrete
difficulty ``d``; see `pacbayes.mixture`). The weighted-loss and per-slice bounds are pure
functions of the Monte-Carlo arrays of `pacbayes.perturb.MCRisk`:

  slot_losses [M, K] float: the loss of each scored slot under posterior draw m,
  slot_rows   [M, K] int:   the row of S scored in that slot,

plus the difficulty of every row of S. Two layouts are recognised from the arrays (anything
else is refused): "passes" (every row of ``slot_rows`` is ``arange(n)``: M full passes) and
"chunk" (``slot_rows.ravel()[:n] == arange(n)``: S cut in order into M chunks of K rows, one
draw per chunk, the last ``M K - n`` slots filler rows drawn uniformly from S).

Confidence accounting: every kind carries the delta it spends (``delta_parts``); the
certificate adds them all, so the minimum over the kinds computed is valid on the
intersection of their events (`pacbayes.certificate.certify`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pacbayes import bounds
from pacbayes.mixture import (
  MixtureBounds,
  check_mixture,
  difficulty_key,
  load_mixture,
  mixture_bounds,
  mixture_shift_bound,
  mixture_shift_formula,
  uniform_mixture,
  worst_case_mean,
)

__all__ = [
  "KIND_ESTIMATE",
  "KIND_MIXTURE",
  "KIND_NONE",
  "KIND_TV",
  "NAMES",
  "ExtrapolationBound",
  "MixtureBounds",
  "SliceBound",
  "check_mixture",
  "detect_scheme",
  "difficulty_key",
  "load_mixture",
  "maurer_upper",
  "mixture_bounds",
  "mixture_shift_bound",
  "mixture_shift_formula",
  "per_slice_bounds",
  "split_delta",
  "uniform_mixture",
  "weighted_loss_bound",
  "worst_case_mean",
]

KIND_MIXTURE = "certified under mixture shift"
KIND_TV = "certified under difficulty shift (TV)"
KIND_ESTIMATE = "estimate"
KIND_NONE = "none"
# Names of the kinds of extrapolation value, in the order reports list them.
NAMES = ("tv", "mixture_shift", "weighted", "per_slice", "estimate", "none")
_RANGE_TOL = 1e-6


@dataclasses.dataclass(frozen=True)
class SliceBound:
  """A PAC-Bayes bound on the risk of one difficulty slice.

  Attributes:
    difficulty: the slice's difficulty value.
    n: training examples in the slice (0: no data, bound 1).
    emp_risk: Monte-Carlo mean loss on the slice (nan when n = 0).
    mc_upper: Monte-Carlo upper value of E_Q[R_{S_d}] (clipped to [0, 1]).
    mc_method: how ``mc_upper`` was obtained ("kl", "hoeffding" or "none").
    bound: upper value of E_Q[R_d] (Maurer, with the slice's share of delta).
  """

  difficulty: float
  n: int
  emp_risk: float
  mc_upper: float
  mc_method: str
  bound: float

  def to_dict(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["emp_risk"] = None if math.isnan(self.emp_risk) else self.emp_risk
    return out


@dataclasses.dataclass(frozen=True)
class ExtrapolationBound:
  """One kind of upper value (or estimate) of E_Q[R_test].

  Attributes:
    name: one of `NAMES`.
    kind: words: `KIND_MIXTURE`, `KIND_TV`, `KIND_ESTIMATE` or `KIND_NONE`.
    value: the value of E_Q[R_test] this kind gives.
    delta: confidence spent by this kind beyond the B_train event (sum of delta_parts).
    delta_parts: (name, delta) pairs.
    uses_b_train: True when the value holds on the B_train event (then B_train's delta is
      part of its price too).
    slices: per-slice bounds (name "per_slice" only): the certified risk curve.
    details: JSON-ready details.
  """

  name: str
  kind: str
  value: float
  delta: float
  delta_parts: tuple[tuple[str, float], ...] = ()
  uses_b_train: bool = False
  slices: tuple[SliceBound, ...] = ()
  details: dict[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.name not in NAMES:
      raise ValueError(f"ExtrapolationBound.name: expected one of {NAMES}, got {self.name!r}")
    if self.kind not in (KIND_MIXTURE, KIND_TV, KIND_ESTIMATE, KIND_NONE):
      raise ValueError(f"ExtrapolationBound.kind: unknown kind {self.kind!r}")
    if not (math.isfinite(self.value) and self.value >= 0):
      raise ValueError(f"ExtrapolationBound.value: expected a finite value >= 0, got "
                       f"{self.value!r}")
    total = math.fsum(d for _, d in self.delta_parts)
    if not math.isclose(total, self.delta, rel_tol=1e-12, abs_tol=1e-300):
      raise ValueError(f"ExtrapolationBound.delta {self.delta!r} != sum of delta_parts {total!r}")

  @property
  def certified(self) -> bool:
    """True for an upper value that holds with the stated confidence (not an estimate)."""
    return self.kind in (KIND_MIXTURE, KIND_TV)


def split_delta(delta: float, parts: Sequence[str],
                weights: Mapping[str, float] | None = None) -> dict[str, float]:
  """Shares of ``delta`` by name, proportional to ``weights`` (default equal); they sum to delta.

  Raises:
    ValueError: delta outside (0, 1), no parts, repeated names, weights that are not > 0 or
      name parts not listed.
  """
  delta = float(delta)
  if not 0.0 < delta < 1.0:
    raise ValueError(f"delta: expected a value in (0, 1), got {delta!r}")
  parts = list(parts)
  if not parts or len(set(parts)) != len(parts):
    raise ValueError(f"parts: expected distinct names, got {parts!r}")
  weights = dict(weights or {})
  unknown = sorted(set(weights) - set(parts))
  if unknown:
    raise ValueError(f"delta weights: {unknown} are not among the parts {parts}")
  w = [float(weights.get(p, 1.0)) for p in parts]
  if not all(math.isfinite(x) and x > 0 for x in w):
    raise ValueError(f"delta weights: expected values > 0, got {weights!r}")
  total = math.fsum(w)
  out = {p: delta * x / total for p, x in zip(parts, w, strict=True)}
  out[parts[-1]] = delta - math.fsum(out[p] for p in parts[:-1])  # exact sum
  return out


def maurer_upper(mc_upper: float, kl: float, n: int, delta: float, grid_size: int = 1) -> float:
  """``kl_inv_upper(mc_upper, (kl + ln(2 sqrt(n)/delta) + ln k)/n)``: the certificate's B_train.

  The one definition of the Maurer step used by `certify` and by the weighted-loss and
  per-slice bounds (Maurer 2004, Theorem 5, with a union bound over k prior scales).
  """
  c = (kl + math.log(2.0 * math.sqrt(n) / delta) + math.log(grid_size)) / n
  return float(bounds.kl_inv_upper(min(max(mc_upper, 0.0), 1.0), c))


# ------------------------------------------------------------------------------ slot arrays


def detect_scheme(slot_rows: Any, n: int) -> str:
  """"passes" or "chunk" from the layout of ``slot_rows`` [M, K] over n rows (see module doc).

  Raises:
    ValueError: a layout that is neither.
  """
  rows = np.asarray(slot_rows)
  if rows.ndim != 2 or rows.size == 0:
    raise ValueError(f"slot_rows: expected a non-empty [M, K] array, got shape {rows.shape}")
  if not np.issubdtype(rows.dtype, np.integer):
    raise ValueError(f"slot_rows: expected integers, got dtype {rows.dtype}")
  if rows.shape[1] == n and np.array_equal(rows, np.broadcast_to(np.arange(n), rows.shape)):
    return "passes"
  flat = rows.reshape(-1)
  if flat.size >= n and np.array_equal(flat[:n], np.arange(n)) and flat.size - n < rows.shape[1] \
     and np.all((flat[n:] >= 0) & (flat[n:] < n)):
    return "chunk"
  raise ValueError(f"slot_rows: layout {rows.shape} over n={n} rows is neither 'passes' (each "
                   "row arange(n)) nor 'chunk' (S in order, then < K fillers from S)")


def _slots(slot_losses: Any, slot_rows: Any, difficulty: Any):
  loss = np.asarray(slot_losses, dtype=np.float64)
  rows = np.asarray(slot_rows)
  diff = np.asarray(difficulty, dtype=np.float64).reshape(-1)
  if loss.shape != rows.shape:
    raise ValueError(f"slot_losses {loss.shape} and slot_rows {rows.shape} must have one shape")
  if not np.all(np.isfinite(diff)):
    bad = int(np.argmin(np.isfinite(diff)))
    raise ValueError(f"difficulty[{bad}]: expected a finite number, got {diff[bad]!r}")
  scheme = detect_scheme(rows, diff.size)
  if not (np.all(np.isfinite(loss)) and loss.min() >= -_RANGE_TOL
          and loss.max() <= 1 + _RANGE_TOL):
    raise ValueError("slot_losses: losses must lie in [0, 1]")
  return np.clip(loss, 0.0, 1.0), rows.astype(np.int64), diff, scheme


def _support_index(diff: np.ndarray, mix: MixtureBounds) -> np.ndarray:
  index = {d: i for i, d in enumerate(mix.support)}
  out = np.empty(diff.size, np.int64)
  for i, d in enumerate(diff.tolist()):
    j = index.get(d)
    if j is None:
      raise ValueError(f"difficulty[{i}]: value {d!r} is not in the mixture support "
                       f"{list(mix.support)}")
    out[i] = j
  return out


# ------------------------------------------------------------------------- weighted loss


def weighted_loss_bound(slot_losses: Any, slot_rows: Any, difficulty: Any, mix: MixtureBounds,
                        *, kl: float, grid_size: int = 1, delta_mc: float,
                        delta_pb: float) -> ExtrapolationBound:
  """``E_test <= m_out + c * B_w``, B_w a PAC-Bayes bound on a weighted loss (DESIGN.md §1).

  Weights ``v(d) in [0, 1]`` are fixed without looking at S: with p_train exact,
  ``v = w / w_max`` (``w = u_test / p_train``) and ``c = w_max``; with p_train estimated
  (from S), ``v = u_test / max u_test`` (test side only) and ``c = max_{d in A} u_test(d) /
  (l_train(d) v(d))``. Either way ``p_test(d) <= c p_train(d) v(d)`` on the training support A
  (on the mixture event), so ``sum_A p_test(d) R_d <= c E_train[v(d) l]``, and the loss
  ``l' = v(d) l`` lies in [0, 1]; Maurer's bound on l' (same prior, same KL, confidence
  ``delta_pb``, ``ln k`` for the prior grid) bounds ``E_Q E_train[l']`` by ``B_w``.

  Monte Carlo: ``X_m = mean_k v(d[rows[m, k]]) l[m, k]`` for each draw m. Under "passes" the
  X_m are i.i.d. with mean ``E_Q[mean_S l']``; under "chunk" they are independent [0, 1]
  variables whose means average to it (fillers are uniform rows of S; the argument of
  `pacbayes.perturb.mc_risk`). The one-sided ``bounds.mc_sample_bound`` at ``delta_mc`` gives
  the upper value fed to Maurer.

  Args:
    slot_losses: [M, K] losses in [0, 1].
    slot_rows: [M, K] row indices into S.
    difficulty: [n] difficulty of each row of S.
    mix: the mixtures (`mixture_bounds`).
    kl: KL(Q || P) in nats.
    grid_size: k prior scales searched (ln k paid).
    delta_mc: Monte-Carlo share.
    delta_pb: PAC-Bayes share.

  Returns:
    An `ExtrapolationBound` named "weighted" (kind `KIND_MIXTURE`).

  Raises:
    ValueError: bad arrays, a row difficulty outside the support, non-positive deltas.

  References:
    Maurer, "A note on the PAC Bayesian theorem", 2004; Langford & Caruana 2002 (Monte-Carlo
    term); DESIGN.md section 1 (weighted-loss refinement).
  """
  loss, rows, diff, scheme = _slots(slot_losses, slot_rows, difficulty)
  _check_share(delta_mc, "delta_mc")
  _check_share(delta_pb, "delta_pb")
  col = _support_index(diff, mix)
  u = np.asarray(mix.test_upper)
  lo = np.asarray(mix.train_lower)
  in_a = lo > 0
  if mix.train_exact:
    w = np.where(in_a, u / np.where(in_a, lo, 1.0), 0.0)
    c = float(w.max())
    v = w / c if c > 0 else w
    rule = "v = w / w_max (p_train exact)"
  else:
    v = u / u.max()
    ratio = np.where(in_a & (v > 0), u / np.where(in_a, lo, 1.0) / np.where(v > 0, v, 1.0), 0.0)
    c = float(ratio.max())
    rule = "v = u_test / max u_test (p_train estimated from S: weights from the test side)"
  per_slot = v[col[rows]] * loss  # [M, K]
  x = per_slot.mean(axis=1)  # [M]
  emp = float(np.clip(x.mean(), 0.0, 1.0))
  m = x.size
  mc_up = float(bounds.mc_sample_bound(emp, m, delta_mc))
  b_w = maurer_upper(mc_up, kl, diff.size, delta_pb, grid_size)
  value = mix.m_out + c * b_w
  return ExtrapolationBound(
    name="weighted", kind=KIND_MIXTURE, value=value, delta=delta_mc + delta_pb,
    delta_parts=(("weighted_mc", delta_mc), ("weighted_pb", delta_pb)),
    details={"scheme": scheme, "num_mc": m, "emp_weighted": emp, "mc_upper": mc_up,
             "b_w": b_w, "scale": c, "m_out": mix.m_out, "rule": rule,
             "weights": {difficulty_key(d): float(x) for d, x in zip(mix.support, v,
                                                                       strict=True)}})


def _check_share(value: float, name: str) -> None:
  if not (isinstance(value, (int, float)) and 0.0 < float(value) < 1.0):
    raise ValueError(f"{name}: expected a value in (0, 1), got {value!r}")


# ------------------------------------------------------------------------------ per slice


def _slice_mc(loss: np.ndarray, rows: np.ndarray, scheme: str, members: np.ndarray,
              delta: float) -> tuple[float, float, str]:
  """(mean, upper value, method) for E_Q[R_{S_d}], the slice whose rows are ``members``."""
  n = members.size
  if scheme == "passes":
    z = loss[:, members].mean(axis=1)  # [M] i.i.d. slice risks, one per full pass
    mean = float(np.clip(z.mean(), 0.0, 1.0))
    return mean, float(bounds.mc_sample_bound(mean, z.size, delta)), "kl"
  k = rows.shape[1]
  flat_loss = loss.reshape(-1)[:rows.shape[0] * k]
  draw_of_row = np.arange(flat_loss.size) // k  # primary slots: slot j scores row j (j < n)
  draws = draw_of_row[members]
  counts = np.bincount(draws, minlength=rows.shape[0])
  sums = np.bincount(draws, weights=flat_loss[members], minlength=rows.shape[0])
  used = counts > 0
  mean = float(np.clip(sums.sum() / n, 0.0, 1.0))
  if np.all(counts[used] == counts[used][0]):
    # Equal coverage c: the slice mean is the average of M_d independent [0, 1] chunk-slice
    # means (one per draw touching it), so the kl form applies with M_d of them.
    return mean, float(bounds.mc_sample_bound(mean, int(used.sum()), delta)), "kl"
  sum_sq = float(np.sum((counts[used] / n) ** 2))
  up = float(bounds.hoeffding_upper(mean, sum_sq, delta))
  return mean, min(1.0, up), "hoeffding"


def per_slice_bounds(slot_losses: Any, slot_rows: Any, difficulty: Any, mix: MixtureBounds, *,
                     kl: float, grid_size: int = 1, delta_mc: float,
                     delta_pb: float) -> ExtrapolationBound:
  """Per-slice PAC-Bayes bounds B_d and ``E_test <= sum_d p_test(d) B_d`` (B_d = 1 off-support).

  Slices: the support values that can hold training mass, fixed before S is seen: those with
  ``p_train(d) > 0`` when p_train is exact, every support value when it is estimated; K of
  them. Given the difficulties of S, the ``n_d`` rows of slice d are i.i.d. from ``D_d``, so
  Maurer's bound holds for ``E_Q[R_d]`` from them with the same prior and KL; a union bound
  over the K slices spends ``delta_pb / K`` each, and the Monte-Carlo values ``delta_mc / K``
  each. A slice with ``n_d = 0`` gets ``B_d = 1``. The combined value is
  `mixture.worst_case_mean` of the B_d (1 outside the slices): exactly ``sum p_test B_d``
  for an exact test mixture.

  Monte-Carlo value per slice (proof): only the primary slots count (under "chunk" slot j < n
  scores row j; fillers are left out, so each row of the slice is scored exactly once). Let
  ``c_m`` be the slice rows scored by draw m and ``Z_m`` their mean loss; the ``Z_m`` are
  independent given S (fresh draw per m) and ``Y = sum_m (c_m / n_d) Z_m`` has mean
  ``E_Q[R_{S_d}]``. If every nonzero ``c_m`` is equal (always under "passes", and under "chunk"
  with chunk size 1), ``Y`` is the average of the ``M_d`` variables ``Z_m`` in [0, 1], and the
  one-sided kl bound (`bounds.mc_sample_bound`) applies. Otherwise ``(c_m / n_d) Z_m`` lies in
  ``[0, c_m / n_d]`` and one-sided Hoeffding gives ``E Y <= Y + sqrt(ln(1/delta) sum_m
  (c_m/n_d)^2 / 2)`` (`bounds.hoeffding_upper`). The rule depends on S only, not on the
  losses, so it is fixed before the Monte-Carlo draws.

  Args:
    slot_losses, slot_rows, difficulty, mix, kl, grid_size: as `weighted_loss_bound`.
    delta_mc: Monte-Carlo share (split over the K slices).
    delta_pb: PAC-Bayes share (split over the K slices).

  Returns:
    An `ExtrapolationBound` named "per_slice" (kind `KIND_MIXTURE`) with ``slices``.

  Raises:
    ValueError: bad arrays, a row whose difficulty is outside the training support.

  References:
    Maurer 2004 (Theorem 5); Hoeffding 1963 (Theorems 1 and 2); DESIGN.md section 1.
  """
  loss, rows, diff, scheme = _slots(slot_losses, slot_rows, difficulty)
  _check_share(delta_mc, "delta_mc")
  _check_share(delta_pb, "delta_pb")
  col = _support_index(diff, mix)
  if mix.train_exact:
    slices = [i for i, lo in enumerate(mix.train_lower) if lo > 0]
    outside = np.flatnonzero(~np.isin(col, slices))
    if outside.size:
      i = int(outside[0])
      raise ValueError(f"difficulty[{i}]: value {diff[i]!r} has p_train = 0 in the training "
                       "mixture")
  else:
    slices = list(range(len(mix.support)))
  k = len(slices)
  d_mc, d_pb = delta_mc / k, delta_pb / k
  values = [1.0] * len(mix.support)
  out = []
  for j in slices:
    members = np.flatnonzero(col == j)
    d = mix.support[j]
    if members.size == 0:
      out.append(SliceBound(d, 0, math.nan, 1.0, "none", 1.0))
      continue
    mean, up, how = _slice_mc(loss, rows, scheme, members, d_mc)
    b = maurer_upper(min(up, 1.0), kl, members.size, d_pb, grid_size)
    values[j] = b
    out.append(SliceBound(d, int(members.size), mean, min(up, 1.0), how, b))
  value = worst_case_mean(values, mix)
  return ExtrapolationBound(
    name="per_slice", kind=KIND_MIXTURE, value=value, delta=delta_mc + delta_pb,
    delta_parts=(("slice_mc", delta_mc), ("slice_pb", delta_pb)), slices=tuple(out),
    details={"scheme": scheme, "num_slices": k, "delta_mc_per_slice": d_mc,
             "delta_pb_per_slice": d_pb})
