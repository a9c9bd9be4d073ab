"""`pacbayes bound` end to end on small trained checkpoint pairs (Hugging Face folders).

The prior is a tiny Llama trained on a deterministic successor task (token t is followed by
t % 31 + 1), so its token error is 0 and survives small Gaussian noise; the posterior is the
prior moved a little (a fixed Gaussian step of 3e-5 per weight), as a short fine-tune would.
A non-vacuous in-distribution certificate then exists, and the tests check that the command
finds it, that the prior sigma is the grid point of the smallest bound (recomputed here from
the weights with an independent closed form), and the options of issue 13.
"""

import json
import math

import jax
import numpy as np
import pytest

from pacbayes.bounds import pac as bounds
from pacbayes.certificate.core import Certificate
from pacbayes.cli.main import main
from pacbayes.core.tensorio import read_tensors
from pacbayes.models import load_pretrained, save_pretrained
from tests.helpers.bound_pairs import VOCAB, build, config, successor_rows, write_jsonl

README_GRID = ["1e-4", "3e-4", "1e-3", "3e-3"]
# A small sharpness measure (its own tests: tests/pipeline/test_bound_heldout.py).
MEASURE = ["--measure-rows", "16", "--measure-steps", "2"]




@pytest.fixture(scope="module")
def pair():
  return build()


def bound_args(p, out, *extra, posterior="posterior", train="train"):
  return ["bound", "--prior", p["prior"], "--posterior", p[posterior], "--train", p[train],
          "--quiet", "--out", str(out), *MEASURE, *extra]


def kl_closed_form(prior_dir, posterior_dir, sigma_q, sigma_p):
  """KL(N(w_q, sq^2 I) || N(w_p, sp^2 I)) from the safetensors files, float64 NumPy."""
  a, b = read_tensors(prior_dir), read_tensors(posterior_dir)
  d2 = sum(float(np.sum((np.asarray(b[k], np.float64) - np.asarray(a[k], np.float64)) ** 2))
           for k in a)
  d = sum(int(np.size(a[k])) for k in a)
  r = sigma_q**2 / sigma_p**2
  return 0.5 * (d * r - d - d * math.log(r) + d2 / sigma_p**2), d


def test_readme_worked_example(pair, tmp_path, capsys):
  """README: `--sigma-grid 1e-4 3e-4 1e-3 3e-3 --delta 0.05` on a same-pool test set."""
  out = tmp_path / "report.json"
  args = bound_args(pair, out, "--test", pair["test"], "--sigma-grid", *README_GRID,
                    "--delta", "0.05")
  assert main(args) == 0
  rep = json.loads(out.read_text())
  cert = Certificate.from_json(out)  # the report loads back
  assert rep["b_train_non_vacuous"] and rep["b_train"] < 0.5
  assert rep["bound"] == rep["emp_risk"] + rep["epsilon"] + rep["g_gen"] + rep["g_ext"]
  assert rep["g_ext_kind"] == "certified under difficulty shift (TV)"
  assert rep["extra"]["shift_check"]["refuted"] is False
  assert math.fsum(v for _, v in cert.delta_parts) == pytest.approx(0.05, abs=1e-15)
  # The grid values are the floats the user gave, not float32-rounded.
  assert [g["sigma_p"] for g in rep["extra"]["per_grid"]] == [1e-4, 3e-4, 1e-3, 3e-3]
  assert rep["grid_size"] == 4 and rep["sigma_p"] in (1e-4, 3e-4, 1e-3, 3e-3)
  # Independent check: KL in closed form from the files and B_train by Maurer for each grid
  # point; the report's sigma_p is the point of the smallest bound (ties: smaller KL).
  d_mc, d_pb = dict(cert.delta_parts)["mc"], dict(cert.delta_parts)["pb"]
  n, m = rep["n"], rep["num_mc"]
  q_up = float(bounds.kl_inv_upper(rep["emp_risk"], math.log(1 / d_mc) / m))
  mine = []
  for g in rep["extra"]["per_grid"]:
    kl, d = kl_closed_form(pair["prior"], pair["posterior"], rep["sigma_q"], g["sigma_p"])
    assert g["kl"] == pytest.approx(kl, rel=1e-9, abs=1e-9)
    c = (kl + math.log(2 * math.sqrt(n) / d_pb) + math.log(4)) / n
    b = min(float(bounds.kl_inv_upper(q_up, c)), 1.0)
    assert min(g["b_train"], 1.0) == pytest.approx(b, abs=1e-9)
    mine.append((g["bound"], g["kl"], g["sigma_p"]))
  assert rep["sigma_p"] == min(mine)[2]
  assert rep["num_params"] == d
  assert rep["extra"]["sigma_grid_source"] == "sigma_grid"
  assert "choose_sigma" in json.dumps(rep) or "searched" in rep["extra"]["sigma_search"]["how"]
  shown = capsys.readouterr().out
  assert "B_train" in shown and "report written" in shown


