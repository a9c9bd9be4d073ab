"""Figures from result files: each function takes data and returns a matplotlib Figure.

Lab figures read a study through `pacbayes.study.view.StudyView` (schema ``pacbayes.lab/3``
or /2); every error bar is the 95% interval of `pacbayes.study.stats.contrast` for that one
cell (paired bootstrap over test items combined with the variance between seeds), the same
interval the verdicts use.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg")  # figures are written to files; never ask for a screen

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pacbayes.bounds.checks import is_vacuous
from pacbayes.core import jsonio
from pacbayes.core.atomic import write_atomic
from pacbayes.study.report_figure import is_heldout_report, report_terms
from pacbayes.study.stats import contrast
from pacbayes.study.view import READABLE, SCHEMA, ResultsError, StudyView, study_view

__all__ = ["ResultsError", "load_results", "is_lab_results", "lab_figures", "write_lab_figures",
           "accuracy_vs_n", "accuracy_vs_difficulty", "gaps_vs_difficulty",
           "certified_vs_measured", "bound_vs_risk", "certified_records", "method_comparison",
           "report_terms", "is_heldout_report", "save_figure", "LAB_FIGURES"]

_COLORS = ("tab:green", "tab:orange", "tab:red", "tab:purple", "tab:brown")


def is_lab_results(data: Mapping[str, Any]) -> bool:
  """True for a lab results dict (a readable ``pacbayes.study`` schema)."""
  return data.get("schema") in READABLE


def load_results(path: str | os.PathLike) -> dict[str, Any]:
  """Reads a lab results file (schema ``pacbayes.lab/3`` or /2), a bound report or a held-out
  certificate (``pacbayes.certificate.heldout/1``).

  Returns:
    The parsed object, with ``"_path"`` added.

  Raises:
    ResultsError: missing file, not JSON, an old lab schema, or neither kind of file.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ResultsError(f"{path}: no such file")
  try:
    data = jsonio.read_json(path, allow_nan=True)  # the project's own files may hold NaN
  except jsonio.JSONError as e:
    raise ResultsError(str(e)) from None
  if not isinstance(data, dict):
    raise ResultsError(f"{path}: expected a JSON object at the top level")
  schema = data.get("schema")
  if isinstance(schema, str) and schema.startswith(("pacbayes.study/", "pacbayes.lab/")) and \
     schema not in READABLE:
    raise ResultsError(f"{path}: key 'schema': {schema!r} is an older study format; rerun "
                       f"`pacbayes lab` (expected {SCHEMA!r})")
  if schema in READABLE:
    for key in ("cells", "arms", "test_items", "bases", "test_mixture"):
      if key not in data:
        raise ResultsError(f"{path}: lab results lack the key {key!r}")
  elif is_heldout_report(data):
    for key in ("bound_train", "bound_test", "emp_risk", "kind"):
      if key not in data:
        raise ResultsError(f"{path}: the held-out certificate lacks the key {key!r}")
  elif not {"bound", "g_gen", "g_ext", "emp_risk"} <= set(data):
    raise ResultsError(f"{path}: neither lab results (schema {SCHEMA!r}), a bound report "
                       "(keys bound, g_gen, g_ext, emp_risk) nor a held-out certificate")
  data["_path"] = path
  return data


def _view(results) -> StudyView:
  return results if isinstance(results, StudyView) else study_view(results)


def cell_interval(view: StudyView, key, field: str = "correct", weights=None):
  """(estimate, lo, hi) of one cell's slice-weighted mean of a per-item field (replicate 0)."""
  i = view.index(key)
  w = view.p_test if weights is None else np.asarray(weights)
  ct = contrast([1.0], X=view.items[field][:1, [i]], W=w[None, :], slice_of=view.slice_of)
  return float(ct.estimate[0]), float(ct.lo[0]), float(ct.hi[0])


def _errorbar(ax, xs, cis, **kw):
  est = np.array([c[0] for c in cis])
  err = np.array([[c[0] - c[1] for c in cis], [c[2] - c[0] for c in cis]])
  ax.errorbar(xs, est, yerr=err, capsize=3, **kw)


