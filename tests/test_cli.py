"""The command line: one clear line and a non-zero exit on bad input, never a partial report."""

import json
import subprocess
import sys

import numpy as np
import pytest

from pacbayes.cli import main


def _write(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


@pytest.fixture
def shift_files(tmp_path):
  rng = np.random.default_rng(0)
  train = [{"input_ids": [1, 2, 3], "difficulty": int(d)} for d in rng.integers(1, 4, 300)]
  test = [{"input_ids": [1, 2, 3], "difficulty": int(d)} for d in rng.integers(2, 6, 300)]
  return _write(tmp_path / "train.jsonl", train), _write(tmp_path / "test.jsonl", test)


def test_shift_command_writes_report(shift_files, tmp_path, capsys):
  train, test = shift_files
  out = tmp_path / "shift.json"
  assert main(["shift", "--train", str(train), "--test", str(test), "--out", str(out)]) == 0
  report = json.loads(out.read_text())
  assert report["g_ext_kind"] == "certified under difficulty shift"
  assert 0.0 <= report["g_ext"] <= 1.0
  assert "certified" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["missing_field", "not_json", "missing_file"])
def test_shift_command_bad_input_one_line_no_report(shift_files, tmp_path, capsys, bad):
  train, test = shift_files
  if bad == "missing_field":
    _write(test, [{"input_ids": [1]}])
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

  from pacbayes.models import ModelConfig, build_model, save_pretrained

  root = tmp_path_factory.mktemp("cli_ckpt")
  cfg = ModelConfig(model_type="llama", vocab_size=32, hidden_size=16, intermediate_size=32,
                    num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                    max_position_embeddings=64)
  model = build_model(cfg, rngs=nnx.Rngs(0))
  save_pretrained(model, cfg, root / "prior")
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  moved = jax.tree.map(lambda x: x + jnp.asarray(2e-3, x.dtype), params)
  save_pretrained(nnx.merge(graphdef, moved, rest), cfg, root / "posterior")
  other = ModelConfig(model_type="llama", vocab_size=32, hidden_size=24, intermediate_size=32,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=64)
  save_pretrained(build_model(other, rngs=nnx.Rngs(1)), other, root / "other")
  rng = np.random.default_rng(0)
  rows = [{"input_ids": rng.integers(1, 32, 8).tolist(), "difficulty": int(d)}
          for d in rng.integers(1, 4, 16)]
  _write(root / "train.jsonl", rows)
  _write(root / "test.jsonl", [dict(r, difficulty=r["difficulty"] + 1) for r in rows])
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
  assert rep["bound"] == rep["emp_risk"] + rep["epsilon"] + rep["g_gen"] + rep["g_ext"]
  assert rep["g_ext_kind"] == "certified under difficulty shift"
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
