"""The `Certificate`: the terms of the two-gap bound, their checks, JSON and table.

`pacbayes.certificate.core.certify` assembles one; this module holds the value and its
serialisation (schema `SCHEMA`; the older `SCHEMA_V2` and `SCHEMA_V1` reports still read).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from collections.abc import Mapping
from typing import Any

from pacbayes.bounds import extrapolation as ext
from pacbayes.bounds.btrain import maurer_budget
from pacbayes.bounds.checks import is_vacuous
from pacbayes.certificate.schema import (
  REQUIRED_KEYS,
  check_report,
  convert_v1,
  render_table,
  restore_terms,
)
from pacbayes.core.atomic import write_text

__all__ = ["G_EXT_KINDS", "METHODS", "SCHEMA", "SCHEMA_V1", "SCHEMA_V2", "Certificate",
           "default_name", "heldout_lines", "integer", "json_ready", "real", "require",
           "uncertified_lines"]

SCHEMA = "pacbayes.certificate/3"
SCHEMA_V2 = "pacbayes.certificate/2"
SCHEMA_V1 = "pacbayes.certificate/1"

G_EXT_KINDS = (ext.KIND_TV, ext.KIND_MIXTURE, ext.KIND_ESTIMATE, ext.KIND_NONE)
# The v1 word for the TV kind, still accepted as input.
KIND_ALIASES = {"certified under difficulty shift": ext.KIND_TV}
METHODS = ("maurer", "mcallester", "catoni", "fquad", "flamb")
# Top-level keys of a report that repeat parts of ``extra`` (measures, estimates, held-out).
TOP_LEVEL_VIEWS = ("measures", "estimates", "heldout")


def require(ok: bool, message: str) -> None:
  """Raises ValueError(message) unless ok."""
  if not ok:
    raise ValueError(message)


def real(value: Any, name: str) -> float:
  """A finite float (not a bool), or ValueError naming ``name``."""
  require(
    isinstance(value, numbers.Real) and not isinstance(value, bool),
    f"{name} must be a real number; got {value!r}.",
  )
  value = float(value)
  require(math.isfinite(value), f"{name} must be finite; got {value!r}.")
  return value


def integer(value: Any, name: str, lo: int) -> int:
  """An int >= lo (an integral float is accepted), or ValueError naming ``name``."""
  if isinstance(value, numbers.Real) and not isinstance(value, bool):
    if float(value).is_integer():
      value = int(value)
  require(
    isinstance(value, int) and not isinstance(value, bool) and value >= lo,
    f"{name} must be an integer >= {lo}; got {value!r}.",
  )
  return value


def json_ready(value: Any, name: str) -> Any:
  """``value`` through JSON (finite numbers only), or ValueError naming ``name``."""
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
    best_possible_bound: the smallest B_train any grid point could reach (empirical risk 0
      at each prior scale's smallest KL; `pacbayes.bounds.feasibility`), or None.
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
  best_possible_bound: float | None = None

  def __post_init__(self):
    set_ = object.__setattr__
    kind = KIND_ALIASES.get(self.g_ext_kind, self.g_ext_kind)
    require(kind in G_EXT_KINDS, f"g_ext_kind must be one of {G_EXT_KINDS}; got {kind!r}.")
    set_(self, "g_ext_kind", kind)
    require(self.method in METHODS, f"method must be one of {METHODS}; got {self.method!r}.")
    require(
      kind != ext.KIND_NONE or (self.g_ext == 0.0 and self.delta_ext == 0.0),
      "g_ext_kind 'none' requires g_ext == 0 and delta_ext == 0.",
    )
    total = self.emp_risk + self.epsilon + self.g_gen + self.g_ext
    require(
      self.bound == total,
      f"bound {self.bound!r} != emp_risk + epsilon + g_gen + g_ext = {total!r}.",
    )
    b_train = self.emp_risk + self.epsilon + self.g_gen
    if self.b_train is None:
      set_(self, "b_train", b_train)
    require(self.b_train == b_train,
             f"b_train {self.b_train!r} != emp_risk + epsilon + g_gen = {b_train!r}.")
    if not self.g_ext_name:
      set_(self, "g_ext_name", default_name(kind))
    require(self.g_ext_name in ext.NAMES,
             f"g_ext_name must be one of {ext.NAMES}; got {self.g_ext_name!r}.")
    parts = tuple((str(k), float(v)) for k, v in self.delta_parts) or v1_parts(self)
    set_(self, "delta_parts", parts)
    set_(self, "extrapolation", tuple(dict(e) for e in self.extrapolation))
    set_(self, "slices", tuple(dict(e) for e in self.slices))
    set_(self, "notes", tuple(str(x) for x in self.notes))
    psum = math.fsum(v for _, v in parts)
    require(math.isclose(psum, self.delta, rel_tol=1e-12, abs_tol=0.0),
             f"delta {self.delta!r} != sum of delta_parts {psum!r}.")
    other = math.fsum(v for k, v in parts if k not in ("mc", "pb"))
    require(math.isclose(other, self.delta_ext, rel_tol=1e-12, abs_tol=1e-300),
             f"delta_ext {self.delta_ext!r} != sum of the extrapolation delta parts {other!r}.")

  @property
  def vacuous(self) -> bool:
    """True when the bound is 1 or more (within `VACUOUS_TOL`): for a loss in [0, 1] it then
    says nothing."""
    return is_vacuous(self.bound)

  @property
  def non_vacuous(self) -> bool:
    """True when the full bound on E_Q[R_test] is below 1."""
    return not self.vacuous

  @property
  def b_train_non_vacuous(self) -> bool:
    """True when the in-distribution bound B_train is below 1."""
    return not is_vacuous(self.b_train)

  # ------------------------------------------------------------------------------------------
  # Serialisation.

  @property
  def g_gen_status(self) -> str:
    """"saturated" when B_train >= 1 (g_gen then only fills the gap to 1), else "ok"."""
    return "saturated" if self.b_train >= 1.0 else "ok"

  @property
  def g_ext_status(self) -> str:
    """"none" (no extrapolation term), "vacuous" (the bound is >= 1, so g_ext only fills
    the gap to it), "estimate" (an estimate, not a guarantee) or "ok"."""
    if self.g_ext_name == "none":
      return "none"
    if self.bound >= 1.0:
      return "vacuous"
    return "estimate" if self.g_ext_kind == ext.KIND_ESTIMATE else "ok"

  def to_dict(self) -> dict[str, Any]:
    """A JSON-ready dict: every field, plus ``schema``, the three vacuity flags and statuses.

    A term that only fills the gap to 1 is written as null with its status ("g_gen":
    null, "g_gen_status": "saturated"; "g_ext": null, "g_ext_status": "vacuous"); the exact
    numbers stay under "raw_terms" so that the report reads back exactly. Baselines are
    clipped at 1 (a baseline of 1 is vacuous). "kl_per_n" and "maurer_budget" (the
    PAC-Bayes budget ``(KL + ln(2 sqrt(n)/delta_pb) + ln k)/n``) are always written.
    """
    out: dict[str, Any] = {"schema": SCHEMA}
    for f in dataclasses.fields(self):
      out[f.name] = getattr(self, f.name)
    out["raw_terms"] = {"g_gen": self.g_gen, "g_ext": self.g_ext,
                        "baselines": dict(self.baselines)}
    out["kl_per_n"] = self.kl / self.n
    out["maurer_budget"] = maurer_budget(self.kl, self.n, self.delta_pb, self.grid_size)
    out["g_gen_status"] = self.g_gen_status
    out["g_ext_status"] = self.g_ext_status
    if self.g_gen_status == "saturated":
      out["g_gen"] = None
    if self.g_ext_status == "vacuous":
      out["g_ext"] = None
    out["baselines"] = {m: min(v, 1.0) for m, v in self.baselines.items()}
    out["extra"] = json.loads(json.dumps(self.extra))
    out["extrapolation"] = json.loads(json.dumps(list(self.extrapolation)))
    out["slices"] = json.loads(json.dumps(list(self.slices)))
    out["delta_parts"] = [[k, v] for k, v in self.delta_parts]
    out["notes"] = list(self.notes)
    out["loss_options"] = json.loads(json.dumps(self.loss_options))
    out["vacuous"] = self.vacuous
    out["non_vacuous"] = self.non_vacuous
    out["b_train_non_vacuous"] = self.b_train_non_vacuous
    measures = out["extra"].get("measures")
    if isinstance(measures, Mapping):
      for group, key in (("measure", "measures"), ("estimate", "estimates")):
        out[key] = {k: v for k, v in measures.items()
                    if isinstance(v, Mapping) and v.get("group") == group}
    if isinstance(out["extra"].get("heldout"), Mapping):
      out["heldout"] = out["extra"]["heldout"]
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

    A null ``g_gen`` / ``g_ext`` (a saturated or vacuous term) is read from "raw_terms".
    A ``pacbayes.certificate/2`` report is read as it is; a ``/1`` report is converted
    (its numbers kept; a note says so); any other schema is refused. Every value is
    type-checked first, so a null, a string or a missing value gives
    ``"SOURCE: key 'NAME': ..."``.
    """
    require(isinstance(data, Mapping), f"{source}: expected a JSON object.")
    schema = data.get("schema", SCHEMA)
    if schema == SCHEMA_V1:
      data = convert_v1(data, source)
    require(schema in (SCHEMA, SCHEMA_V2, SCHEMA_V1),
            f"{source}: key 'schema': {schema!r} is not {SCHEMA!r} (or {SCHEMA_V2!r}, "
            f"{SCHEMA_V1!r}).")
    fields = [f.name for f in dataclasses.fields(cls)]
    # Views of extra written at the top level for readers (`to_dict`); extra holds them.
    data = {k: v for k, v in data.items() if k not in TOP_LEVEL_VIEWS}
    check_report(data, REQUIRED_KEYS, source)
    data = restore_terms(data, source)
    try:
      cert = cls(**{k: data[k] for k in fields if k in data})
    except (TypeError, ValueError) as e:
      raise ValueError(f"{source}: {e}") from None
    for flag in ("vacuous", "non_vacuous", "b_train_non_vacuous"):
      if flag in data:
        require(data[flag] == getattr(cert, flag),
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
    lines = [render_table(self)]
    measures = self.extra.get("measures")
    if isinstance(measures, Mapping) and measures:
      lines.append(uncertified_lines(measures))
    if isinstance(self.extra.get("heldout"), Mapping):
      lines.append(heldout_lines(self.extra["heldout"]))
    return "\n\n".join(lines)

  def __str__(self) -> str:
    return self.to_table()


def default_name(kind: str) -> str:
  """The kind's name (`extrapolation.NAMES`) for its words."""
  return {ext.KIND_TV: "tv", ext.KIND_MIXTURE: "mixture_shift", ext.KIND_ESTIMATE: "estimate",
          ext.KIND_NONE: "none"}[kind]


def v1_parts(cert: Certificate) -> tuple[tuple[str, float], ...]:
  """The delta parts of a v1 report, which listed only delta_mc, delta_pb and delta_ext."""
  parts = [("mc", cert.delta_mc), ("pb", cert.delta_pb)]
  if cert.g_ext_kind != ext.KIND_NONE or cert.delta_ext:
    parts.append((default_name(cert.g_ext_kind), cert.delta_ext))
  return tuple(parts)


def _num(value: Any) -> str:
  return "n/a" if not isinstance(value, (int, float)) else f"{value:.4g}"


def _slices(by_slice: Any) -> str:
  if not isinstance(by_slice, Mapping) or not by_slice:
    return ""
  return " (per difficulty: " + ", ".join(f"{k}: {_num(v)}" for k, v in by_slice.items()) + ")"


def uncertified_lines(measures: Mapping[str, Any]) -> str:
  """Text lines of ``extra["measures"]`` (`pacbayes.pipeline.measures`): the estimates first
  (measured risks), then the measures of the two gaps; every line says it is not certified."""
  out = ["NOT CERTIFIED: estimates (measured on the rows named) and measures of the paper's "
         "terms (no guarantee):"]
  for group in ("estimate", "measure"):
    for name, m in measures.items():
      if not isinstance(m, Mapping) or m.get("group") != group:
        continue
      what = m.get("what", "")
      out.append(f"  {group:8s} {name:26s} {_num(m.get('value')):>9s}  {what}"
                 + _slices(m.get("by_slice")))
  return "\n".join(out)


def heldout_lines(block: Mapping[str, Any]) -> str:
  """Text lines of the held-out certificate (`HeldOutCertificate.to_dict()`)."""
  def flag(v: Any) -> str:
    return ("non-vacuous" if isinstance(v, (int, float)) and not is_vacuous(v)
            else "VACUOUS (>= 1)")

  out = [f"CERTIFIED: {block.get('kind')} ({block.get('method')}); with probability >= "
         f"1 - {_num(block.get('delta'))}:",
         f"  held-out rows m = {block.get('m')}, loss {block.get('loss')}: measured risk "
         f"{_num(block.get('emp_risk'))}",
         f"  R_train(w_ft) <= {_num(block.get('bound_train'))}  {flag(block.get('bound_train'))}"]
  for sl in block.get("slices") or []:
    out.append(f"    slice d={sl.get('key')}: m={sl.get('m')}, measured "
               f"{_num(sl.get('emp_risk'))}, bound {_num(sl.get('bound'))}  "
               f"{flag(sl.get('bound'))}")
  if block.get("bound_test") is not None:
    out.append(f"  R_test(w_ft)  <= {_num(block.get('bound_test'))} ({block.get('test_kind')}; "
               f"per-slice {_num(block.get('per_slice_value'))}, mixture shift "
               f"{_num(block.get('mixture_shift_value'))})  {flag(block.get('bound_test'))}")
  out.append("  no posterior noise, no Monte-Carlo term; " + str(block.get("delta_note", "")))
  out.append(f"  {block.get('not_used_for_training')}")
  out.extend(f"  note: {x}" for x in block.get("notes") or [])
  return "\n".join(out)
