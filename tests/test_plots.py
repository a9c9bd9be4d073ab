"""Results-to-figure path: every figure builds from a results file and saves as a PNG."""

import json

import matplotlib.figure
import pytest

from pacbayes.cli.main import main
from pacbayes.study import plots
from tests.lab_fixtures import GOOD, make_results


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


def test_old_lab_schema_is_refused_with_the_key(tmp_path):
  old = tmp_path / "old.json"
  old.write_text(json.dumps({"schema": "pacbayes.study/1", "cells": []}))
  with pytest.raises(plots.ResultsError, match="old.json.*schema"):
    plots.load_results(old)


def test_plot_command_on_bound_reports(tmp_path):
  paths = []
  for i in range(3):
    p = tmp_path / f"r{i}.json"
    p.write_text(json.dumps({"emp_risk": 0.1, "epsilon": 0.02, "g_gen": 0.1 * i,
                             "g_ext": 0.3 - 0.1 * i, "bound": 0.42}))
    paths.append(str(p))
  out = tmp_path / "terms.png"
  assert main(["plot", *paths, "--out", str(out)]) == 0
  assert out.exists()


def test_plot_command_bad_file_is_one_line(tmp_path, capsys):
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({"hello": 1}))
  out = tmp_path / "x.png"
  assert main(["plot", str(bad), "--out", str(out)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "bad.json" in err[0]
  assert not out.exists()


def test_write_lab_figures_and_script(results_file, tmp_path):
  import subprocess
  import sys

  paths = plots.write_lab_figures(plots.load_results(results_file), tmp_path / "a", "t")
  assert len(paths) == 6 and all(p.endswith(".png") for p in paths)
  out = subprocess.run([sys.executable, "experiments/make_figures.py", str(results_file),
                        "--out", str(tmp_path / "b")], capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  assert len(list((tmp_path / "b").glob("test_*.png"))) == 6
