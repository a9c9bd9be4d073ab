"""Every certified extrapolation kind in one call: slot arrays and mixtures in, a Certificate."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pacbayes.bounds import extrapolation as ext
from pacbayes.certificate.core import Certificate, certify

__all__ = ["certify_with_shift"]


def require(ok: bool, message: str) -> None:
  """Raises ValueError(message) unless ok."""
  if not ok:
    raise ValueError(message)


def real(value: Any, name: str) -> float:
  """A finite float, or ValueError naming ``name``."""
  try:
    out = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a real number; got {value!r}.") from None
  require(math.isfinite(out) and not isinstance(value, bool),
          f"{name} must be a finite number; got {value!r}.")
  return out


def certify_with_shift(
  emp_risk: float,
  num_mc: int,
  kl: float,
  n: int,
  *,
  mixture: ext.MixtureBounds,
  slot_losses: Any = None,
  slot_rows: Any = None,
  difficulty: Any = None,
  tv: float | None = None,
  tv_delta: float = 0.0,
  kinds: Sequence[str] = ("tv", "mixture_shift", "weighted", "per_slice"),
  delta: float = 0.05,
  delta_weights: Mapping[str, float] | None = None,
  notes: Sequence[str] = (),
  **certify_kwargs: Any,
) -> Certificate:
  """Every certified extrapolation kind in one call, with the delta split done here.

  ``delta`` minus what ``mixture`` and ``tv_delta`` already spent is split by
  `extrapolation.split_delta` (equal shares unless ``delta_weights``) over the parts that
  spend: "mc", "pb", and "weighted_mc", "weighted_pb", "slice_mc", "slice_pb" for the kinds
  asked for. The TV kind uses ``tv`` (default ``mixture.tv`` when both mixtures are exact,
  then at no delta) with its ``tv_delta`` (spent when it came from samples, e.g.
  `shift.tv_discrete(...).upper`). "weighted" and "per_slice" need the Monte-Carlo slot
  arrays and the per-row ``difficulty`` of S; without them they are skipped with a note.

  Args:
    emp_risk, num_mc, kl, n: as `certify`.
    mixture: the mixtures (`extrapolation.mixture_bounds`).
    slot_losses: [M, K] from `perturb.MCRisk.slot_losses` (or None).
    slot_rows: [M, K] from `perturb.MCRisk.slot_rows` (or None).
    difficulty: [n] difficulty of each row of S (or None).
    tv: an upper value of TV(p_test, p_train) for the TV kind (None: ``mixture.tv``).
    tv_delta: the confidence that ``tv`` spent.
    kinds: which kinds to compute (subset of "tv", "mixture_shift", "weighted", "per_slice").
    delta: total failure probability.
    delta_weights: relative weights of the parts, by name (default equal).
    notes: one-line remarks.
    **certify_kwargs: grid_size, method, sigma_q, sigma_p, num_params, loss, extra,
      loss_options, lam.

  Returns:
    A `Certificate` whose ``delta`` equals ``delta``.

  Raises:
    ValueError: unknown kinds, a delta too small for the parts, and `certify`'s errors.
  """
  kinds = list(kinds)
  unknown = sorted(set(kinds) - {"tv", "mixture_shift", "weighted", "per_slice"})
  require(not unknown, f"kinds: unknown {unknown}.")
  notes = list(notes)
  use_tv = "tv" in kinds
  if use_tv and tv is None:
    tv = mixture.tv
    if tv is None:
      notes.append("TV kind skipped: a mixture is estimated and no TV upper value was given")
      use_tv = False
  tv_delta = real(tv_delta, "tv_delta") if use_tv else 0.0
  slot_kinds = [k for k in ("weighted", "per_slice") if k in kinds]
  if slot_kinds and (slot_losses is None or slot_rows is None or difficulty is None):
    notes.append(f"{' and '.join(slot_kinds)} skipped: no Monte-Carlo slot arrays / difficulty")
    slot_kinds = []
  names = ["mc", "pb"] + [p for k in slot_kinds for p in
                          ((f"{k}_mc", f"{k}_pb") if k == "weighted" else ("slice_mc",
                                                                          "slice_pb"))]
  use_mix = "mixture_shift" in kinds or bool(slot_kinds)
  spent = math.fsum([mixture.delta if use_mix else 0.0, tv_delta])
  require(0.0 < delta - spent < 1.0, f"delta {delta!r} leaves nothing after the mixture and TV "
                                      f"deltas ({spent!r}).")
  share = ext.split_delta(delta - spent, names, delta_weights)
  common = {"kl": kl, "grid_size": certify_kwargs.get("grid_size", 1)}
  computed = []
  if "weighted" in slot_kinds:
    computed.append(ext.weighted_loss_bound(slot_losses, slot_rows, difficulty, mixture,
                                            delta_mc=share["weighted_mc"],
                                            delta_pb=share["weighted_pb"], **common))
  if "per_slice" in slot_kinds:
    computed.append(ext.per_slice_bounds(slot_losses, slot_rows, difficulty, mixture,
                                         delta_mc=share["slice_mc"], delta_pb=share["slice_pb"],
                                         **common))
  return certify(
    emp_risk, num_mc, kl, n,
    g_ext=float(tv) if use_tv else 0.0, g_ext_kind=ext.KIND_TV if use_tv else ext.KIND_NONE,
    delta_mc=share["mc"], delta_pb=share["pb"], delta_ext=tv_delta,
    mixture=mixture if use_mix else None,
    extrapolation=computed, notes=notes, **certify_kwargs)
