"""Certificate reports: value checks naming the file and key, the v1 -> v2 conversion, the table.

Helpers of `pacbayes.certificate.report` (which owns the schema); they work on plain dicts and
on any object with the `Certificate` attributes, so this module imports nothing from it.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from typing import Any

from pacbayes.bounds.btrain import maurer_budget
from pacbayes.bounds.checks import is_vacuous

__all__ = ["FIELD_TYPES", "REQUIRED_KEYS", "STATUS_KEYS", "V1_KEYS", "check_report",
           "convert_v1", "render_table", "restore_terms"]

# What each report key holds: "int", "float", "str", "bool", "dict", "list", "?" = or null.
FIELD_TYPES: dict[str, str] = {
  "n": "int", "num_params": "int?", "sigma_q": "float?", "sigma_p": "float?", "kl": "float",
  "emp_risk": "float", "num_mc": "int", "epsilon": "float", "g_gen": "float?", "g_ext": "float?",
  "g_ext_kind": "str", "bound": "float", "delta": "float", "delta_mc": "float",
  "delta_pb": "float", "delta_ext": "float", "grid_size": "int", "loss": "str",
  "method": "str", "baselines": "dict", "extra": "dict", "b_train": "float",
  "g_ext_name": "str", "extrapolation": "list", "slices": "list", "mixture": "dict?",
  "delta_parts": "list", "saturated": "bool", "saturation": "str", "notes": "list",
  "loss_options": "dict", "best_possible_bound": "float?",
}
# Keys every report has (v2 reports have no best_possible_bound).
REQUIRED_KEYS = tuple(k for k in FIELD_TYPES if k != "best_possible_bound")
# Keys written beside the fields (schema v3): a null term's status and its exact value, and
# the KL per example and the Maurer budget (derived, for the reader).
STATUS_KEYS = {"g_gen_status": "str", "g_ext_status": "str", "raw_terms": "dict",
               "kl_per_n": "float", "maurer_budget": "float"}
V1_KEYS = ("n num_params sigma_q sigma_p kl emp_risk num_mc epsilon g_gen g_ext g_ext_kind "
           "bound delta delta_mc delta_pb delta_ext grid_size loss").split()
V1_OPTIONAL = ("method", "baselines", "extra")
FLAGS = ("vacuous", "non_vacuous", "b_train_non_vacuous")
_WORDS = {"int": "an integer", "float": "a finite number", "str": "a string", "bool": "true or "
          "false", "dict": "an object", "list": "a list"}


def _show(value: Any) -> str:
  try:
    return json.dumps(value)[:60]
  except (TypeError, ValueError):
    return repr(value)[:60]


def _ok(value: Any, kind: str) -> bool:
  if kind.endswith("?"):
    return value is None or _ok(value, kind[:-1])
  if kind == "int":
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value) and float(value).is_integer())
  if kind == "float":
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))
  return isinstance(value, {"str": str, "bool": bool, "dict": dict, "list": list}[kind])


def _expect(source: str, key: str, value: Any, kind: str) -> None:
  if not _ok(value, kind):
    words = _WORDS[kind.rstrip("?")] + (" or null" if kind.endswith("?") else "")
    raise ValueError(f"{source}: key {key!r}: expected {words}, got {_show(value)}.")


def _check_items(source: str, key: str, items: list, spec: Mapping[str, str]) -> None:
  for i, item in enumerate(items):
    where = f"{key}[{i}]"
    if not isinstance(item, dict):
      raise ValueError(f"{source}: key {where!r}: expected an object, got {_show(item)}.")
    for sub, kind in spec.items():
      if sub not in item:
        raise ValueError(f"{source}: key {where + '.' + sub!r}: missing.")
      _expect(source, f"{where}.{sub}", item[sub], kind)


def check_report(data: Mapping[str, Any], required: tuple[str, ...], source: str) -> None:
  """Checks keys and value types of a report dict; errors name ``source`` and the key.

  Raises:
    ValueError: missing or unknown keys, or a value of the wrong type (null, a string
      where a number belongs, ...).
  """
  missing = [k for k in required if k not in data]
  if missing:
    raise ValueError(f"{source}: missing keys {missing}.")
  unknown = sorted(set(data) - set(FIELD_TYPES) - set(STATUS_KEYS) - {"schema", *FLAGS})
  if unknown:
    raise ValueError(f"{source}: unknown keys {unknown}.")
  for key, kind in FIELD_TYPES.items():
    if key in data:
      _expect(source, key, data[key], kind)
  for key in FLAGS:
    if key in data:
      _expect(source, key, data[key], "bool")
  for key, kind in STATUS_KEYS.items():
    if key in data:
      _expect(source, key, data[key], kind)
  for name, value in data.get("baselines", {}).items():
    _expect(source, f"baselines.{name}", value, "float")
  _check_items(source, "extrapolation", data.get("extrapolation", []),
               {"name": "str", "kind": "str", "value": "float", "delta": "float"})
  _check_items(source, "slices", data.get("slices", []),
               {"difficulty": "float", "n": "int", "bound": "float"})
  for i, pair in enumerate(data.get("delta_parts", [])):
    if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)
            and _ok(pair[1], "float")):
      raise ValueError(f"{source}: key 'delta_parts[{i}]': expected [name, number], got "
                       f"{_show(pair)}.")
  for i, note in enumerate(data.get("notes", [])):
    _expect(source, f"notes[{i}]", note, "str")


def restore_terms(data: Mapping[str, Any], source: str) -> dict[str, Any]:
  """The report with its exact terms: a null ``g_gen`` / ``g_ext`` (saturated or vacuous) and
  the clipped baselines read from "raw_terms".

  Raises:
    ValueError: a null term without its exact value in "raw_terms".
  """
  out = dict(data)
  raw = out.get("raw_terms") or {}
  for key in ("g_gen", "g_ext"):
    if out.get(key) is None:
      if not _ok(raw.get(key), "float"):
        raise ValueError(f"{source}: key {key!r}: null without its value in 'raw_terms'.")
      out[key] = raw[key]
  if "baselines" in raw:  # the unclipped baselines (the report shows them clipped at 1)
    for name, value in (raw["baselines"] or {}).items():
      _expect(source, f"raw_terms.baselines.{name}", value, "float")
    out["baselines"] = dict(raw["baselines"])
  return out


def convert_v1(data: Mapping[str, Any], source: str) -> dict[str, Any]:
  """A ``pacbayes.certificate/1`` report as a v2 dict (numbers unchanged; a note says so).

  Raises:
    ValueError: naming ``source`` and the key, for missing or malformed v1 values.
  """
  check_report({k: v for k, v in data.items() if k in FIELD_TYPES or k in FLAGS},
               tuple(V1_KEYS), source)
  extra_keys = sorted(set(data) - set(V1_KEYS) - set(V1_OPTIONAL) - {"schema", "vacuous"})
  if extra_keys:
    raise ValueError(f"{source}: unknown keys {extra_keys}.")
  out = {k: v for k, v in data.items() if k != "vacuous"}
  kind = out["g_ext_kind"]
  if kind == "certified under difficulty shift":
    kind = "certified under difficulty shift (TV)"
  out["g_ext_kind"] = kind
  name = {"certified under difficulty shift (TV)": "tv", "estimate": "estimate"}.get(kind, "none")
  b_train = out["emp_risk"] + out["epsilon"] + out["g_gen"]
  parts = [["mc", out["delta_mc"]], ["pb", out["delta_pb"]]]
  kinds = []
  if name != "none":
    parts.append([name, out["delta_ext"]])
    kinds.append({"name": name, "kind": kind, "value": out["bound"],
                  "g_ext": out["g_ext"], "delta": out["delta_ext"],
                  "delta_parts": [[name, out["delta_ext"]]], "uses_b_train": True,
                  "details": {}})
  out.update(b_train=b_train, g_ext_name=name, extrapolation=kinds, slices=[], mixture=None,
             delta_parts=parts, saturated=False, saturation="", loss_options={},
             notes=["converted from pacbayes.certificate/1: its epsilon used the two-sided "
                    "ln(2/delta_mc); saturation was not recorded"])
  return out


# --------------------------------------------------------------------------------- table


def _flag(value: float) -> str:
  return ("VACUOUS (>= 1: says nothing about a [0, 1] loss)" if is_vacuous(value)
          else "non-vacuous")


def _num(value: float, status: str = "ok") -> str:
  return {"saturated": "saturated", "vacuous": "vacuous"}.get(status, f"{value:.6f}")


def _ext_meaning(name: str) -> str:
  return {
    "tv": "B_train + TV(p_test, p_train): certified upper value of the difficulty shift",
    "mixture_shift": "mixture-shift term: worst case of sum_d p_test(d) R_d given B_train",
    "weighted": "m_out + w_max * B_w, B_w a PAC-Bayes bound on the weighted loss",
    "per_slice": "sum_d p_test(d) B_d from per-slice PAC-Bayes bounds",
    "estimate": "ESTIMATE of TV(D_test, D_train), not an upper value",
    "none": "left out: the bound is on the training distribution",
  }[name]


def render_table(c: Any) -> str:
  """The plain-text table of a `Certificate` (see `Certificate.to_table`).

  A term that only fills the gap to 1 is printed as "saturated" (g_gen, when B_train >= 1)
  or "vacuous" (g_ext, when the bound is >= 1), never as a number; KL, KL/n and the Maurer
  budget are always printed, and the baselines are clipped at 1 and labelled.
  """
  conf = 1.0 - c.delta
  parts = " + ".join(f"{v:.3g} {k}" for k, v in c.delta_parts)
  gen_status = "saturated" if c.b_train >= 1.0 else "ok"
  ext_status = ("none" if c.g_ext_name == "none" else "vacuous" if c.bound >= 1.0 else "ok")
  lines = [
    "Two-gap PAC-Bayes certificate (Proposition 4.1, arXiv 2605.12906)",
    f"With probability >= {conf:.4g} (delta = {c.delta:.4g} = {parts}):",
    f"  E_Q[R_train] <= B_train = {c.b_train:.6f}   {_flag(c.b_train)}",
    f"  E_Q[R_test]  <= bound   = {c.bound:.6f}   {_flag(c.bound)}   [{c.g_ext_kind}]",
    "",
  ]
  budget = maurer_budget(c.kl, c.n, c.delta_pb, c.grid_size)
  rows = [
    ("emp_risk", f"{c.emp_risk:.6f}", f"Monte-Carlo estimate of E_Q[R_S] ({c.loss}, "
                                      f"M={c.num_mc})"),
    ("epsilon", f"{c.epsilon:.6f}", "one-sided Monte-Carlo term: kl_inv(emp_risk, "
                                    "ln(1/delta_mc)/M) - emp_risk"),
    ("g_gen", _num(c.g_gen, gen_status),
     f"generalization gap ({c.method})" + (": B_train hit 1, so no gap is measured"
                                            if gen_status == "saturated" else "")),
    ("B_train", f"{c.b_train:.6f}", "emp_risk + epsilon + g_gen: bound on E_Q[R_train]"),
    ("g_ext", _num(c.g_ext, ext_status), f"extrapolation gap [{c.g_ext_kind}, {c.g_ext_name}]: "
                                         f"{_ext_meaning(c.g_ext_name)}"),
    ("bound", f"{c.bound:.6f}", "emp_risk + epsilon + g_gen + g_ext"),
  ]
  width = max(len(r[0]) for r in rows)
  lines.append(f"{'term':<{width}}  {'value':>10}  meaning")
  lines.append(f"{'-' * width}  {'-' * 10}  {'-' * 40}")
  lines += [f"{name:<{width}}  {value:>10}  {meaning}" for name, value, meaning in rows]
  lines += ["", f"KL = {c.kl:.6g} nats, KL/n = {c.kl / c.n:.4g} (n = {c.n}), Maurer budget "
                f"(KL + ln(2 sqrt(n)/delta_pb) + ln k)/n = {budget:.4g} (k = {c.grid_size})"]
  if getattr(c, "best_possible_bound", None) is not None:
    lines.append(f"best possible bound on this grid (empirical risk 0 at the smallest KL of each "
                 f"prior sigma): {c.best_possible_bound:.6f}")
  lines += _unperturbed_lines(c.extra)
  if c.extrapolation:
    lines += ["", "extrapolation kinds computed (the smallest certified value is the bound):"]
    for k in c.extrapolation:
      used = "  <- used" if k["name"] == c.g_ext_name else ""
      lines.append(f"  {k['name']:<14} {k['value']:>10.6f}  delta {k['delta']:.3g}  "
                   f"[{k['kind']}]{used}")
  if c.slices:
    lines += ["", "certified risk by difficulty (per-slice bounds, union bound over slices):"]
    for s in c.slices:
      emp = "-" if s.get("emp_risk") is None else f"{s['emp_risk']:.4f}"
      bound = "vacuous" if s["bound"] >= 1.0 else f"{s['bound']:.4f}"
      lines.append(f"  d={s['difficulty']:<6g} n={s['n']:<6d} emp {emp:>6}  bound {bound}")
  if c.mixture:
    lines += ["", f"mixtures: {c.mixture.get('method', '')}"]
  lines.append("")
  setting = [f"n={c.n}", f"num_params={c.num_params if c.num_params is not None else '?'}",
             f"sigma_q={_fmt(c.sigma_q)}", f"sigma_p={_fmt(c.sigma_p)}", f"grid k={c.grid_size}"]
  if c.loss_options:
    setting.append("loss options " + ", ".join(f"{k}={v}" for k, v in c.loss_options.items()))
  lines.append("setting: " + ", ".join(setting))
  if c.baselines:
    others = ", ".join(f"{m} {'1 (vacuous)' if v >= 1.0 else f'{v:.6f}'}"
                       for m, v in c.baselines.items())
    lines.append(f"baseline bounds (the whole bound with g_gen by each method, clipped at 1): "
                 f"{others}")
  if c.saturated:
    lines.append(f"SATURATED: {c.saturation}.")
  lines += [f"note: {x}" for x in c.notes]
  if c.g_ext_kind == "estimate":
    lines.append("NOTE: g_ext is an estimate; the total is an estimate, not a guarantee.")
  return "\n".join(lines)


def _unperturbed_lines(extra: Mapping[str, Any]) -> list[str]:
  """The fine-tune's own risk (no noise) on S and per slice, when the report has it."""
  risk = extra.get("unperturbed_risk")
  if risk is None:
    return []
  out = [f"fine-tune's own risk (posterior mean, no noise) on S: {risk:.6f} (measured, not a "
         "bound)"]
  by = extra.get("unperturbed_by_slice") or {}
  if by:
    out.append("  by difficulty: " + ", ".join(f"d={d}: {v:.4f}" for d, v in by.items()))
  return out


def _fmt(value: float | None) -> str:
  return "?" if value is None else f"{value:.6g}"
