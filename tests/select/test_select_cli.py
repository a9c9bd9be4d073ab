"""`pacbayes select --from-results` end to end, its refusals, and the study validation.

Every bad input is run in-process through `pacbayes.cli.main.main` and must give exit 2 (130
for Ctrl-C), exactly one line on stderr naming the flag, file or key, no traceback, no file
written (no temporary file left) and the input unchanged.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pacbayes.select import predict
from pacbayes.select.offline import StudyQuery, load_study_results, select_from_results
from pacbayes.select.predict import SelectOptions
from pacbayes.select.validate import Case, applicable_groups, pool, validate_case
from tests.helpers.lab_results import make_results

REPO = Path(__file__).resolve().parents[2]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
# SFT accuracy at n = 200, 800, 3200 (rows) for easy, medium, hard: "easy" leads at the pilots,
# "hard" climbs fastest and is best at 3200.
ACC = [[0.60, 0.55, 0.30], [0.66, 0.63, 0.60], [0.70, 0.72, 0.80]]
# Three buckets with the same curve: no pilot budget can tell them apart.
SAME = [[0.60, 0.60, 0.60], [0.66, 0.66, 0.66], [0.70, 0.70, 0.70]]


def _results(acc, **kw):
  data = make_results(acc, seeds=(0, 1, 2), dft_acc={0: 0.5, 2: 0.7}, **kw)
  data["config"]["ft_batch_size"] = 4
  return data


@pytest.fixture
def results_file(tmp_path):
  path = tmp_path / "results.json"
  path.write_text(json.dumps(_results(ACC)))
  return str(path)




def _digest(path):
  return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _refused(cli, capsys, results, tmp_path, args, needle, *, out=None, status=2):
  """Runs a refused command; checks the status, the one line, no file and the input."""
  out = tmp_path / "sel.json" if out is None else out
  before = sorted(os.listdir(tmp_path))
  digest = _digest(results) if os.path.isfile(results) else None
  assert cli("--from-results", results, "--out", out, "--bootstrap", 50, *args) == status
  captured = capsys.readouterr()
  err = captured.err.strip()
  assert err.count("\n") == 0 and needle in err, err
  assert "Traceback" not in captured.err + captured.out
  assert "written to" not in captured.out
  assert sorted(os.listdir(tmp_path)) == before
  if digest is not None:
    assert _digest(results) == digest
  return err


def _sqrt_fit(pilots):
  """(E, A) of risk = E + A n^-1/2 by weighted least squares (numpy), from the JSON's pilots."""
  n = np.array([p["n"] for p in pilots], dtype=float)
  y = np.array([np.mean(p["per_seed"]) for p in pilots])
  root = np.sqrt([p["seeds"] for p in pilots])
  design = np.stack([np.ones_like(n), n ** -0.5], axis=1)
  return np.linalg.lstsq(design * root[:, None], y * root, rcond=None)[0]


def test_offline_end_to_end(cli, results_file, tmp_path, capsys):
  out, fig = tmp_path / "sel.json", tmp_path / "sel.png"
  assert cli("--from-results", results_file, "--budget", 3200, "--out", out, "--figure", fig,
             "--bootstrap", 300) == 0
  sel = json.loads(out.read_text())
  assert sel["status"] == "ok" and sel["verdict"] == "clear"
  assert sel["recommendation"] == sel["lowest_predicted"] == "hard"
  assert sel["statement"].startswith("recommend hard")
  assert [r["bucket"] for r in sel["buckets"]] == ["easy", "medium", "hard"]
  for row in sel["buckets"]:
    assert row["family"] == "sqrt" and set(row["params"]) == {"E", "A", "alpha", "n0"}
    lo, hi = row["interval"]
    assert lo <= row["prediction"] <= hi
    assert [p["n"] for p in row["pilots"]] == [200, 800]
    assert all(p["seeds"] == 3 and len(p["per_seed"]) == 3 for p in row["pilots"])
    # The numbers by hand: two sizes, two parameters -> the curve through the pilot means.
    e, a = _sqrt_fit(row["pilots"])
    assert [row["params"]["E"], row["params"]["A"]] == pytest.approx([e, a], abs=1e-9)
    assert row["prediction"] == pytest.approx(e + a * 3200 ** -0.5, abs=1e-9)
  assert sum(r["p_best"] for r in sel["buckets"]) == pytest.approx(1.0)
  assert sel["measured_at_budget"]["best"] == "hard"
  assert set(sel["numbers"]) == {"predicted", "measured", "certified"}
  assert sel["numbers"]["certified"].startswith("none")
  cost = sel["cost"]
  assert cost["pilot_runs"] == 18 and cost["pilot_rows"] == 3 * 3 * (200 + 800)
  assert cost["every_bucket_at_budget_rows"] == 3 * 3200
  assert cost["rows_ratio"] == pytest.approx(9000 / 9600)
  # Every fixture run trains 10 steps of batch 4: 18 pilot runs against 3 runs at N.
  assert cost["pilot_examples_processed"] == 18 * 10 * 4
  assert cost["every_bucket_at_budget_examples_processed"] == 3 * 10 * 4
  assert cost["examples_ratio"] == pytest.approx(6.0)
  assert "6.00x the examples processed" in cost["statement"]
  assert "save no compute" in cost["statement"]
  assert sel["source"]["pilot_sizes"] == [200, 800]
  assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  shown = capsys.readouterr().out
  assert "verdict: clear: recommend hard" in shown and "cost: " in shown
  assert "nothing here is certified" in shown and "replaced" not in shown


