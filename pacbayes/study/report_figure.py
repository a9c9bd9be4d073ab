"""The figure of several bound reports: certified terms beside uncertified measures.

Rules (issue 18, "reports that cannot be misread"): a vacuous term (a bound >= 1) or a
saturated one (B_train >= 1, or KL of the order of n, where g_gen only fills the gap to 1) is
never a bar: it is a marker labelled "vacuous" or "saturated"; an estimated g_ext (not
certified) is hatched; reports are placed by the mean difficulty of their training
mixture when every report carries one; reports of different posterior spaces (weights vs
LoRA) or sigmas are refused unless the caller allows it, and the figure then says so; the
certified numbers (left panel, bars) and the measures (right panel, open markers, "no
guarantee") are drawn apart. Held-out certificates (`pacbayes.certificate.heldout`) are one
certified bar each.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from pacbayes.bounds.kinds import KIND_ESTIMATE  # noqa: E402
from pacbayes.study.view import ResultsError  # noqa: E402

__all__ = ["ESTIMATE_HATCH", "HELDOUT_HATCH", "HELDOUT_SCHEMA", "SATURATED_LABEL", "TERMS",
           "VACUOUS_LABEL", "is_heldout_report", "mean_difficulty", "report_terms"]

HELDOUT_SCHEMA = "pacbayes.certificate.heldout/1"
TERMS = ("emp_risk", "epsilon", "g_gen", "g_ext")
_COLORS = {"emp_risk": "tab:gray", "epsilon": "tab:blue", "g_gen": "tab:orange",
           "g_ext": "tab:red", "heldout": "tab:green"}
VACUOUS_LABEL = "vacuous (>= 1): no bar"
SATURATED_LABEL = "saturated (KL of the order of n): no bar"
ESTIMATE_HATCH = "\\\\"
HELDOUT_HATCH = ".."
_MEASURE_MARKERS = "sD^v<>p*"


def is_heldout_report(report: Mapping[str, Any]) -> bool:
  """True for a held-out certificate (schema ``pacbayes.certificate.heldout/1``)."""
  return report.get("schema") == HELDOUT_SCHEMA


def _name(report: Mapping[str, Any], i: int) -> str:
  return os.path.basename(str(report.get("_path", f"report {i}")))


def _weights(pairs: list[tuple[float, float]]) -> float | None:
  total = math.fsum(w for _, w in pairs)
  if total <= 0:
    return None
  return math.fsum(d * w for d, w in pairs) / total


def mean_difficulty(report: Mapping[str, Any]) -> float | None:
  """Mean difficulty of the report's training rows, or None when it does not carry one.

  From the per-slice row counts (``slices[i].n``, or ``m`` for a held-out certificate: the
  empirical training mixture) when present, else from an exact training mixture
  (``mixture.train_lower`` with ``train_exact``).
  """
  slices = report.get("slices") or []
  count = "m" if is_heldout_report(report) else "n"
  pairs = [(float(s["difficulty"]), float(s.get(count, 0) or 0)) for s in slices
           if isinstance(s, Mapping) and "difficulty" in s]
  mean = _weights(pairs) if pairs else None
  if mean is not None:
    return mean
  mix = report.get("mixture")
  if isinstance(mix, Mapping) and mix.get("train_exact") and isinstance(
      mix.get("train_lower"), Mapping):
    return _weights([(float(k), float(v)) for k, v in mix["train_lower"].items()])
  return None


def _space(report: Mapping[str, Any]) -> str | None:
  extra = report.get("extra")
  return extra.get("space") if isinstance(extra, Mapping) else None


def _check_mixing(reports: Sequence[Mapping[str, Any]], names: list[str],
                  allow_mixed: bool) -> list[str]:
  """Lines describing mixed spaces/sigmas (refused unless ``allow_mixed``)."""
  pb = [(r, nm) for r, nm in zip(reports, names, strict=True) if not is_heldout_report(r)]
  lines = []
  for key, what in (("space", "posterior spaces"), ("sigma_q", "sigma_q"),
                    ("sigma_p", "sigma_p")):
    values = {}
    for r, nm in pb:
      v = _space(r) if key == "space" else r.get(key)
      if v is not None:
        values.setdefault(v, nm)
    if len(values) > 1:
      shown = ", ".join(f"{v if isinstance(v, str) else f'{v:.3g}'} ({nm})"
                        for v, nm in values.items())
      lines.append(f"mixed {what}: {shown}")
  if lines and not allow_mixed:
    raise ResultsError(f"{lines[0]}: their KL and g_gen are not comparable side by side; plot "
                       "them separately, or pass --allow-mixed to stack them with a note")
  return lines


def _measures(report: Mapping[str, Any]) -> dict[str, float]:
  """Uncertified numbers of a report: the fine-tune's own risk and ``extra.measures``."""
  out: dict[str, float] = {}
  if is_heldout_report(report):
    out["fine-tune risk (held-out rows)"] = float(report["emp_risk"])
    return out
  extra = report.get("extra") if isinstance(report.get("extra"), Mapping) else {}
  if isinstance(extra.get("unperturbed_risk"), (int, float)):
    out["fine-tune risk on S"] = float(extra["unperturbed_risk"])
  for name, m in (extra.get("measures") or {}).items():
    value = m.get("value") if isinstance(m, Mapping) else m
    if isinstance(value, (int, float)) and math.isfinite(value):
      out[str(name)] = float(value)
  return out


