"""`pacbayes finetune`: torch reference steps, HF/PEFT round trips, kill and resume, 1 vs 8
devices, one-line refusals."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import pacbayes  # noqa: F401  (x64 on, as in real use)
from pacbayes.cli.main import main
from pacbayes.data.dataset import load_dataset
from pacbayes.models import load_pretrained
from pacbayes.training.finetune import FinetuneConfig, finetune

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]
VOCAB = 48


def make_base(folder, model_type="llama", seed=0):
  """A tiny random checkpoint written by transformers (torch float32)."""
  torch.manual_seed(seed)
  if model_type == "llama":
    config = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=64)
  else:
    config = tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                           bos_token_id=0, eos_token_id=1)
  model = tf.AutoModelForCausalLM.from_config(config).eval()
  with torch.no_grad():  # move norms and biases off their defaults so every parameter matters
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  model.save_pretrained(folder)
  return folder


def make_data(file, rows=24, seed=0):
  rng = np.random.default_rng(seed)
  with open(file, "w") as f:
    for _ in range(rows):
      prompt = rng.integers(2, VOCAB, size=int(rng.integers(2, 7))).tolist()
      completion = rng.integers(2, VOCAB, size=int(rng.integers(1, 6))).tolist()
      f.write(json.dumps({"prompt_ids": prompt, "completion_ids": completion}) + "\n")
  return file


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("ft")
  return {"root": root, "llama": make_base(root / "llama"), "gpt2": make_base(root / "gpt2",
          "gpt2"), "train": make_data(root / "train.jsonl")}


def torch_step(base_dir, train_file, *, method, lr, weight_decay, grad_clip):
  """One AdamW step in torch on the whole training file (completion tokens only)."""
  model = tf.AutoModelForCausalLM.from_pretrained(base_dir).float()
  model.train()
  data = load_dataset(train_file)
  ids = torch.as_tensor(data.input_ids, dtype=torch.long)
  att = torch.as_tensor(data.attention_mask)
  mask = torch.as_tensor(data.loss_mask[:, 1:], dtype=torch.float32)
  logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].float()
  logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
  nll = -logp if method == "sft" else -logp * logp.exp().detach()
  loss = (nll * mask).sum() / mask.sum()
  loss.backward()
  torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
  decay = [p for p in model.parameters() if p.ndim >= 2]
  no_decay = [p for p in model.parameters() if p.ndim < 2]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=lr, betas=(0.9, 0.999), eps=1e-8)
  opt.step()
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}, float(loss.detach())


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sft", "dft"])
def test_one_step_equals_torch_adamw(setup, tmp_path, method):
  out = tmp_path / "out"
  n = len(load_dataset(setup["train"]))
  res = finetune(FinetuneConfig(model=str(setup["llama"]), train=str(setup["train"]),
                                out=str(out), method=method, steps=1, batch_size=n,
                                learning_rate=1e-3, weight_decay=0.1, grad_clip=0.5,
                                mesh="data=1", progress=False))
  want, want_loss = torch_step(setup["llama"], setup["train"], method=method, lr=1e-3,
                               weight_decay=0.1, grad_clip=0.5)
  assert res.objective[0] == pytest.approx(want_loss, rel=1e-5)  # losses: the cross-entropy
  from safetensors.numpy import load_file

  got = load_file(str(out / "model.safetensors"))
  base = load_file(str(setup["llama"] / "model.safetensors"))
  moved = 0.0
  for name, value in want.items():
    np.testing.assert_allclose(got[name], value, atol=1e-5, rtol=0, err_msg=name)
    moved = max(moved, float(np.abs(got[name] - base[name]).max()))
  assert moved > 5e-4  # the step really moved the weights (lr 1e-3)


def _logits_hf(folder, ids):
  model = tf.AutoModelForCausalLM.from_pretrained(folder).eval()
  with torch.no_grad():
    return model(input_ids=torch.as_tensor(ids, dtype=torch.long)).logits.numpy()


def _logits_ours(model, ids):
  import jax
  from flax import nnx

  graphdef, state = nnx.split(model)
  return np.asarray(jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, ids))


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_outputs_load_in_transformers_and_peft_with_same_logits(setup, tmp_path, model_type):
  peft = pytest.importorskip("peft")
  from pacbayes.lora import adapter as lora

  base = str(setup[model_type])
  ids = np.random.default_rng(1).integers(0, VOCAB, size=(2, 10)).astype(np.int32)
  # Full fine-tune: transformers reads our folder and agrees with our model.
  full = tmp_path / "full"
  finetune(FinetuneConfig(model=base, train=str(setup["train"]), out=str(full), steps=3,
                          batch_size=8, learning_rate=1e-2, progress=False))
  ours, _ = load_pretrained(full)
  np.testing.assert_allclose(_logits_ours(ours, ids), _logits_hf(full, ids), atol=2e-5)
  assert np.abs(_logits_hf(full, ids) - _logits_hf(base, ids)).max() > 1e-3
  # LoRA: peft reads our adapter; merged folder, our merge and peft agree.
  ad = tmp_path / "lora"
  targets = ("c_attn", "c_fc") if model_type == "gpt2" else ("q_proj", "v_proj", "down_proj")
  finetune(FinetuneConfig(model=base, train=str(setup["train"]), out=str(ad), steps=5,
                          batch_size=8, learning_rate=2e-2, lora_rank=4, lora_targets=targets,
                          merge=True, method="dft", progress=False))
  hf = peft.PeftModel.from_pretrained(tf.AutoModelForCausalLM.from_pretrained(base), ad).eval()
  with torch.no_grad():
    theirs = hf(input_ids=torch.as_tensor(ids, dtype=torch.long)).logits.numpy()
  ck = lora.load_lora(base, ad)
  import jax
  from flax import nnx

  ours = np.asarray(jax.jit(lambda p, x: nnx.merge(ck.graphdef, p, ck.rest)(x))(
    ck.merged_params, ids))
  np.testing.assert_allclose(ours, theirs, atol=2e-5)
  np.testing.assert_allclose(_logits_hf(ad / "merged", ids), theirs, atol=2e-5)
  assert np.abs(theirs - _logits_hf(base, ids)).max() > 1e-3
  assert ck.adapter.init is not None and lora.lora_space(ck).num_params > 0
  report = json.loads((ad / "finetune.json").read_text())
  assert report["kind"] == "lora" and len(report["losses"]) == 5
  assert not (ad / "checkpoints").exists()


def test_grad_accum_and_remat_give_the_same_step():
  import jax
  from flax import nnx

  from pacbayes.models import ModelConfig, build_model
  from pacbayes.training import trainer as tr

  cfg = ModelConfig(model_type="llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                    num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)
  model = build_model(cfg, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  rng = np.random.default_rng(0)
  ids = rng.integers(0, VOCAB, size=(8, 12)).astype(np.int32)
  att = (np.arange(12)[None] < rng.integers(4, 13, size=8)[:, None]).astype(np.int32)
  lm = att.copy()
  lm[:, :3] = 0
  data = {"input_ids": ids, "attention_mask": att, "loss_mask": lm}
  out = {}
  for name, accum, remat in (("plain", 1, False), ("accum", 4, False), ("remat", 2, True)):
    tcfg = tr.TrainConfig(steps=3, batch_size=8, learning_rate=1e-2, grad_accum=accum)
    res = tr.train(tr.model_apply(graphdef, rest, remat=remat), params, data, tcfg,
                   key=jax.random.key(0), progress=False)
    out[name] = res
  for name in ("accum", "remat"):
    np.testing.assert_allclose(out[name].losses, out["plain"].losses, rtol=2e-6)
    for a, b in zip(jax.tree.leaves(out[name].params), jax.tree.leaves(out["plain"].params),
                    strict=True):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def _cli(args, devices):
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
  return [sys.executable, "-m", "pacbayes.cli", "finetune", *args], env


def _weights(folder):
  from safetensors.numpy import load_file

  return load_file(str(Path(folder) / "adapter_model.safetensors"))


@pytest.mark.slow
def test_kill_resume_and_eight_devices_match_one(setup, tmp_path):
  args = ["--model", str(setup["llama"]), "--train", str(setup["train"]), "--lora-rank", "4",
          "--lora-targets", "q_proj,v_proj,up_proj", "--steps", "40", "--batch-size", "8",
          "--lr", "1e-2", "--method", "dft", "--seed", "3", "--no-progress"]
  # Uninterrupted, one device.
  cmd, env = _cli([*args, "--out", str(tmp_path / "one")], 1)
  subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)
  ref = _weights(tmp_path / "one")
  # Killed after its first checkpoint, then resumed by the same command.
  out = tmp_path / "killed"
  cmd, env = _cli([*args, "--out", str(out), "--checkpoint-every", "2"], 1)
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  steps_dir = out / "checkpoints" / "steps"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if steps_dir.is_dir() and any(p.name.isdigit() for p in steps_dir.iterdir()):
      break
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (out / "finetune.json").exists(), "the run finished before it could be killed"
  subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)
  report = json.loads((out / "finetune.json").read_text())
  assert report["resumed_from"] > 0
  for name, value in ref.items():
    np.testing.assert_array_equal(_weights(out)[name], value, err_msg=name)
  # Eight forced CPU devices, data and fsdp axes: the same numbers.
  cmd, env = _cli([*args, "--out", str(tmp_path / "eight"), "--mesh", "data=4,fsdp=2"], 8)
  subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)
  report = json.loads((tmp_path / "eight" / "finetune.json").read_text())
  assert report["devices"] == 8 and report["mesh"] == {"data": 4, "fsdp": 2}
  one = json.loads((tmp_path / "one" / "finetune.json").read_text())
  np.testing.assert_allclose(report["losses"], one["losses"], rtol=1e-5)
  # Reductions run in another order on 8 devices (float32 rounding, ~1e-7 relative), and
  # Adam's g / sqrt(v) magnifies that on tiny gradient components over 40 steps at lr 1e-2.
  for name, value in ref.items():
    np.testing.assert_allclose(_weights(tmp_path / "eight")[name], value, atol=5e-5,
                               err_msg=name)


def test_deterministic_for_a_seed(setup, tmp_path):
  runs = []
  for name in ("a", "b"):
    finetune(FinetuneConfig(model=str(setup["llama"]), train=str(setup["train"]),
                            out=str(tmp_path / name), steps=4, batch_size=4, lora_rank=2,
                            seed=7, learning_rate=1e-2, mesh="data=1", progress=False))
    runs.append(_weights(tmp_path / name))
  for name in runs[0]:
    np.testing.assert_array_equal(runs[0][name], runs[1][name])


@pytest.mark.parametrize(("extra", "message"), [
  (["--lora-rank", "2", "--lora-targets", "lm_head"], "--lora-targets"),
  (["--lora-rank", "2", "--lora-targets", "k_projj"], "--lora-targets"),
  (["--lora-alpha", "4"], "--lora-rank"),
  (["--mesh", "data=3"], "--mesh"),
  (["--mesh", "rows=2"], "--mesh"),
  (["--batch-size", "6", "--grad-accum", "4"], "--grad-accum"),
  (["--steps", "0"], "--steps"),
  (["--steps", "2", "--epochs", "1"], "--epochs"),
])
def test_bad_flags_are_one_line_and_write_nothing(setup, tmp_path, capsys, extra, message):
  out = tmp_path / "out"
  argv = ["finetune", "--model", str(setup["llama"]), "--train", str(setup["train"]),
          "--out", str(out), "--no-progress", *extra]
  with pytest.raises(SystemExit) if message in ("--steps", "--epochs") else _nothing():
    code = main(argv)
    assert code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and message in err
  assert not out.exists()


def test_bad_files_are_one_line_and_write_nothing(setup, tmp_path, capsys):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"prompt_ids": [1, 2], "completion_ids": [999]}\n')
  cases = [(["--model", str(tmp_path / "none"), "--train", str(setup["train"])], "--model"),
           (["--model", str(setup["llama"]), "--train", str(bad)], "bad.jsonl:1"),
           (["--model", str(setup["llama"]), "--train", str(tmp_path / "no.jsonl")], "--train")]
  for args, message in cases:
    out = tmp_path / "out"
    assert main(["finetune", *args, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()
  # An output inside the model folder, or a folder with other files, is refused.
  assert main(["finetune", "--model", str(setup["llama"]), "--train", str(setup["train"]),
               "--out", str(setup["llama"] / "sub"), "--no-progress"]) == 2
  assert "--out" in capsys.readouterr().err
  taken = tmp_path / "taken"
  taken.mkdir()
  (taken / "notes.txt").write_text("mine")
  assert main(["finetune", "--model", str(setup["llama"]), "--train", str(setup["train"]),
               "--out", str(taken), "--no-progress"]) == 2
  assert "not empty" in capsys.readouterr().err
  assert sorted(os.listdir(taken)) == ["notes.txt"]


class _nothing:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


def test_checkpoints_of_another_run_are_refused(tmp_path):
  from pacbayes.training.trainer import Checkpointer

  first = Checkpointer(str(tmp_path / "ck"), 2, {"seed": 1})
  first.close()
  again = Checkpointer(str(tmp_path / "ck"), 5, {"seed": 1})  # same run: accepted
  assert again.latest_step() is None
  again.close()
  with pytest.raises(ValueError, match="another run"):
    Checkpointer(str(tmp_path / "ck"), 2, {"seed": 2})


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sft", "dft"])
def test_one_lora_step_equals_peft_torch_step(setup, tmp_path, method):
  """Same init (our recorded A0, B0 = 0 copied into peft), same batch, same AdamW."""
  peft = pytest.importorskip("peft")
  from safetensors.numpy import load_file

  out = tmp_path / "lora"
  n = len(load_dataset(setup["train"]))
  finetune(FinetuneConfig(model=str(setup["llama"]), train=str(setup["train"]), out=str(out),
                          method=method, steps=1, batch_size=n, learning_rate=1e-3,
                          weight_decay=0.1, grad_clip=0.5, lora_rank=4, lora_alpha=8.0,
                          lora_targets=("q_proj", "v_proj", "down_proj"), mesh="data=1",
                          progress=False))
  init = load_file(str(out / "pacbayes_lora_init.safetensors"))
  model = peft.PeftModel.from_pretrained(tf.AutoModelForCausalLM.from_pretrained(
    setup["llama"]), out, is_trainable=True)
  with torch.no_grad():  # reset the loaded (trained) adapter to the recorded initialisation
    for name, p in model.named_parameters():
      if "lora_" in name:
        p.copy_(torch.as_tensor(init[name.replace(".default", "")]))
  model.train()
  data = load_dataset(setup["train"])
  ids = torch.as_tensor(data.input_ids, dtype=torch.long)
  mask = torch.as_tensor(data.loss_mask[:, 1:], dtype=torch.float32)
  logits = model(input_ids=ids, attention_mask=torch.as_tensor(data.attention_mask)).logits
  logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
  nll = -logp if method == "sft" else -logp * logp.exp().detach()
  ((nll * mask).sum() / mask.sum()).backward()
  params = [p for p in model.parameters() if p.requires_grad]
  torch.nn.utils.clip_grad_norm_(params, 0.5)
  torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1).step()
  got = load_file(str(out / "adapter_model.safetensors"))
  want = {n.replace(".default", ""): p.detach().numpy() for n, p in model.named_parameters()
          if "lora_" in n}
  assert sorted(got) == sorted(want)
  for name, value in want.items():
    np.testing.assert_allclose(got[name], value, atol=1e-5, rtol=0, err_msg=name)
  assert max(np.abs(got[k] - init[k]).max() for k in got if "lora_B" in k) > 5e-4