def test_indistinguishable_buckets_are_said_to_be(cli, tmp_path, capsys):
  path = tmp_path / "same.json"
  path.write_text(json.dumps(_results(SAME)))
  out = tmp_path / "sel.json"
  assert cli("--from-results", path, "--budget", 3200, "--out", out, "--bootstrap", 300) == 0
  sel = json.loads(out.read_text())
  p = [r["p_best"] for r in sel["buckets"]]
  assert max(p) < 0.9 and sel["status"] == "ok"
  assert sel["verdict"] == "indistinguishable" and sel["recommendation"] is None
  assert sel["lowest_predicted"] in ("easy", "medium", "hard")
  assert "cannot be told apart at this pilot budget" in sel["statement"]
  shown = capsys.readouterr().out
  assert "cannot be told apart" in shown and "recommend " not in shown
  # The bar is a flag: at 1.0 (certainty) nothing short of every replicate makes a call.
  assert cli("--from-results", path, "--budget", 3200, "--out", out, "--bootstrap", 300,
             "--min-p-best", 1.0) == 0
  assert json.loads(out.read_text())["options"]["min_p_best"] == 1.0
  assert "(replaced the existing file)" in capsys.readouterr().out


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
  assert cli("--from-results", results_file, "--budget", 10**6, "--out", out,
             "--pilot-sizes", 200, 800, "--bootstrap", 50) == 0
  sel = json.loads(out.read_text())
  assert sel["status"] == sel["verdict"] == "unconstrained" and sel["recommendation"] is None
  assert "more than 64x the largest pilot" in sel["reason"]
  assert sel["statement"].startswith("no recommendation")
  assert "unconstrained" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--budget", "0"], "--budget must lie in [2, "),
    (["--budget", "-1"], "--budget must lie in [2, "),
    (["--budget", "1e300"], "--budget expects a whole number, got '1e300'"),
    (["--budget", "nan"], "--budget expects a whole number, got 'nan'"),
    (["--budget", "many"], "--budget expects a whole number, got 'many'"),
    (["--budget", "100"], "--budget 100 is not above any pilot size"),
    (["--budget", "800"], "--budget 800: --base base --method sft --arm tilted has one pilot "
                          "size below it (n=200"),
    (["--budget", "3200", "--pilot-sizes", "800", "3200"],
     "--budget 3200 is not above the largest pilot n=3200"),
    (["--budget", "3200", "--pilot-sizes", "400"], "--pilot-sizes: "),
    (["--budget", "3200", "--pilot-sizes", "200"], "--pilot-sizes: one size (n=200)"),
    (["--budget", "3200", "--pilot-sizes", "0"], "--pilot-sizes must lie in [1, "),
    (["--budget", "3200", "--method", "dft"], "has cells of one bucket only (hard)"),
    (["--budget", "3200", "--base", "strong"], "have no cell of this base and method"),
    (["--budget", "3200", "--arm", "disjoint"], "no arm 'disjoint'"),
    (["--budget", "3200", "--test-mixture", "4:0.5,9:0.5"],
     "--test-mixture: difficulty 9 has mass 0.5 but is not a test slice"),
    (["--budget", "3200", "--test-mixture", "4:0.5,3:0.2"], "--test-mixture: masses sum to 0.7"),
    (["--budget", "3200", "--test-mixture", "4:1.5,3:-0.5"],
     "--test-mixture: difficulty 4 has mass 1.5"),
    (["--budget", "3200", "--test-mixture", "4:-0.5,3:1.5"],
     "--test-mixture: difficulty 4 has mass -0.5"),
    (["--budget", "3200", "--test-mixture", "4:nan"], "--test-mixture: difficulty 4 has mass nan"),
    (["--budget", "3200", "--test-mixture", "4:0.5,4:0.5"], "difficulty 4 appears twice"),
    (["--budget", "3200", "--test-mixture", "four"], "--test-mixture: expected DIFFICULTY:"),
    (["--budget", "3200", "--test-mixture", ""], "--test-mixture: empty"),
    (["--budget", "3200", "--min-p-best", "0.4"], "--min-p-best must lie in (0.5, 1]"),
    (["--budget", "3200", "--bootstrap", "5"], "--bootstrap must lie in [10, "),
])
def test_bad_flag_is_one_line_exit_2_nothing_written(cli, results_file, tmp_path, capsys, args,
                                                     message):
  fig = tmp_path / "sel.png"
  _refused(cli, capsys, results_file, tmp_path, [*args, "--figure", fig], message)


