"""Certified TV between two mixtures over a discrete feature (difficulty buckets, op counts)."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import numpy as np

from pacbayes.bounds.kinds import KIND_CERTIFIED
from pacbayes.shift.classifier import ShiftError, check_delta

__all__ = ["TVResult", "log_two_pow_k_minus_two", "tv_discrete", "weissman_epsilon"]


def log_two_pow_k_minus_two(k: int) -> float:
  """Returns ln(2^k - 2) for k >= 2 without forming 2^k (stable for any k)."""
  if k < 2:
    raise ShiftError(f"k must be >= 2 for ln(2^k - 2), got {k}")
  # 2^k - 2 = 2^k (1 - 2^(1-k)).
  return k * math.log(2.0) + math.log1p(-(2.0 ** (1 - k)))


def weissman_epsilon(k: int, m: int, delta: float) -> float:
  """Radius e with P(||p_hat - p||_1 >= e) <= delta for m i.i.d. draws over k cells.

  Inverts the bound of Weissman et al. (2003), Theorem 2.1,
  `P(||p_hat - p||_1 >= e) <= (2^k - 2) exp(-m e^2 / 2)`, giving
  `e = sqrt(2 (ln(2^k - 2) + ln(1/delta)) / m)`, capped at 2 (the largest L1 distance).

  Args:
    k: number of cells of the distribution (>= 1; with one cell the deviation is 0).
    m: number of draws (>= 1).
    delta: failure probability in (0, 1).

  Returns:
    The radius e as a float.

  References:
    Weissman, Ordentlich, Seroussi, Verdu, Weinberger (2003), "Inequalities for the L1
    deviation of the empirical distribution", HP Labs Tech. Report HPL-2003-97.
  """
  delta = check_delta(delta)
  if m < 1:
    raise ShiftError(f"m (sample size) must be >= 1, got {m}")
  if k < 1:
    raise ShiftError(f"k (number of cells) must be >= 1, got {k}")
  if k == 1:
    return 0.0
  e = math.sqrt(2.0 * (log_two_pow_k_minus_two(k) - math.log(delta)) / m)
  return min(2.0, e)


def _sort_key(v: Any) -> tuple:
  if isinstance(v, (int, float)) and not isinstance(v, bool):
    return (0, float(v), "")
  return (1, 0.0, repr(v))


def _as_values(values: Any, name: str) -> list[Hashable]:
  if isinstance(values, np.ndarray):
    if values.ndim != 1:
      raise ShiftError(f"{name} must be one-dimensional, got shape {values.shape}")
    values = values.tolist()
  out = []
  for i, v in enumerate(values):
    if isinstance(v, np.generic):
      v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
      raise ShiftError(f"{name}[{i}] is {v}; feature values must be finite")
    try:
      hash(v)
    except TypeError:
      raise ShiftError(f"{name}[{i}] is not hashable ({type(v).__name__})") from None
    out.append(v)
  if not out:
    raise ShiftError(f"{name} is empty; need at least one value per side")
  return out


def _as_probs(probs: Mapping[Hashable, float], name: str) -> dict[Hashable, float]:
  if not isinstance(probs, Mapping) or not probs:
    raise ShiftError(f"{name} must be a non-empty dict value -> probability")
  out = {}
  for v, p in probs.items():
    p = float(p)
    if not (math.isfinite(p) and p >= 0.0):
      raise ShiftError(f"{name}[{v!r}] = {p}; probabilities must be finite and >= 0")
    out[v.item() if isinstance(v, np.generic) else v] = p
  total = math.fsum(out.values())
  if abs(total - 1.0) > 1e-9:
    raise ShiftError(f"{name} must sum to 1, got {total!r}")
  return out


@dataclasses.dataclass(frozen=True)
class TVResult:
  """TV between two mixtures over a discrete feature, with a two-sided confidence interval.

  Attributes:
    estimate: plug-in TV between the two (empirical or given) distributions.
    upper: upper confidence value; `kind` says what it certifies.
    lower: lower confidence value (a lower bound on the TV, no assumption needed).
    kind: "certified under difficulty shift (TV)" (the kind of `upper`).
    delta: total failure probability of the interval [lower, upper].
    support: the feature values, sorted.
    train_probs, test_probs: per-value probabilities aligned with `support`.
    train_counts, test_counts: per-value counts (None for a side given exactly).
    num_train, num_test: sample sizes (0 for a side given exactly).
    eps_train, eps_test: L1 deviation radii (0 for a side given exactly).
    num_cells: k used in the Weissman bound.
  """

  estimate: float
  upper: float
  lower: float
  kind: str
  delta: float
  support: tuple
  train_probs: tuple[float, ...]
  test_probs: tuple[float, ...]
  train_counts: tuple[int, ...] | None
  test_counts: tuple[int, ...] | None
  num_train: int
  num_test: int
  eps_train: float
  eps_test: float
  num_cells: int

  def histogram(self) -> list[dict[str, Any]]:
    """Per-value rows: value, train/test probability and counts."""
    rows = []
    for i, v in enumerate(self.support):
      row = {"value": v, "train_prob": self.train_probs[i], "test_prob": self.test_probs[i]}
      if self.train_counts is not None:
        row["train_count"] = self.train_counts[i]
      if self.test_counts is not None:
        row["test_count"] = self.test_counts[i]
      rows.append(row)
    return rows

  def to_dict(self) -> dict[str, Any]:
    return {
        "estimate": self.estimate, "upper": self.upper, "lower": self.lower,
        "kind": self.kind, "delta": self.delta, "num_train": self.num_train,
        "num_test": self.num_test, "eps_train": self.eps_train, "eps_test": self.eps_test,
        "num_cells": self.num_cells, "histogram": self.histogram(),
    }


def tv_discrete(
    train_values: Iterable[Hashable] | None,
    test_values: Iterable[Hashable] | None,
    delta: float,
    *,
    train_probs: Mapping[Hashable, float] | None = None,
    test_probs: Mapping[Hashable, float] | None = None,
    support: Iterable[Hashable] | None = None,
) -> TVResult:
  """TV between the train and test mixtures over a discrete feature, with confidence values.

  Assumption behind `upper` (kind "certified under difficulty shift (TV)"): train and test examples
  come from one pool and differ only in the mixture over the feature `d` (difficulty bucket,
  operation count): `D(z) = sum_d p(d) D(z | d)` with the same `D(z | d)` on both sides. Then
  `TV(D_test, D_train) = TV(p_test, p_train)` exactly, and the upper value bounds the TV of the
  full distributions. Without that assumption `upper` only bounds the TV of the feature's
  marginals, and `lower` is still a valid lower bound on `TV(D_test, D_train)` (TV can only
  shrink under a map z -> d).

  Derivation. With `p`, `q` the true mixtures and hats the empirical ones,
  `|TV(p, q) - TV(p_hat, q_hat)| <= (||p - p_hat||_1 + ||q - q_hat||_1) / 2` (TV = L1 / 2 and
  the triangle inequality). Weissman et al. give `||p - p_hat||_1 < e(k, m, delta_side)` with
  probability >= 1 - delta_side for each sampled side; a union bound over the sampled sides
  (delta split evenly between them; a side given exactly has no sampling term and takes no
  share) makes `[est - (e_tr + e_te)/2, est + (e_tr + e_te)/2]` hold with probability
  >= 1 - delta. Both ends come from the same event, so no further split is needed.

  Unseen values: when `support` is not given, the cells are the values seen on either side
  (or listed in a given mixture) plus one "unseen" cell collecting every other value, so
  `k = #seen + 1`; merging unseen values into one cell keeps both ends valid (see the
  `|p(A) - q(A)| <= p(A) + q(A)` step on that cell). Give `support` when the feature's range
  is fixed in advance; values outside it are refused.

  Args:
    train_values: feature values of the training sample (None if `train_probs` is given).
    test_values: feature values of the test sample (None if `test_probs` is given).
    delta: failure probability in (0, 1) for the interval.
    train_probs: the training mixture, exactly, when known by design (value -> prob).
      It replaces the empirical train distribution; `train_values`, if given, only fill
      the histogram counts.
    test_probs: the same for the test side.
    support: every value the feature can take, if known.

  Returns:
    A `TVResult`.

  Raises:
    ShiftError: an empty side, non-finite or unhashable values, a value outside `support`,
      probabilities that are negative or do not sum to 1, or delta outside (0, 1).

  References:
    Weissman et al. (2003), "Inequalities for the L1 deviation of the empirical
    distribution", HPL-2003-97, Theorem 2.1.
  """
  delta = check_delta(delta)
  sides = {}
  for name, values, probs in (("train", train_values, train_probs),
                              ("test", test_values, test_probs)):
    if probs is not None:
      probs = _as_probs(probs, f"{name}_probs")
    if values is None and probs is None:
      raise ShiftError(f"{name}_values is None and no {name}_probs was given")
    counts = None
    if values is not None:
      counts = Counter(_as_values(values, f"{name}_values"))
    sides[name] = (counts, probs)

  seen = set()
  for counts, probs in sides.values():
    if counts is not None:
      seen.update(counts)
    if probs is not None:
      seen.update(v for v, p in probs.items() if p > 0)
  if support is not None:
    support_set = set(_as_values(support, "support"))
    outside = seen - support_set
    if outside:
      first = sorted(outside, key=_sort_key)[0]
      raise ShiftError(f"value {first!r} is not in `support` ({len(outside)} such values)")
    cells = sorted(support_set, key=_sort_key)
    num_cells = len(cells)
  else:
    cells = sorted(seen, key=_sort_key)
    num_cells = len(cells) + 1  # One "unseen" cell for values neither side showed.

  sampled = [n for n, (c, p) in sides.items() if p is None]
  delta_side = delta / max(1, len(sampled))
  out = {}
  for name, (counts, probs) in sides.items():
    count_vec = None if counts is None else tuple(int(counts.get(v, 0)) for v in cells)
    if probs is None:
      m = sum(count_vec)
      prob_vec = tuple(c / m for c in count_vec)
      eps = weissman_epsilon(num_cells, m, delta_side)
    else:
      m = 0
      prob_vec = tuple(float(probs.get(v, 0.0)) for v in cells)
      eps = 0.0
    out[name] = (count_vec, prob_vec, m, eps)

  p_tr = np.asarray(out["train"][1], dtype=np.float64)
  p_te = np.asarray(out["test"][1], dtype=np.float64)
  estimate = float(min(1.0, 0.5 * np.sum(np.abs(p_te - p_tr))))
  half_width = 0.5 * (out["train"][3] + out["test"][3])
  return TVResult(
      estimate=estimate,
      upper=min(1.0, estimate + half_width),
      lower=max(0.0, estimate - half_width),
      kind=KIND_CERTIFIED,
      delta=delta,
      support=tuple(cells),
      train_probs=out["train"][1],
      test_probs=out["test"][1],
      train_counts=out["train"][0],
      test_counts=out["test"][0],
      num_train=out["train"][2],
      num_test=out["test"][2],
      eps_train=out["train"][3],
      eps_test=out["test"][3],
      num_cells=num_cells,
  )
