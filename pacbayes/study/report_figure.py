"""The figure of several bound reports: certified terms beside uncertified measures.

Rules (issue 18, "reports that cannot be misread"): a report whose bound is vacuous (>= 1) or
saturated (B_train >= 1, or KL of the order of n, where g_gen only fills the gap to 1) draws
no term bars at all, not even its emp_risk and epsilon (they would read as a finite
decomposition of a number that says nothing): it is one hatched, unfilled column marked
"vacuous" or "saturated", with the value's meaning written in it and under the figure; an
estimated g_ext (not certified) is hatched; reports are placed by the mean difficulty of their
training mixture when every report carries one; reports of different posterior spaces
(weights vs LoRA) or sigmas are refused unless the caller allows it, and the figure then says
so; the certified numbers (left panel, bars) and the measures (right panel, open markers, "no
guarantee") are drawn apart. In the measures panel, quantities in [0, 1] by definition (risks,
TV estimates) share a linear axis and every other measure (the sharpness sqrt(KL/(2n)),
unbounded) is drawn on a log axis of its own, so neither flattens the other; the fine-tune's
own risk on S is drawn once. Held-out certificates (`pacbayes.certificate.heldout`) are one
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
from matplotlib import ticker  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from pacbayes.bounds.kinds import KIND_ESTIMATE  # noqa: E402
from pacbayes.study.view import ResultsError  # noqa: E402

__all__ = ["ESTIMATE_HATCH", "HELDOUT_HATCH", "HELDOUT_SCHEMA", "LOG_AXIS_LABEL", "RISK_ON_S",
           "SATURATED_HATCH", "SATURATED_LABEL", "SATURATED_MEANING", "TERMS", "UNIT_AXIS_LABEL",
           "VACUOUS_HATCH", "VACUOUS_LABEL", "VACUOUS_MEANING", "is_heldout_report",
           "mean_difficulty", "report_status", "report_terms", "with_heldout_columns"]

HELDOUT_SCHEMA = "pacbayes.certificate.heldout/1"
TERMS = ("emp_risk", "epsilon", "g_gen", "g_ext")
_COLORS = {"emp_risk": "tab:gray", "epsilon": "tab:blue", "g_gen": "tab:orange",
           "g_ext": "tab:red", "heldout": "tab:green"}
VACUOUS_LABEL = "vacuous (bound >= 1): no term bars"
SATURATED_LABEL = "saturated (KL of the order of n): no term bars"
VACUOUS_MEANING = ("vacuous: the bound is >= 1, which every [0, 1] loss satisfies: it "
                   "certifies nothing")
SATURATED_MEANING = ("saturated: KL is of the order of n (> 1 nat per example), so g_gen "
                     "fills most of the gap to 1: the value reflects KL/n, not the risk")
NO_DECOMPOSITION = ("their emp_risk and epsilon are not drawn as bars: they decompose no "
                    "finite bound (the fine-tune's own risk is in the measures panel)")
ESTIMATE_HATCH = "\\\\"
HELDOUT_HATCH = ".."
VACUOUS_HATCH = "xx"
SATURATED_HATCH = "//"
RISK_ON_S = "fine-tune risk on S"
UNIT_AXIS_LABEL = "risk or TV, in [0, 1]: measure (uncertified)"
LOG_AXIS_LABEL = "measure (uncertified), log scale"
_MEASURE_MARKERS = "sD^v<>p*"


def is_heldout_report(report: Mapping[str, Any]) -> bool:
  """True for a held-out certificate (schema ``pacbayes.certificate.heldout/1``)."""
  return report.get("schema") == HELDOUT_SCHEMA


def with_heldout_columns(reports: Sequence[Mapping[str, Any]],
                         labels: Sequence[str] | None = None):
  """Each bound report's ``heldout`` block (`pacbayes bound --held-out`) as its own held-out
  certificate right after it, named ``<file> [held-out]``; (reports, labels) as lists."""
  out, out_labels = [], None if labels is None else []
  for i, report in enumerate(reports):
    out.append(report)
    if out_labels is not None:
      out_labels.append(labels[i])
    block = report.get("heldout") if not is_heldout_report(report) else None
    if isinstance(block, Mapping) and is_heldout_report(block):
      out.append({**block, "_path": f"{_name(report, i)} [held-out]"})
      if out_labels is not None:
        out_labels.append(f"{labels[i]} [held-out]")
  return out, out_labels


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
  """Uncertified numbers of a report: the fine-tune's own risk and ``extra.measures``.

  The fine-tune's unperturbed risk on S is written twice by `pacbayes bound`
  (``extra.unperturbed_risk`` and ``extra.measures.finetune_risk_train``); it is returned once,
  as `RISK_ON_S` (the measures' value when both are there).
  """
  out: dict[str, float] = {}
  if is_heldout_report(report):
    out["fine-tune risk (held-out rows)"] = float(report["emp_risk"])
    return out
  extra = report.get("extra") if isinstance(report.get("extra"), Mapping) else {}
  if _finite(extra.get("unperturbed_risk")):
    out[RISK_ON_S] = float(extra["unperturbed_risk"])
  for name, m in (extra.get("measures") or {}).items():
    value = m.get("value") if isinstance(m, Mapping) else m
    if _finite(value):
      out[RISK_ON_S if name == "finetune_risk_train" else str(name)] = float(value)
  return out


def _finite(value: Any) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def _in_unit_interval(name: str) -> bool:
  """True for a quantity in [0, 1] (or [-1, 1]) by definition: a risk or a TV estimate."""
  return "risk" in name or name.startswith("g_ext")


def _term(report: Mapping[str, Any], key: str) -> float:
  """A term's number: the key, or "raw_terms" when the report wrote it as null (0 if absent)."""
  value = report.get(key)
  if value is None:
    raw = report.get("raw_terms")
    value = raw.get(key) if isinstance(raw, Mapping) else None
  return 0.0 if value is None else float(value)


def _saturated(report: Mapping[str, Any], b_train: float) -> bool:
  """B_train >= 1, or the PAC-Bayes term in its saturated regime (the report's ``saturated``:
  (KL + ln terms)/n > 1, where g_gen is essentially the gap to 1), or a null g_gen."""
  return bool(b_train >= 1.0 or report.get("saturated") or report.get("g_gen") is None
              or report.get("g_gen_status") == "saturated")


def report_status(report: Mapping[str, Any]) -> tuple[str, str]:
  """(status, meaning) of a report's headline value: "ok", "vacuous" or "saturated".

  "vacuous": the bound (a held-out certificate's test-mixture bound, else its training one)
  is >= 1, or g_ext is vacuous; "saturated": the bound is < 1 but g_gen is saturated (see
  `_saturated`). The meaning is one line in words, with the report's numbers; "" for "ok".
  """
  if is_heldout_report(report):
    value = report.get("bound_test")
    value = float(report["bound_train"] if value is None else value)
    if value < 1.0:
      return "ok", ""
    return "vacuous", f"held-out bound {value:.4g} >= 1: certifies nothing"
  b_train = sum(_term(report, t) for t in TERMS[:3])
  bound = float(report["bound"])
  saturated = _saturated(report, b_train)
  kl_n = report.get("kl_per_n")
  why = f" (KL/n = {kl_n:.3g})" if _finite(kl_n) else ""
  ext_status = report.get("g_ext_status")
  if bound >= 1.0 or ext_status == "vacuous" or (report.get("g_ext") is None
                                                 and ext_status != "none"):
    if saturated:
      return "vacuous", f"bound {bound:.4g} >= 1: certifies nothing; g_gen saturated{why}"
    return "vacuous", (f"bound {bound:.4g} >= 1 on the test mixture: certifies nothing there; "
                       f"B_train {_below_one(b_train)} holds on the training mixture only")
  if saturated:
    return "saturated", (f"{_below_one(bound)}: g_gen saturated{why}; the value reflects "
                         "KL/n, not the risk")
  return "ok", ""


def _bar_values(report: Mapping[str, Any]) -> dict[str, Any]:
  """Heights per term (all 0 unless the status is "ok"), states, the bound, the drawn top.

  A term's state is "ok" or "estimate" (g_ext of the classifier: hatched, not certified).
  """
  status, meaning = report_status(report)
  if is_heldout_report(report):
    value = report.get("bound_test")
    value = float(report["bound_train"] if value is None else value)
    return {"heights": {"heldout": value if status == "ok" else 0.0},
            "states": {"heldout": "ok"}, "bound": value, "status": status,
            "meaning": meaning, "top": min(value, 1.0)}
  vals = {t: _term(report, t) for t in TERMS}
  bound = float(report["bound"])
  states = dict.fromkeys(TERMS, "ok")
  if report.get("g_ext_status") == "estimate" or report.get("g_ext_kind") == KIND_ESTIMATE:
    states["g_ext"] = "estimate"
  heights = {t: (vals[t] if status == "ok" else 0.0) for t in TERMS}
  top = sum(heights.values()) if status == "ok" else min(bound, 1.0)
  return {"heights": heights, "states": states, "bound": bound, "status": status,
          "meaning": meaning, "top": top}


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
    shown = [f"{diffs[i]:.2f}" for i in order]
    if len(set(shown)) == len(shown):
      return order, shown, "mean training difficulty"
    # Equal difficulties would give equal ticks: name the files, still in difficulty order.
    return order, [names[i] for i in order], "report (by mean training difficulty; some equal)"
  return list(range(len(reports))), names, "report (no training difficulty in the reports)"


def _set_ticks(ax, xs, ticks: list[str]) -> None:
  """Tick labels; long ones (file names) turned and smaller so that neighbours do not overlap."""
  long = max((len(t) for t in ticks), default=0) > 12
  ax.set_xticks(xs, ticks, **({"rotation": 20, "ha": "right", "fontsize": 8} if long else {}))


def report_terms(reports: Sequence[Mapping[str, Any]], labels: Sequence[str] | None = None,
                 *, allow_mixed: bool = False) -> Figure:
  """Certified bound terms (left) and measures (right) of several reports, one x per report.

  Left, "certified": stacked bars ``emp_risk, epsilon, g_gen, g_ext`` of each bound report
  (Proposition 4.1) whose bound is finite and informative, and one dotted-hatched bar per
  held-out certificate. A report whose bound is vacuous (>= 1) or saturated (g_gen saturated:
  B_train >= 1, or the report's ``saturated``, KL of the order of n) draws no term bar, not
  even emp_risk or epsilon: it is one unfilled column up to min(bound, 1), hatched
  `VACUOUS_HATCH` (`VACUOUS_LABEL`) or `SATURATED_HATCH` (`SATURATED_LABEL`), with
  `report_status`'s meaning written in it, "vacuous" or "saturated" on top, and
  `VACUOUS_MEANING` / `SATURATED_MEANING` under the figure. An estimated g_ext is hatched
  `ESTIMATE_HATCH`; the text on top of a finite bound is its value. A null ``g_gen`` /
  ``g_ext`` (the report's way of writing such terms) is read from ``raw_terms``.
  Right, "measures (uncertified)": open markers for the fine-tune's own risk (once) and every
  ``extra.measures`` entry; risks and TV estimates on a linear axis (`UNIT_AXIS_LABEL`),
  other measures (e.g. the sharpness G_gen measure) on a log-scaled twin axis
  (`LOG_AXIS_LABEL`), present only when there are such measures.

  Args:
    reports: bound reports (`Certificate.to_dict()`, or the keys emp_risk, epsilon, g_gen,
      g_ext, bound) and/or held-out certificates; a bound report's own ``heldout`` block
      is drawn as a held-out column right after it (`with_heldout_columns`).
    labels: x tick labels (default: the mean training difficulty when every report carries
      one, sorted by it; otherwise the file names).
    allow_mixed: draw reports of different spaces or sigmas (the figure then says so)
      instead of refusing.

  Returns:
    The figure: axes[0] certified, axes[1] measures (linear), axes[2] the log twin if any.

  Raises:
    ResultsError: no reports, labels of the wrong length, or mixed spaces / sigmas without
      ``allow_mixed`` (one line naming the values and files).
  """
  if not reports:
    raise ResultsError("no reports to plot")
  if labels is not None and len(labels) != len(reports):
    raise ResultsError(f"labels: {len(labels)} given for {len(reports)} reports")
  reports, labels = with_heldout_columns(reports, labels)
  names = [_name(r, i) for i, r in enumerate(reports)]
  mixed = _check_mixing(reports, names, allow_mixed)
  order, ticks, xlabel = _order(reports, labels, names)
  ordered = [reports[i] for i in order]
  bars = [_bar_values(r) for r in ordered]
  measures = [_measures(r) for r in ordered]
  notes = ["NOTE: " + "; ".join(mixed)] if mixed else []
  statuses = {b["status"] for b in bars}
  meanings = [m for s, m in (("vacuous", VACUOUS_MEANING), ("saturated", SATURATED_MEANING))
              if s in statuses]
  if meanings:
    notes.append("; ".join(meanings) + "; " + NO_DECOMPOSITION + ".")
  # Inches below the panels: the measures' legend (2 columns) and one line per note.
  legend_in = 0.17 * math.ceil(len({k for m in measures for k in m}) / 2) + 0.25
  notes_in = 0.2 * len(notes) + (0.05 if notes else 0.0)
  height = 4.4 + legend_in + notes_in
  fig, (ax, axm) = plt.subplots(1, 2, figsize=(2.2 * len(reports) + 5, height),
                                gridspec_kw={"width_ratios": [3, 2]})
  xs = np.arange(len(ordered))
  _draw_terms(ax, bars, xs)
  _set_ticks(ax, xs, ticks)
  ax.set_xlabel(xlabel)
  ax.set_ylabel("upper bound on the risk")
  ax.set_title("certified (holds w.p. >= 1 - delta)", fontsize=10)
  handles, labels_ = _draw_measures(axm, measures, xs, ticks, xlabel)
  if handles:  # under the measures panel, so that it hides no marker
    fig.legend(handles, labels_, loc="lower right", ncol=2, fontsize=6.5,
               bbox_to_anchor=(0.995, (notes_in + 0.02) / height),
               title="measures (uncertified)", title_fontsize=7)
  for i, line in enumerate(notes):
    fig.text(0.01, (0.05 + 0.2 * (len(notes) - 1 - i)) / height, line, fontsize=7,
             color="tab:red" if line.startswith("NOTE") else "black")
  fig.tight_layout(rect=(0, (legend_in + notes_in) / height, 1, 1))
  return fig


def _draw_terms(ax, bars: list[dict[str, Any]], xs) -> None:
  """The certified panel: stacked term bars of the informative reports, marked columns for
  the vacuous and saturated ones, the value (or status) on top."""
  bottom = np.zeros(len(bars))
  for term in (*TERMS, "heldout"):
    if not any(term in b["heights"] and b["status"] == "ok" for b in bars):
      continue
    h = np.array([b["heights"].get(term, 0.0) for b in bars])
    hatch = [(ESTIMATE_HATCH if b["states"].get(term) == "estimate" else
              HELDOUT_HATCH if term == "heldout" else "") for b in bars]
    label = "held-out test-set bound" if term == "heldout" else term
    cont = ax.bar(xs, h, bottom=bottom, color=_COLORS[term], label=label,
                  edgecolor="black", linewidth=0.5)
    for patch, hh in zip(cont.patches, hatch, strict=True):
      patch.set_hatch(hh)
    bottom = bottom + h
  for status, hatch, label in (("vacuous", VACUOUS_HATCH, VACUOUS_LABEL),
                               ("saturated", SATURATED_HATCH, SATURATED_LABEL)):
    hit = [(x, b) for x, b in zip(xs, bars, strict=True) if b["status"] == status]
    if not hit:
      continue
    ax.bar([x for x, _ in hit], [b["top"] for _, b in hit], facecolor="none",
           edgecolor="0.4", hatch=hatch, linewidth=0.8, label=label)
    for x, b in hit:
      ax.text(x, b["top"] / 2, b["meaning"].replace("; ", "\n"), rotation=90, ha="center",
              va="center", fontsize=6,
              bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1})
  for x, b in zip(xs, bars, strict=True):
    text = _below_one(b["bound"]) if b["status"] == "ok" else b["status"]
    ax.text(x, b["top"] + 0.03, text, ha="center", va="bottom", fontsize=8)
  ax.axhline(1.0, color="gray", lw=0.8)
  handles, names_ = ax.get_legend_handles_labels()
  if any(b["states"].get("g_ext") == "estimate" and b["status"] == "ok" for b in bars):
    handles.append(Patch(facecolor="white", edgecolor="black", hatch=ESTIMATE_HATCH))
    names_.append("g_ext estimate (not certified)")
  # Room above 1 for the values on top and the legend; no ticks there (a risk is <= 1).
  ax.set_ylim(0.0, 1.2 + 0.1 * math.ceil(len(handles) / 2))
  ax.set_yticks(np.linspace(0.0, 1.0, 6))
  ax.legend(handles, names_, fontsize=7, loc="upper left", ncol=2)


