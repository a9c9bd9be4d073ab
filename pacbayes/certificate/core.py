"""Proposition 4.1 assembled: the two-gap risk certificate, its terms, JSON and a text table."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

from pacbayes.bounds import extrapolation as ext
from pacbayes.bounds import pac as bounds
from pacbayes.certificate.schema import FIELD_TYPES, check_report, convert_v1, render_table
from pacbayes.core.atomic import write_text

__all__ = ["G_EXT_KINDS", "METHODS", "SCHEMA", "SCHEMA_V1", "Certificate", "certify"]

SCHEMA = "pacbayes.certificate.core/2"
SCHEMA_V1 = "pacbayes.certificate.core/1"

G_EXT_KINDS = (ext.KIND_TV, ext.KIND_MIXTURE, ext.KIND_ESTIMATE, ext.KIND_NONE)
# The v1 word for the TV kind, still accepted as input.
_KIND_ALIASES = {"certified under difficulty shift": ext.KIND_TV}
METHODS = ("maurer", "mcallester", "catoni", "fquad", "flamb")


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ValueError(message)


def _real(value: Any, name: str) -> float:
  _require(
    isinstance(value, numbers.Real) and not isinstance(value, bool),
    f"{name} must be a real number; got {value!r}.",
  )
  value = float(value)
  _require(math.isfinite(value), f"{name} must be finite; got {value!r}.")
  return value


def _integer(value: Any, name: str, lo: int) -> int:
  if isinstance(value, numbers.Real) and not isinstance(value, bool):
    if float(value).is_integer():
      value = int(value)
  _require(
    isinstance(value, int) and not isinstance(value, bool) and value >= lo,
    f"{name} must be an integer >= {lo}; got {value!r}.",
  )
  return value


def _json_ready(value: Any, name: str) -> Any:
  try:
    return json.loads(json.dumps(value, allow_nan=False))
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name} must be JSON-serialisable with finite numbers ({e}).") from None


@dataclasses.dataclass(frozen=True)
class Certificate:
  """The terms of the two-gap bound of Proposition 4.1, for one posterior and data set.

  With probability at least ``1 - delta`` (``delta`` = the sum of ``delta_parts``),

    E_Q[R_test] <= bound = emp_risk + epsilon + g_gen + g_ext,

  and the identity holds exactly in floating point (checked on construction). Also, on the
  Monte-Carlo and PAC-Bayes events alone, ``E_Q[R_train] <= b_train = emp_risk + epsilon +
  g_gen`` (the in-distribution part). ``g_ext = value of the chosen extrapolation kind -
  b_train``: every kind in ``extrapolation`` was computed and its delta paid, so the smallest
  certified value is valid on the intersection of all events (an "estimate" kind is used only
  when no certified kind exists). Nothing is capped: a bound of 1 or more is vacuous.

  Attributes:
    n: number of training examples the PAC-Bayes term uses.
    num_params: number of perturbed parameters (None if unknown).
    sigma_q: posterior scale (None if not isotropic / unknown).
    sigma_p: prior scale (None if unknown).
    kl: KL(Q || P) in nats.
    emp_risk: Monte-Carlo estimate of E_Q[R_S].
    num_mc: number M of independent Monte-Carlo draws behind ``emp_risk``.
    epsilon: one-sided Monte-Carlo term ``kl_inv_upper(emp_risk, ln(1/delta_mc)/M) - emp_risk``.
    g_gen: generalization gap from the PAC-Bayes bound ``method``.
    g_ext: extrapolation gap of the chosen kind (may be < 0 when the test mixture is easier).
    g_ext_kind: the chosen kind in words, one of ``G_EXT_KINDS``.
    bound: ``emp_risk + epsilon + g_gen + g_ext``.
    delta: total failure probability (sum of ``delta_parts``).
    delta_mc: share spent on the Monte-Carlo term.
    delta_pb: share spent on the PAC-Bayes term.
    delta_ext: everything else (all extrapolation kinds and the mixture estimates).
    grid_size: number k of prior scales searched; the union bound costs ``ln k``.
    loss: name of the [0, 1] loss.
    method: the PAC-Bayes bound behind ``g_gen`` (one of ``METHODS``).
    baselines: the whole bound with ``g_gen`` from each method, for comparison.
    extra: free JSON-serialisable details.
    b_train: ``emp_risk + epsilon + g_gen``, the in-distribution bound.
    g_ext_name: the chosen kind's name (``extrapolation.NAMES``).
    extrapolation: every kind computed: dicts with name, kind, value, g_ext, delta,
      delta_parts, uses_b_train, details.
    slices: the per-slice bounds (difficulty, n, emp_risk, mc_upper, mc_method, bound).
    mixture: the mixtures used (``MixtureBounds.to_dict()``) or None.
    delta_parts: (name, delta) pairs summing to ``delta``.
    saturated: True when the PAC-Bayes term saturates ((KL + ln terms)/n > 1 or b_train >= 1).
    saturation: one line saying why (empty when not saturated).
    notes: one-line remarks shown in the table (e.g. numeric precision).
    loss_options: options of the loss (e.g. ``{"alpha": 0.01}``).
  """

  n: int
  num_params: int | None
  sigma_q: float | None
  sigma_p: float | None
  kl: float
  emp_risk: float
  num_mc: int
  epsilon: float
  g_gen: float
  g_ext: float
  g_ext_kind: str
  bound: float
  delta: float
  delta_mc: float
  delta_pb: float
  delta_ext: float
  grid_size: int
  loss: str
  method: str = "maurer"
  baselines: dict[str, float] = dataclasses.field(default_factory=dict)
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)
  b_train: float | None = None
  g_ext_name: str = ""
  extrapolation: tuple[dict[str, Any], ...] = ()
  slices: tuple[dict[str, Any], ...] = ()
  mixture: dict[str, Any] | None = None
  delta_parts: tuple[tuple[str, float], ...] = ()
  saturated: bool = False
  saturation: str = ""
  notes: tuple[str, ...] = ()
  loss_options: dict[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    set_ = object.__setattr__
    kind = _KIND_ALIASES.get(self.g_ext_kind, self.g_ext_kind)
    _require(kind in G_EXT_KINDS, f"g_ext_kind must be one of {G_EXT_KINDS}; got {kind!r}.")
    set_(self, "g_ext_kind", kind)
    _require(self.method in METHODS, f"method must be one of {METHODS}; got {self.method!r}.")
    _require(
      kind != ext.KIND_NONE or (self.g_ext == 0.0 and self.delta_ext == 0.0),
      "g_ext_kind 'none' requires g_ext == 0 and delta_ext == 0.",
    )
    total = self.emp_risk + self.epsilon + self.g_gen + self.g_ext
    _require(
      self.bound == total,
      f"bound {self.bound!r} != emp_risk + epsilon + g_gen + g_ext = {total!r}.",
    )
    b_train = self.emp_risk + self.epsilon + self.g_gen
    if self.b_train is None:
      set_(self, "b_train", b_train)
    _require(self.b_train == b_train,
             f"b_train {self.b_train!r} != emp_risk + epsilon + g_gen = {b_train!r}.")
    if not self.g_ext_name:
      set_(self, "g_ext_name", _default_name(kind))
    _require(self.g_ext_name in ext.NAMES,
             f"g_ext_name must be one of {ext.NAMES}; got {self.g_ext_name!r}.")
    parts = tuple((str(k), float(v)) for k, v in self.delta_parts) or _v1_parts(self)
    set_(self, "delta_parts", parts)
    set_(self, "extrapolation", tuple(dict(e) for e in self.extrapolation))
    set_(self, "slices", tuple(dict(e) for e in self.slices))
    set_(self, "notes", tuple(str(x) for x in self.notes))
    psum = math.fsum(v for _, v in parts)
    _require(math.isclose(psum, self.delta, rel_tol=1e-12, abs_tol=0.0),
             f"delta {self.delta!r} != sum of delta_parts {psum!r}.")
    other = math.fsum(v for k, v in parts if k not in ("mc", "pb"))
    _require(math.isclose(other, self.delta_ext, rel_tol=1e-12, abs_tol=1e-300),
             f"delta_ext {self.delta_ext!r} != sum of the extrapolation delta parts {other!r}.")

  @property
  def vacuous(self) -> bool:
    """True when the bound is 1 or more: for a loss in [0, 1] it then says nothing."""
    return self.bound >= 1.0

  @property
  def non_vacuous(self) -> bool:
    """True when the full bound on E_Q[R_test] is below 1."""
    return not self.vacuous

  @property
  def b_train_non_vacuous(self) -> bool:
    """True when the in-distribution bound B_train is below 1."""
    return self.b_train < 1.0

  # ------------------------------------------------------------------------------------------
  # Serialisation.

  def to_dict(self) -> dict[str, Any]:
    """A JSON-ready dict: every field, plus ``schema`` and the three vacuity flags."""
    out: dict[str, Any] = {"schema": SCHEMA}
    for f in dataclasses.fields(self):
      out[f.name] = getattr(self, f.name)
    out["baselines"] = dict(self.baselines)
    out["extra"] = json.loads(json.dumps(self.extra))
    out["extrapolation"] = json.loads(json.dumps(list(self.extrapolation)))
    out["slices"] = json.loads(json.dumps(list(self.slices)))
    out["delta_parts"] = [[k, v] for k, v in self.delta_parts]
    out["notes"] = list(self.notes)
    out["loss_options"] = json.loads(json.dumps(self.loss_options))
    out["vacuous"] = self.vacuous
    out["non_vacuous"] = self.non_vacuous
    out["b_train_non_vacuous"] = self.b_train_non_vacuous
    return out

  def to_json(self, path: str | os.PathLike | None = None, *, indent: int = 2) -> str:
    """Serialises to JSON (floats round-trip exactly); writes ``path`` atomically if given."""
    text = json.dumps(self.to_dict(), indent=indent, allow_nan=False) + "\n"
    if path is not None:
      write_text(path, text)
    return text

  @classmethod
  def from_dict(cls, data: Mapping[str, Any], *, source: str = "certificate") -> Certificate:
    """Rebuilds a Certificate from ``to_dict`` output (``source`` names it in errors).

    A ``pacbayes.certificate.core/1`` report is converted (its numbers kept; a note says so);
    any other schema is refused. Every value is type-checked first, so a null, a string or
    a missing value gives ``"SOURCE: key 'NAME': ..."``.
    """
    _require(isinstance(data, Mapping), f"{source}: expected a JSON object.")
    schema = data.get("schema", SCHEMA)
    if schema == SCHEMA_V1:
      data = convert_v1(data, source)
    _require(schema in (SCHEMA, SCHEMA_V1),
             f"{source}: key 'schema': {schema!r} is not {SCHEMA!r} (or {SCHEMA_V1!r}).")
    fields = [f.name for f in dataclasses.fields(cls)]
    check_report(data, tuple(FIELD_TYPES), source)
    try:
      cert = cls(**{k: data[k] for k in fields if k in data})
    except (TypeError, ValueError) as e:
      raise ValueError(f"{source}: {e}") from None
    for flag in ("vacuous", "non_vacuous", "b_train_non_vacuous"):
      if flag in data:
        _require(data[flag] == getattr(cert, flag),
                 f"{source}: key {flag!r}: '{flag}' disagrees with the bound values.")
    return cert

  @classmethod
  def from_json(cls, path: str | os.PathLike) -> Certificate:
    """Reads a certificate written by ``to_json`` (errors name the file and the key)."""
    path = os.fspath(path)
    try:
      with open(path) as f:
        data = json.load(f)
    except OSError as e:
      raise ValueError(f"{path}: cannot read certificate ({e.strerror}).") from None
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg}).") from None
    return cls.from_dict(data, source=path)

  def to_table(self) -> str:
    """A plain-text table: B_train and the full bound, every kind, slices, delta parts, notes."""
    return render_table(self)

  def __str__(self) -> str:
    return self.to_table()


def _default_name(kind: str) -> str:
  return {ext.KIND_TV: "tv", ext.KIND_MIXTURE: "mixture_shift", ext.KIND_ESTIMATE: "estimate",
          ext.KIND_NONE: "none"}[kind]


def _v1_parts(cert: Certificate) -> tuple[tuple[str, float], ...]:
  parts = [("mc", cert.delta_mc), ("pb", cert.delta_pb)]
  if cert.g_ext_kind != ext.KIND_NONE or cert.delta_ext:
    parts.append((_default_name(cert.g_ext_kind), cert.delta_ext))
  return tuple(parts)


# --------------------------------------------------------------------------------------------
# Assembly.


def _split_delta(delta, delta_split, delta_mc, delta_pb, delta_ext, g_ext_kind, kinds_delta):
  """(delta, delta_mc, delta_pb, delta_ext) with delta = all parts + kinds_delta."""
  explicit = any(d is not None for d in (delta_mc, delta_pb, delta_ext))
  if explicit:
    _require(
      delta_split is None, "give either delta_split or delta_mc/delta_pb/delta_ext, not both."
    )
    if delta_ext is None and g_ext_kind == ext.KIND_NONE:
      delta_ext = 0.0
    for name, value in (("delta_mc", delta_mc), ("delta_pb", delta_pb), ("delta_ext", delta_ext)):
      _require(value is not None, f"{name} is required when the delta parts are given explicitly.")
    parts = [_real(delta_mc, "delta_mc"), _real(delta_pb, "delta_pb"),
             _real(delta_ext, "delta_ext")]
    total = math.fsum(parts + [kinds_delta])
    if delta is None:
      delta = total
    else:
      delta = _real(delta, "delta")
      _require(
        math.isclose(delta, total, rel_tol=1e-12, abs_tol=0.0),
        f"delta {delta!r} != delta_mc + delta_pb + delta_ext + extrapolation kinds = {total!r}.",
      )
  else:
    delta = 0.05 if delta is None else _real(delta, "delta")
    _require(0.0 < delta < 1.0, f"delta must be in (0, 1); got {delta!r}.")
    if delta_split is None:
      delta_split = (0.5, 0.5, 0.0) if g_ext_kind == ext.KIND_NONE else (1 / 3, 1 / 3, 1 / 3)
    split = [_real(f, "delta_split") for f in delta_split]
    if len(split) == 2:
      split.append(0.0)
    _require(
      len(split) == 3, f"delta_split must have 2 or 3 entries (mc, pb[, ext]); got {delta_split!r}."
    )
    _require(all(f >= 0 for f in split), f"delta_split entries must be >= 0; got {delta_split!r}.")
    _require(
      abs(math.fsum(split) - 1.0) <= 1e-9, f"delta_split must sum to 1; got {delta_split!r}."
    )
    base = delta - kinds_delta
    _require(base > 0, f"delta {delta!r} leaves nothing after the extrapolation kinds' "
                       f"{kinds_delta!r}.")
    parts = [base * f for f in split]
  delta_mc, delta_pb, delta_ext = parts
  _require(delta_mc > 0, f"delta_mc must be > 0; got {delta_mc!r}.")
  _require(delta_pb > 0, f"delta_pb must be > 0; got {delta_pb!r}.")
  _require(delta_ext >= 0, f"delta_ext must be >= 0; got {delta_ext!r}.")
  _require(0.0 < delta < 1.0, f"delta must be in (0, 1); got {delta!r}.")
  _require(
    g_ext_kind != ext.KIND_NONE or delta_ext == 0.0,
    f"g_ext_kind 'none' spends no confidence on g_ext, so delta_ext must be 0; got {delta_ext!r}.",
  )
  return delta, delta_mc, delta_pb, delta_ext


def _gen_upper(method: str, a: float, kl: float, n: int, delta_pb: float, k: int, lam) -> float:
  """Upper bound on E_Q[R_train] given an upper value ``a`` of E_Q[R_S]."""
  if method == "maurer":
    return ext.maurer_upper(a, kl, n, delta_pb, k)
  # Union bound over the k prior scales: confidence delta_pb / k for each.
  d = delta_pb / k
  if method == "mcallester":
    return float(bounds.mcallester(a, kl, n, d))
  if method == "catoni":
    return float(bounds.catoni(a, kl, n, d))
  if method == "fquad":
    return float(bounds.fquad(a, kl, n, d))
  if lam is None:
    lam = bounds.flamb_optimal_lam(a, kl, n, d)
  return float(bounds.flamb(a, kl, n, d, lam))


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
  g_ext: float = 0.0,
  g_ext_kind: str = "none",
  delta: float | None = None,
  delta_split: Sequence[float] | None = None,
  delta_mc: float | None = None,
  delta_pb: float | None = None,
  delta_ext: float | None = None,
  grid_size: int = 1,
  method: str = "maurer",
  lam: float | None = None,
  sigma_q: float | None = None,
  sigma_p: float | None = None,
  num_params: int | None = None,
  loss: str = "token_error",
  extra: Mapping[str, Any] | None = None,
  mixture: ext.MixtureBounds | None = None,
  extrapolation: Sequence[ext.ExtrapolationBound] = (),
  notes: Sequence[str] = (),
  loss_options: Mapping[str, Any] | None = None,
) -> Certificate:
  """Assembles the two-gap bound of Proposition 4.1 from its measured ingredients.

  With probability at least ``1 - delta``, ``E_Q[R_test] <= emp + epsilon + g_gen + g_ext``:

    epsilon = kl_inv_upper(emp, ln(1/delta_mc)/M) - emp       (one-sided; Langford & Caruana)
    g_gen   = kl_inv_upper(emp + epsilon, (KL + ln(2 sqrt(n)/delta_pb) + ln k)/n)
              - (emp + epsilon)                                (Maurer)
    B_train = emp + epsilon + g_gen >= E_Q[R_train]            (on those two events)
    g_ext   = (smallest certified extrapolation value) - B_train.

  Extrapolation kinds (each spends its own delta; all are added up in ``delta``):
  "tv" / "estimate" from ``g_ext`` (value ``B_train + g_ext``, delta ``delta_ext``; pass
  ``delta_ext = 0`` when the TV is known exactly); "mixture_shift" when ``mixture`` is given
  (``extrapolation.mixture_shift_bound(B_train, mixture)``, delta ``mixture.delta``, spent
  once for every kind that uses the mixture); and the precomputed ``extrapolation`` kinds
  ("weighted", "per_slice"). The choice of the minimum is fixed in advance (min over all
  certified kinds computed) and every computed kind is paid for, so the minimum holds on the
  intersection of the events, with probability at least ``1 - delta`` by a union bound. An
  "estimate" is used only when no certified kind is available.

  Args:
    emp_risk: Monte-Carlo mean of the loss under posterior draws, in [0, 1].
    num_mc: number M of independent [0, 1]-valued draws behind ``emp_risk``.
    kl: KL(Q || P) in nats (finite, >= 0).
    n: training-set size (>= 1).
    g_ext: TV-kind or estimate term in [0, 1]; 0 when ``g_ext_kind`` is "none".
    g_ext_kind: kind of ``g_ext``: one of ``G_EXT_KINDS`` (mixture kind excluded) or the v1
      word "certified under difficulty shift" (same as the TV kind).
    delta: total failure probability in (0, 1); default 0.05 (or the sum of explicit parts).
    delta_split: fractions (mc, pb, ext) of what ``delta`` leaves after the mixture and the
      ``extrapolation`` kinds; default thirds, or (1/2, 1/2, 0) when ``g_ext_kind`` is "none".
    delta_mc: explicit Monte-Carlo share (with ``delta_pb``, ``delta_ext``).
    delta_pb: explicit PAC-Bayes share.
    delta_ext: explicit share of the TV / estimate term (0 when exact or kind "none").
    grid_size: number k of prior scales the prior was chosen from (ln k is added).
    method: "maurer" (default), "mcallester", "catoni", "fquad" or "flamb".
    lam: lambda for "flamb" (None: its closed-form optimum).
    sigma_q: posterior scale, for the record.
    sigma_p: prior scale, for the record.
    num_params: number of perturbed parameters, for the record.
    loss: the loss name, for the record.
    extra: JSON-serialisable details to keep with the certificate.
    mixture: the train/test difficulty mixtures (`extrapolation.mixture_bounds`).
    extrapolation: kinds computed by `extrapolation.weighted_loss_bound` /
      `per_slice_bounds` (with the same ``mixture``, which must then be given).
    notes: one-line remarks for the table.
    loss_options: options of the loss, for the record.

  Returns:
    A Certificate; ``bound == emp_risk + epsilon + g_gen + g_ext`` exactly.

  Raises:
    ValueError: naming the argument, for out-of-range inputs or an inconsistent delta split.

  References:
    Proposition 4.1 of arXiv 2605.12906; Langford & Caruana, NIPS 2001; Maurer 2004;
    DESIGN.md section 1 ("Tighter, still honest").
  """
  emp_risk = _real(emp_risk, "emp_risk")
  _require(0.0 <= emp_risk <= 1.0, f"emp_risk must be in [0, 1]; got {emp_risk!r}.")
  num_mc = _integer(num_mc, "num_mc", 1)
  _require(
    isinstance(kl, numbers.Real) and not math.isnan(kl) and kl >= 0,
    f"kl must be a number >= 0; got {kl!r}.",
  )
  _require(math.isfinite(kl), "kl is infinite (a moved parameter is not perturbed): no bound.")
  kl = float(kl)
  n = _integer(n, "n", 1)
  g_ext_kind = _KIND_ALIASES.get(g_ext_kind, g_ext_kind)
  _require(
    g_ext_kind in G_EXT_KINDS and g_ext_kind != ext.KIND_MIXTURE,
    f"g_ext_kind must be one of {(ext.KIND_TV, ext.KIND_ESTIMATE, ext.KIND_NONE)} (the mixture "
    f"kind comes from `mixture`); got {g_ext_kind!r}.",
  )
  g_ext = _real(g_ext, "g_ext")
  _require(0.0 <= g_ext <= 1.0, f"g_ext must be in [0, 1] (a TV distance); got {g_ext!r}.")
  _require(
    g_ext_kind != ext.KIND_NONE or g_ext == 0.0,
    f"g_ext_kind is 'none' but g_ext = {g_ext!r}; give the kind of the g_ext value.",
  )
  kinds = list(extrapolation)
  for k in kinds:
    _require(isinstance(k, ext.ExtrapolationBound),
             f"extrapolation: expected ExtrapolationBound values; got {type(k).__name__}.")
  _require(mixture is None or isinstance(mixture, ext.MixtureBounds),
           f"mixture must be a MixtureBounds; got {type(mixture).__name__}.")
  _require(not kinds or mixture is not None,
           "extrapolation kinds need the `mixture` they were computed with (its delta counts).")
  names = [k.name for k in kinds]
  _require(len(set(names)) == len(names) and not {"tv", "mixture_shift", "none"} & set(names),
           f"extrapolation: repeated or reserved kind names {names}.")
  kinds_delta = math.fsum([k.delta for k in kinds] + [mixture.delta if mixture else 0.0])
  delta, delta_mc, delta_pb, delta_ext = _split_delta(
    delta, delta_split, delta_mc, delta_pb, delta_ext, g_ext_kind, kinds_delta
  )
  grid_size = _integer(grid_size, "grid_size", 1)
  _require(method in METHODS, f"method must be one of {METHODS}; got {method!r}.")
  if lam is not None:
    lam = _real(lam, "lam")
    _require(method == "flamb", "lam is used only with method='flamb'.")
    _require(0.0 < lam < 2.0, f"lam must be in (0, 2); got {lam!r}.")
  for name, value in (("sigma_q", sigma_q), ("sigma_p", sigma_p)):
    if value is not None:
      _require(_real(value, name) > 0, f"{name} must be > 0; got {value!r}.")
  sigma_q = None if sigma_q is None else float(sigma_q)
  sigma_p = None if sigma_p is None else float(sigma_p)
  num_params = None if num_params is None else _integer(num_params, "num_params", 0)
  _require(isinstance(loss, str) and bool(loss), f"loss must be a non-empty name; got {loss!r}.")
  extra = _json_ready(dict(extra or {}), "extra")
  loss_options = _json_ready(dict(loss_options or {}), "loss_options")
  _require(isinstance(notes, Sequence) and not isinstance(notes, str)
           and all(isinstance(x, str) and "\n" not in x for x in notes),
           "notes must be a sequence of one-line strings.")

  epsilon = float(bounds.mc_epsilon(emp_risk, num_mc, delta_mc))
  a = emp_risk + epsilon
  # emp + (p - emp) can round one ulp above p <= 1; the bounds need a risk in [0, 1].
  a_in = min(a, 1.0)
  uppers = {
    m: _gen_upper(m, a_in, kl, n, delta_pb, grid_size, lam if m == "flamb" else None)
    for m in METHODS
  }
  g_gen = uppers[method] - a
  b_train = emp_risk + epsilon + g_gen
  budget = (kl + math.log(2.0 * math.sqrt(n) / delta_pb) + math.log(grid_size)) / n
  saturation = ""
  if b_train >= 1.0:
    saturation = (f"B_train = {b_train:.4g} >= 1: the PAC-Bayes term has hit 1 and g_gen "
                  f"({g_gen:.3g}) only fills the gap to it")
  elif budget > 1.0:
    saturation = (f"(KL + ln terms)/n = {budget:.4g} > 1 nat per example: the PAC-Bayes term is "
                  "in its saturated regime (KL of the order of n)")

  computed: list[ext.ExtrapolationBound] = []
  parts: list[tuple[str, float]] = [("mc", delta_mc), ("pb", delta_pb)]
  if g_ext_kind != ext.KIND_NONE:
    name = _default_name(g_ext_kind)
    computed.append(ext.ExtrapolationBound(
      name=name, kind=g_ext_kind, value=b_train + g_ext, delta=delta_ext,
      delta_parts=((name, delta_ext),), uses_b_train=True,
      details={"g_ext": g_ext, "exact": delta_ext == 0.0}))
    parts.append((name, delta_ext))
  if mixture is not None:
    parts.append(("mixture", mixture.delta))
    computed.append(ext.ExtrapolationBound(
      name="mixture_shift", kind=ext.KIND_MIXTURE,
      value=ext.mixture_shift_bound(b_train, mixture), delta=0.0, uses_b_train=True,
      details={"m_out": mixture.m_out, "w_max": mixture.w_max,
               "formula": ext.mixture_shift_formula(b_train, mixture)}))
  for k in kinds:
    computed.append(k)
    parts.extend(k.delta_parts)
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
              else ext.mixture_shift_bound(b, mixture) if k.name == "mixture_shift"
              else k.value for k in pool]
    return min(values) if values else b

  slices = next((k.slices for k in computed if k.name == "per_slice"), ())
  baselines = {m: whole(emp_risk + epsilon + (u - a)) for m, u in uppers.items()}
  baselines[method] = emp_risk + epsilon + g_gen + g_ext_used
  return Certificate(
    n=n, num_params=num_params, sigma_q=sigma_q, sigma_p=sigma_p, kl=kl, emp_risk=emp_risk,
    num_mc=num_mc, epsilon=epsilon, g_gen=g_gen, g_ext=g_ext_used, g_ext_kind=kind_used,
    bound=emp_risk + epsilon + g_gen + g_ext_used, delta=math.fsum(v for _, v in parts),
    delta_mc=delta_mc, delta_pb=delta_pb,
    delta_ext=math.fsum(v for k, v in parts if k not in ("mc", "pb")),
    grid_size=grid_size, loss=loss, method=method, baselines=baselines, extra=extra,
    b_train=b_train, g_ext_name=name_used,
    extrapolation=tuple(_json_ready(_kind_dict(k, b_train), f"extrapolation {k.name}")
                        for k in computed),
    slices=tuple(s.to_dict() for s in slices),
    mixture=None if mixture is None else _json_ready(mixture.to_dict(), "mixture"),
    delta_parts=tuple(parts), saturated=bool(saturation), saturation=saturation,
    notes=tuple(notes), loss_options=loss_options,
  )
