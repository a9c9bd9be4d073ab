"""The command line: one clear line and a non-zero exit on bad input, never a partial report."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pacbayes.cli.main import main
from tests.helpers.jsonl import write_jsonl
from tests.helpers.models import save_tiny_llama, tiny_llama_config


@pytest.fixture
def shift_files(tmp_path):
  rng = np.random.default_rng(0)
  train = [{"input_ids": [1, 2, 3], "difficulty": int(d)} for d in rng.integers(1, 4, 300)]
  test = [{"input_ids": [1, 2, 3], "difficulty": int(d)} for d in rng.integers(2, 6, 300)]
  paths = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
  write_jsonl(paths[0], train)
  write_jsonl(paths[1], test)
  return paths


def test_shift_command_writes_report(shift_files, tmp_path, capsys):
  train, test = shift_files
  out = tmp_path / "shift.json"
  assert main(["shift", "--train", str(train), "--test", str(test), "--out", str(out)]) == 0
  report = json.loads(out.read_text())
  assert report["g_ext_kind"] == "certified under difficulty shift (TV)"
  assert 0.0 <= report["g_ext"] <= 1.0
  assert "certified" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["missing_field", "not_json", "missing_file"])
def test_shift_command_bad_input_one_line_no_report(shift_files, tmp_path, capsys, bad):
  train, test = shift_files
  if bad == "missing_field":
    write_jsonl(test, [{"input_ids": [1]}])
  elif bad == "not_json":
    test.write_text('{"difficulty": 1}\n{oops\n')
  else:
    test = tmp_path / "nope.jsonl"
  out = tmp_path / "shift.json"
  code = main(["shift", "--train", str(train), "--test", str(test), "--out", str(out)])
  assert code != 0
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and str(test.name) in err[0], err
  assert not out.exists()


@pytest.mark.slow  # a subprocess
def test_console_script_bad_delta_exits_nonzero_without_traceback(shift_files, tmp_path):
  train, test = shift_files
  proc = subprocess.run(
      [sys.executable, "-m", "pacbayes.cli", "shift", "--train", str(train), "--test",
       str(test), "--delta", "1.5"], capture_output=True, text=True)
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr and "--delta" in proc.stderr


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from pacbayes.models import build_model, save_pretrained

  root = tmp_path_factory.mktemp("cli_ckpt")
  cfg = tiny_llama_config()
  model = build_model(cfg, rngs=nnx.Rngs(0))
  save_pretrained(model, cfg, root / "prior")
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  moved = jax.tree.map(lambda x: x + jnp.asarray(2e-3, x.dtype), params)
  save_pretrained(nnx.merge(graphdef, moved, rest), cfg, root / "posterior")
  save_tiny_llama(root / "other", seed=1, config=tiny_llama_config(hidden_size=24))
  rng = np.random.default_rng(0)
  rows = [{"input_ids": rng.integers(1, 32, 8).tolist(), "difficulty": int(d)}
          for d in rng.integers(1, 4, 16)]
  write_jsonl(root / "train.jsonl", rows)
  write_jsonl(root / "test.jsonl", [dict(r, difficulty=r["difficulty"] + 1) for r in rows])
  return root


def _bound_args(root, out, *extra):
  return ["bound", "--prior", str(root / "prior"), "--posterior", str(root / "posterior"),
          "--train", str(root / "train.jsonl"), "--sigma", "0.01", "--sigma-prior", "0.01",
          "--chunk-size", "1", "--quiet", "--out", str(out), *extra]


def test_bound_command_report(checkpoints, tmp_path):
  out = tmp_path / "report.json"
  assert main(_bound_args(checkpoints, out, "--test", str(checkpoints / "test.jsonl"))) == 0
  rep = json.loads(out.read_text())
  for key in ("n", "num_params", "sigma_q", "sigma_p", "kl", "emp_risk", "epsilon", "g_gen",
              "g_ext", "g_ext_kind", "bound", "delta", "loss"):
    assert key in rep, key
  # A saturated or vacuous term is written as null with its status; the exact values stay
  # under raw_terms, and they add up to the bound.
  raw = rep["raw_terms"]
  assert rep["bound"] == rep["emp_risk"] + rep["epsilon"] + raw["g_gen"] + raw["g_ext"]
  assert (rep["g_gen"] is None) == (rep["g_gen_status"] == "saturated")
  assert (rep["g_ext"] is None) == (rep["g_ext_status"] == "vacuous")
  assert rep["g_ext_kind"].startswith("certified under difficulty shift")
  assert rep["n"] == 16 and rep["loss"] == "token_error"


@pytest.mark.parametrize("case", ["malformed", "architecture", "sigma", "delta", "empty"])
def test_bound_command_refuses_bad_input(checkpoints, tmp_path, capsys, case):
  out = tmp_path / "report.json"
  args = _bound_args(checkpoints, out)
  if case == "malformed":
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input_ids": [1, 2]}\n[1, 2\n')
    args[args.index("--train") + 1] = str(bad)
  elif case == "architecture":
    args[args.index("--posterior") + 1] = str(checkpoints / "other")
  elif case == "sigma":
    args[args.index("--sigma") + 1] = "0"
  elif case == "delta":
    args += ["--delta", "1"]
  else:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    args[args.index("--train") + 1] = str(empty)
  if case in ("sigma", "delta"):
    with pytest.raises(SystemExit) as exc:
      main(args)
    assert exc.value.code != 0
  else:
    assert main(args) == 2
  err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
  assert err and "Traceback" not in "\n".join(err)
  assert len(err) == 1, err
  assert not out.exists()


def test_shift_command_with_fixed_support(shift_files, tmp_path):
  train, test = shift_files
  out = tmp_path / "shift.json"
  args = ["shift", "--train", str(train), "--test", str(test), "--out", str(out)]
  assert main(args + ["--support", "1", "2", "3", "4", "5"]) == 0
  fixed = json.loads(out.read_text())
  assert fixed["support"] == [1.0, 2.0, 3.0, 4.0, 5.0]
  assert main(args) == 0
  free = json.loads(out.read_text())
  assert "chosen from the data" in free["support"]
  for rep in (fixed, free):
    assert rep["tv"]["estimate"]["value"] <= rep["g_ext"] <= 1.0
  # A value outside the declared support is refused with one line, and no report.
  out.unlink()
  assert main(args + ["--support", "1", "2"]) == 2
  assert not out.exists()


# ------------------------------------------------------------------------------------------
# Flag types and output checks (pacbayes.cli.common)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,ok", [("0", True), (str(2**32 - 1), True), (str(2**32), False),
                                     (str(2**63), False), ("-1", False), ("1.0", False),
                                     ("1e3", False), ("seven", False), ("9" * 5000, False)])
def test_seed_type(text, ok):
  import argparse

  from pacbayes.cli.common import SEED_MAX, seed

  parse = seed("--seed")
  if ok:
    assert 0 <= parse(text) <= SEED_MAX
  else:
    with pytest.raises(argparse.ArgumentTypeError, match="--seed"):
      parse(text)


def test_every_seed_accepted_works_in_jax_and_numpy():
  """Seeds 0 and SEED_MAX reach JAX and NumPy unchanged (no wrap); SEED_MAX + 1 would not."""
  import jax

  from pacbayes.cli.common import SEED_MAX

  assert SEED_MAX == 2**32 - 1
  for s in (0, SEED_MAX):
    np.testing.assert_array_equal(jax.random.key_data(jax.random.key(s)), [0, s])
    assert np.random.RandomState(s).get_state()[1][0] == s  # MT19937 word 0 is the seed
    assert np.random.SeedSequence([s, 3, 1]).entropy == [s, 3, 1]
  assert np.random.default_rng(0).random() != np.random.default_rng(SEED_MAX).random()
  with pytest.raises(ValueError, match=r"2\*\*32 - 1"):
    np.random.RandomState(SEED_MAX + 1)


@pytest.mark.parametrize("text,ok", [("1", True), ("4096", True), ("4097", False), ("0", False),
                                     ("-2", False), ("1e8", False), ("100000000", False),
                                     (" 12 ", True)])
def test_positive_int_type(text, ok):
  import argparse

  from pacbayes.cli.common import positive_int

  parse = positive_int("--batch-size", maximum=4096)
  if ok:
    assert parse(text) == int(text)
  else:
    with pytest.raises(argparse.ArgumentTypeError, match="--batch-size"):
      parse(text)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "0", "-1", "x"])
def test_positive_float_refuses_non_finite(text):
  import argparse

  from pacbayes.cli.common import positive_float

  with pytest.raises(argparse.ArgumentTypeError, match="--sigma"):
    positive_float("--sigma")(text)


def test_check_output_path(tmp_path):
  from pacbayes.cli.common import CommandError, check_output_path

  data = tmp_path / "train.jsonl"
  data.write_text("{}\n")
  ckpt = tmp_path / "ckpt"
  ckpt.mkdir()
  (tmp_path / "link.json").symlink_to(data)
  os.link(data, tmp_path / "hard.jsonl")
  check_output_path(str(tmp_path / "report.json"), "--out", inputs=(data, ckpt, None))
  check_output_path(None, "--out")
  cases = {
    str(data): "is an input",
    str(tmp_path / "link.json"): "is an input",
    str(tmp_path / "hard.jsonl"): "is an input",
    str(ckpt / "config.json"): "inside the input folder",
    str(ckpt): "is a folder",
    str(tmp_path) + "/new/": "not a folder",
    "": "not a folder",
    str(tmp_path / "missing" / "r.json"): "does not exist",
  }
  for path, match in cases.items():
    with pytest.raises(CommandError, match=match) as e:
      check_output_path(path, "--out", inputs=(data, ckpt))
    assert str(e.value).startswith("--out")


def test_check_output_folder(tmp_path):
  from pacbayes.cli.common import CommandError, check_output_folder

  afile = tmp_path / "results.json"
  afile.write_text("{}")
  check_output_folder(str(tmp_path / "new" / "deeper"), "--out")
  check_output_folder(str(tmp_path), "--figures")
  check_output_folder("", "--figures")
  with pytest.raises(CommandError, match="--figures .*is a file"):
    check_output_folder(str(afile), "--figures")
  with pytest.raises(CommandError, match="--out .*is a file, so the folder cannot be created"):
    check_output_folder(str(afile / "sub"), "--out")
  with pytest.raises(CommandError, match="--out .*holds the input"):
    check_output_folder(str(tmp_path), "--out", inputs=(afile,))


def test_read_only_outputs_are_refused(tmp_path, monkeypatch):
  from pacbayes.cli import common

  cache = tmp_path / "results" / "cells"
  cache.mkdir(parents=True)
  report = tmp_path / "report.json"
  report.write_text("{}")
  read_only = {str(cache), str(report)}
  real_access = os.access
  # Root bypasses permission bits: ask the check what a user would see.
  monkeypatch.setattr(common.os, "access", lambda p, m: (
      False if os.fspath(p) in read_only else real_access(p, m)))
  with pytest.raises(common.CommandError, match=r"--out .*the folder .*cells is not writable"):
    common.check_output_folder(str(tmp_path / "results"), "--out")
  with pytest.raises(common.CommandError, match="--out .*read-only"):
    common.check_output_path(str(report), "--out")


def test_oserror_becomes_one_line_naming_the_path(tmp_path, capsys, monkeypatch):
  from pacbayes.cli.main import error_line

  assert error_line(PermissionError(13, "Permission denied", "/x/y.json")) == (
      "/x/y.json: Permission denied")
  assert error_line(OSError(28, "No space left on device", "/a", None, "/b")) == (
      "/a -> /b: No space left on device")
  assert "MemoryError" in error_line(MemoryError())


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_written_files_have_the_usual_mode(shift_files, tmp_path, umask):
  """Reports and figures follow the umask (0644 under 022), not mkstemp's 0600."""
  import stat

  train, test = shift_files
  report, fig = tmp_path / "shift.json", tmp_path / "fig.png"
  old = os.umask(umask)
  try:
    assert main(["shift", "--train", str(train), "--test", str(test), "--out", str(report)]) == 0
    bound_report = tmp_path / "r.json"
    bound_report.write_text(json.dumps({"emp_risk": 0.1, "epsilon": 0.1, "g_gen": 0.1,
                                        "g_ext": 0.1, "bound": 0.4}))
    assert main(["plot", str(bound_report), "--out", str(fig)]) == 0
  finally:
    os.umask(old)
  for path in (report, fig):
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask, path
