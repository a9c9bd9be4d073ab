"""The delta plan: one object that splits the failure probability into named parts.

Every certificate spends its confidence ``delta`` on named events, fixed before any data is
seen (docs/THEORY.md §1.8): "mc" (the Monte-Carlo term), "pb" (the PAC-Bayes term),
"tv" (a TV upper value estimated from samples), "mixture" (mixtures estimated from samples),
"weighted_mc" / "weighted_pb" (the weighted-loss kind) and "slice_mc" / "slice_pb" (the
per-slice kind). `DeltaPlan` holds the parts, checks them, sums exactly to its delta and says
which parts each extrapolation kind spends.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["KIND_PARTS", "PART_NAMES", "DeltaPlan", "split_delta"]

# Every part a plan may hold, in the order plans list them.
PART_NAMES = ("mc", "pb", "tv", "mixture", "weighted_mc", "weighted_pb", "slice_mc",
              "slice_pb")
# The parts each kind of value spends when they are in the plan (B_train: "mc" and "pb").
KIND_PARTS = {
    "b_train": ("mc", "pb"),
    "tv": ("tv",),
    "estimate": ("tv",),
    "mixture_shift": ("mixture",),
    "weighted": ("mixture", "weighted_mc", "weighted_pb"),
    "per_slice": ("mixture", "slice_mc", "slice_pb"),
}


def split_delta(delta: float, parts: Sequence[str],
                weights: Mapping[str, float] | None = None) -> dict[str, float]:
  """Shares of ``delta`` by name, proportional to ``weights`` (default equal); they sum to delta.

  The last part takes ``delta`` minus the others, so ``math.fsum`` of the shares is delta.

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


@dataclasses.dataclass(frozen=True)
class DeltaPlan:
  """Named shares of a failure probability ``delta`` (their exact sum).

  Attributes:
    parts: (name, share) pairs, names from `PART_NAMES`, shares > 0, in `PART_NAMES` order
      of first mention (as given).
  """

  parts: tuple[tuple[str, float], ...]

  def __post_init__(self):
    parts = tuple((str(k), float(v)) for k, v in (
        self.parts.items() if isinstance(self.parts, Mapping) else self.parts))
    object.__setattr__(self, "parts", parts)
    names = [k for k, _ in parts]
    unknown = [k for k in names if k not in PART_NAMES]
    if unknown:
      raise ValueError(f"delta parts: unknown names {unknown} (known: {list(PART_NAMES)})")
    if len(set(names)) != len(names):
      raise ValueError(f"delta parts: repeated names {names}")
    for name in ("mc", "pb"):
      if name not in names:
        raise ValueError(f"delta parts: the {name!r} part is required")
    for k, v in parts:
      if not (math.isfinite(v) and 0.0 < v < 1.0):
        raise ValueError(f"delta parts: {k!r} must be in (0, 1), got {v!r}")
    if not self.delta < 1.0:
      raise ValueError(f"delta: the parts sum to {self.delta!r}, not below 1")

  # ---------------------------------------------------------------------- construction

  @classmethod
  def equal(cls, delta: float, names: Sequence[str],
            weights: Mapping[str, float] | None = None) -> DeltaPlan:
    """``delta`` split over ``names`` in proportion to ``weights`` (default equal shares)."""
    return cls(tuple(split_delta(delta, names, weights).items()))

  @classmethod
  def for_kinds(cls, delta: float, *, tv: bool = False, mixture: bool = False,
                weighted: bool = False, per_slice: bool = False,
                weights: Mapping[str, float] | None = None) -> DeltaPlan:
    """Equal shares over the parts the computed kinds spend.

    Args:
      delta: total failure probability in (0, 1).
      tv: a TV upper value estimated from samples is used (exact TV spends nothing).
      mixture: the mixtures are estimated from samples (exact mixtures spend nothing).
      weighted: the weighted-loss kind is computed.
      per_slice: the per-slice kind is computed.
      weights: relative weights by part name (default equal).
    """
    names = ["mc", "pb"] + (["tv"] if tv else []) + (["mixture"] if mixture else [])
    names += (["weighted_mc", "weighted_pb"] if weighted else [])
    names += (["slice_mc", "slice_pb"] if per_slice else [])
    return cls.equal(delta, names, weights)

  # ----------------------------------------------------------------------- reading

  @property
  def delta(self) -> float:
    """The total: ``math.fsum`` of the shares."""
    return math.fsum(v for _, v in self.parts)

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(k for k, _ in self.parts)

  def __contains__(self, name: str) -> bool:
    return name in self.names

  def __getitem__(self, name: str) -> float:
    for k, v in self.parts:
      if k == name:
        return v
    raise KeyError(f"delta plan: no part {name!r} (parts: {list(self.names)})")

  def get(self, name: str, default: float = 0.0) -> float:
    return self[name] if name in self else default

  def as_dict(self) -> dict[str, float]:
    return dict(self.parts)

  def spent_by(self, kind: str) -> tuple[str, ...]:
    """The parts of this plan that the value ``kind`` (a `KIND_PARTS` key) spends."""
    if kind not in KIND_PARTS:
      raise ValueError(f"kind: expected one of {sorted(KIND_PARTS)}, got {kind!r}")
    return tuple(p for p in KIND_PARTS[kind] if p in self)

  def has_kind(self, kind: str) -> bool:
    """True when every part the kind needs beyond "mixture" is in the plan."""
    return all(p in self for p in KIND_PARTS[kind] if p != "mixture")

  def merged(self, names: Sequence[str], into: str) -> DeltaPlan:
    """The plan with the parts ``names`` added to ``into`` (withdrawn kinds stay unspent)."""
    moved = math.fsum(self.get(k) for k in names)
    parts = [(k, v + moved if k == into else v) for k, v in self.parts if k not in names]
    if into not in [k for k, _ in parts]:
      parts.append((into, moved))
    return DeltaPlan(tuple(parts))

  def to_json(self) -> dict[str, Any]:
    return {"delta": self.delta, "parts": [[k, v] for k, v in self.parts]}
