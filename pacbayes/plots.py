"""Figures from result files: each function takes data and returns a matplotlib Figure."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # figures are written to files; never ask for a screen

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pacbayes.atomic import write_atomic  # noqa: E402

_BUCKET_COLORS = ("tab:green", "tab:orange", "tab:red", "tab:purple", "tab:brown")


class ResultsError(ValueError):
  """A results file that cannot be plotted or judged; the message names the file or key."""


def load_results(path: str | os.PathLike) -> dict[str, Any]:
  """Reads a lab results file (schema ``pacbayes.lab/1``) or a bound report.

  Args:
    path: a JSON file written by ``pacbayes lab`` or ``pacbayes bound``.

  Returns:
    The parsed object, with ``"_path"`` added.

  Raises:
    ResultsError: the file is missing, is not JSON, or is neither kind of file.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ResultsError(f"{path}: no such file")
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise ResultsError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
  if not isinstance(data, dict):
    raise ResultsError(f"{path}: expected a JSON object at the top level")
  if data.get("schema") == "pacbayes.lab/1":
    for key in ("cells", "buckets", "sizes", "bases"):
      if key not in data:
        raise ResultsError(f"{path}: lab results lack the key {key!r}")
  elif not {"bound", "g_gen", "g_ext", "emp_risk"} <= set(data):
    raise ResultsError(
        f"{path}: neither lab results (schema 'pacbayes.lab/1') nor a bound report "
        "(keys bound, g_gen, g_ext, emp_risk)"
    )
  data["_path"] = path
  return data


def bucket_order(results: Mapping[str, Any]) -> list[str]:
  """Bucket names ordered from easy to hard (by the lower end of their op range)."""
  buckets = results["buckets"]
  return sorted(buckets, key=lambda b: (buckets[b][0], buckets[b][1]))


def select_cells(
    results: Mapping[str, Any], *, base: str = "base", method: str = "sft"
) -> dict[tuple[str, int], dict[str, Any]]:
  """Cells of one base and method keyed by ``(bucket, n)``; repeated seeds are averaged.

  Averaging touches the numeric fields that figures and verdicts read: ``accuracy``,
  ``test_risk``, ``accuracy_by_slice`` and the certificate terms.
  """
  groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
  for cell in results["cells"]:
    if cell.get("base") == base and cell.get("method") == method:
      groups.setdefault((cell["bucket"], int(cell["n"])), []).append(cell)
  return {key: _mean_cell(cells) for key, cells in groups.items()}


def _mean_cell(cells: list[dict[str, Any]]) -> dict[str, Any]:
  if len(cells) == 1:
    return cells[0]
  out = dict(cells[0])
  out["accuracy"] = float(np.mean([c["accuracy"] for c in cells]))
  out["test_risk"] = float(np.mean([c["test_risk"] for c in cells]))
  slices = cells[0].get("accuracy_by_slice", {})
  out["accuracy_by_slice"] = {
      k: float(np.mean([c["accuracy_by_slice"][k] for c in cells])) for k in slices
  }
  cert = dict(cells[0]["certificate"])
  for key in ("emp_risk", "epsilon", "g_gen", "g_ext", "bound", "kl"):
    if key in cert:
      cert[key] = float(np.mean([c["certificate"][key] for c in cells]))
  out["certificate"] = cert
  out["num_seeds"] = len(cells)
  return out


def _grid(results, cells, field):
  buckets = bucket_order(results)
  sizes = sorted(int(n) for n in results["sizes"])
  grid = np.full((len(sizes), len(buckets)), np.nan)  # [sizes, buckets]
  for i, n in enumerate(sizes):
    for j, b in enumerate(buckets):
      cell = cells.get((b, n))
      if cell is not None:
        grid[i, j] = field(cell)
  return grid, sizes, buckets


def _bucket_labels(results, buckets):
  return [f"{b}\n(ops {results['buckets'][b][0]}-{results['buckets'][b][1]})" for b in buckets]


