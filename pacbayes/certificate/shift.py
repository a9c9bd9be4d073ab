"""Every extrapolation kind the delta plan pays for, from the Monte-Carlo slot arrays."""

from __future__ import annotations

import dataclasses
from typing import Any

from pacbayes.bounds import extrapolation as ext
from pacbayes.bounds.delta import DeltaPlan
from pacbayes.certificate.core import Record, ShiftInputs, certify
from pacbayes.certificate.report import Certificate, require

__all__ = ["certify_with_shift"]


def certify_with_shift(
  emp_risk: float,
  num_mc: int,
  kl: float,
  n: int,
  *,
  deltas: DeltaPlan,
  shift: ShiftInputs,
  slots: tuple[Any, Any] | None = None,
  grid_size: int = 1,
  method: str = "maurer",
  record: Record | None = None,
) -> Certificate:
  """`certify` with the weighted-loss and per-slice kinds that ``deltas`` has parts for.

  "weighted" is computed when the plan holds "weighted_mc" and "weighted_pb", "per_slice"
  when it holds "slice_mc" and "slice_pb" (`DeltaPlan.spent_by`), each from the
  Monte-Carlo slot arrays and the per-row ``shift.difficulty`` of S, at the plan's shares
  (`extrapolation.weighted_loss_bound`, `extrapolation.per_slice_bounds`). The TV and
  mixture-shift kinds come from ``shift`` as in `certify`.

  Args:
    emp_risk, num_mc, kl, n: as `certify`.
    deltas: the delta plan (it decides the kinds).
    shift: the extrapolation inputs; ``shift.mixture`` and ``shift.difficulty`` are needed
      for the slot kinds.
    slots: (slot_losses [M, K], slot_rows [M, K]) from `pacbayes.posterior.montecarlo.MCRisk`.
    grid_size, method, record: as `certify`.

  Returns:
    A `Certificate` whose ``delta`` is ``deltas.delta``.

  Raises:
    ValueError: slot kinds in the plan without the arrays, difficulty or mixture they need,
      and `certify`'s errors.
  """
  wanted = [k for k in ("weighted", "per_slice") if deltas.has_kind(k)]
  kinds = list(shift.extrapolation)
  if wanted:
    require(slots is not None and shift.difficulty is not None and shift.mixture is not None,
            f"deltas: the plan pays for {wanted} but the Monte-Carlo slot arrays, the "
            "difficulty of S or the mixture are missing.")
    slot_losses, slot_rows = slots
    common = {"kl": kl, "grid_size": grid_size}
    if "weighted" in wanted:
      kinds.append(ext.weighted_loss_bound(
          slot_losses, slot_rows, shift.difficulty, shift.mixture,
          delta_mc=deltas["weighted_mc"], delta_pb=deltas["weighted_pb"], **common))
    if "per_slice" in wanted:
      kinds.append(ext.per_slice_bounds(
          slot_losses, slot_rows, shift.difficulty, shift.mixture,
          delta_mc=deltas["slice_mc"], delta_pb=deltas["slice_pb"], **common))
  return certify(emp_risk, num_mc, kl, n, deltas=deltas,
                 shift=dataclasses.replace(shift, extrapolation=tuple(kinds)),
                 grid_size=grid_size, method=method, record=record)
