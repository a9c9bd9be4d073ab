"""`pacbayes select --from-results` end to end, its refusals, and the study validation."""

import json
import os

import numpy as np
import pytest

from pacbayes.cli import main as cli_main
from pacbayes.cli import select as select_command
from pacbayes.select.offline import StudyQuery, load_study_results, select_from_results
from pacbayes.select.predict import SelectOptions
from pacbayes.select.validate import Case, applicable_groups, pool, validate_case
from tests.lab_fixtures import make_results

# SFT accuracy at n = 200, 800, 3200 (rows) for easy, medium, hard: "easy" leads at the pilots,
# "hard" climbs fastest and is best at 3200.
ACC = [[0.60, 0.55, 0.30], [0.66, 0.63, 0.60], [0.70, 0.72, 0.80]]


@pytest.fixture
def results_file(tmp_path):
  path = tmp_path / "results.json"
  path.write_text(json.dumps(make_results(ACC, seeds=(0, 1, 2), dft_acc={0: 0.5, 2: 0.7})))
  return str(path)


@pytest.fixture
def cli(monkeypatch):
  if select_command not in cli_main.COMMANDS:
    monkeypatch.setattr(cli_main, "COMMANDS", cli_main.COMMANDS + (select_command,))

  def run(*argv):
    return cli_main.main(["select", *map(str, argv)])
  return run


def test_offline_end_to_end(cli, results_file, tmp_path, capsys):
  out, fig = tmp_path / "sel.json", tmp_path / "sel.png"
  assert cli("--from-results", results_file, "--budget", 3200, "--out", out, "--figure", fig,
             "--bootstrap", 300) == 0
  sel = json.loads(out.read_text())
  assert sel["status"] == "ok" and sel["recommendation"] == "hard"
  assert [r["bucket"] for r in sel["buckets"]] == ["easy", "medium", "hard"]
  for row in sel["buckets"]:
    assert row["family"] == "sqrt" and set(row["params"]) == {"E", "A", "alpha", "n0"}
    lo, hi = row["interval"]
    assert lo <= row["prediction"] <= hi
    assert [p["n"] for p in row["pilots"]] == [200, 800]
    assert all(p["seeds"] == 3 and len(p["per_seed"]) == 3 for p in row["pilots"])
  assert sum(r["p_best"] for r in sel["buckets"]) == pytest.approx(1.0)
  assert sel["measured_at_budget"]["best"] == "hard"
  assert sel["cost"]["pilot_rows"] == 3 * 3 * (200 + 800)
  assert sel["cost"]["every_bucket_at_budget_rows"] == 3 * 3200
  assert sel["source"]["pilot_sizes"] == [200, 800]
  assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "recommendation: hard" in capsys.readouterr().out


def test_offline_matches_the_library_and_reads_the_old_schema_name(results_file, tmp_path):
  data = json.loads(open(results_file).read())
  data["schema"] = "pacbayes.lab/2"  # the committed results' name of the same format
  old = tmp_path / "old.json"
  old.write_text(json.dumps(data))
  a = select_from_results(load_study_results(results_file), 3200, StudyQuery(),
                          SelectOptions(bootstrap=100))
  b = select_from_results(load_study_results(str(old)), 3200, StudyQuery(),
                          SelectOptions(bootstrap=100))
  assert a["buckets"] == b["buckets"]
  # Accuracy 0.80 at 3200 for "hard": the measured risk is 1 - accuracy on the test mixture.
  assert a["measured_at_budget"]["risk"]["hard"] == pytest.approx(0.2, abs=0.05)


def test_unconstrained_is_written_with_status_and_no_recommendation(cli, results_file, tmp_path,
                                                                    capsys):
  out = tmp_path / "sel.json"
  assert cli("--from-results", results_file, "--budget", 800, "--out", out) == 0
  sel = json.loads(out.read_text())
  assert sel["status"] == "unconstrained" and sel["recommendation"] is None
  assert "too few distinct pilot sizes" in sel["reason"]
  assert "unconstrained" in capsys.readouterr().out


def _bad(results, tmp_path, **changes):
  path = tmp_path / "bad.json"
  data = json.loads(open(results).read())
  for i, cell in changes.pop("drop_key", ()):
    del data["cells"][i][cell]
  path.write_text(json.dumps(data))
  return str(path)