def accuracy_heatmap(
    results: Mapping[str, Any], *, base: str = "base", method: str = "sft",
    field: str = "accuracy",
) -> Figure:
  """Heatmap over data size (rows) x training difficulty (columns).

  Args:
    results: lab results (schema ``pacbayes.lab/1``).
    base: which base model's cells.
    method: ``"sft"`` or ``"dft"``.
    field: ``"accuracy"`` or a certificate term (``"g_gen"``, ``"g_ext"``, ``"bound"``).

  Returns:
    The figure; the best bucket of each row is outlined.
  """
  cells = select_cells(results, base=base, method=method)
  if not cells:
    raise ResultsError(f"no cells with base={base!r} and method={method!r}")
  get = (lambda c: c[field]) if field in ("accuracy", "test_risk") else (
      lambda c: c["certificate"][field])
  grid, sizes, buckets = _grid(results, cells, get)
  fig, ax = plt.subplots(figsize=(1.9 * len(buckets) + 2.2, 0.8 * len(sizes) + 2.0))
  cmap = "viridis" if field == "accuracy" else "magma"
  im = ax.imshow(grid, cmap=cmap, aspect="auto", origin="lower")
  fig.colorbar(im, ax=ax, label=field.replace("_", " "))
  ax.set_xticks(range(len(buckets)), _bucket_labels(results, buckets))
  ax.set_yticks(range(len(sizes)), [f"n={n}" for n in sizes])
  ax.set_xlabel("training difficulty")
  ax.set_ylabel("SFT data size")
  finite = np.isfinite(grid)
  for i in range(len(sizes)):
    for j in range(len(buckets)):
      if finite[i, j]:
        ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", color="w", fontsize=9)
    if field == "accuracy" and finite[i].any():
      j = int(np.nanargmax(grid[i]))
      ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="white", lw=2.5))
  ax.set_title(f"{field.replace('_', ' ')} over size x difficulty ({base}, {method.upper()})")
  fig.tight_layout()
  return fig


def slice_accuracy(
    results: Mapping[str, Any], *, base: str = "base", method: str = "sft",
    sizes: Sequence[int] | None = None,
) -> Figure:
  """Accuracy by test slice (operation count) for each training bucket, one panel per n.

  The base model's own accuracy is drawn in black, so one sees which slices a training
  bucket improves and which it damages.
  """
  cells = select_cells(results, base=base, method=method)
  if not cells:
    raise ResultsError(f"no cells with base={base!r} and method={method!r}")
  buckets = bucket_order(results)
  sizes = sorted(sizes or {n for (_, n) in cells})
  base_info = results["bases"].get(base, {})
  fig, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 3.6), squeeze=False,
                           sharey=True)
  for ax, n in zip(axes[0], sizes, strict=True):
    if "accuracy_by_slice" in base_info:
      xs, ys = _slice_xy(base_info["accuracy_by_slice"])
      ax.plot(xs, ys, "k--", marker=".", label=f"{base} (before SFT)")
    for color, b in zip(_BUCKET_COLORS, buckets, strict=False):
      cell = cells.get((b, n))
      if cell is None:
        continue
      xs, ys = _slice_xy(cell["accuracy_by_slice"])
      lo, hi = results["buckets"][b]
      ax.plot(xs, ys, marker="o", color=color, label=f"{b} (ops {lo}-{hi})")
      ax.axvspan(lo - 0.5, hi + 0.5, color=color, alpha=0.06)
    ax.set_title(f"n = {n}")
    ax.set_xlabel("test slice: operations")
    ax.grid(alpha=0.3)
  axes[0, 0].set_ylabel("answer accuracy")
  axes[0, -1].legend(fontsize=8, loc="best")
  fig.suptitle(f"Accuracy by test slice ({base}, {method.upper()})")
  fig.tight_layout()
  return fig


