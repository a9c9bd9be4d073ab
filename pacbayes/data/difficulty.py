"""Difficulty measures of a dataset and equal-count difficulty buckets (easy/medium/hard).

This module imports nothing from `pacbayes.data.dataset` (which re-exports it): the measures
take any object with the attributes they read (`HasDifficulty`), so there is no import cycle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np


class HasDifficulty(Protocol):
  """What the measures read from a `pacbayes.data.dataset.Dataset`."""

  difficulty: np.ndarray | None
  source: str

  @property
  def num_targets(self) -> np.ndarray: ...


def completion_lengths(dataset: HasDifficulty) -> np.ndarray:
  """[N] int32 number of target tokens per row: the CoT/completion length in tokens."""
  return dataset.num_targets


def difficulty_values(dataset: HasDifficulty, measure: str = "difficulty") -> np.ndarray:
  """Per-row difficulty values.

  Args:
    dataset: a `pacbayes.data.dataset.Dataset` (or any `HasDifficulty`).
    measure: ``"difficulty"`` (the rows' own field) or ``"completion_length"`` (number of
      target tokens, the token-level analogue of the paper's CoT length).

  Returns:
    [N] float64 values.
  """
  if measure == "difficulty":
    if dataset.difficulty is None:
      raise ValueError(f"{dataset.source}: the rows have no 'difficulty' field")
    return dataset.difficulty
  if measure == "completion_length":
    return completion_lengths(dataset).astype(np.float64)
  raise ValueError(f"measure: expected 'difficulty' or 'completion_length', got {measure!r}")


@dataclasses.dataclass(frozen=True, eq=False)
class Buckets:
  """A split of values into ordered buckets by thresholds.

  Attributes:
    ids: [N] int32 bucket of each value, 0 (lowest) to k - 1.
    edges: [k - 1] float64 thresholds; bucket j holds values in (edges[j-1], edges[j]].
    names: one name per bucket.
  """

  ids: np.ndarray
  edges: np.ndarray
  names: tuple[str, ...]

  @property
  def labels(self) -> list[str]:
    """The bucket name of each value."""
    return [self.names[i] for i in self.ids]

  @property
  def counts(self) -> np.ndarray:
    """[k] int64 number of values in each bucket."""
    return np.bincount(self.ids, minlength=len(self.names))

  def indices(self, name: str) -> np.ndarray:
    """Row indices of the bucket called ``name``."""
    if name not in self.names:
      raise ValueError(f"name: expected one of {self.names}, got {name!r}")
    return np.flatnonzero(self.ids == self.names.index(name))


def assign_buckets(values: Any, edges: Any) -> np.ndarray:
  """[N] int32 bucket ids of ``values`` under thresholds ``edges`` (right-closed buckets)."""
  values_N = np.asarray(values, np.float64)
  edges_K = np.asarray(edges, np.float64)  # K = buckets - 1 thresholds
  if values_N.ndim != 1 or edges_K.ndim != 1:
    raise ValueError("assign_buckets: values and edges must be 1-D")
  if (np.diff(edges_K) < 0).any():
    raise ValueError("assign_buckets: edges must be non-decreasing")
  return np.searchsorted(edges_K, values_N, side="left").astype(np.int32)


def bucket_by_quantiles(
  values: Any, k: int = 3, names: Sequence[str] | None = ("easy", "medium", "hard")
) -> Buckets:
  """Splits values into ``k`` equal-count buckets by rank (the paper's easy/medium/hard thirds).

  The thresholds are empirical quantiles: ``edges[j-1]`` is the largest value among the
  ``ceil(j N / k)`` smallest. Without ties at the thresholds this is exactly the rank split
  (sizes differ by at most one); values tied at a threshold all go to the lower bucket, so
  ties can unbalance the counts (see ``Buckets.counts``). The bucket is a function of the
  value, so `assign_buckets` applies the same split to another set (e.g. a test set), which
  is what a difficulty-shift TV needs.

  Args:
    values: [N] numbers, larger = harder.
    k: number of buckets.
    names: one name per bucket (lowest first); None gives ``"q0"``, ``"q1"``, ...

  Returns:
    The `Buckets`.
  """
  values_N = np.asarray(values, np.float64)
  if values_N.ndim != 1 or not np.isfinite(values_N).all():
    raise ValueError("values: expected a 1-D array of finite numbers")
  if not isinstance(k, int) or k < 1:
    raise ValueError(f"k: expected a positive int, got {k!r}")
  if values_N.size < k:
    raise ValueError(f"values: need at least k={k} values, got {values_N.size}")
  names = tuple(f"q{j}" for j in range(k)) if names is None else tuple(names)
  if len(names) != k:
    raise ValueError(f"names: expected {k} names, got {len(names)}")
  ordered_N = np.sort(values_N)
  n = values_N.size
  edges_K = np.asarray([ordered_N[-(-j * n // k) - 1] for j in range(1, k)], np.float64)
  return Buckets(ids=assign_buckets(values_N, edges_K), edges=edges_K, names=names)
