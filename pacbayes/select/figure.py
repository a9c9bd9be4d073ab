"""The figure of a selection: pilot points, fitted curves extrapolated to N, the recommendation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402

_COLORS = ("tab:green", "tab:orange", "tab:red", "tab:purple", "tab:brown", "tab:blue")


def _curve(params: Mapping[str, float], n_M: np.ndarray) -> np.ndarray:
  """R(n) = E + A (n + n0)^-alpha (Lin et al. 2024, eq. 2), [M]."""
  return params["E"] + params["A"] * (n_M + params["n0"]) ** (-params["alpha"])


def selection_figure(selection: Mapping[str, Any], *, title: str | None = None) -> Figure:
  """Risk against training rows n (log axis) for every bucket of a `select_bucket` output.

  Pilot means with their bootstrap intervals (points), the fitted curve from the smallest
  pilot to the budget (line), the prediction at N with its interval (a bar at N, offset per
  bucket so they do not overlap), the measured risk at N when the output carries it (open
  diamonds), and the recommendation (a filled star when clear; an open star on the lowest
  prediction when the buckets cannot be told apart; none when unconstrained).
  """
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  budget = float(selection["budget"])
  rows = selection["buckets"]
  smallest = min(p["n"] for r in rows for p in r["pilots"])
  n_M = np.geomspace(smallest, budget, 200)
  measured = (selection.get("measured_at_budget") or {}).get("risk", {})
  for k, row in enumerate(rows):
    color = _COLORS[k % len(_COLORS)]
    ns = np.array([p["n"] for p in row["pilots"]], dtype=float)
    mean = np.array([p["mean"] for p in row["pilots"]])
    lo = np.array([p["interval"][0] for p in row["pilots"]])
    hi = np.array([p["interval"][1] for p in row["pilots"]])
    ax.errorbar(ns, mean, yerr=[mean - lo, hi - mean], fmt="o", color=color, capsize=3,
                label=f"{row['bucket']} pilots")
    if row.get("params") is None:
      continue
    ax.plot(n_M, _curve(row["params"], n_M), "-", color=color, lw=1.2,
            label=f"{row['bucket']}: {row['family']} fit, P(best)="
                  f"{row['p_best'] if row['p_best'] is None else format(row['p_best'], '.2f')}")
    x = budget * 1.04 ** (k - (len(rows) - 1) / 2)
    pred, (plo, phi) = row["prediction"], row["interval"]
    ax.errorbar([x], [pred], yerr=[[pred - plo], [phi - pred]], fmt="s", color=color,
                capsize=4, mfc="white")
    if row["bucket"] in measured:
      ax.plot([x], [measured[row["bucket"]]], "D", color=color, mfc="none", ms=8)
    if row["bucket"] == selection.get("recommendation"):
      ax.plot([x], [pred], "*", color="black", ms=14, zorder=5)
    elif row["bucket"] == selection.get("lowest_predicted"):
      ax.plot([x], [pred], "*", color="black", mfc="none", ms=14, zorder=5)
  ax.axvline(budget, color="grey", lw=0.8, ls=":")
  ax.set_xscale("log")
  ax.set_xlim(right=budget * 1.04 ** len(rows) * 1.05)
  ticks = sorted({p["n"] for r in rows for p in r["pilots"]} | {int(budget)})
  ax.xaxis.set_minor_locator(NullLocator())
  ax.set_xticks(ticks, [str(t) for t in ticks])
  ax.set_xlabel("training rows n (log scale); squares: prediction at N, diamonds: measured")
  ax.set_ylabel("risk on the target")
  head = f"N={int(budget)}: {_headline(selection)}"
  ax.set_title(f"{title}\n{head}" if title else head, fontsize=9)
  ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
  return fig


def _headline(selection: Mapping[str, Any]) -> str:
  rec, lowest = selection.get("recommendation"), selection.get("lowest_predicted")
  if rec is not None:
    p = next(r["p_best"] for r in selection["buckets"] if r["bucket"] == rec)
    return f"recommend {rec} (P(best)={p:.2f}; a forecast, not certified)"
  if lowest is not None:
    p = next(r["p_best"] for r in selection["buckets"] if r["bucket"] == lowest)
    contenders = selection.get("contenders") or []
    who = ("the buckets" if len(contenders) in (0, len(selection["buckets"]))
           else " and ".join(contenders))
    return (f"{who} cannot be told apart at this pilot budget\n(lowest prediction: "
            f"{lowest}, P(best)={p:.2f})")
  return "unconstrained, no recommendation"


def close(fig: Figure) -> None:
  """Releases a figure made by `selection_figure`."""
  plt.close(fig)