def _slice_xy(by_slice: Mapping[str, float]):
  items = sorted((float(k), float(v)) for k, v in by_slice.items())
  return [k for k, _ in items], [v for _, v in items]


def gaps_vs_difficulty(
    results: Mapping[str, Any], *, base: str = "base", method: str = "sft"
) -> Figure:
  """G_gen and G_ext across training difficulty for each n (top), bound vs test risk (bottom).

  The top row is Proposition 4.1's tradeoff: G_gen should rise with difficulty and fall
  with n, G_ext should fall with difficulty. The bottom row sets the whole bound beside
  the measured test risk under the same posterior and loss.
  """
  cells = select_cells(results, base=base, method=method)
  if not cells:
    raise ResultsError(f"no cells with base={base!r} and method={method!r}")
  buckets = bucket_order(results)
  sizes = sorted({n for (_, n) in cells})
  diff = {b: float(np.mean(results["buckets"][b])) for b in buckets}
  fig, axes = plt.subplots(2, 1, figsize=(6.5, 7.5), sharex=True)
  cmap = plt.get_cmap("Blues")
  for k, n in enumerate(sizes):
    color = cmap(0.4 + 0.6 * (k + 1) / len(sizes))
    row = [cells.get((b, n)) for b in buckets]
    xs = [cells[(b, n)].get("difficulty", diff[b]) for b, c in zip(buckets, row, strict=True) if c]
    present = [c for c in row if c]
    axes[0].plot(xs, [c["certificate"]["g_gen"] for c in present], marker="o", color=color,
                 label=f"G_gen, n={n}")
    axes[1].plot(xs, [c["certificate"]["bound"] for c in present], marker="o", color=color,
                 label=f"bound, n={n}")
    axes[1].plot(xs, [c["test_risk"] for c in present], marker="x", ls=":", color=color,
                 label=f"test risk, n={n}")
  ext = [(cells[(b, n)].get("difficulty", diff[b]), cells[(b, n)]["certificate"]["g_ext"])
         for b in buckets for n in sizes[:1] if (b, n) in cells]
  axes[0].plot([x for x, _ in ext], [y for _, y in ext], marker="s", color="tab:red", lw=2,
               label="G_ext (TV, any n)")
  axes[0].set_ylabel("gap")
  axes[0].set_title(f"Generalization vs extrapolation gap ({base}, {method.upper()})")
  axes[0].legend(fontsize=8)
  axes[0].grid(alpha=0.3)
  axes[1].axhline(1.0, color="gray", lw=0.8)
  axes[1].set_ylabel("risk (token error)")
  axes[1].set_xlabel("training difficulty (mean operations)")
  axes[1].legend(fontsize=7, ncol=2)
  axes[1].grid(alpha=0.3)
  fig.tight_layout()
  return fig


def report_terms(reports: Sequence[Mapping[str, Any]], labels: Sequence[str] | None = None
                 ) -> Figure:
  """Stacked bars of the bound terms of several ``pacbayes bound`` reports.

  Args:
    reports: certificate dicts (as written by ``pacbayes bound --out``).
    labels: one label per report (defaults to the file name or index).
  """
  if not reports:
    raise ResultsError("no reports to plot")
  labels = list(labels) if labels is not None else [
      os.path.basename(r.get("_path", f"report {i}")) for i, r in enumerate(reports)]
  terms = ("emp_risk", "epsilon", "g_gen", "g_ext")
  colors = ("tab:gray", "tab:blue", "tab:orange", "tab:red")
  fig, ax = plt.subplots(figsize=(1.3 * len(reports) + 3, 4))
  bottom = np.zeros(len(reports))
  for term, color in zip(terms, colors, strict=True):
    vals = np.array([float(r[term]) for r in reports])
    ax.bar(labels, vals, bottom=bottom, color=color, label=term)
    bottom += vals
  for i, r in enumerate(reports):
    ax.text(i, bottom[i], f"{float(r['bound']):.3f}", ha="center", va="bottom", fontsize=8)
  ax.axhline(1.0, color="gray", lw=0.8)
  ax.set_ylabel("bound on test risk")
  ax.set_title("Proposition 4.1 terms")
  ax.legend(fontsize=8)
  ax.tick_params(axis="x", labelrotation=20)
  fig.tight_layout()
  return fig