def _edit(results_file, tmp_path, change, name="bad.json"):
  data = json.loads(open(results_file).read())
  change(data)
  path = tmp_path / name
  path.write_text(json.dumps(data))
  return str(path)


def _pop(i, key):
  return lambda d: d["cells"][i].pop(key)


def _set(i, **kw):
  return lambda d: d["cells"][i].update(kw)


def _keep(test):
  return lambda d: d.update(cells=[c for c in d["cells"] if test(c)])


@pytest.mark.parametrize("change,message", [
    (_pop(4, "bucket"), "cells[4]: key 'bucket' is missing"),
    (_pop(4, "n"), "cells[4]: key 'n' must be a whole number >= 1, got None"),
    (_pop(4, "seed"), "cells[4]: key 'seed' must be a whole number >= 0, got None"),
    (_set(4, n=200.5), "cells[4]: key 'n' must be a whole number >= 1, got 200.5"),
    (_set(4, n="200"), "cells[4]: key 'n' must be a whole number >= 1, got '200'"),
    (_set(4, n=-200), "cells[4]: key 'n' must be a whole number >= 1, got -200"),
    (_set(4, bucket="weird"), "cells[4]: bucket 'weird' is not a bucket of arm 'tilted'"),
    (_set(0, accuracy=float("nan")), "cells[0] (tilted/base/sft/easy n=200 seed=0): key "
                                     "'accuracy' must be a number in [0, 1], got nan"),
    (_set(0, accuracy=0.99), "key 'accuracy' is 0.99 but its items give"),
    (_set(0, train_time_s=float("nan")), "key 'train_time_s' must be a finite number"),
    (_set(0, ft_steps="many"), "key 'ft_steps' must be a whole number >= 1"),
    (lambda d: d["cells"].append(dict(d["cells"][0])), "the same run as cells[0]"),
    (lambda d: d["cells"].append(7), "]: expected an object, got int"),
    (lambda d: d.update(cells={}), "key 'cells' must be a list of cells"),
    (lambda d: d.update(cells=[]), "no cells in arm 'tilted'"),
    (_keep(lambda c: c["bucket"] == "hard"), "has cells of one bucket only (hard)"),
    (_keep(lambda c: c["n"] != 200), "has one pilot size below it (n=800"),
    (lambda d: d.update(schema="pacbayes.certificate/2"), "a bound report, not a lab results"),
    (lambda d: d["config"].update(ft_batch_size=0), "config.ft_batch_size must be"),
])
def test_bad_results_cell_names_the_cell_and_key(cli, results_file, tmp_path, capsys, change,
                                                 message):
  bad = _edit(results_file, tmp_path, change)
  err = _refused(cli, capsys, bad, tmp_path, ["--budget", 3200], message)
  assert bad in err or "--budget 3200:" in err  # the file, or the flag it contradicts


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    ('{"schema": "pacbayes.lab/2", "cells": [', "the file ends early (truncated?)"),
    ('{"schema": "pacbayes.lab/2",\n "schema": "pacbayes.lab/3"}', ":2: key 'schema' appears "
                                                                  "twice"),
    ("", "the file is empty"),
    (json.dumps({"schema": "something/1"}), "not a lab results file"),
    (json.dumps([1, 2]), "expected a JSON object"),
])
def test_bad_results_file(cli, tmp_path, capsys, content, message):
  path = tmp_path / "r.json"
  path.write_text(content)
  err = _refused(cli, capsys, str(path), tmp_path, ["--budget", 3200], message)
  assert str(path) in err