def test_fixed_sigma_with_grid_test_mixture_and_sequence_error(pair, tmp_path):
  """--sigma with --sigma-grid: the posterior sigma as given; mixture kinds from a JSON file."""
  out, mix = tmp_path / "r.json", tmp_path / "mix.json"
  mix.write_text(json.dumps({"1": 0.1, "2": 0.2, "3": 0.3, "4": 0.4}))
  args = bound_args(pair, out, "--test", pair["test"], "--sigma", "0.001", "--sigma-grid",
                    "0.001", "0.003", "--loss", "sequence_error", "--test-mixture", str(mix),
                    "--difficulty-support", "1", "2", "3", "4", "--chunk-size", "4")
  assert main(args) == 0
  rep = json.loads(out.read_text())
  assert rep["sigma_q"] == 0.001 and rep["grid_size"] == 2
  assert rep["loss"] == "sequence_error" and rep["num_mc"] == 50
  names = {k["name"] for k in rep["extrapolation"]}
  assert {"tv", "mixture_shift", "per_slice"} <= names
  assert [s["difficulty"] for s in rep["slices"]] == [1.0, 2.0, 3.0, 4.0]
  assert rep["mixture"]["test_exact"] and not rep["mixture"]["train_exact"]
  assert "given exactly" in rep["extra"]["shift"]["mixture_source"]
  # The test mixture puts 0.4 on d = 4, unseen in training: at least that much is uncertain.
  assert rep["bound"] >= 0.4
  total = math.fsum(v for _, v in rep["delta_parts"])
  assert total == pytest.approx(rep["delta"], abs=1e-15)


def test_another_pool_with_difficulty_is_not_certified(pair, tmp_path, capsys):
  """A test set from another pool that carries difficulty: refuted, exit 3 (0 with --force)."""
  out = tmp_path / "r.json"
  args = bound_args(pair, out, "--test", pair["other_pool"], "--sigma", "1e-3",
                    "--sigma-prior", "1e-3", "--chunk-size", "10")
  assert main(args) == 3
  rep = json.loads(out.read_text())
  check = rep["extra"]["shift_check"]
  assert check["refuted"] and check["tv_lower"] > check["tv_upper"]
  assert rep["g_ext_kind"] == "estimate"
  assert not any(k["kind"].startswith("certified") and k["name"] == rep["g_ext_name"]
                 for k in rep["extrapolation"])
  assert any("REFUTED" in note for note in rep["notes"])
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "refuted" in err[0]
  assert main(args + ["--force"]) == 0


def test_hf_name_selection_and_smoothed_nll_alpha(pair, tmp_path):
  """--include takes Hugging Face names; the smoothed NLL's alpha is recorded."""
  out = tmp_path / "r.json"
  args = bound_args(pair, out, "--posterior", pair["mlp_only"], "--include",
                    "model.layers.*.mlp.*", "--sigma", "1e-3", "--sigma-prior", "1e-3",
                    "--loss", "smoothed_nll", "--alpha", "0.05", "--chunk-size", "10",
                    "--method", "catoni", "--draws-per-step", "4")
  assert main(args) == 0
  rep = json.loads(out.read_text())
  cfg = config()
  assert rep["num_params"] == 3 * cfg.hidden_size * cfg.intermediate_size
  assert rep["loss_options"] == {"alpha": 0.05} and rep["method"] == "catoni"
  assert rep["extra"]["draws_per_step"] == 4
  assert rep["extra"]["mc_noise"] == "forward"  # the noise is made inside the forward pass
  kl, _ = kl_closed_form(pair["prior"], pair["mlp_only"], 1e-3, 1e-3)
  assert rep["kl"] == pytest.approx(kl, rel=1e-9)