def _log_sizes_axis(ax, sizes) -> None:
  """A log x axis labelled at the study's sizes only (no overlapping minor labels)."""
  from matplotlib.ticker import NullFormatter, NullLocator

  ax.set_xscale("log")
  ticks = sorted(set(sizes))
  if ticks:
    ax.set_xticks(ticks, [str(n) for n in ticks])
  ax.xaxis.set_minor_locator(NullLocator())
  ax.xaxis.set_minor_formatter(NullFormatter())


def _base_lines(ax, view: StudyView, base: str) -> None:
  """One horizontal line per replica of `base`: its accuracy on the view's test mixture before
  fine-tuning (schema 3 records every replica; schema 2 has one base)."""
  reps = view.base_acc_replicas.get(base)
  if reps is None:
    reps = view.base_acc[base][None, :]
  for r, acc in enumerate(reps):
    ax.axhline(float(acc @ view.p_test), color="gray", ls=(0, (1, 1 + r)), lw=1.0,
               label=f"{base} replica {r} before fine-tuning")


def accuracy_vs_n(results, *, base: str = "base", method: str = "sft",
                  mixture: str = "test mixture") -> Figure:
  """Answer accuracy on the test mixture against n, one line per bucket, 95% error bars, and a
  horizontal line per base replica (its accuracy before fine-tuning)."""
  view = _view(results)
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for j, b in enumerate(view.buckets):
    ns = view.sizes(base, method, b)
    if ns:
      _errorbar(ax, ns, [cell_interval(view, (base, method, b, n)) for n in ns], fmt="o-",
                color=_COLORS[j % len(_COLORS)], label=b)
  _base_lines(ax, view, base)
  _log_sizes_axis(ax, view.sizes(base, method))
  ax.set_xlabel("n (fine-tuning examples)")
  ax.set_ylabel(f"answer accuracy ({mixture})")
  ax.set_ylim(-0.02, 1.02)  # an interval of a few seeds may reach past [0, 1]
  ax.set_title(f"{base}/{method}: accuracy vs n (95% CI, items + seeds)")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  return fig


def accuracy_vs_difficulty(results, *, method: str = "sft") -> Figure:
  """Accuracy against training bucket at each n, for the base and the stronger base."""
  view = _view(results)
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  xs = np.arange(len(view.buckets))
  for base, style in (("base", "o-"), ("strong", "s--")):
    for j, n in enumerate(view.sizes(base, method)):
      have = [i for i, b in enumerate(view.buckets) if (base, method, b, n) in view.keys]
      cis = [cell_interval(view, (base, method, view.buckets[i], n)) for i in have]
      _errorbar(ax, xs[have] + 0.04 * j, cis, fmt=style, label=f"{base}, n={n}")
  _base_lines(ax, view, "base")
  ax.set_xticks(xs, view.buckets)
  ax.set_xlabel("training bucket (easy -> hard)")
  ax.set_ylim(-0.02, 1.02)
  ax.set_ylabel("answer accuracy (test mixture)")
  ax.set_title("Accuracy vs training difficulty (95% CI)")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  return fig