def _draw_measures(ax, measures: list[dict[str, float]], xs, ticks,
                   xlabel) -> tuple[list[Any], list[str]]:
  """Risks and TVs on ``ax`` (linear, [0, 1]); other measures on a log twin axis.

  Returns:
    The legend's (handles, labels) of both axes, for the caller to place.
  """
  names = sorted({k for m in measures for k in m})
  unit = [n for n in names if _in_unit_interval(n)]
  other = [n for n in names if not _in_unit_interval(n)]
  twin = ax.twinx() if other else None
  for j, name in enumerate(names):
    on_log = name in other
    pts = [(x, m[name]) for x, m in zip(xs, measures, strict=True)
           if name in m and (m[name] > 0 or not on_log)]
    dropped = sum(name in m for m in measures) - len(pts)
    label = name + (" (log axis, right)" if on_log else "") + (
        f" ({dropped} value(s) <= 0 not drawn)" if dropped else "")
    (twin if on_log else ax).plot(
        [p[0] for p in pts], [p[1] for p in pts], ls=":" if on_log else "--", lw=0.8,
        marker=_MEASURE_MARKERS[j % len(_MEASURE_MARKERS)], mfc="none", label=label,
        color=f"C{j % 10}")
  if not names:
    ax.text(0.5, 0.5, "no measures in these reports", ha="center", va="center",
            transform=ax.transAxes, fontsize=8)
  _set_ticks(ax, xs, ticks)
  ax.set_xlim(-0.5, len(xs) - 0.5)
  ax.set_xlabel(xlabel)
  ax.set_title("measures (uncertified: no guarantee)", fontsize=10)
  ax.grid(alpha=0.3)
  if unit or not other:
    low = min([0.0] + [m[n] for m in measures for n in unit if n in m])
    ax.set_ylim(low - 0.03, 1.05)
    ax.set_ylabel(UNIT_AXIS_LABEL, fontsize=8)
  else:
    ax.set_yticks([])
  handles, labels_ = ax.get_legend_handles_labels()
  if twin is not None:
    twin.set_yscale("log")
    twin.set_ylabel(LOG_AXIS_LABEL, fontsize=8)
    drawn = [y for ln in twin.get_lines() for y in ln.get_ydata()]
    if drawn:  # at least a decade either way, so a small change is not drawn as a large one
      twin.set_ylim(min(drawn) / 3.0, max(drawn) * 3.0)
    twin.yaxis.set_major_locator(ticker.LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
    twin.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    twin.yaxis.set_minor_formatter(ticker.NullFormatter())
    h2, l2 = twin.get_legend_handles_labels()
    handles, labels_ = handles + h2, labels_ + l2
  return handles, labels_
