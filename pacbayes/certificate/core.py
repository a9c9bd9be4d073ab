"""Proposition 4.1 assembled: the two-gap risk certificate from its measured ingredients.

`certify` turns (Monte-Carlo risk, KL, n, a `DeltaPlan`, the shift inputs) into a
`pacbayes.certificate.report.Certificate`; `pacbayes.certificate.route.certify_posterior` is
the one route that measures those ingredients for a prior and a posterior.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from pacbayes.bounds import extrapolation as ext
from pacbayes.bounds import mixture as mixtures
from pacbayes.bounds import pac as bounds
from pacbayes.bounds.btrain import b_train_upper, maurer_budget
from pacbayes.bounds.delta import DeltaPlan
from pacbayes.certificate.report import (
  G_EXT_KINDS,
  KIND_ALIASES,
  METHODS,
  SCHEMA,
  SCHEMA_V1,
  SCHEMA_V2,
  Certificate,
  default_name,
  integer,
  json_ready,
  real,
  require,
)

__all__ = ["G_EXT_KINDS", "METHODS", "SCHEMA", "SCHEMA_V1", "SCHEMA_V2", "Certificate", "Record",
           "ShiftInputs", "certify"]


@dataclasses.dataclass(frozen=True)
class ShiftInputs:
  """The extrapolation side of a certificate, measured before it.

  Attributes:
    g_ext: TV-kind or estimate term in [0, 1]; 0 when ``g_ext_kind`` is "none".
    g_ext_kind: kind of ``g_ext``: `extrapolation.KIND_TV`, `KIND_ESTIMATE` or "none" (or the
      v1 word "certified under difficulty shift", the TV kind). Its delta is the plan's "tv"
      part (none: an exact TV spends nothing).
    mixture: the train/test difficulty mixtures (`mixture.mixture_bounds`) for the
      mixture-shift kind, or None; its delta is the plan's "mixture" part.
    difficulty: [n] difficulty of each row of S, for the weighted and per-slice kinds (the
      route computes those the delta plan has parts for), or None.
    extrapolation: kinds computed beforehand (`extrapolation.weighted_loss_bound` /
      `per_slice_bounds`, with this ``mixture``).
  """

  g_ext: float = 0.0
  g_ext_kind: str = ext.KIND_NONE
  mixture: mixtures.MixtureBounds | None = None
  difficulty: Any = None
  extrapolation: tuple[ext.ExtrapolationBound, ...] = ()


@dataclasses.dataclass(frozen=True)
class Record:
  """What a certificate records beside its numbers.

  Attributes:
    sigma_q, sigma_p: posterior and prior scales (None if unknown / not isotropic).
    num_params: number of perturbed parameters.
    loss: the loss name; loss_options: its options (e.g. ``{"alpha": 0.01}``).
    extra: JSON-serialisable details; notes: one-line remarks for the table.
    best_possible_bound: `pacbayes.bounds.feasibility.best_possible_bound`, or None.
  """

  sigma_q: float | None = None
  sigma_p: float | None = None
  num_params: int | None = None
  loss: str = "token_error"
  loss_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  notes: Sequence[str] = ()
  best_possible_bound: float | None = None


def _plan(deltas: DeltaPlan | float | None, shift: ShiftInputs) -> DeltaPlan:
  """The delta plan, checked against the kinds: every part spent is in it, and no more."""
  kinds = list(shift.extrapolation)
  if not isinstance(deltas, DeltaPlan):
    require(not kinds and (shift.mixture is None or shift.mixture.delta == 0.0),
            "deltas: give a DeltaPlan when extrapolation kinds or an estimated mixture are "
            "used (their shares must come from the plan).")
    delta = 0.05 if deltas is None else real(deltas, "delta")
    require(0.0 < delta < 1.0, f"delta must be in (0, 1); got {delta!r}.")
    return DeltaPlan.for_kinds(delta, tv=shift.g_ext_kind != ext.KIND_NONE)
  plan = deltas
  for k in kinds:
    for name, value in k.delta_parts:
      require(name in plan and math.isclose(plan[name], value, rel_tol=1e-12),
              f"extrapolation {k.name}: its delta part {name!r} = {value!r} is not the "
              f"plan's {plan.get(name)!r}.")
  mix_delta = 0.0 if shift.mixture is None else shift.mixture.delta
  require(mix_delta <= plan.get("mixture") * (1.0 + 1e-12),
          f"mixture: it spent {mix_delta!r} but the plan's 'mixture' part is only "
          f"{plan.get('mixture')!r}.")
  require(shift.g_ext_kind != ext.KIND_NONE or "tv" not in plan,
          "deltas: a 'tv' part needs a g_ext kind (tv or estimate).")
  spent = {"mc", "pb", "tv", "mixture"} | {n for k in kinds for n, _ in k.delta_parts}
  unused = [n for n in plan.names if n not in spent]
  require(not unused, f"deltas: parts {unused} are spent by no kind computed.")
  return plan


def _check_inputs(emp_risk, num_mc, kl, n, shift: ShiftInputs) -> tuple:
  emp_risk = real(emp_risk, "emp_risk")
  require(0.0 <= emp_risk <= 1.0, f"emp_risk must be in [0, 1]; got {emp_risk!r}.")
  num_mc = integer(num_mc, "num_mc", 1)
  require(isinstance(kl, numbers.Real) and not math.isnan(kl) and kl >= 0,
          f"kl must be a number >= 0; got {kl!r}.")
  require(math.isfinite(kl), "kl is infinite (a moved parameter is not perturbed): no bound.")
  n = integer(n, "n", 1)
  kind = KIND_ALIASES.get(shift.g_ext_kind, shift.g_ext_kind)
  require(kind in G_EXT_KINDS and kind != ext.KIND_MIXTURE,
          f"g_ext_kind must be one of {(ext.KIND_TV, ext.KIND_ESTIMATE, ext.KIND_NONE)} (the "
          f"mixture kind comes from `mixture`); got {kind!r}.")
  g_ext = real(shift.g_ext, "g_ext")
  require(0.0 <= g_ext <= 1.0, f"g_ext must be in [0, 1] (a TV distance); got {g_ext!r}.")
  require(kind != ext.KIND_NONE or g_ext == 0.0,
          f"g_ext_kind is 'none' but g_ext = {g_ext!r}; give the kind of the g_ext value.")
  kinds = list(shift.extrapolation)
  for k in kinds:
    require(isinstance(k, ext.ExtrapolationBound),
            f"extrapolation: expected ExtrapolationBound values; got {type(k).__name__}.")
  require(shift.mixture is None or isinstance(shift.mixture, mixtures.MixtureBounds),
          f"mixture must be a MixtureBounds; got {type(shift.mixture).__name__}.")
  require(not kinds or shift.mixture is not None,
          "extrapolation kinds need the `mixture` they were computed with (its delta counts).")
  names = [k.name for k in kinds]
  require(len(set(names)) == len(names) and not {"tv", "mixture_shift", "none"} & set(names),
          f"extrapolation: repeated or reserved kind names {names}.")
  return emp_risk, num_mc, float(kl), n, dataclasses.replace(shift, g_ext=g_ext,
                                                              g_ext_kind=kind)


def _check_record(record: Record) -> Record:
  for name in ("sigma_q", "sigma_p"):
    value = getattr(record, name)
    if value is not None:
      require(real(value, name) > 0, f"{name} must be > 0; got {value!r}.")
  require(isinstance(record.loss, str) and bool(record.loss),
          f"loss must be a non-empty name; got {record.loss!r}.")
  notes = record.notes
  require(isinstance(notes, Sequence) and not isinstance(notes, str)
          and all(isinstance(x, str) and "\n" not in x for x in notes),
          "notes must be a sequence of one-line strings.")
  best = record.best_possible_bound
  return dataclasses.replace(
      record,
      sigma_q=None if record.sigma_q is None else float(record.sigma_q),
      sigma_p=None if record.sigma_p is None else float(record.sigma_p),
      num_params=None if record.num_params is None else integer(record.num_params,
                                                                "num_params", 0),
      extra=json_ready(dict(record.extra), "extra"),
      loss_options=json_ready(dict(record.loss_options), "loss_options"),
      notes=tuple(notes), best_possible_bound=None if best is None else real(best, "best"))


def _kind_dict(k: ext.ExtrapolationBound, b_train: float) -> dict[str, Any]:
  return {"name": k.name, "kind": k.kind, "value": k.value, "g_ext": k.value - b_train,
          "delta": k.delta, "delta_parts": [[a, b] for a, b in k.delta_parts],
          "uses_b_train": k.uses_b_train, "details": k.details}


def certify(
  emp_risk: float,
  num_mc: int,
  kl: float,
  n: int,
  *,
  deltas: DeltaPlan | float | None = None,
  shift: ShiftInputs | None = None,
  grid_size: int = 1,
  method: str = "maurer",
  lam: float | None = None,
  record: Record | None = None,
) -> Certificate:
  """Assembles the two-gap bound of Proposition 4.1 from its measured ingredients.

  With probability at least ``1 - delta``, ``E_Q[R_test] <= emp + epsilon + g_gen + g_ext``:

    epsilon = kl_inv_upper(emp, ln(1/delta_mc)/M) - emp       (one-sided; Langford & Caruana)
    g_gen   = kl_inv_upper(emp + epsilon, (KL + ln(2 sqrt(n)/delta_pb) + ln k)/n)
              - (emp + epsilon)                                (Maurer; `bounds.btrain`)
    B_train = emp + epsilon + g_gen >= E_Q[R_train]            (on those two events)
    g_ext   = (smallest certified extrapolation value) - B_train.

  Extrapolation kinds (each spends the parts of ``deltas`` it names, `DeltaPlan.spent_by`):
  "tv" / "estimate" from ``shift.g_ext`` (value ``B_train + g_ext``, delta the plan's "tv"
  part, none when the TV is exact); "mixture_shift" when ``shift.mixture`` is given
  (``mixture.mixture_shift_bound(B_train, mixture)``, its "mixture" part spent once
  for every kind that uses it); and the precomputed ``shift.extrapolation`` kinds
  ("weighted", "per_slice"). The choice of the minimum is fixed in advance (min over all
  certified kinds computed) and every computed kind is paid for, so the minimum holds on the
  intersection of the events, with probability at least ``1 - delta`` by a union bound. An
  "estimate" is used only when no certified kind is available. The baselines (other g_gen
  methods) pay ``ln k`` the same way, added to the KL.

  Args:
    emp_risk: Monte-Carlo mean of the loss under posterior draws, in [0, 1].
    num_mc: number M of independent [0, 1]-valued draws behind ``emp_risk``.
    kl: KL(Q || P) in nats (finite, >= 0).
    n: training-set size (>= 1).
    deltas: the `DeltaPlan`, or a total delta (default 0.05) split equally over "mc", "pb"
      and, with a g_ext kind, "tv" (only without precomputed kinds or estimated mixtures).
    shift: the extrapolation inputs (`ShiftInputs`; default none).
    grid_size: number k of prior scales the prior was chosen from (ln k is added).
    method: "maurer" (default), "mcallester", "catoni", "fquad" or "flamb".
    lam: lambda for "flamb" (None: its closed-form optimum).
    record: scales, loss, notes and details to keep (`Record`).

  Returns:
    A Certificate; ``bound == emp_risk + epsilon + g_gen + g_ext`` exactly.

  Raises:
    ValueError: naming the argument, for out-of-range inputs or a delta plan that does not
      match the kinds.

  References:
    Proposition 4.1 of arXiv 2605.12906; Langford & Caruana, NIPS 2001; Maurer 2004;
    docs/THEORY.md §1.7, §1.8.
  """
  shift = ShiftInputs() if shift is None else shift
  emp_risk, num_mc, kl, n, shift = _check_inputs(emp_risk, num_mc, kl, n, shift)
  plan = _plan(deltas, shift)
  delta_mc, delta_pb, delta_tv = plan["mc"], plan["pb"], plan.get("tv")
  grid_size = integer(grid_size, "grid_size", 1)
  require(method in METHODS, f"method must be one of {METHODS}; got {method!r}.")
  if lam is not None:
    lam = real(lam, "lam")
    require(method == "flamb", "lam is used only with method='flamb'.")
    require(0.0 < lam < 2.0, f"lam must be in (0, 2); got {lam!r}.")
  record = _check_record(Record() if record is None else record)
  mixture, kinds = shift.mixture, list(shift.extrapolation)

  epsilon = float(bounds.mc_epsilon(emp_risk, num_mc, delta_mc))
  a = emp_risk + epsilon
  # emp + (p - emp) can round one ulp above p <= 1; the bounds need a risk in [0, 1].
  a_in = min(a, 1.0)
  uppers = {m: b_train_upper(a_in, kl, n, delta_pb, grid_size=grid_size, method=m,
                             lam=lam if m == "flamb" else None) for m in METHODS}
  g_gen = uppers[method] - a
  b_train = emp_risk + epsilon + g_gen
  budget = maurer_budget(kl, n, delta_pb, grid_size)
  saturation = ""
  if b_train >= 1.0:
    saturation = (f"B_train = {b_train:.4g} >= 1: the PAC-Bayes term has hit 1 (KL = {kl:.4g} "
                  f"nats, budget {budget:.4g} nats per example)")
  elif budget > 1.0:
    saturation = (f"(KL + ln terms)/n = {budget:.4g} > 1 nat per example: the PAC-Bayes term is "
                  "in its saturated regime (KL of the order of n)")

  computed: list[ext.ExtrapolationBound] = []
  if shift.g_ext_kind != ext.KIND_NONE:
    name = default_name(shift.g_ext_kind)
    computed.append(ext.ExtrapolationBound(
      name=name, kind=shift.g_ext_kind, value=b_train + shift.g_ext, delta=delta_tv,
      delta_parts=(("tv", delta_tv),) if delta_tv else (), uses_b_train=True,
      details={"g_ext": shift.g_ext, "exact": delta_tv == 0.0}))
  if mixture is not None:
    computed.append(ext.ExtrapolationBound(
      name="mixture_shift", kind=ext.KIND_MIXTURE,
      value=mixtures.mixture_shift_bound(b_train, mixture), delta=0.0, uses_b_train=True,
      details={"m_out": mixture.m_out, "w_max": mixture.w_max,
               "formula": mixtures.mixture_shift_formula(b_train, mixture)}))
  computed += kinds
  certified = [k for k in computed if k.certified]
  pool = certified or [k for k in computed if k.kind == ext.KIND_ESTIMATE]
  chosen = min(pool, key=lambda k: k.value) if pool else None
  if chosen is None:
    g_ext_used, kind_used, name_used = 0.0, ext.KIND_NONE, "none"
  else:
    g_ext_used, kind_used, name_used = chosen.value - b_train, chosen.kind, chosen.name

  def whole(b: float) -> float:
    """The bound the same choice rule gives when B_train is ``b`` (for other methods)."""
    values = [b + k.value - b_train if k.name in ("tv", "estimate")
              else mixtures.mixture_shift_bound(b, mixture) if k.name == "mixture_shift"
              else k.value for k in pool]
    return min(values) if values else b

  slices = next((k.slices for k in computed if k.name == "per_slice"), ())
  baselines = {m: whole(emp_risk + epsilon + (u - a)) for m, u in uppers.items()}
  baselines[method] = emp_risk + epsilon + g_gen + g_ext_used
  parts = plan.parts
  return Certificate(
    n=n, num_params=record.num_params, sigma_q=record.sigma_q, sigma_p=record.sigma_p, kl=kl,
    emp_risk=emp_risk, num_mc=num_mc, epsilon=epsilon, g_gen=g_gen, g_ext=g_ext_used,
    g_ext_kind=kind_used, bound=emp_risk + epsilon + g_gen + g_ext_used, delta=plan.delta,
    delta_mc=delta_mc, delta_pb=delta_pb,
    delta_ext=math.fsum(v for k, v in parts if k not in ("mc", "pb")),
    grid_size=grid_size, loss=record.loss, method=method, baselines=baselines,
    extra=dict(record.extra), b_train=b_train, g_ext_name=name_used,
    extrapolation=tuple(json_ready(_kind_dict(k, b_train), f"extrapolation {k.name}")
                        for k in computed),
    slices=tuple(s.to_dict() for s in slices),
    mixture=None if mixture is None else json_ready(mixture.to_dict(), "mixture"),
    delta_parts=parts, saturated=bool(saturation), saturation=saturation,
    notes=tuple(record.notes), loss_options=dict(record.loss_options),
    best_possible_bound=record.best_possible_bound,
  )
