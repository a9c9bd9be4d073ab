"""Extrapolation terms beside TV: mixture shift, weighted-loss and per-slice PAC-Bayes bounds.

All bounds here are upper values of ``E_Q[R_test]`` under the one-pool assumption of
docs/THEORY.md §1 (train and test differ only in their mixtures over a discrete
difficulty ``d``; see `pacbayes.bounds.mixture`). The weighted-loss and per-slice bounds are pure
functions of the Monte-Carlo arrays of `pacbayes.posterior.perturb.MCRisk`:

  slot_losses [M, K] float: the loss of each scored slot under posterior draw m,
  slot_rows   [M, K] int:   the row of S scored in that slot,

plus the difficulty of every row of S. Two layouts are recognised from the arrays (anything
else is refused): "passes" (every row of ``slot_rows`` is ``arange(n)``: M full passes) and
"chunk" (``slot_rows.ravel()[:n] == arange(n)``: S cut in order into M chunks of K rows, one
draw per chunk, the last ``M K - n`` slots filler rows drawn uniformly from S).

Confidence accounting: every kind carries the delta it spends (``delta_parts``); the
certificate adds them all, so the minimum over the kinds computed is valid on the
intersection of their events (`pacbayes.certificate.core.certify`). The shares come from one
`pacbayes.bounds.delta.DeltaPlan`; B_train is `pacbayes.bounds.btrain.maurer_upper`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from pacbayes.bounds import pac as bounds
from pacbayes.bounds.btrain import maurer_upper
from pacbayes.bounds.kinds import KIND_CERTIFIED, KIND_ESTIMATE
from pacbayes.bounds.mixture import (
    MixtureBounds,
    difficulty_key,
    training_columns,
    training_slices,
    worst_case_mean,
)

__all__ = [
  "KIND_ESTIMATE",
  "KIND_MIXTURE",
  "KIND_NONE",
  "KIND_TV",
  "NAMES",
  "ExtrapolationBound",
  "SliceBound",
  "detect_scheme",
  "loss_weights",
  "per_slice_bounds",
  "slice_mc_upper",
  "slice_values",
  "weighted_loss_bound",
  "weighted_value",
]

KIND_MIXTURE = "certified under mixture shift"
KIND_TV = KIND_CERTIFIED  # one definition of the words, in pacbayes.bounds.kinds
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
    raise ValueError(f"difficulty[{bad}]: expected a finite number, got {float(diff[bad])!r}")
  scheme = detect_scheme(rows, diff.size)
  if not (np.all(np.isfinite(loss)) and loss.min() >= -_RANGE_TOL
          and loss.max() <= 1 + _RANGE_TOL):
    raise ValueError("slot_losses: losses must lie in [0, 1]")
  return np.clip(loss, 0.0, 1.0), rows.astype(np.int64), diff, scheme


# ------------------------------------------------------------------------- weighted loss


def weighted_loss_bound(slot_losses: Any, slot_rows: Any, difficulty: Any, mix: MixtureBounds,
                        *, kl: float, grid_size: int = 1, delta_mc: float,
                        delta_pb: float) -> ExtrapolationBound:
  """``E_test <= m_out + c * B_w``, B_w a PAC-Bayes bound on a weighted loss (docs/THEORY.md §1).

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
  `pacbayes.posterior.montecarlo.mc_risk`). The one-sided ``bounds.mc_sample_bound`` at
  ``delta_mc`` gives the upper value fed to Maurer.

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
    term); docs/THEORY.md §1 (weighted-loss refinement).
  """
  loss, rows, diff, scheme = _slots(slot_losses, slot_rows, difficulty)
  col = training_columns(diff, mix)
  v, c, rule = loss_weights(mix)
  per_slot = v[col[rows]] * loss  # [M, K]
  x = per_slot.mean(axis=1)  # [M]
  emp = float(np.clip(x.mean(), 0.0, 1.0))
  value, mc_up, b_w = weighted_value(emp, x.size, diff.size, mix, kl=kl, grid_size=grid_size,
                                     delta_mc=delta_mc, delta_pb=delta_pb)
  return ExtrapolationBound(
    name="weighted", kind=KIND_MIXTURE, value=float(value), delta=delta_mc + delta_pb,
    delta_parts=(("weighted_mc", delta_mc), ("weighted_pb", delta_pb)),
    details={"scheme": scheme, "num_mc": int(x.size), "emp_weighted": emp,
             "mc_upper": float(mc_up), "b_w": float(b_w), "scale": c, "m_out": mix.m_out,
             "rule": rule, "weights": {difficulty_key(d): float(y)
                                       for d, y in zip(mix.support, v, strict=True)}})


def loss_weights(mix: MixtureBounds) -> tuple[np.ndarray, float, str]:
  """(v [k] in [0, 1] per support value, scale c, rule in words) of the weighted loss.

  See `weighted_loss_bound`: ``p_test(d) <= c p_train(d) v(d)`` on the training support.
  """
  u = np.asarray(mix.test_upper)
  lo = np.asarray(mix.train_lower)
  in_a = lo > 0
  if mix.train_exact:
    w = np.where(in_a, u / np.where(in_a, lo, 1.0), 0.0)
    c = float(w.max())
    return (w / c if c > 0 else w), c, "v = w / w_max (p_train exact)"
  v = u / u.max()
  ratio = np.where(in_a & (v > 0), u / np.where(in_a, lo, 1.0) / np.where(v > 0, v, 1.0), 0.0)
  return v, float(ratio.max()), ("v = u_test / max u_test (p_train estimated: weights from the "
                                 "test side only)")


def weighted_value(emp_weighted: Any, num_mc: int, n: int, mix: MixtureBounds, *, kl: float,
                   grid_size: int = 1, delta_mc: float, delta_pb: float) -> tuple[Any, Any, Any]:
  """(value, mc_upper, B_w) of the weighted-loss bound from the Monte-Carlo mean of l'.

  ``mc_upper = mc_sample_bound(emp, M, delta_mc)``, ``B_w = maurer_upper(mc_upper, kl, n,
  delta_pb, k)``, ``value = m_out + c B_w`` (`loss_weights`). Vectorised over
  ``emp_weighted`` (e.g. simulation trials).
  """
  _check_share(delta_mc, "delta_mc")
  _check_share(delta_pb, "delta_pb")
  _, c, _ = loss_weights(mix)
  emp = np.clip(np.asarray(emp_weighted, dtype=np.float64), 0.0, 1.0)
  mc_up = np.asarray(bounds.mc_sample_bound(emp, num_mc, delta_mc), dtype=np.float64)
  b_w = np.asarray(maurer_upper(mc_up, kl, n, delta_pb, grid_size))
  return mix.m_out + c * b_w, mc_up, b_w


def _check_share(value: float, name: str) -> None:
  if not (isinstance(value, (int, float)) and 0.0 < float(value) < 1.0):
    raise ValueError(f"{name}: expected a value in (0, 1), got {value!r}")


# ------------------------------------------------------------------------------ per slice


def slice_mc_upper(slot_losses: Any, slot_rows: Any, members: Any, delta: float
                   ) -> tuple[Any, Any, str]:
  """(mean, upper value, method) for E_Q[R_{S_d}], the slice of S whose rows are ``members``.

  Only primary slots count (see `per_slice_bounds` for the proof of both methods): "kl"
  (`bounds.mc_sample_bound` over the M_d draws touching the slice) when every such draw
  covers the same number of slice rows, else "hoeffding" (`bounds.hoeffding_upper` with
  ranges c_m / n_d). Vectorised over leading axes of ``slot_losses`` ([..., M, K], e.g.
  repeated Monte-Carlo runs over one S); ``slot_rows`` [M, K] fixes the layout.

  Raises:
    ValueError: a layout that is neither scheme, or no members.
  """
  loss = np.asarray(slot_losses, dtype=np.float64)
  rows = np.asarray(slot_rows)
  members = np.asarray(members, dtype=np.int64).reshape(-1)
  n_d = members.size
  if n_d == 0:
    raise ValueError("members: the slice has no rows")
  n = int(rows.max()) + 1 if rows.size else 0
  scheme = detect_scheme(rows, max(n, int(members.max()) + 1))
  m_total, k = rows.shape
  flat = loss.reshape(loss.shape[:-2] + (m_total * k,))
  if scheme == "passes":
    z = flat.reshape(loss.shape)[..., members].mean(axis=-1)  # [..., M] i.i.d. slice risks
    mean = np.clip(z.mean(axis=-1), 0.0, 1.0)
    return mean, np.asarray(bounds.mc_sample_bound(mean, m_total, delta)), "kl"
  draws = members // k  # primary slot j < n scores row j, under draw j // K
  counts = np.bincount(draws, minlength=m_total)
  used = counts > 0
  mean = np.clip(flat[..., members].sum(axis=-1) / n_d, 0.0, 1.0)
  if np.all(counts[used] == counts[used][0]):
    return mean, np.asarray(bounds.mc_sample_bound(mean, int(used.sum()), delta)), "kl"
  sum_sq = float(np.sum((counts[used] / n_d) ** 2))
  up = np.minimum(np.asarray(bounds.hoeffding_upper(mean, sum_sq, delta)), 1.0)
  return mean, up, "hoeffding"


def slice_values(mc_upper: Any, n_d: Any, *, kl: float, grid_size: int = 1,
                 delta_pb: float) -> np.ndarray:
  """Per-slice Maurer bounds ``B_d`` (1 where ``n_d == 0``), vectorised over any shape.

  Args:
    mc_upper: [...] Monte-Carlo upper values of E_Q[R_{S_d}].
    n_d: [...] slice sizes (ints >= 0).
    kl: KL(Q || P) in nats.
    grid_size: k prior scales (ln k).
    delta_pb: the confidence of EACH slice (the caller's share divided by the slice count).
  """
  n_d = np.asarray(n_d)
  safe = np.maximum(n_d, 1)
  b = np.asarray(maurer_upper(np.where(n_d > 0, mc_upper, 1.0), kl, safe, delta_pb, grid_size))
  return np.where(n_d > 0, b, 1.0)


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
    Maurer 2004 (Theorem 5); Hoeffding 1963 (Theorems 1 and 2); docs/THEORY.md §1.
  """
  loss, rows, diff, scheme = _slots(slot_losses, slot_rows, difficulty)
  _check_share(delta_mc, "delta_mc")
  _check_share(delta_pb, "delta_pb")
  col = training_columns(diff, mix)
  slices = training_slices(mix)
  k = len(slices)
  d_mc, d_pb = delta_mc / k, delta_pb / k
  stats = []
  for j in slices:
    members = np.flatnonzero(col == j)
    if members.size == 0:
      stats.append((0, math.nan, 1.0, "none"))
    else:
      mean, up, how = slice_mc_upper(loss, rows, members, d_mc)
      stats.append((int(members.size), float(mean), float(up), how))
  n_d = np.array([s_[0] for s_ in stats])
  ups = np.array([min(s_[2], 1.0) for s_ in stats])
  b_d = slice_values(ups, n_d, kl=kl, grid_size=grid_size, delta_pb=d_pb)
  values = np.ones(len(mix.support))
  values[slices] = b_d
  out = [SliceBound(mix.support[j], int(nd), float(st[1]), float(up), st[3], float(b))
         for j, nd, st, up, b in zip(slices, n_d, stats, ups, b_d, strict=True)]
  value = worst_case_mean(values, mix)
  return ExtrapolationBound(
    name="per_slice", kind=KIND_MIXTURE, value=value, delta=delta_mc + delta_pb,
    delta_parts=(("slice_mc", delta_mc), ("slice_pb", delta_pb)), slices=tuple(out),
    details={"scheme": scheme, "num_slices": k, "delta_mc_per_slice": d_mc,
             "delta_pb_per_slice": d_pb})