def test_truncated_and_duplicated_key_results(cli, results_file, tmp_path, capsys):
  text = Path(results_file).read_text()
  half = tmp_path / "half.json"
  half.write_text(text[:len(text) // 2])
  _refused(cli, capsys, str(half), tmp_path, ["--budget", 3200], "half.json:1: not valid JSON")
  dup = tmp_path / "dup.json"
  dup.write_text(text.replace('"n": 200,', '"n": 200, "n": 3200,', 1))
  _refused(cli, capsys, str(dup), tmp_path, ["--budget", 3200], "key 'n' appears twice")
  report = REPO / "experiments" / "results" / "smollm2" / "bound_adapter.json"
  if report.exists():
    _refused(cli, capsys, str(report), tmp_path, ["--budget", 3200], "a bound report")


def test_output_paths_are_checked_before_work(cli, results_file, tmp_path, capsys, monkeypatch):
  run = ["--budget", 3200]
  _refused(cli, capsys, results_file, tmp_path, run, "--out", out=results_file)
  _refused(cli, capsys, results_file, tmp_path, run, "the folder", out=tmp_path / "no" / "x.json")
  _refused(cli, capsys, results_file, tmp_path, [*run, "--figure", tmp_path / "f.nope"],
           "--figure")
  _refused(cli, capsys, results_file, tmp_path, [*run, "--figure", tmp_path / "sel.json"],
           "is the --out file")
  _refused(cli, capsys, results_file, tmp_path, [*run, "--figure", results_file],
           "--figure")
  missing = str(tmp_path / "missing.json")
  _refused(cli, capsys, missing, tmp_path, run, "--from-results")
  folder = tmp_path / "ro"
  folder.mkdir()
  os.chmod(folder, 0o555)
  try:
    if IS_ROOT:  # root writes anywhere: make the check see what a user would.
      import pacbayes.cli.common as common

      real_access = os.access
      monkeypatch.setattr(common.os, "access", lambda p, m: False if os.fspath(p) == str(
          folder) else real_access(p, m))
    _refused(cli, capsys, results_file, tmp_path, run, "is not writable",
             out=folder / "x.json")
  finally:
    os.chmod(folder, 0o755)


def test_existing_outputs_are_replaced_and_it_is_said(cli, results_file, tmp_path, capsys):
  out, fig = tmp_path / "sel.json", tmp_path / "sel.png"
  out.write_text("old\n")
  assert cli("--from-results", results_file, "--budget", 3200, "--out", out, "--figure", fig,
             "--bootstrap", 50) == 0
  shown = capsys.readouterr().out
  assert f"selection written to {out} (replaced the existing file)" in shown
  assert f"figure written to {fig}\n" in shown
  assert json.loads(out.read_text())["budget"] == 3200


def test_failed_json_write_writes_no_figure(cli, results_file, tmp_path, capsys, monkeypatch):
  """The JSON is committed inside the figure's write: a JSON that cannot be written (a disk
  that fills at the last moment) leaves no figure either, and no temporary file."""
  import pacbayes.core.atomic as atomic

  real = atomic.os.replace

  def replace(src, dst):
    if str(dst).endswith(".json"):
      raise OSError(28, "No space left on device", str(dst))
    return real(src, dst)

  monkeypatch.setattr(atomic.os, "replace", replace)
  out, fig = tmp_path / "sel.json", tmp_path / "sel.png"
  assert cli("--from-results", results_file, "--budget", 3200, "--out", out, "--figure", fig,
             "--bootstrap", 50) == 2
  err = capsys.readouterr().err.strip()
  assert err == f"pacbayes select: error: {out}: No space left on device"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_ctrl_c_during_the_bootstrap_in_process(cli, results_file, tmp_path, capsys,
                                                 monkeypatch):
  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(predict, "resample_means", interrupted)
  err = _refused(cli, capsys, results_file, tmp_path,
                 ["--budget", 3200, "--figure", tmp_path / "sel.png"], "interrupted",
                 status=130)
  assert err == "pacbayes select: interrupted"


# The console-script path: a real SIGINT, sent by the process to itself in the bootstrap.
_SIGINT_IN_BOOTSTRAP = """
import os, signal, sys, time
sys.argv[0] = "pacbayes"
import pacbayes.cli.main as c
from pacbayes.select import predict
real = predict.resample_means
def interrupted(*args, **kwargs):
  os.kill(os.getpid(), signal.SIGINT)
  time.sleep(30)
  return real(*args, **kwargs)
predict.resample_means = interrupted
sys.exit(c.main())
"""


def test_ctrl_c_during_the_bootstrap_exits_130_with_one_line(results_file, tmp_path):
  out, fig = tmp_path / "sel.json", tmp_path / "sel.png"
  before = sorted(os.listdir(tmp_path))
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, "-c", _SIGINT_IN_BOOTSTRAP, "select",
                         "--from-results", results_file, "--budget", "3200", "--out", str(out),
                         "--figure", str(fig)], capture_output=True, text=True, env=env,
                        timeout=300)
  err = [line for line in proc.stderr.splitlines() if line.strip()]
  assert proc.returncode == 130, proc.stderr
  assert err == ["pacbayes select: interrupted"], proc.stderr
  assert proc.stdout == "" and sorted(os.listdir(tmp_path)) == before


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