@pytest.mark.parametrize("args,message", [
    (["--budget", "100"], "--budget 100 is not above any pilot size"),
    (["--budget", "3200", "--pilot-sizes", "800", "3200"],
     "--budget 3200 is not above the largest pilot n=3200"),
    (["--budget", "3200", "--pilot-sizes", "400"], "--pilot-sizes: "),
    (["--budget", "3200", "--method", "dft"], "at least two buckets"),
    (["--budget", "3200", "--base", "strong"], "have no cell of this base and method"),
    (["--budget", "3200", "--arm", "disjoint"], "no arm 'disjoint'"),
    (["--budget", "3200", "--test-mixture", "4:0.5,9:0.5"],
     "--test-mixture: difficulty 9 has mass 0.5 but is not a test slice"),
    (["--budget", "3200", "--test-mixture", "4:0.5,3:0.2"], "--test-mixture: masses sum to 0.7"),
    (["--budget", "3200", "--test-mixture", "four"], "--test-mixture: expected DIFFICULTY:"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(cli, results_file, tmp_path, capsys, args,
                                                      message):
  out, fig = tmp_path / "sel.json", tmp_path / "sel.png"
  assert cli("--from-results", results_file, "--out", out, "--figure", fig, *args) == 2
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and message in err, err
  assert not out.exists() and not fig.exists()
  assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")] == []


def test_cell_without_bucket_names_the_cell(cli, results_file, tmp_path, capsys):
  bad = _bad(results_file, tmp_path, drop_key=[(4, "bucket")])
  out = tmp_path / "sel.json"
  assert cli("--from-results", bad, "--budget", 3200, "--out", out) == 2
  err = capsys.readouterr().err.strip()
  assert "cells[4]" in err and "'bucket'" in err and err.count("\n") == 0
  assert not out.exists()


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"schema": "something/1"}), "expected schema"),
    (json.dumps([1, 2]), "expected a JSON object"),
])
def test_bad_results_file(cli, tmp_path, capsys, content, message):
  path = tmp_path / "r.json"
  path.write_text(content)
  out = tmp_path / "sel.json"
  assert cli("--from-results", path, "--budget", 3200, "--out", out) == 2
  err = capsys.readouterr().err.strip()
  assert message in err and str(path) in err and not out.exists()


def test_output_checks_before_work(cli, results_file, tmp_path, capsys):
  assert cli("--from-results", results_file, "--budget", 3200, "--out", results_file) == 2
  assert "--out" in capsys.readouterr().err
  out = tmp_path / "sel.json"
  assert cli("--from-results", results_file, "--budget", 3200, "--out", out,
             "--figure", tmp_path / "f.nope") == 2
  assert "--figure" in capsys.readouterr().err and not out.exists()
  assert cli("--from-results", tmp_path / "missing.json", "--budget", 3200, "--out", out) == 2
  assert "--from-results" in capsys.readouterr().err


def test_validation_scores_predictor_and_baselines(results_file):
  results = load_study_results(results_file)
  assert applicable_groups(results, 3200) == {("tilted", "base", "dft"): (
      "one bucket only (hard): nothing to select"), ("tilted", "base", "sft"): None}
  case = Case("fixture", StudyQuery(), (200, 800), 3200)
  out = validate_case(results, case, SelectOptions(bootstrap=200), replicates=300)
  risk = out["measured"]["risk"]
  assert out["measured"]["best"] == "hard"
  m = out["methods"]
  assert m["predictor"]["pick"] == "hard" and m["predictor"]["regret"] == 0.0
  assert m["best at largest pilot"]["pick"] == "easy"
  assert m["best at largest pilot"]["regret"] == pytest.approx(risk["easy"] - risk["hard"])
  assert m["always medium"]["regret"] == pytest.approx(risk["medium"] - risk["hard"])
  assert m["always hard"]["hit"] and not m["always easy"]["hit"]
  for v in m.values():
    lo, hi = v["regret_interval"]
    assert 0 <= lo <= hi and 0 <= v["hit_frequency"] <= 1
  pooled = pool([out, out])
  assert pooled["predictor"]["regret"] == 0.0 and pooled["predictor"]["hit_rate"] == 1.0
  one = validate_case(results, Case("fixture", StudyQuery(), (200,), 800),
                      SelectOptions(bootstrap=50), replicates=50)
  assert "predictor" not in one["methods"] and one["selection"]["status"] == "unconstrained"
  assert np.isfinite(one["methods"]["best at largest pilot"]["regret"])