def _term(report: Mapping[str, Any], key: str) -> float:
  """A term's number: the key, or "raw_terms" when the report wrote it as null (0 if absent)."""
  value = report.get(key)
  if value is None:
    raw = report.get("raw_terms")
    value = raw.get(key) if isinstance(raw, Mapping) else None
  return 0.0 if value is None else float(value)


def _states(report: Mapping[str, Any], b_train: float, bound: float) -> dict[str, str]:
  """Per term: "ok", "estimate" (hatched: not certified), "saturated" or "vacuous" (no bar).

  g_gen is saturated when B_train >= 1 or the PAC-Bayes term is in its saturated regime
  (the report's ``saturated``: (KL + ln terms)/n > 1, where g_gen is essentially the gap to
  1); g_ext is vacuous when the bound is >= 1, and is not drawn either when g_gen is
  saturated (it is then measured from a B_train that says nothing).
  """
  states = {"emp_risk": "ok", "epsilon": "ok", "g_gen": "ok", "g_ext": "ok"}
  if (b_train >= 1.0 or report.get("saturated") or report.get("g_gen") is None
      or report.get("g_gen_status") == "saturated"):
    states["g_gen"] = "saturated"
  ext_status = report.get("g_ext_status")
  if bound >= 1.0 or ext_status == "vacuous" or (report.get("g_ext") is None
                                                  and ext_status != "none"):
    states["g_ext"] = "vacuous"
  elif states["g_gen"] == "saturated":
    states["g_ext"] = "saturated"
  elif ext_status == "estimate" or report.get("g_ext_kind") == KIND_ESTIMATE:
    states["g_ext"] = "estimate"
  return states


def _bar_values(report: Mapping[str, Any]) -> dict[str, Any]:
  """Heights per term (0 for a saturated or vacuous term), states, the bound, the drawn top."""
  if is_heldout_report(report):
    value = report.get("bound_test")
    value = float(report["bound_train"] if value is None else value)
    state = "vacuous" if value >= 1.0 else "ok"
    return {"heights": {"heldout": 0.0 if state == "vacuous" else value},
            "states": {"heldout": state}, "bound": value, "top": min(value, 1.0)}
  vals = {t: _term(report, t) for t in TERMS}
  b_train = vals["emp_risk"] + vals["epsilon"] + vals["g_gen"]
  bound = float(report["bound"])
  states = _states(report, b_train, bound)
  heights = {t: (0.0 if states[t] in ("saturated", "vacuous") else vals[t]) for t in TERMS}
  top = sum(heights.values())
  return {"heights": heights, "states": states, "bound": bound, "top": top}


def _below_one(value: float) -> str:
  """A bound < 1 to 3 decimals, or rounded down to 4 when 3 would print 1.000."""
  text = f"{value:.3f}"
  return text if text != "1.000" else f"{math.floor(value * 1e4) / 1e4:.4f}"


def _order(reports, labels, names) -> tuple[list[int], list[str], str]:
  if labels is not None:
    return list(range(len(reports))), list(labels), "report"
  diffs = [mean_difficulty(r) for r in reports]
  if all(d is not None for d in diffs):
    order = sorted(range(len(reports)), key=lambda i: diffs[i])
    return order, [f"{diffs[i]:.2f}" for i in order], "mean training difficulty"
  return list(range(len(reports))), names, "report (no training difficulty in the reports)"


