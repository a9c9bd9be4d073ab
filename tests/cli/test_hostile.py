"""Hostile inputs to the command line: exit 2 (130 when interrupted), one line, nothing written.

Each case builds its inputs in a fresh folder, snapshots every file's hash and mode, runs the
command, and checks: the exit status; exactly one non-empty line on stderr, without a
traceback, naming the file, key or flag; and the folder unchanged (no report, no temporary,
no input modified). Most cases run in-process through `pacbayes.cli.main.main`; a few run as
``python -m pacbayes.cli.main`` subprocesses, and the interrupt tests send SIGINT to one.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pacbayes.cli.main import main
from tests.helpers.jsonl import write_jsonl
from tests.helpers.models import save_tiny_llama

SEED_TOO_BIG = str(2**64)
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """Tiny checkpoints and data, built once; each case works on a copy."""
  root = tmp_path_factory.mktemp("hostile_world")
  save_tiny_llama(root / "prior", seed=0)
  save_tiny_llama(root / "posterior", seed=1)
  rng = np.random.default_rng(0)
  rows = [{"input_ids": rng.integers(1, 32, 8).tolist(), "difficulty": int(d)}
          for d in rng.integers(1, 4, 40)]
  write_jsonl(root / "train.jsonl", rows)
  write_jsonl(root / "test.jsonl", [dict(r, difficulty=r["difficulty"] + 1) for r in rows])
  write_jsonl(root / "plain.jsonl", [{"input_ids": r["input_ids"]} for r in rows])
  report = {"bound": 0.6, "emp_risk": 0.2, "epsilon": 0.1, "g_gen": 0.2, "g_ext": 0.1}
  (root / "report.json").write_text(json.dumps(report))
  return root


@pytest.fixture
def box(world, tmp_path):
  """A private copy of the inputs, and the folder the case may not change."""
  for item in world.iterdir():
    (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp_path / item.name)
  (tmp_path / "outdir").mkdir()
  return tmp_path


def snapshot(root):
  """{relative path: (sha256 or 'dir', mode)} of everything under root."""
  out = {}
  for folder, dirs, files in os.walk(root):
    for name in dirs + files:
      path = os.path.join(folder, name)
      st = os.lstat(path)
      if os.path.isdir(path) and not os.path.islink(path):
        digest = "dir"
      elif os.path.islink(path):
        digest = "link:" + os.readlink(path)
      else:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
      out[os.path.relpath(path, root)] = (digest, st.st_mode)
  return out


def run_in_process(argv, capsys):
  try:
    code = main(argv)
  except SystemExit as e:
    code = e.code
  err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  return code, err


def parse_only(argv):
  """Runs only the argument parser: a flag refused there can never start the work.

  Used for flags whose value, if accepted, would make the work itself dangerous to run in a
  test (e.g. a batch of 1e8 rows).
  """
  from pacbayes.cli.main import build_parser

  build_parser().parse_args(argv)
  return 0


def check_refused(box, capsys, argv, needle, *, status=2, parse=False):
  before = snapshot(box)
  argv = [str(a) for a in argv]
  if parse:
    try:
      code = parse_only(argv)
    except SystemExit as e:
      code = e.code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  else:
    code, err = run_in_process(argv, capsys)
  assert code == status, (code, err)
  assert len(err) == 1, err
  assert "Traceback" not in err[0]
  assert needle in err[0], (needle, err[0])
  assert snapshot(box) == before, "a file was written or changed"


def shift_args(box, *extra, test=None, out="outdir/shift.json"):
  return ["shift", "--train", box / "train.jsonl", "--test", test or box / "test.jsonl",
          *(["--out", f"{box}/{out}"] if out else []), *extra]


def bound_args(box, *extra, out="outdir/report.json", train=None, test=None):
  return ["bound", "--prior", box / "prior", "--posterior", box / "posterior",
          "--train", train or box / "train.jsonl", *(["--test", test] if test else []),
          "--sigma", "0.01", "--sigma-prior", "0.01", "--chunk-size", "1", "--quiet",
          *(["--out", f"{box}/{out}"] if out else []), *extra]


def swap(argv, flag, value):
  """argv with the value after `flag` replaced."""
  argv = list(argv)
  argv[argv.index(flag) + 1] = value
  return argv


def _bad_difficulty(box, value):
  rows = [json.loads(line) for line in (box / "test.jsonl").read_text().splitlines()]
  if value == "missing":
    del rows[4]["difficulty"]
  else:
    rows[4]["difficulty"] = value
  return write_jsonl(box / "bad.jsonl", rows)


# ------------------------------------------------------------------------------------------
# shift
# ------------------------------------------------------------------------------------------

SHIFT_CASES = {
  # name: (argv builder(box) -> argv, needle builder(box) -> text in the line)
  "train_missing": (lambda b: swap(shift_args(b), "--train", b / "nope.jsonl"),
                    lambda b: "nope.jsonl"),
  "test_is_folder": (lambda b: shift_args(b, test=b / "outdir"), lambda b: "--test"),
  "test_binary": (lambda b: shift_args(b, test=_binary(b)), lambda b: "bin.jsonl"),
  "test_not_json": (lambda b: shift_args(b, test=write_jsonl(b / "t.jsonl", ['{"difficulty": 1}',
                                                                        "{oops"])),
                    lambda b: "t.jsonl:2"),
  "difficulty_string": (lambda b: shift_args(b, test=_bad_difficulty(b, "3")),
                        lambda b: "bad.jsonl:5"),
  "difficulty_null": (lambda b: shift_args(b, test=_bad_difficulty(b, None)),
                      lambda b: "bad.jsonl:5"),
  "difficulty_bool": (lambda b: shift_args(b, test=_bad_difficulty(b, True)),
                      lambda b: "bad.jsonl:5"),
  "difficulty_list": (lambda b: shift_args(b, test=_bad_difficulty(b, [1])),
                      lambda b: "bad.jsonl:5"),
  "difficulty_missing_one_row": (lambda b: shift_args(b, test=_bad_difficulty(b, "missing")),
                                 lambda b: "bad.jsonl:5"),
  "difficulty_bad_under_ngram": (
      lambda b: shift_args(b, "--feature", "ngram", test=_bad_difficulty(b, "hard")),
      lambda b: "bad.jsonl:5"),
  "support_without_difficulty": (
      lambda b: shift_args(b, "--support", "1", "2", "3", test=b / "plain.jsonl"),
      lambda b: "plain.jsonl"),
  "support_with_ngram": (lambda b: shift_args(b, "--feature", "ngram", "--support", "1"),
                         lambda b: "--support"),
  "support_nan": (lambda b: shift_args(b, "--support", "1", "nan"), lambda b: "--support"),
  "out_is_test": (lambda b: shift_args(b, out="test.jsonl"), lambda b: "--out"),
  "out_is_train_via_symlink": (lambda b: shift_args(b, out=_link(b, "train.jsonl")),
                               lambda b: "--out"),
  "out_is_folder": (lambda b: shift_args(b, out="outdir"), lambda b: "--out"),
  "out_trailing_slash": (lambda b: shift_args(b, out="outdir/new/"), lambda b: "--out"),
  "out_missing_folder": (lambda b: shift_args(b, out="nowhere/shift.json"),
                         lambda b: "nowhere"),
  "seed_too_big": (lambda b: shift_args(b, "--seed", SEED_TOO_BIG), lambda b: "--seed"),
  "seed_negative": (lambda b: shift_args(b, "--seed", "-1"), lambda b: "--seed"),
  "seed_not_int": (lambda b: shift_args(b, "--seed", "1.5"), lambda b: "--seed"),
  "delta_out_of_range": (lambda b: shift_args(b, "--delta", "1.5"), lambda b: "--delta"),
  "embedding_without_model": (lambda b: shift_args(b, "--feature", "embedding"),
                              lambda b: "--model"),
  "model_with_difficulty": (lambda b: shift_args(b, "--model", b / "prior"),
                            lambda b: "--model"),
  "embedding_model_missing": (
      lambda b: shift_args(b, "--feature", "embedding", "--model", b / "nomodel"),
      lambda b: "nomodel"),
  "embedding_config_not_json": (
      lambda b: shift_args(b, "--feature", "embedding", "--model", _break_config(b, "{oops")),
      lambda b: "config.json"),
  "embedding_text_rows_without_tokenizer": (
      lambda b: shift_args(b, "--feature", "embedding", "--model", b / "prior",
                           test=write_jsonl(b / "text.jsonl", [{"text": "two plus two"}] * 5)),
      lambda b: "tokenizer is missing"),
  "embedding_out_inside_model": (
      lambda b: shift_args(b, "--feature", "embedding", "--model", b / "prior",
                           out="prior/config.json"),
      lambda b: "--out"),
}


def _binary(box):
  path = box / "bin.jsonl"
  path.write_bytes(bytes(range(256)) * 4)
  return path


def _link(box, target):
  link = box / "outdir" / "link.json"
  link.symlink_to(box / target)
  return "outdir/link.json"


def _break_config(box, text):
  (box / "prior" / "config.json").write_text(text)
  return box / "prior"


@pytest.mark.parametrize("value", ["100000000", "1e8", "0"])
def test_shift_batch_size_refused_by_the_parser(box, capsys, value):
  argv = shift_args(box, "--feature", "embedding", "--model", box / "prior", "--batch-size",
                    value)
  check_refused(box, capsys, argv, "--batch-size", parse=True)


@pytest.mark.parametrize("name", sorted(SHIFT_CASES))
def test_shift_hostile(box, capsys, name):
  build, needle = SHIFT_CASES[name]
  argv = build(box)
  check_refused(box, capsys, argv, needle(box))


# Type errors in config.json are H2's (pacbayes/models/config.py): the message must name
# the key.
@pytest.mark.parametrize("key,value", [("num_key_value_heads", "2"), ("head_dim", 8.0),
                                       ("rope_theta", "ten thousand")])
def test_shift_embedding_config_wrong_type(box, capsys, key, value):
  config = json.loads((box / "prior" / "config.json").read_text())
  config[key] = value
  argv = shift_args(box, "--feature", "embedding", "--model",
                    _break_config(box, json.dumps(config)))
  check_refused(box, capsys, argv, key)


def test_shift_out_in_read_only_folder(box, capsys, monkeypatch):
  folder = box / "outdir"
  os.chmod(folder, 0o555)
  try:
    if IS_ROOT:  # root writes anywhere: make the check see what a user would.
      import pacbayes.cli.common as common

      real_access = os.access
      monkeypatch.setattr(common.os, "access", lambda p, m: False if os.fspath(p) == str(
          folder) else real_access(p, m))
    check_refused(box, capsys, shift_args(box, out="outdir/shift.json"), "not writable")
  finally:
    os.chmod(folder, 0o755)


@pytest.mark.parametrize("errno_name", ["ENOSPC", "EACCES", "EROFS"])
def test_write_failure_after_the_work_is_one_line(box, capsys, monkeypatch, errno_name):
  """A disk that fills (or turns read-only) at the last moment: one line naming the path."""
  import errno
  import tempfile

  def fail(*args, **kwargs):
    code = getattr(errno, errno_name)
    raise OSError(code, os.strerror(code), str(box / "outdir" / ".tmp-x"))

  monkeypatch.setattr(tempfile, "mkstemp", fail)
  check_refused(box, capsys, shift_args(box), "shift.json")


# ------------------------------------------------------------------------------------------
# plot
# ------------------------------------------------------------------------------------------


def _report(box, **change):
  data = json.loads((box / "report.json").read_text())
  for key, value in change.items():
    if value == "<drop>":
      del data[key]
    else:
      data[key] = value
  path = box / "bad_report.json"
  path.write_text(json.dumps(data))
  return path


def plot_args(box, *inputs, out="outdir/fig.png"):
  return ["plot", *inputs, "--out", f"{box}/{out}"]


PLOT_CASES = {
  "binary_file": (lambda b: plot_args(b, _binary(b)), "bin.jsonl"),
  "null_value": (lambda b: plot_args(b, _report(b, bound=None)), "'bound'"),
  "string_value": (lambda b: plot_args(b, _report(b, g_gen="0.2")), "'g_gen'"),
  "nan_value": (lambda b: plot_args(b, _report(b, g_ext=float("nan"))), "'g_ext'"),
  "missing_key": (lambda b: plot_args(b, _report(b, epsilon="<drop>")), "'epsilon'"),
  "not_json": (lambda b: plot_args(b, write_jsonl(b / "x.json", ["{nope"])), "x.json"),
  "json_list": (lambda b: plot_args(b, write_jsonl(b / "x.json", ["[1, 2]"])), "x.json"),
  "missing_file": (lambda b: plot_args(b, b / "gone.json"), "gone.json"),
  "out_is_input": (lambda b: plot_args(b, b / "report.json", out="report.json"), "--out"),
  "out_unknown_type": (lambda b: plot_args(b, b / "report.json", out="outdir/fig.txt"),
                       "--out"),
  "out_is_folder": (lambda b: plot_args(b, b / "report.json", out="outdir"), "--out"),
  "kind_for_lab_only": (lambda b: plot_args(b, b / "report.json") + ["--kind", "gaps"],
                        "--kind"),
}


@pytest.mark.parametrize("name", sorted(PLOT_CASES))
def test_plot_hostile(box, capsys, name):
  build, needle = PLOT_CASES[name]
  check_refused(box, capsys, build(box), needle)


def test_plot_lab_results_with_terms(box, capsys):
  from tests.helpers.lab_results import GOOD, make_results

  path = box / "results.json"
  path.write_text(json.dumps(make_results(**GOOD)))
  check_refused(box, capsys, plot_args(box, path) + ["--kind", "terms"], "--kind")


# ------------------------------------------------------------------------------------------
# lab (the study must not start: run_study is replaced by a tripwire)
# ------------------------------------------------------------------------------------------


@pytest.fixture
def no_study(monkeypatch):
  from pacbayes.study import runner as study

  def tripwire(*args, **kwargs):
    raise AssertionError("the study started although the command line was bad")

  monkeypatch.setattr(study, "run_study", tripwire)


def test_lab_seed_too_big(box, capsys, no_study):
  check_refused(box, capsys, ["lab", "--out", box / "outdir" / "lab", "--seed", SEED_TOO_BIG],
                "--seed")


def test_lab_preset_unknown(box, capsys, no_study):
  check_refused(box, capsys, ["lab", "--preset", "huge"], "--preset")


def test_lab_out_names_a_file(box, capsys, no_study):
  check_refused(box, capsys, ["lab", "--out", box / "report.json", "--figures", ""], "--out")


def test_lab_figures_names_a_file(box, capsys, no_study):
  check_refused(box, capsys, ["lab", "--out", box / "outdir" / "lab", "--figures",
                              box / "report.json"], "--figures")


# ------------------------------------------------------------------------------------------
# bound
# ------------------------------------------------------------------------------------------

BOUND_CASES = {
  "train_missing": (lambda b: bound_args(b, train=b / "nope.jsonl"), "nope.jsonl"),
  "train_not_json": (lambda b: bound_args(b, train=write_jsonl(b / "t.jsonl", ["[1, 2"])),
                     "t.jsonl:1"),
  "prior_missing": (lambda b: swap(bound_args(b), "--prior", b / "noprior"), "noprior"),
  "posterior_config_not_json": (
      lambda b: swap(bound_args(b), "--posterior", _break_config_of(b, "posterior", "{oops")),
      "config.json"),
  "test_difficulty_string": (lambda b: bound_args(b, test=_bad_difficulty(b, "hard")),
                             "bad.jsonl:5"),
  "test_difficulty_null": (lambda b: bound_args(b, test=_bad_difficulty(b, None)),
                           "bad.jsonl:5"),
  "posterior_config_wrong_type": (
      lambda b: swap(bound_args(b), "--posterior", _retype_config(b, "posterior",
                                                                  num_key_value_heads="1")),
      "num_key_value_heads"),
  "out_is_train": (lambda b: bound_args(b, out="train.jsonl"), "--out"),
  "out_is_posterior_config": (lambda b: bound_args(b, out="posterior/config.json"), "--out"),
  "out_is_folder": (lambda b: bound_args(b, out="outdir"), "--out"),
}


def _retype_config(box, folder, **change):
  config = json.loads((box / folder / "config.json").read_text())
  config.update(change)
  return _break_config_of(box, folder, json.dumps(config))


def _break_config_of(box, folder, text):
  (box / folder / "config.json").write_text(text)
  return box / folder


@pytest.mark.parametrize("name", sorted(BOUND_CASES))
def test_bound_hostile(box, capsys, name):
  build, needle = BOUND_CASES[name]
  check_refused(box, capsys, build(box), needle)


@pytest.mark.parametrize("flag,value", [("--seed", SEED_TOO_BIG), ("--seed", "-3"),
                                        ("--batch-size", "100000000"), ("--batch-size", "1e8"),
                                        ("--sigma", "nan"), ("--chunk-size", "0")])
def test_bound_flag_refused_by_the_parser(box, capsys, flag, value):
  argv = bound_args(box, *([] if flag in ("--sigma", "--chunk-size") else [flag, value]))
  if flag in ("--sigma", "--chunk-size"):
    argv = swap(argv, flag, value)
  check_refused(box, capsys, argv, flag, parse=True)


# ------------------------------------------------------------------------------------------
# Subprocesses: the real entry point, and Ctrl-C
# ------------------------------------------------------------------------------------------


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  env.pop("XLA_FLAGS", None)
  return env


@pytest.mark.slow  # subprocesses
@pytest.mark.parametrize("case", ["missing_file", "seed_too_big", "out_is_test"])
def test_subprocess_refusals(box, case):
  argv = {"missing_file": shift_args(box, test=box / "nope.jsonl"),
          "seed_too_big": shift_args(box, "--seed", SEED_TOO_BIG),
          "out_is_test": shift_args(box, out="test.jsonl")}[case]
  before = snapshot(box)
  proc = subprocess.run([sys.executable, "-m", "pacbayes.cli", *map(str, argv)],
                        capture_output=True, text=True, env=_env(), timeout=300)
  err = [line for line in proc.stderr.splitlines() if line.strip()]
  assert proc.returncode == 2, proc.stderr
  assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr
  assert snapshot(box) == before


# Runs the CLI as the `pacbayes` console script does (argv[0] names it, argv from sys.argv),
# saying "ready" once the library is imported.
_READY = ("import sys; sys.argv[0] = 'pacbayes'; import pacbayes.cli.main as c; "
          "print('ready', flush=True); sys.exit(c.main())")


def _interrupt(argv, *, wait_for_ready, delay):
  cmd = ([sys.executable, "-c", _READY] if wait_for_ready
         else [sys.executable, "-m", "pacbayes.cli"]) + [str(a) for a in argv]
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=_env())
  if wait_for_ready:
    assert proc.stdout.readline().strip() == "ready"
  time.sleep(delay)
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=300)
  return proc.returncode, [line for line in err.splitlines() if line.strip()]


@pytest.mark.slow  # subprocesses interrupted with SIGINT
@pytest.mark.parametrize("delay", [0.0, 2.0, 5.0])
def test_ctrl_c_during_bound_exits_130_with_one_line(box, delay):
  """In the work (loading, compiling, drawing): status 130, never 139, one line, no file."""
  rows = [json.loads(line) for line in (box / "train.jsonl").read_text().splitlines()]
  write_jsonl(box / "big.jsonl", rows * 50)  # 2,000 rows, one draw each: far longer than the delay
  before = snapshot(box)
  code, err = _interrupt(bound_args(box, train=box / "big.jsonl"), wait_for_ready=True,
                         delay=delay)
  assert code == 130, (code, err)
  # Notes printed before the signal (e.g. NOT CERTIFIABLE) may precede it; the interrupt
  # itself is one line, the last, and nothing is a traceback.
  assert err and "interrupted" in err[-1], err
  assert not any("interrupted" in line for line in err[:-1]), err
  assert all(line.startswith("pacbayes") and "Traceback" not in line for line in err), err
  assert snapshot(box) == before


@pytest.mark.slow  # a subprocess interrupted with SIGINT
def test_ctrl_c_during_import_exits_130_with_one_line(box):
  code, err = _interrupt(shift_args(box), wait_for_ready=False, delay=0.3)
  assert code == 130, (code, err)
  assert len(err) == 1 and "interrupted" in err[0], err


@pytest.mark.parametrize("workers", ["-1", "65", "2.0", "many"])
def test_lab_workers_out_of_range(box, capsys, no_study, workers):
  check_refused(box, capsys, ["lab", "--out", box / "outdir" / "lab", "--workers", workers],
                "--workers")
