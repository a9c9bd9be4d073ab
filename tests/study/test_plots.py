"""Results-to-figure path: every figure builds from a results file and saves as a PNG."""

import json
import math
import pathlib

import matplotlib.figure
import pytest

from pacbayes.cli.main import main
from pacbayes.study import plots, report_figure
from tests.helpers.lab_results import GOOD, make_results


@pytest.fixture
def results_file(tmp_path):
  path = tmp_path / "results.json"
  path.write_text(json.dumps(make_results(**GOOD)))
  return path


def test_lab_figures_build_and_save(results_file, tmp_path):
  results = plots.load_results(results_file)
  figs = plots.lab_figures(results)
  assert {"accuracy_vs_n", "accuracy_vs_difficulty", "gaps_vs_difficulty",
          "certified_vs_measured", "bound_vs_risk", "dft_vs_sft"} <= set(figs)
  for stem, fig in figs.items():
    assert isinstance(fig, matplotlib.figure.Figure)
    out = tmp_path / f"{stem}.png"
    plots.save_figure(fig, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_error_bars_are_the_verdicts_intervals(results_file):
  """The plotted point and bar of a cell are the one-cell contrast of pacbayes.study.stats."""
  from pacbayes.study.view import study_view

  results = plots.load_results(results_file)
  view = study_view(results)
  est, lo, hi = plots.cell_interval(view, ("base", "sft", "hard", 3200))
  cells = [c for c in results["cells"] if c["bucket"] == "hard" and c["n"] == 3200
           and c["method"] == "sft" and c["base"] == "base"]
  assert est == pytest.approx(sum(c["accuracy"] for c in cells) / len(cells))
  assert lo < est < hi and hi - lo < 0.2
  fig = plots.accuracy_vs_n(view)
  line = fig.axes[0].containers[2].lines[0]  # hard bucket (easy, medium, hard in order)
  assert float(line.get_ydata()[-1]) == pytest.approx(est)


def test_certified_vs_measured_marks_vacuous_slices(tmp_path):
  """Per-slice B_d >= 1 is an 'x' on y = 1, not a point of the certified curve."""
  results = make_results(**GOOD)
  for c in results["cells"]:
    c["certificate"]["slices"][3]["bound"] = 1.4
  path = tmp_path / "r.json"
  path.write_text(json.dumps(results))
  fig = plots.certified_vs_measured(plots.load_results(path))
  ax = fig.axes[0]
  cert = next(ln for ln in ax.get_lines() if ln.get_label() == "certified B_d")
  ys = list(cert.get_ydata())
  assert ys[:3] == [0.9, 0.9, 0.9] and math.isnan(ys[3])
  vac = next(ln for ln in ax.get_lines() if ln.get_label() == "B_d vacuous (>= 1)")
  assert list(vac.get_xdata()) == [4.0] and list(vac.get_ydata()) == [1.0]


def test_bound_vs_risk_data(results_file):
  results = plots.load_results(results_file)
  fig = plots.bound_vs_risk(results)
  lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
  cells = results["cells"]
  assert list(lines["bound (test mixture)"].get_ydata()) == pytest.approx(
      [min(c["certificate"]["bound"], 1.5) for c in cells])
  assert list(lines["measured E_Q"].get_ydata()) == pytest.approx(
      [c["q_test_risk"] for c in cells])


def test_old_lab_schema_is_refused_with_the_key(tmp_path):
  old = tmp_path / "old.json"
  old.write_text(json.dumps({"schema": "pacbayes.lab/1", "cells": []}))
  with pytest.raises(plots.ResultsError, match="old.json.*schema"):
    plots.load_results(old)


# ----------------------------------------------------------------- bound-report figure data


def _report(emp, eps, g_gen, g_ext, *, train=None, space="lora", sigma_p=0.01, **more):
  """A bound report as `pacbayes bound` writes its plotted keys (hand-made: no schema)."""
  out = {"emp_risk": emp, "epsilon": eps, "g_gen": g_gen, "g_ext": g_ext,
         "bound": emp + eps + g_gen + g_ext, "sigma_q": 0.005, "sigma_p": sigma_p,
         "saturated": False, "extra": {"space": space, "unperturbed_risk": emp / 2}}
  if train is not None:
    out["mixture"] = {"train_exact": True, "train_lower": {str(k): v for k, v in train.items()}}
  out.update(more)
  return out


def _bars(ax):
  """{term: [heights]} and {term: [hatches]} read back from the Axes' bar containers."""
  heights = {c.get_label(): [p.get_height() for p in c.patches] for c in ax.containers}
  hatches = {c.get_label(): [p.get_hatch() or "" for p in c.patches] for c in ax.containers}
  return heights, hatches


def _line(ax, label):
  return next(ln for ln in ax.get_lines() if ln.get_label() == label)


def _centres(container):
  return [p.get_x() + p.get_width() / 2 for p in container.patches]


def test_vacuous_and_saturated_reports_draw_no_term_bars():
  """The issue's case: hard is saturated (g_gen fills the gap to 1), easy is informative,
  `vac` is vacuous on the test mixture; the reports come hard-first and are drawn by training
  difficulty. Neither hard nor vac draws a term bar, not even emp_risk or epsilon: each is one
  marked, unfilled column whose meaning is written in it and under the figure."""
  hard = _report(0.3, 0.02, 0.6793, 0.0004, train={3: 0.5, 4: 0.5}, saturated=True,
                 kl_per_n=3.85)
  easy = _report(0.05, 0.01, 0.03, 0.2, train={1: 0.5, 2: 0.5})
  vac = _report(0.1, 0.01, 0.2, 0.0, train={2: 1.0})
  vac["g_ext"], vac["g_ext_status"], vac["bound"] = None, "vacuous", 1.02
  vac["raw_terms"] = {"g_gen": 0.2, "g_ext": 0.71}
  fig = plots.report_terms([hard, easy, vac])
  ax, axm = fig.axes
  assert [t.get_text() for t in ax.get_xticklabels()] == ["1.50", "2.00", "3.50"]
  assert ax.get_xlabel() == "mean training difficulty"
  heights, hatches = _bars(ax)
  for term, easy_value in (("emp_risk", 0.05), ("epsilon", 0.01), ("g_gen", 0.03),
                           ("g_ext", 0.2)):
    assert heights[term] == pytest.approx([easy_value, 0.0, 0.0]), term
  assert all(h == "" for h in hatches["g_ext"])
  columns = {c.get_label(): c for c in ax.containers}
  vac_col, sat_col = columns[report_figure.VACUOUS_LABEL], columns[report_figure.SATURATED_LABEL]
  assert _centres(vac_col) == [1] and heights[report_figure.VACUOUS_LABEL] == [1.0]
  assert _centres(sat_col) == [2]
  assert heights[report_figure.SATURATED_LABEL] == pytest.approx([0.9997])
  assert hatches[report_figure.VACUOUS_LABEL] == [report_figure.VACUOUS_HATCH]
  assert hatches[report_figure.SATURATED_LABEL] == [report_figure.SATURATED_HATCH]
  for col in (vac_col, sat_col):  # unfilled: an outline, never a coloured value
    assert col.patches[0].get_facecolor()[3] == 0.0
  # No marker lines any more, so nothing is drawn twice at one x.
  assert not [ln for ln in ax.get_lines() if ln.get_label() in (
      report_figure.VACUOUS_LABEL, report_figure.SATURATED_LABEL)]
  texts = [t.get_text() for t in ax.texts]
  assert texts[-3:] == ["0.290", "vacuous", "saturated"]  # on top, one per report
  inside = " | ".join(texts[:-3])
  assert "1.02 >= 1" in inside and "B_train 0.310" in inside and "training mixture only" in inside
  assert "0.9997" in inside and "KL/n = 3.85" in inside and "not the risk" in inside
  note = " ".join(t.get_text() for t in fig.texts)
  assert report_figure.VACUOUS_MEANING in note and report_figure.SATURATED_MEANING in note
  assert "emp_risk and epsilon are not drawn as bars" in note
  assert "certified" in ax.get_title() and "uncertified" in axm.get_title()
  risk = _line(axm, report_figure.RISK_ON_S)
  assert list(risk.get_ydata()) == pytest.approx([0.025, 0.05, 0.15])
  assert risk.get_markerfacecolor() == "none"  # measures: open markers, not bars
  assert not axm.containers


def test_report_status_in_words():
  ok = _report(0.05, 0.01, 0.03, 0.2)
  assert report_figure.report_status(ok) == ("ok", "")
  sat = dict(ok, g_gen=None, g_gen_status="saturated", raw_terms={"g_gen": 0.95}, bound=1.0)
  status, meaning = report_figure.report_status(sat)
  assert status == "vacuous" and "g_gen saturated" in meaning
  from pacbayes.certificate.heldout import heldout_certificate

  held = heldout_certificate([1.0] * 3, zero_one=True).to_dict()
  assert report_figure.report_status(held)[0] == "vacuous"


def test_measures_have_their_own_scales_and_the_train_risk_is_drawn_once():
  """A sharpness measure of ~15 goes to a log axis of its own, so the risks (0.04 .. 0.39)
  keep the linear [0, 1] axis; the fine-tune's risk on S, written twice by `bound`
  (unperturbed_risk and measures.finetune_risk_train), is one line with one marker a report."""
  reports = []
  for i, (sharp, tv) in enumerate(((15.3, 0.24), (18.2, 0.07))):
    r = _report(0.04, 0.13, 0.8, 0.0, train={1 + i: 1.0}, saturated=True)
    r["extra"]["unperturbed_risk"] = 0.04 + i / 100
    r["extra"]["measures"] = {
        "finetune_risk_train": {"value": 0.04 + i / 100, "group": "estimate"},
        "finetune_risk_test": {"value": 0.10, "group": "estimate"},
        "base_risk_test": {"value": 0.39, "group": "estimate"},
        "g_ext_tv_difficulty": {"value": tv, "group": "measure"},
        "g_gen_sharpness": {"value": sharp, "group": "measure"}}
    reports.append(r)
  fig = plots.report_terms(reports)
  ax, axm, twin = fig.axes
  linear = {ln.get_label(): list(ln.get_ydata()) for ln in axm.get_lines()}
  logged = {ln.get_label(): list(ln.get_ydata()) for ln in twin.get_lines()}
  assert set(linear) == {report_figure.RISK_ON_S, "finetune_risk_test", "base_risk_test",
                         "g_ext_tv_difficulty"}
  assert set(logged) == {"g_gen_sharpness (log axis, right)"}
  assert logged["g_gen_sharpness (log axis, right)"] == pytest.approx([15.3, 18.2])
  assert twin.get_yscale() == "log" and axm.get_yscale() == "linear"
  lo, hi = axm.get_ylim()
  assert -0.05 <= lo <= 0.0 and 1.0 <= hi <= 1.1  # the risks' own scale, not 0 .. 18
  assert (0.39 - 0.04) / (hi - lo) > 0.3
  assert "measure (uncertified)" in axm.get_ylabel()
  assert "measure (uncertified)" in twin.get_ylabel() and "log" in twin.get_ylabel()
  # (c): the risk on S once, however many keys hold it.
  assert linear[report_figure.RISK_ON_S] == pytest.approx([0.04, 0.05])
  assert "finetune_risk_train" not in linear
  values = [y for ys in (*linear.values(), *logged.values()) for y in ys]
  assert sum(v == pytest.approx(0.04) for v in values) == 1
  legend = fig.legends[0]  # under the panels, hiding no marker
  assert legend.get_title().get_text() == "measures (uncertified)"
  assert sorted(t.get_text() for t in legend.get_texts()) == sorted([*linear, *logged])


def test_difficulty_from_slices_and_file_names_without_it(tmp_path):
  with_slices = _report(0.1, 0.01, 0.05, 0.1,
                        slices=[{"difficulty": 1.0, "n": 30, "bound": 0.4},
                                {"difficulty": 4.0, "n": 10, "bound": 0.9}])
  assert report_figure.mean_difficulty(with_slices) == pytest.approx(1.75)
  bare = dict(_report(0.1, 0.01, 0.05, 0.1), _path=str(tmp_path / "bare.json"))
  fig = plots.report_terms([with_slices, bare])
  ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
  assert ticks == ["report 0", "bare.json"] and "no training difficulty" in \
      fig.axes[0].get_xlabel()
  # Equal mean difficulties (e.g. one fine-tune against two test mixtures): file names.
  twins = [dict(with_slices, _path=str(tmp_path / f"{m}.json")) for m in ("uniform", "tilted")]
  fig = plots.report_terms(twins)
  ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
  assert ticks == ["uniform.json", "tilted.json"] and "some equal" in fig.axes[0].get_xlabel()


@pytest.mark.parametrize("change,word", [({"space": "weights"}, "posterior spaces"),
                                         ({"sigma_p": 0.003}, "sigma_p")])
def test_mixed_spaces_or_sigmas_are_refused_unless_allowed(tmp_path, capsys, change, word):
  a = _report(0.1, 0.01, 0.05, 0.1, train={1: 1.0})
  b = _report(0.1, 0.01, 0.05, 0.1, train={2: 1.0}, **change)
  paths = []
  for name, r in (("a.json", a), ("b.json", b)):
    (tmp_path / name).write_text(json.dumps(r))
    paths.append(str(tmp_path / name))
  out = tmp_path / "terms.png"
  assert main(["plot", *paths, "--out", str(out)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and word in err[0] and "a.json" in err[0] and "b.json" in err[0]
  assert "--allow-mixed" in err[0] and not out.exists()
  assert main(["plot", *paths, "--out", str(out), "--allow-mixed"]) == 0
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  fig = plots.report_terms([plots.load_results(p) for p in paths], allow_mixed=True)
  assert any(t.get_text().startswith("NOTE: mixed") and word in t.get_text() for t in fig.texts)


def test_heldout_certificate_is_a_certified_bar(tmp_path):
  from pacbayes.bounds.mixture import mixture_bounds
  from pacbayes.certificate.heldout import heldout_certificate

  mix = mixture_bounds(train_mixture={1: 0.5, 2: 0.5}, test_mixture={1: 0.5, 2: 0.5})
  cert = heldout_certificate([0.0] * 90 + [1.0] * 10, difficulty=[1] * 50 + [2] * 50,
                             mixture=mix, zero_one=True)
  path = tmp_path / "heldout.json"
  cert.to_json(path)
  rep = tmp_path / "pb.json"
  rep.write_text(json.dumps(_report(0.1, 0.01, 0.05, 0.1, train={1: 1.0})))
  out = tmp_path / "h.png"
  assert main(["plot", str(rep), str(path), "--out", str(out)]) == 0
  fig = plots.report_terms([plots.load_results(rep), plots.load_results(path)])
  ax, axm = fig.axes
  heights, hatches = _bars(ax)
  assert heights["held-out test-set bound"] == pytest.approx([0.0, cert.bound_test])
  assert hatches["held-out test-set bound"][1] == report_figure.HELDOUT_HATCH
  assert [t.get_text() for t in ax.get_xticklabels()] == ["1.00", "1.50"]
  assert list(_line(axm, "fine-tune risk (held-out rows)").get_ydata()) == [0.1]


def test_a_bound_reports_heldout_block_is_its_own_column(tmp_path):
  # `bound --held-out` writes the held-out certificate inside the report: plot draws it as a
  # held-out column right after its report, named after the file
  from pacbayes.certificate.heldout import heldout_certificate

  cert = heldout_certificate([0.0] * 90 + [1.0] * 10, zero_one=True)
  rep = tmp_path / "pb.json"
  rep.write_text(json.dumps({**_report(0.1, 0.01, 0.05, 0.1), "heldout": cert.to_dict()}))
  out = tmp_path / "h.png"
  assert main(["plot", str(rep), "--out", str(out)]) == 0
  fig = plots.report_terms([plots.load_results(rep)])
  heights, hatches = _bars(fig.axes[0])
  assert heights["held-out test-set bound"] == pytest.approx([0.0, cert.bound_train])
  assert hatches["held-out test-set bound"][1] == report_figure.HELDOUT_HATCH
  assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["pb.json",
                                                                   "pb.json [held-out]"]
  bad = json.loads(rep.read_text())
  bad["heldout"]["bound_train"] = "x"
  rep.write_text(json.dumps(bad))
  assert main(["plot", str(rep), "--out", str(tmp_path / "b.png")]) == 2


def test_a_real_saturated_report_reads_back_as_saturated(tmp_path, capsys):
  """`certify` on the issue's numbers (KL 1,154 nats, n = 300): its JSON through the figure."""
  from pacbayes.bounds.mixture import mixture_bounds
  from pacbayes.certificate.core import ShiftInputs, certify

  mix = mixture_bounds(train_mixture={3: 0.5, 4: 0.5}, test_mixture={1: 0.25, 2: 0.25,
                                                                      3: 0.25, 4: 0.25})
  cert = certify(0.3, 300, 1154.0, 300, shift=ShiftInputs(mixture=mix))
  path = tmp_path / "hard.json"
  cert.to_json(path)
  out = tmp_path / "hard.png"
  assert main(["plot", str(path), "--out", str(out)]) == 0
  shown = capsys.readouterr().out.splitlines()
  assert shown[0] == f"figure written to {out}"
  assert len(shown) == 2 and shown[1].startswith(f"{path}: ")  # the status, in words
  assert "drawn as a marked column, no term bars" in shown[1]
  fig = plots.report_terms([plots.load_results(path)])
  heights, _ = _bars(fig.axes[0])
  # No term bar at all (emp_risk and epsilon included): one marked column.
  assert set(heights) <= {report_figure.VACUOUS_LABEL, report_figure.SATURATED_LABEL}
  assert len(heights) == 1 and list(heights.values())[0] == [pytest.approx(min(cert.bound, 1))]
  assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["3.50"]


def test_plot_command_on_bound_reports(tmp_path):
  paths = []
  for i in range(3):
    p = tmp_path / f"r{i}.json"
    p.write_text(json.dumps({"emp_risk": 0.1, "epsilon": 0.02, "g_gen": 0.1 * i,
                             "g_ext": 0.3 - 0.1 * i, "bound": 0.42}))
    paths.append(str(p))
  out = tmp_path / "terms.png"
  assert main(["plot", *paths, "--out", str(out)]) == 0
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  fig = plots.report_terms([plots.load_results(p) for p in paths])
  heights, _ = _bars(fig.axes[0])
  assert heights["g_gen"] == pytest.approx([0.0, 0.1, 0.2])
  assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["r0.json", "r1.json",
                                                                   "r2.json"]


def test_plot_command_bad_file_is_one_line(tmp_path, capsys):
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({"hello": 1}))
  out = tmp_path / "x.png"
  assert main(["plot", str(bad), "--out", str(out)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "bad.json" in err[0]
  assert not out.exists()


def test_write_lab_figures(results_file, tmp_path):
  paths = plots.write_lab_figures(plots.load_results(results_file), tmp_path / "a", "t")
  assert len(paths) == 6 and all(p.endswith(".png") for p in paths)


@pytest.mark.slow  # a subprocess
def test_make_figures_script(results_file, tmp_path):
  import subprocess
  import sys

  script = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "make_figures.py"
  out = subprocess.run([sys.executable, str(script), str(results_file),
                        "--out", str(tmp_path / "b")], capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  assert len(list((tmp_path / "b").glob("test_*.png"))) == 6


def test_schema3_figures_read_the_certified_arm_and_draw_each_base_replica(tmp_path):
  """Schema 3: main cells carry no certificate (the figures read results["certified"]), one
  horizontal line per base replica at its test-mixture accuracy, and the hard-tilted test."""
  import numpy as np

  from pacbayes.study.view import study_view
  from tests.helpers.lab_results_v3 import make_results_v3

  res = make_results_v3(**GOOD)
  path = tmp_path / "r3.json"
  path.write_text(json.dumps(res))
  results = plots.load_results(path)
  figs = plots.lab_figures(results)
  assert {"accuracy_vs_n", "accuracy_vs_n_hard_test", "bound_vs_risk",
          "certified_vs_measured"} <= set(figs)
  view = study_view(results)
  ax = figs["accuracy_vs_n"].axes[0]
  for r, rep in enumerate(results["bases"]["base"]["replicas"]):
    line = next(ln for ln in ax.get_lines()
                if ln.get_label() == f"base replica {r} before fine-tuning")
    want = sum(p * rep["accuracy_by_slice"][str(k)] for k, p in zip(view.ops, view.p_test,
                                                                     strict=True))
    assert list(line.get_ydata()) == pytest.approx([want, want])
  hard = study_view(results, test="hard")
  ax_h = figs["accuracy_vs_n_hard_test"].axes[0]
  rep0 = results["bases"]["base"]["replicas"][0]["accuracy_by_slice"]
  want = float(np.dot(hard.p_test, [rep0[str(k)] for k in hard.ops]))
  assert _line(ax_h, "base replica 0 before fine-tuning").get_ydata()[0] == pytest.approx(want)
  budgets = [b for c in results["certified"] for b in c["budgets"]]
  lines = {ln.get_label(): ln for ln in figs["bound_vs_risk"].axes[0].get_lines()}
  assert list(lines["bound (test mixture)"].get_ydata()) == pytest.approx(
      [b["bound"] for b in budgets])
  assert list(lines["measured E_Q"].get_ydata()) == pytest.approx(
      [b["q_test_risk"] for b in budgets])
  # without a certified arm the certificate figures are left out, the others still drawn
  results["certified"] = []
  assert set(plots.lab_figures(results)) == {"accuracy_vs_n", "accuracy_vs_difficulty",
                                             "gaps_vs_difficulty", "accuracy_vs_n_hard_test",
                                             "dft_vs_sft"}
  with pytest.raises(plots.ResultsError, match="no certificate"):
    plots.bound_vs_risk(results)