LAB_FIGURES = {
    "heatmap": accuracy_heatmap,
    "slices": slice_accuracy,
    "gaps": gaps_vs_difficulty,
}


def lab_figures(results: Mapping[str, Any]) -> dict[str, Figure]:
  """Every standard figure for one lab results file, keyed by a file stem."""
  figs = {
      "accuracy_heatmap": accuracy_heatmap(results),
      "slice_accuracy": slice_accuracy(results),
      "gaps_vs_difficulty": gaps_vs_difficulty(results),
      "g_gen_heatmap": accuracy_heatmap(results, field="g_gen"),
  }
  methods = {(c["base"], c["method"]) for c in results["cells"]}
  if ("base", "dft") in methods:
    figs["dft_vs_sft"] = method_comparison(results)
  if any(b == "strong" for b, _ in methods):
    figs["base_strength"] = base_comparison(results)
  return figs


def write_lab_figures(results: Mapping[str, Any], folder: str | os.PathLike,
                      prefix: str) -> list[str]:
  """Saves every figure of `lab_figures` as ``folder/prefix_stem.png``; returns the paths."""
  paths = []
  for stem, fig in lab_figures(results).items():
    path = os.path.join(os.fspath(folder), f"{prefix}_{stem}.png")
    save_figure(fig, path)
    paths.append(path)
  return paths


def method_comparison(results: Mapping[str, Any], *, base: str = "base") -> Figure:
  """Accuracy of SFT and DFT against n, one panel per bucket where DFT was run."""
  sft = select_cells(results, base=base, method="sft")
  dft = select_cells(results, base=base, method="dft")
  buckets = [b for b in bucket_order(results) if any(k[0] == b for k in dft)]
  if not buckets:
    raise ResultsError(f"no DFT cells for base {base!r}")
  fig, axes = plt.subplots(1, len(buckets), figsize=(4 * len(buckets), 3.4), squeeze=False)
  for ax, b in zip(axes[0], buckets, strict=True):
    for cells, name, style in ((sft, "SFT", "o-"), (dft, "DFT", "s--")):
      ns = sorted(n for (bb, n) in cells if bb == b)
      ax.plot(ns, [cells[(b, n)]["accuracy"] for n in ns], style, label=name)
    ax.set_xscale("log")
    ax.set_title(f"{b} training data")
    ax.set_xlabel("n")
    ax.grid(alpha=0.3)
  axes[0, 0].set_ylabel("answer accuracy")
  axes[0, 0].legend()
  fig.tight_layout()
  return fig


def base_comparison(results: Mapping[str, Any]) -> Figure:
  """Accuracy against training difficulty for the base and the stronger base."""
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  buckets = bucket_order(results)
  for base, style in (("base", "o-"), ("strong", "s--")):
    cells = select_cells(results, base=base, method="sft")
    for n in sorted({n for (_, n) in cells}):
      xs = [i for i, b in enumerate(buckets) if (b, n) in cells]
      ax.plot(xs, [cells[(buckets[i], n)]["accuracy"] for i in xs], style,
              label=f"{base}, n={n}")
  ax.set_xticks(range(len(buckets)), _bucket_labels(results, buckets))
  ax.set_ylabel("answer accuracy")
  ax.set_title("A stronger base and the best difficulty")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  return fig


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 130) -> None:
  """Writes a figure atomically (temporary file, then rename) and closes it."""
  fmt = os.path.splitext(os.fspath(path))[1].lstrip(".") or "png"
  write_atomic(path, lambda f: fig.savefig(f, dpi=dpi, format=fmt), binary=True)
  plt.close(fig)