def gaps_vs_difficulty(results, *, base: str = "base", method: str = "sft") -> Figure:
  """Measured in-bucket gap R_bucket - R_S and extrapolation gap R_test - R_bucket by bucket."""
  view = _view(results)
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  xs = np.arange(len(view.buckets))
  for j, n in enumerate(view.complete_sizes(base, method)):
    gen, ext = [], []
    for b in view.buckets:
      i = view.index((base, method, b, n))
      pb = view.p_bucket[b]
      ct = contrast([1.0], X=view.items["seq_error"][:1, [i]], W=pb[None, :],
                    slice_of=view.slice_of, B=-view.scalars["train_seq_error"][:1, [i]])
      gen.append((ct.estimate[0], ct.lo[0], ct.hi[0]))
      ext.append(cell_interval(view, (base, method, b, n), "seq_error", view.p_test - pb))
    _errorbar(axes[0], xs + 0.04 * j, gen, fmt="o-", label=f"n={n}")
    _errorbar(axes[1], xs + 0.04 * j, ext, fmt="o-", label=f"n={n}")
  base_err = view.base_seq_error.get(base)
  if base_err is not None:  # the part of the gap the mixtures alone give (any model has it)
    axes[1].plot(xs, [float((view.p_test - view.p_bucket[b]) @ base_err) for b in view.buckets],
                 "k:", marker="x", label=f"{base} before fine-tuning")
  axes[0].set_title("generalization gap R_bucket - R_S (sequence error)")
  axes[1].set_title("extrapolation gap R_test - R_bucket (sequence error)")
  for ax in axes:
    ax.set_xticks(xs, view.buckets)
    ax.axhline(0, color="gray", lw=0.8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def certified_records(results: Mapping[str, Any]) -> list[dict[str, Any]]:
  """Every certificate of a results dict as {label, bucket, n, seed, steps, bound, b_train,
  q_test_risk, q_risk_by_slice, accuracy_by_slice, slices}: the certified arm's budgets
  (schema 3; per-slice bounds on the chosen budget only) or the main-arm cells that carry a
  certificate (schema 2). Risks the results lack are None."""
  out = []
  for c in results.get("certified", []):
    for b in c["budgets"]:
      chosen = b["steps"] == c["chosen_steps"]
      out.append({"label": f"{c['bucket']} n={c['n']} s{c['seed']} t{b['steps']}",
                  "bucket": c["bucket"], "n": c["n"], "seed": c["seed"], "steps": b["steps"],
                  "bound": b["bound"], "b_train": b["b_train"],
                  "q_test_risk": b.get("q_test_risk"), "q_risk_by_slice": b.get("q_risk_by_slice"),
                  "accuracy_by_slice": c.get("accuracy_by_slice") if chosen else None,
                  "slices": c.get("slices") if chosen else None})
  if out:
    return out
  main = next(iter(results["arms"]))
  for c in results["cells"]:
    cert = c.get("certificate")
    if cert is None or c.get("arm", "tilted") != main:
      continue
    out.append({"label": f"{c['base'][0]}{c['method'][0]}-{c['bucket'][0]}{c['n']}s{c['seed']}",
                "bucket": c["bucket"], "n": c["n"], "seed": c["seed"], "steps": c["ft_steps"],
                "bound": cert["bound"], "b_train": cert["b_train"],
                "q_test_risk": c.get("q_test_risk"), "q_risk_by_slice": c.get("q_risk_by_slice"),
                "accuracy_by_slice": c["accuracy_by_slice"], "slices": cert.get("slices"),
                "base": c["base"], "method": c["method"]})
  return out


def certified_vs_measured(results: Mapping[str, Any], *, n: int | None = None,
                          seed: int | None = None) -> Figure:
  """Per-slice certified risk beside the measured per-slice risk, one panel per bucket.

  Certified: the per-slice bounds B_d of the certificate (sequence error, union bound over
  slices); measured: E_Q of the sequence error on each test slice under the same posterior.
  Reads the certified arm (schema 3: its chosen budget) or the certified main cells (schema 2);
  a bucket without such a record at (n, seed) gets an empty panel.
  """
  recs = [r for r in certified_records(results) if r["slices"] is not None
          and r["q_risk_by_slice"] is not None and r.get("base", "base") == "base"
          and r.get("method", "sft") == "sft"]
  if not recs:
    raise ResultsError(f"{results.get('_path', 'results')}: no certificate with per-slice "
                       "bounds and a measured E_Q (the certified arm is empty)")
  buckets = list(results["arms"][next(iter(results["arms"]))]["order"])
  n = max(r["n"] for r in recs) if n is None else n
  seed = min(r["seed"] for r in recs if r["n"] == n) if seed is None else seed
  fig, axes = plt.subplots(1, len(buckets), figsize=(4 * len(buckets), 3.5),
                           squeeze=False, sharey=True)
  for ax, b in zip(axes[0], buckets, strict=True):
    rec = next((r for r in recs if r["bucket"] == b and r["n"] == n and r["seed"] == seed), None)
    if rec is None:
      continue
    slices = rec["slices"]
    if slices:  # a vacuous B_d (>= 1) is a marker on the line y = 1, never a point of the curve
      ds = [s["difficulty"] for s in slices]
      ax.plot(ds, [np.nan if is_vacuous(s["bound"]) else s["bound"] for s in slices], "v-",
              color="tab:red", label="certified B_d")
      vac = [d for d, s in zip(ds, slices, strict=True) if is_vacuous(s["bound"])]
      if vac:
        ax.plot(vac, [1.0] * len(vac), "kx", ls="none", label="B_d vacuous (>= 1)")
    q = rec["q_risk_by_slice"]
    ks = sorted(int(k) for k in q)
    ax.plot(ks, [q[str(k)] for k in ks], "o-", color="tab:blue", label="measured E_Q[R_d]")
    if rec["accuracy_by_slice"]:
      ax.plot(ks, [1 - rec["accuracy_by_slice"][str(k)] for k in ks], "x:", color="tab:gray",
              label="answer error")
    ax.set_title(f"{b}, n={n}, seed {seed}, {rec['steps']} steps")
    ax.set_xlabel("operations (difficulty)")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
  axes[0, 0].set_ylabel("risk (sequence error)")
  axes[0, 0].legend(fontsize=7)
  fig.tight_layout()
  return fig


def bound_vs_risk(results: Mapping[str, Any]) -> Figure:
  """Every certificate (`certified_records`): B_train, the full bound and the measured
  E_Q[R_test] (sequence error; absent where no posterior was measured)."""
  recs = certified_records(results)
  if not recs:
    raise ResultsError(f"{results.get('_path', 'results')}: no certificate in the results")
  fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(recs)), 3.8))
  xs = np.arange(len(recs))
  ax.plot(xs, [min(r["bound"], 1.5) for r in recs], "v", color="tab:red",
          label="bound (test mixture)")
  ax.plot(xs, [min(r["b_train"], 1.5) for r in recs], "^", color="tab:orange",
          label="B_train (in bucket)")
  ax.plot(xs, [np.nan if r["q_test_risk"] is None else r["q_test_risk"] for r in recs], "o",
          color="tab:blue", label="measured E_Q")
  ax.axhline(1.0, color="gray", lw=0.8)
  ax.set_xticks(xs, [r["label"] for r in recs], rotation=90, fontsize=6)
  ax.set_ylabel("sequence error (clipped at 1.5)")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  return fig


