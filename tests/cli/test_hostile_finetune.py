"""Hostile inputs to `finetune`, adapters and `lab --workers`: exit 2 (130 when interrupted),
one line naming the file, key or flag, no traceback, no input changed, nothing left behind."""

import errno
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

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """A tiny Llama base, another base of the same shape, training rows and a trained adapter."""
  from pacbayes.training.finetune import FinetuneConfig, finetune

  root = tmp_path_factory.mktemp("ft_hostile")
  save_tiny_llama(root / "base", seed=0)
  save_tiny_llama(root / "other", seed=1)
  rng = np.random.default_rng(0)
  write_jsonl(root / "train.jsonl", [{"prompt_ids": rng.integers(1, 32, 4).tolist(),
                                      "completion_ids": rng.integers(1, 32, 3).tolist()}
                                     for _ in range(20)])
  finetune(FinetuneConfig(model=str(root / "base"), train=str(root / "train.jsonl"),
                          out=str(root / "adapter"), steps=2, batch_size=4, lora_rank=2,
                          learning_rate=1e-2, progress=False, holdout=0.25, seed=3))
  return root


@pytest.fixture
def box(world, tmp_path):
  for item in world.iterdir():
    (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp_path / item.name)
  return tmp_path


def snapshot(root):
  out = {}
  for folder, dirs, files in os.walk(root):
    for name in dirs + files:
      path = os.path.join(folder, name)
      digest = "dir" if os.path.isdir(path) else hashlib.sha256(
        Path(path).read_bytes()).hexdigest()
      out[os.path.relpath(path, root)] = (digest, os.lstat(path).st_mode)
  return out


def refused(box, capsys, argv, needle, status=2):
  before = snapshot(box)
  try:
    code = main([str(a) for a in argv])
  except SystemExit as e:
    code = e.code
  err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  assert code == status, err
  assert len(err) == 1, err
  assert "Traceback" not in err[0] and needle in err[0], err
  assert snapshot(box) == before
  return err[0]


def ft_args(box, *extra, out="out"):
  return ["finetune", "--model", box / "base", "--train", box / "train.jsonl", "--out",
          box / out, "--no-progress", "--steps", "2", "--batch-size", "4", *extra]


# ------------------------------------------------------------------------------------------
# Divergence, failures and numeric flags


def test_diverging_finetune_writes_nothing(box, capsys):
  line = refused(box, capsys, ft_args(box, "--lr", "1e30", "--grad-clip", "0", "--steps", "3"),
                 "--lr")
  assert "diverged at step" in line and "--grad-clip" in line and "nothing written" in line
  assert not (box / "out").exists()


