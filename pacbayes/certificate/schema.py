"""Certificate reports: value checks naming the file and key, the v1 -> v2 conversion, the table.

Helpers of `pacbayes.certificate.core` (which owns the schema); they work on plain dicts and on
any object with the `Certificate` attributes, so this module imports nothing from it.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from typing import Any

__all__ = ["FIELD_TYPES", "V1_KEYS", "check_report", "convert_v1", "render_table"]

# What each report key holds: "int", "float", "str", "bool", "dict", "list", "?" = or null.
FIELD_TYPES: dict[str, str] = {
  "n": "int", "num_params": "int?", "sigma_q": "float?", "sigma_p": "float?", "kl": "float",
  "emp_risk": "float", "num_mc": "int", "epsilon": "float", "g_gen": "float", "g_ext": "float",
  "g_ext_kind": "str", "bound": "float", "delta": "float", "delta_mc": "float",
  "delta_pb": "float", "delta_ext": "float", "grid_size": "int", "loss": "str",
  "method": "str", "baselines": "dict", "extra": "dict", "b_train": "float",
  "g_ext_name": "str", "extrapolation": "list", "slices": "list", "mixture": "dict?",
  "delta_parts": "list", "saturated": "bool", "saturation": "str", "notes": "list",
  "loss_options": "dict",
}
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
  unknown = sorted(set(data) - set(FIELD_TYPES) - {"schema", *FLAGS})
  if unknown:
    raise ValueError(f"{source}: unknown keys {unknown}.")
  for key, kind in FIELD_TYPES.items():
    if key in data:
      _expect(source, key, data[key], kind)
  for key in FLAGS:
    if key in data:
      _expect(source, key, data[key], "bool")
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


def convert_v1(data: Mapping[str, Any], source: str) -> dict[str, Any]:
  """A ``pacbayes.certificate.core/1`` report as a v2 dict (numbers unchanged; a note says so).

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
             notes=["converted from pacbayes.certificate.core/1: its epsilon used the two-sided "
                    "ln(2/delta_mc); saturation was not recorded"])
  return out


# --------------------------------------------------------------------------------- table


def _flag(value: float) -> str:
  return "VACUOUS (>= 1: says nothing about a [0, 1] loss)" if value >= 1.0 else "non-vacuous"


def render_table(c: Any) -> str:
  """The plain-text table of a `Certificate` (see `Certificate.to_table`)."""
  conf = 1.0 - c.delta
  parts = " + ".join(f"{v:.3g} {k}" for k, v in c.delta_parts)
  lines = [
    "Two-gap PAC-Bayes certificate (Proposition 4.1, arXiv 2605.12906)",
    f"With probability >= {conf:.4g} (delta = {c.delta:.4g} = {parts}):",
    f"  E_Q[R_train] <= B_train = {c.b_train:.6f}   {_flag(c.b_train)}",
    f"  E_Q[R_test]  <= bound   = {c.bound:.6f}   {_flag(c.bound)}   [{c.g_ext_kind}]",
    "",
  ]
  g_gen_value = "saturated" if c.saturated else f"{c.g_gen:.6f}"
  ext_meaning = {
    "tv": "B_train + TV(p_test, p_train): certified upper value of the difficulty shift",
    "mixture_shift": "mixture-shift term: worst case of sum_d p_test(d) R_d given B_train",
    "weighted": "m_out + w_max * B_w, B_w a PAC-Bayes bound on the weighted loss",
    "per_slice": "sum_d p_test(d) B_d from per-slice PAC-Bayes bounds",
    "estimate": "ESTIMATE of TV(D_test, D_train), not an upper value",
    "none": "left out: the bound is on the training distribution",
  }[c.g_ext_name]
  rows = [
    ("emp_risk", f"{c.emp_risk:.6f}", f"Monte-Carlo estimate of E_Q[R_S] ({c.loss}, "
                                      f"M={c.num_mc})"),
    ("epsilon", f"{c.epsilon:.6f}", "one-sided Monte-Carlo term: kl_inv(emp_risk, "
                                    "ln(1/delta_mc)/M) - emp_risk"),
    ("g_gen", g_gen_value, f"generalization gap ({c.method}): KL={c.kl:.6g} nats, n={c.n}, "
                           f"ln k={math.log(c.grid_size):.3g}"
                           + (f"; g_gen = {c.g_gen:.4g} but {c.saturation}" if c.saturated
                              else "")),
    ("B_train", f"{c.b_train:.6f}", "emp_risk + epsilon + g_gen: bound on E_Q[R_train]"),
    ("g_ext", f"{c.g_ext:.6f}", f"extrapolation gap [{c.g_ext_kind}, {c.g_ext_name}]: "
                                f"{ext_meaning}"),
    ("bound", f"{c.bound:.6f}", "emp_risk + epsilon + g_gen + g_ext"),
  ]
  width = max(len(r[0]) for r in rows)
  lines.append(f"{'term':<{width}}  {'value':>10}  meaning")
  lines.append(f"{'-' * width}  {'-' * 10}  {'-' * 40}")
  lines += [f"{name:<{width}}  {value:>10}  {meaning}" for name, value, meaning in rows]
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
      lines.append(f"  d={s['difficulty']:<6g} n={s['n']:<6d} emp {emp:>6}  "
                   f"bound {s['bound']:.4f}")
  if c.mixture:
    lines += ["", f"mixtures: {c.mixture.get('method', '')}"]
  lines.append("")
  setting = [f"n={c.n}", f"num_params={c.num_params if c.num_params is not None else '?'}",
             f"sigma_q={_fmt(c.sigma_q)}", f"sigma_p={_fmt(c.sigma_p)}", f"grid k={c.grid_size}"]
  if c.loss_options:
    setting.append("loss options " + ", ".join(f"{k}={v}" for k, v in c.loss_options.items()))
  lines.append("setting: " + ", ".join(setting))
  if c.baselines:
    others = ", ".join(f"{m} {v:.6f}" for m, v in c.baselines.items())
    lines.append(f"whole bound by g_gen method: {others}")
  if c.saturated:
    lines.append(f"SATURATED: {c.saturation}.")
  lines += [f"note: {x}" for x in c.notes]
  if c.g_ext_kind == "estimate":
    lines.append("NOTE: g_ext is an estimate; the total is an estimate, not a guarantee.")
  return "\n".join(lines)


def _fmt(value: float | None) -> str:
  return "?" if value is None else f"{value:.6g}"