def method_comparison(results, *, base: str = "base") -> Figure:
  """Accuracy of SFT and DFT against n, one panel per bucket where DFT was run (95% CI)."""
  view = _view(results)
  buckets = [b for b in view.buckets if view.sizes(base, "dft", b)]
  if not buckets:
    raise ResultsError(f"no DFT cells for base {base!r}")
  fig, axes = plt.subplots(1, len(buckets), figsize=(4 * len(buckets), 3.4), squeeze=False)
  for ax, b in zip(axes[0], buckets, strict=True):
    for method, style in (("sft", "o-"), ("dft", "s--")):
      ns = view.sizes(base, method, b)
      _errorbar(ax, ns, [cell_interval(view, (base, method, b, n)) for n in ns], fmt=style,
                label=method.upper())
    _log_sizes_axis(ax, view.sizes(base, "sft", b) + view.sizes(base, "dft", b))
    ax.set_title(f"{b} training data")
    ax.set_xlabel("n")
    ax.grid(alpha=0.3)
  axes[0, 0].set_ylabel("answer accuracy")
  axes[0, 0].legend()
  fig.tight_layout()
  return fig


LAB_FIGURES = {
    "accuracy": accuracy_vs_n,
    "gaps": gaps_vs_difficulty,
}


def lab_figures(results: Mapping[str, Any]) -> dict[str, Figure]:
  """Every standard figure for one lab results file, keyed by a file stem (the certificate
  figures only where the results have certificates; the hard-tilted test's accuracy figure
  where the results score one)."""
  view = study_view(results)
  figs = {
      "accuracy_vs_n": accuracy_vs_n(view),
      "accuracy_vs_difficulty": accuracy_vs_difficulty(view),
      "gaps_vs_difficulty": gaps_vs_difficulty(view),
  }
  if "hard" in view.p_tests:
    figs["accuracy_vs_n_hard_test"] = accuracy_vs_n(study_view(results, test="hard"),
                                                    mixture="hard-tilted test mixture")
  recs = certified_records(results)
  if recs:
    figs["bound_vs_risk"] = bound_vs_risk(results)
  if any(r["slices"] and r["q_risk_by_slice"] for r in recs):
    figs["certified_vs_measured"] = certified_vs_measured(results)
  if any(k[1] == "dft" for k in view.keys):
    figs["dft_vs_sft"] = method_comparison(view)
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


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 130) -> None:
  """Writes a figure atomically (temporary file, then rename) and closes it."""
  fmt = os.path.splitext(os.fspath(path))[1].lstrip(".") or "png"
  write_atomic(path, lambda f: fig.savefig(f, dpi=dpi, format=fmt), binary=True)
  plt.close(fig)