def test_bf16_posterior_is_noted(pair, tmp_path):
  """A bf16-stored posterior and an fp32 prior: one note on storage, one on the cast."""
  model, cfg = load_pretrained(pair["posterior"], dtype="bfloat16")
  save_pretrained(model, cfg, tmp_path / "bf16")
  out = tmp_path / "r.json"
  p = dict(pair, bf16=str(tmp_path / "bf16"))
  args = bound_args(p, out, "--posterior", p["bf16"], "--sigma", "3e-3", "--sigma-prior",
                    "3e-3", "--chunk-size", "20")
  assert main(args) == 0
  rep = json.loads(out.read_text())
  notes = " | ".join(rep["notes"])
  assert "bfloat16" in notes and "cast to bfloat16" in notes
  assert rep["extra"]["storage"]["sixteen_bit"] == "bfloat16"
  assert 0 < rep["extra"]["storage"]["rounding_share"] <= 1


def test_lora_adapter_posterior(pair, tmp_path):
  """A PEFT LoRA adapter folder as --posterior (its base as --prior): weight space, the
  adapted matrices perturbed, the KL that of the merged weights."""
  from pacbayes.lora import adapter as lora

  model, cfg = load_pretrained(pair["prior"])
  layout = lora.make_layout(cfg, ["q_proj", "v_proj"], 2, 4.0)
  key_a, key_b = jax.random.split(jax.random.key(5))
  lo = lora.init_lora(layout, key=key_a)
  lo = {m: {"A": v["A"], "B": 1e-3 * jax.random.normal(jax.random.fold_in(key_b, i),
                                                       v["B"].shape)}
        for i, (m, v) in enumerate(lo.items())}
  adapter = tmp_path / "adapter"
  lora.write_adapter(adapter, layout, ["q_proj", "v_proj"], lo, model_type="llama",
                     base_name=pair["prior"])
  out = tmp_path / "r.json"
  args = bound_args(dict(pair, adapter=str(adapter)), out, "--posterior", str(adapter),
                    "--sigma", "1e-3", "--sigma-prior", "1e-3", "--chunk-size", "20",
                    "--max-memory", "1G")
  assert main(args) == 0
  rep = json.loads(out.read_text())
  hd = cfg.hidden_size // cfg.num_attention_heads
  q, v = cfg.hidden_size * cfg.hidden_size, cfg.hidden_size * hd * cfg.num_key_value_heads
  assert rep["num_params"] == cfg.num_hidden_layers * (q + v)
  assert any("LoRA adapter" in note for note in rep["notes"])
  assert rep["extra"]["storage"]["lora"]["rank"] == 2
  # The KL is that of the merged weights against the base, from the library's merge.
  ck = lora.load_lora(pair["prior"], adapter)
  d2 = sum(float(np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
           for a, b in zip(jax.tree.leaves(ck.merged_params), jax.tree.leaves(ck.base_params),
                           strict=True))
  assert d2 > 0 and rep["kl"] == pytest.approx(d2 / (2 * 1e-6), rel=1e-9)


def test_lora_space_posterior(pair, tmp_path, capsys):
  """--space lora: the LoRA parameters are the posterior, the recorded initialisation the
  prior mean; the KL is that of the LoRA parameters against their initialisation."""
  from pacbayes.lora import adapter as lora

  _, cfg = load_pretrained(pair["prior"])
  layout = lora.make_layout(cfg, ["q_proj", "v_proj"], 2, 4.0)
  key_a, key_b = jax.random.split(jax.random.key(7))
  init = lora.init_lora(layout, key=key_a)
  lo = {m: {"A": v["A"] + 1e-3 * jax.random.normal(jax.random.fold_in(key_b, 2 * i),
                                                   v["A"].shape),
            "B": 1e-3 * jax.random.normal(jax.random.fold_in(key_b, 2 * i + 1), v["B"].shape)}
        for i, (m, v) in enumerate(init.items())}
  adapter = tmp_path / "adapter"
  lora.write_adapter(adapter, layout, ["q_proj", "v_proj"], lo, model_type="llama",
                     base_name=pair["prior"], init=init, init_info={"seed": 7})
  out = tmp_path / "r.json"
  args = bound_args(dict(pair, adapter=str(adapter)), out, "--posterior", str(adapter),
                    "--space", "lora", "--sigma", "1e-3", "--sigma-prior", "1e-3",
                    "--chunk-size", "20")
  assert main(args) == 0
  rep = json.loads(out.read_text())
  assert rep["extra"]["space"] == "lora"
  assert rep["extra"]["mc_noise"] == "copy"  # a LoRA-space loss: whole perturbed copies
  assert rep["num_params"] == layout.num_params
  assert any("LoRA parameter space" in note for note in rep["notes"])
  d2 = sum(float(np.sum((np.asarray(lo[m][k], np.float64) - np.asarray(init[m][k],
                                                                      np.float64)) ** 2))
           for m in lo for k in ("A", "B"))
  assert d2 > 0 and rep["kl"] == pytest.approx(d2 / (2 * 1e-6), rel=1e-6)
  # Refused in one line, nothing written: a full checkpoint with --space lora, include with
  # it, and an adapter that does not record its initialisation.
  bare = tmp_path / "bare"
  lora.write_adapter(bare, layout, ["q_proj", "v_proj"], lo, model_type="llama",
                     base_name=pair["prior"])
  for extra, flag in ((["--posterior", pair["posterior"]], "space"),
                      (["--posterior", str(adapter), "--include", "*q_proj*"], "--include"),
                      (["--posterior", str(bare)], "initialisation")):
    bad = tmp_path / "bad.json"
    capsys.readouterr()
    assert main(bound_args(pair, bad, *extra, "--space", "lora", "--sigma", "1e-3",
                           "--sigma-prior", "1e-3", "--chunk-size", "20")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0], err
    assert not bad.exists()


def test_transformers_written_gpt2_pair_with_mixture_and_sequence_error(tmp_path):
  """Folders written by transformers itself (GPT-2: fused c_attn, mask buffers, tied head):
  --test-mixture uniform and --loss sequence_error end to end."""
  torch = pytest.importorskip("torch")
  tf = pytest.importorskip("transformers")
  torch.manual_seed(0)
  hf_cfg = tf.GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=16,
                         bos_token_id=1, eos_token_id=1)
  model = tf.GPT2LMHeadModel(hf_cfg).eval()
  model.save_pretrained(tmp_path / "base")
  with torch.no_grad():
    for prm in model.parameters():
      prm.add_(1e-4 * torch.randn_like(prm))
  model.save_pretrained(tmp_path / "sft")
  train = write_jsonl(tmp_path / "train.jsonl", successor_rows(40, 0, difficulty=[1, 2]))
  out = tmp_path / "r.json"
  args = ["bound", "--prior", str(tmp_path / "base"), "--posterior", str(tmp_path / "sft"),
          "--train", train, "--test-mixture", "uniform", "--difficulty-support", "1", "2", "3",
          "--loss", "sequence_error", "--sigma", "1e-3", "--sigma-prior", "1e-3",
          "--chunk-size", "8", "--quiet", "--out", str(out)]
  assert main(args) == 0
  rep = json.loads(out.read_text())
  assert rep["loss"] == "sequence_error" and rep["n"] == 40
  assert list(rep["mixture"]["test_upper"].values()) == pytest.approx([1 / 3] * 3)
  assert {"tv", "mixture_shift", "per_slice"} <= {k["name"] for k in rep["extrapolation"]}
  # d = 3 is outside the training data: its third of the test mass cannot be certified.
  assert rep["bound"] >= 1 / 3
  n_params = sum(p.numel() for p in model.parameters())  # tied head counted once
  assert rep["num_params"] == n_params