def test_divergence_after_a_checkpoint_keeps_it_and_says_so(box, capsys, monkeypatch):
  from pacbayes.training import trainer

  real = trainer.make_train_step

  def poisoned(*args, **kw):
    step = real(*args, **kw)
    calls = []

    def wrapped(params, opt_state, batch, lr, *extra):
      calls.append(1)
      params, opt_state, stats = step(params, opt_state, batch, lr, *extra)
      return params, opt_state, stats * (np.nan if len(calls) == 3 else 1.0)

    return wrapped

  monkeypatch.setattr(trainer, "make_train_step", poisoned)
  assert main([str(a) for a in ft_args(box, "--steps", "4", "--checkpoint-every", "2")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "step 3 of 4" in err[0] and "(step 2) is kept" in err[0], err
  assert sorted(os.listdir(box / "out")) == ["checkpoints"]


@pytest.mark.parametrize("errno_name", ["ENOSPC", "EACCES"])
def test_failed_write_removes_the_out_it_created(box, capsys, monkeypatch, errno_name):
  from pacbayes.lora import adapter

  def full(*args, **kw):
    raise OSError(getattr(errno, errno_name), os.strerror(getattr(errno, errno_name)),
                  str(box / "out" / "adapter_model.safetensors"))

  monkeypatch.setattr(adapter, "write_adapter", full)
  refused(box, capsys, ft_args(box, "--lora-rank", "2"), "adapter_model.safetensors")
  assert not (box / "out").exists()


@pytest.mark.parametrize(("flag", "value"), [
  ("--epochs", "1e300"), ("--epochs", "inf"), ("--epochs", "0"), ("--steps", "99999999"),
  ("--lr", "nan"), ("--warmup-ratio", "1"), ("--weight-decay", "-1"), ("--grad-clip", "-0.5"),
  ("--holdout", "1"), ("--holdout", "0"), ("--lora-alpha", "1e300"), ("--lora-rank", "1e9"),
  ("--batch-size", "100000000"), ("--checkpoint-every", "0"), ("--max-length", "1e9")])
def test_numeric_flags_are_range_checked(box, capsys, flag, value):
  args = ft_args(box)
  if flag in ("--epochs", "--steps"):
    args = args[:-4] + args[-2:]  # drop --steps 2
  refused(box, capsys, [*args, flag, value], flag)
  assert not (box / "out").exists()


def test_epochs_that_imply_too_many_steps_are_refused(box, capsys):
  args = ft_args(box)
  refused(box, capsys, [*args[:-4], *args[-2:], "--epochs", "1e6", "--batch-size", "1"],
          "--epochs")
  assert not (box / "out").exists()


def test_too_large_rank_names_lora_rank(box, capsys):
  refused(box, capsys, ft_args(box, "--lora-rank", "64"), "--lora-rank")


def test_help_shows_the_defaults(capsys):
  with pytest.raises(SystemExit):
    main(["finetune", "--help"])
  out = " ".join(capsys.readouterr().out.split())
  for flag in ("--lr", "--batch-size", "--warmup-ratio", "--weight-decay", "--grad-clip",
               "--checkpoint-every"):
    assert flag in out
  assert "(default: 0.0001)" in out and "(default: 8)" in out and "(default: 100)" in out


# ------------------------------------------------------------------------------------------
# Holdout and the report


def test_holdout_is_recorded_and_left_out(world):
  held = json.loads((world / "adapter" / "holdout.json").read_text())
  report = json.loads((world / "adapter" / "finetune.json").read_text())
  digest = hashlib.sha256((world / "train.jsonl").read_bytes()).hexdigest()
  assert held["train_sha256"] == digest and held["held_out"] == 5 and held["rows"] == 20
  assert len(set(held["held_out_lines"])) == 5
  assert all(1 <= n <= 20 for n in held["held_out_lines"])
  assert report["rows"] == 15 and report["holdout"]["held_out"] == 5
  assert report["row_format"] == "plain" and report["loss"].startswith("token cross-entropy")
  rng = np.random.default_rng([3, 0x484F4C44])  # the documented rule, seed 3
  assert held["held_out_lines"] == sorted(int(i) + 1 for i in rng.permutation(20)[:5])


# ------------------------------------------------------------------------------------------
# Adapters and their base


def test_renamed_base_accepted_and_same_name_other_base_refused(box):
  from pacbayes.lora import adapter as lr
  from pacbayes.models import load_config

  config = load_config(box / "base")
  shutil.copytree(box / "base", box / "renamed")
  assert lr.read_adapter(box / "adapter", config, box / "renamed").base_check == "fingerprint"
  (box / "elsewhere").mkdir()
  shutil.copytree(box / "other", box / "elsewhere" / "base")  # same folder name, other weights
  with pytest.raises(ValueError, match="another base") as e:
    lr.read_adapter(box / "adapter", config, box / "elsewhere" / "base")
  assert str(box / "elsewhere" / "base") in str(e.value) and "\n" not in str(e.value)


def test_adapter_without_fingerprint_needs_a_name_or_a_stated_base(box):
  from pacbayes.lora import adapter as lr
  from pacbayes.models import load_config

  config = load_config(box / "base")
  for name in ("pacbayes_lora.json", "pacbayes_lora_init.safetensors"):
    (box / "adapter" / name).unlink()  # as another tool writes it
  assert lr.read_adapter(box / "adapter", config, box / "base").base_check == "name"
  shutil.copytree(box / "base", box / "renamed")
  with pytest.raises(ValueError, match="--accept-base"):
    lr.read_adapter(box / "adapter", config, box / "renamed")
  got = lr.read_adapter(box / "adapter", config, box / "renamed", accept_base=True)
  assert got.base_check == "stated"


def test_resume_accepts_a_moved_base(box):
  from pacbayes.training.checkpoints import Checkpointer
  from pacbayes.training.finetune import FinetuneConfig, finetune

  cfg = dict(train=str(box / "train.jsonl"), out=str(box / "run"), steps=4, batch_size=4,
             lora_rank=2, learning_rate=1e-2, progress=False, checkpoint_every=2)
  ck = Checkpointer(str(box / "run" / "checkpoints"), 2, {"x": 1})  # a foreign run's folder
  ck.close()
  with pytest.raises(ValueError, match="another run"):
    finetune(FinetuneConfig(model=str(box / "base"), **cfg))
  shutil.rmtree(box / "run")
  shutil.copytree(box / "base", box / "moved")
  finetune(FinetuneConfig(model=str(box / "base"), **cfg | {"out": str(box / "a")}))
  finetune(FinetuneConfig(model=str(box / "moved"), **cfg | {"out": str(box / "b")}))
  a = (box / "a" / "adapter_model.safetensors").read_bytes()
  assert a == (box / "b" / "adapter_model.safetensors").read_bytes()


def _retype(box, **change):
  file = box / "adapter" / "adapter_config.json"
  cfg = json.loads(file.read_text())
  cfg.update(change)
  file.write_text(json.dumps(cfg))
  return file


@pytest.mark.parametrize(("change", "needle"), [
  ({"use_rslora": "false"}, "'use_rslora'"), ({"target_modules": "q_proj("}, "regular"),
  ({"target_modules": None}, "'target_modules'"), ({"target_modules": 3}, "'target_modules'"),
  ({"r": 2.0}, "'r'"), ({"lora_alpha": True}, "'lora_alpha'"),
  ({"use_dora": 0}, "use_dora")])
def test_malformed_adapter_config_is_one_line(box, change, needle):
  from pacbayes.lora import adapter as lr
  from pacbayes.models import load_config

  file = _retype(box, **change)
  with pytest.raises(ValueError) as e:
    lr.read_adapter(box / "adapter", load_config(box / "base"), box / "base")
  assert needle in str(e.value) and str(file) in str(e.value) and "\n" not in str(e.value)


def test_duplicated_key_in_adapter_config(box):
  from pacbayes.lora import adapter as lr
  from pacbayes.models import load_config

  file = box / "adapter" / "adapter_config.json"
  file.write_text(file.read_text().replace('"r": 2,', '"r": 2,\n"r": 4,', 1))
  with pytest.raises(ValueError, match="'r' appears twice") as e:
    lr.read_adapter(box / "adapter", load_config(box / "base"))
  assert f"{file}:" in str(e.value)


def test_non_finite_adapter_tensor_names_the_tensor(box):
  from safetensors.numpy import load_file, save_file

  from pacbayes.lora import adapter as lr
  from pacbayes.models import load_config

  file = box / "adapter" / "adapter_model.safetensors"
  tensors = load_file(str(file))
  name = sorted(tensors)[0]
  tensors[name][0, 0] = np.nan
  save_file(tensors, str(file))
  with pytest.raises(ValueError, match="non-finite") as e:
    lr.read_adapter(box / "adapter", load_config(box / "base"))
  assert name in str(e.value)


# ------------------------------------------------------------------------------------------
# Strict JSON in rows and checkpoints


def test_duplicated_key_in_a_training_row(box, capsys):
  lines = (box / "train.jsonl").read_text().splitlines()
  lines[2] = lines[2][:-1] + ', "completion_ids": [1]}'
  (box / "train.jsonl").write_text("\n".join(lines) + "\n")
  refused(box, capsys, ft_args(box), "train.jsonl:3: key 'completion_ids' appears twice")


def test_infinity_in_a_training_row(box, capsys):
  with open(box / "train.jsonl", "a") as f:
    f.write('{"prompt_ids": [1, Infinity], "completion_ids": [2]}\n')
  refused(box, capsys, ft_args(box), "train.jsonl:21: not valid JSON (Infinity")


def test_truncated_run_json_names_the_file(box, capsys):
  from pacbayes.training.checkpoints import Checkpointer

  Checkpointer(str(box / "out" / "checkpoints"), 2, {"x": 1}).close()
  run = box / "out" / "checkpoints" / "run.json"
  run.write_text(run.read_text()[:5])
  refused(box, capsys, ft_args(box), str(run))


def test_damaged_newest_checkpoint_falls_back_to_an_intact_one(tmp_path):
  import jax.numpy as jnp

  from pacbayes.training.checkpoints import Checkpointer

  said = []
  state = {"w": jnp.arange(6.0).reshape(2, 3), "losses": np.zeros(4)}
  ck = Checkpointer(str(tmp_path / "ck"), 2, {"x": 1}, notify=said.append)
  ck.save(2, state)
  ck.save(4, {"w": state["w"] + 1, "losses": np.ones(4)})
  ck.close()
  newest = tmp_path / "ck" / "steps" / "4"
  for path in newest.rglob("*"):
    if path.is_file() and path.stat().st_size > 0:
      path.write_bytes(b"\0garbage")
  ck = Checkpointer(str(tmp_path / "ck"), 2, {"x": 1}, notify=said.append)
  step, got = ck.restore(state)
  ck.close()
  assert step == 2
  np.testing.assert_array_equal(np.asarray(got["w"]), np.asarray(state["w"]))
  assert len(said) == 2 and str(newest) in said[0] and "resuming from step 2" in said[1]


# ------------------------------------------------------------------------------------------
# Ctrl-C on `lab --workers 2` leaves no process


def _children(pid):
  out = []
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        stat = Path(f"/proc/{entry}/stat").read_text()
      except OSError:
        continue
      if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
        out.append(int(entry))
  return out


def _alive(pid):
  try:
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
  except OSError:
    return False
  return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc (Linux)")
def test_ctrl_c_on_lab_workers_leaves_no_process(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
  out = tmp_path / "lab"
  proc = subprocess.Popen([sys.executable, "-m", "pacbayes.cli.main", "lab", "--preset",
                           "smoke", "--workers", "2", "--out", str(out), "--figures", "",
                           "--quiet"], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  seen: set[int] = set()
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    seen.update(_children(proc.pid))
    if len(seen) >= 2:  # the first worker (the base is its task) and the resource tracker
      break
    time.sleep(0.2)
  assert proc.poll() is None, proc.communicate()
  time.sleep(3.0)  # the workers are importing or computing
  seen.update(_children(proc.pid))
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 130, err
  lines = [line for line in err.splitlines() if line.strip()]
  assert lines == ["pacbayes lab: interrupted"], err
  deadline = time.time() + 10
  while time.time() < deadline and any(_alive(p) for p in seen):
    time.sleep(0.2)
  left = [(p, Path(f"/proc/{p}/cmdline").read_bytes()[:120]) for p in seen if _alive(p)]
  assert not left, left


def test_an_unexpected_error_is_one_line(capsys, monkeypatch):
  from pacbayes.cli import finetune as command

  def bug(args):
    raise TypeError("unexpected keyword 'x'\nsecond line")

  monkeypatch.setattr(command, "run", bug)
  from pacbayes.cli.main import build_parser

  monkeypatch.setattr("pacbayes.cli.main.build_parser", lambda: _with(build_parser(), bug))
  assert main(["finetune", "--model", "m", "--train", "t", "--out", "o"]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "internal error: TypeError: unexpected keyword 'x'" in err[0], err


def _with(parser, func):
  parser.set_defaults(func=func)
  for action in parser._subparsers._group_actions:
    for sub in action.choices.values():
      sub.set_defaults(func=func)
  return parser