def report_terms(reports: Sequence[Mapping[str, Any]], labels: Sequence[str] | None = None,
                 *, allow_mixed: bool = False) -> Figure:
  """Certified bound terms (left) and measures (right) of several reports, one x per report.

  Left, "certified": stacked bars ``emp_risk, epsilon, g_gen, g_ext`` of each bound report
  (Proposition 4.1), and one dotted-hatched bar per held-out certificate. A vacuous term
  (bound >= 1) has height 0 and a black "x" at the top of what is drawn (`VACUOUS_LABEL`); a
  saturated g_gen (B_train >= 1, or the report's ``saturated``: KL of the order of n) has
  height 0 and a black triangle (`SATURATED_LABEL`), and so has the g_ext measured from it;
  an estimated g_ext is hatched `ESTIMATE_HATCH`; the text on top is the bound, or
  "vacuous". A null ``g_gen`` / ``g_ext`` (the report's way of writing such terms) is read
  from ``raw_terms``.
  Right, "measures (uncertified)": open markers for the fine-tune's own risk and every
  ``extra.measures`` entry (e.g. the sharpness G_gen measure).

  Args:
    reports: bound reports (`Certificate.to_dict()`, or the keys emp_risk, epsilon, g_gen,
      g_ext, bound) and/or held-out certificates.
    labels: x tick labels (default: the mean training difficulty when every report carries
      one, sorted by it; otherwise the file names).
    allow_mixed: draw reports of different spaces or sigmas (the figure then says so)
      instead of refusing.

  Raises:
    ResultsError: no reports, labels of the wrong length, or mixed spaces / sigmas without
      ``allow_mixed`` (one line naming the values and files).
  """
  if not reports:
    raise ResultsError("no reports to plot")
  if labels is not None and len(labels) != len(reports):
    raise ResultsError(f"labels: {len(labels)} given for {len(reports)} reports")
  names = [_name(r, i) for i, r in enumerate(reports)]
  mixed = _check_mixing(reports, names, allow_mixed)
  order, ticks, xlabel = _order(reports, labels, names)
  ordered = [reports[i] for i in order]
  bars = [_bar_values(r) for r in ordered]
  fig, (ax, axm) = plt.subplots(1, 2, figsize=(2.2 * len(reports) + 5, 4.2),
                                gridspec_kw={"width_ratios": [3, 2]})
  xs = np.arange(len(ordered))
  bottom = np.zeros(len(ordered))
  for term in (*TERMS, "heldout"):
    h = np.array([b["heights"].get(term, 0.0) for b in bars])
    present = [term in b["heights"] for b in bars]
    if not any(present):
      continue
    hatch = [(ESTIMATE_HATCH if b["states"].get(term) == "estimate" else
              HELDOUT_HATCH if term == "heldout" else "") for b in bars]
    label = "held-out test-set bound" if term == "heldout" else term
    cont = ax.bar(xs, h, bottom=bottom, color=_COLORS[term], label=label,
                  edgecolor="black", linewidth=0.5)
    for patch, hh in zip(cont.patches, hatch, strict=True):
      patch.set_hatch(hh)
    bottom = bottom + np.where(present, h, 0.0)
  for state, marker, label in (("vacuous", "kx", VACUOUS_LABEL),
                               ("saturated", "kv", SATURATED_LABEL)):
    hit = [(x, min(b["top"], 1.0)) for x, b in zip(xs, bars, strict=True)
           if state in b["states"].values()]
    if hit:
      ax.plot([p[0] for p in hit], [p[1] for p in hit], marker, markersize=9, mew=2,
              ls="none", label=label)
  for x, b in zip(xs, bars, strict=True):
    text = (_below_one(b["bound"]) if b["bound"] < 1.0 else "vacuous") + (
        " (saturated)" if b["states"].get("g_gen") == "saturated" and b["bound"] < 1.0 else "")
    ax.text(x, min(b["top"], 1.0) + 0.03, text, ha="center", va="bottom", fontsize=8)
  ax.axhline(1.0, color="gray", lw=0.8)
  ax.set_ylim(min(0.0, float(np.min(bottom)) - 0.05), 1.15)
  ax.set_xticks(xs, ticks)
  ax.set_xlabel(xlabel)
  ax.set_ylabel("upper bound on the risk")
  ax.set_title("certified (holds w.p. >= 1 - delta)", fontsize=10)
  handles, names_ = ax.get_legend_handles_labels()
  if any(b["states"].get("g_ext") == "estimate" for b in bars):
    handles.append(Patch(facecolor="white", edgecolor="black", hatch=ESTIMATE_HATCH))
    names_.append("g_ext estimate (not certified)")
  ax.legend(handles, names_, fontsize=7, loc="upper left")
  _draw_measures(axm, [_measures(r) for r in ordered], xs, ticks, xlabel)
  if mixed:
    fig.text(0.01, 0.01, "NOTE: " + "; ".join(mixed), fontsize=7, color="tab:red")
  fig.tight_layout(rect=(0, 0.05 if mixed else 0, 1, 1))
  return fig


def _draw_measures(ax, measures: list[dict[str, float]], xs, ticks, xlabel) -> None:
  names = sorted({k for m in measures for k in m})
  for j, name in enumerate(names):
    pts = [(x, m[name]) for x, m in zip(xs, measures, strict=True) if name in m]
    ax.plot([p[0] for p in pts], [p[1] for p in pts], ls="--", lw=0.8,
            marker=_MEASURE_MARKERS[j % len(_MEASURE_MARKERS)], mfc="none", label=name)
  if not names:
    ax.text(0.5, 0.5, "no measures in these reports", ha="center", va="center",
            transform=ax.transAxes, fontsize=8)
  ax.set_xticks(xs, ticks)
  ax.set_xlim(-0.5, len(xs) - 0.5)
  ax.set_xlabel(xlabel)
  ax.set_title("measures (uncertified: no guarantee)", fontsize=10)
  ax.grid(alpha=0.3)
  if names:
    ax.legend(fontsize=7)
