"""LoRA adapters merged by pacbayes.lora.adapter.

PEFT-made adapters give PEFT's logits; mismatched or damaged adapters are refused.
"""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

import pacbayes  # noqa: F401  (x64 on, as in real use)
from pacbayes.lora import adapter as lora

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             max_position_embeddings=32)


def _hf_config(name):
  if name == "llama":
    return tf.LlamaConfig(num_attention_heads=4, num_key_value_heads=2, **SMALL)
  if name == "qwen2":
    return tf.Qwen2Config(num_attention_heads=4, num_key_value_heads=2, **SMALL)
  return tf.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                       bos_token_id=0, eos_token_id=1)


def make_peft_adapter(tmp_path, name, targets, *, rank=4, alpha=8.0, rslora=False, seed=0):
  """A random base saved by transformers and a PEFT adapter with random A and B."""
  torch.manual_seed(seed)
  base = tf.AutoModelForCausalLM.from_config(_hf_config(name)).eval()
  base_dir, adapter_dir = tmp_path / f"{name}_base", tmp_path / f"{name}_adapter"
  base.save_pretrained(base_dir)
  base = tf.AutoModelForCausalLM.from_pretrained(base_dir).eval()
  cfg = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0,
                        init_lora_weights=False, use_rslora=rslora,
                        fan_in_fan_out=name == "gpt2")
  model = peft.get_peft_model(base, cfg).eval()
  model.save_pretrained(adapter_dir)
  ids = torch.randint(0, 64, (2, 9))
  with torch.no_grad():
    logits = model(input_ids=ids).logits.numpy()
  return base_dir, adapter_dir, ids.numpy().astype(np.int32), logits


def _forward(graphdef, params, rest, ids):
  fn = jax.jit(lambda p, x: nnx.merge(graphdef, p, rest)(x))
  return np.asarray(fn(params, ids))


CASES = [("llama", ["q_proj", "v_proj"], False), ("qwen2", ["q_proj", "k_proj", "v_proj",
         "o_proj", "gate_proj", "up_proj", "down_proj"], True), ("gpt2", ["c_attn", "c_proj"],
         False), ("gpt2", ["c_fc"], True)]


@pytest.mark.slow  # torch / peft
@pytest.mark.parametrize(("name", "targets", "rslora"), CASES)
def test_peft_adapter_merges_to_peft_logits(tmp_path, name, targets, rslora):
  base_dir, adapter_dir, ids, want = make_peft_adapter(tmp_path, name, targets, rslora=rslora)
  ck = lora.load_lora(base_dir, adapter_dir)
  got = _forward(ck.graphdef, ck.merged_params, ck.rest, ids)
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
  # The adapter really changes the model (so the comparison can fail).
  base_logits = _forward(ck.graphdef, ck.base_params, ck.rest, ids)
  assert np.abs(base_logits - want).max() > 1e-2
  # Adapted matrices by HF name, and the mask says the same.
  assert all(any(n.endswith(f".{t}.weight") for t in targets) for n in ck.adapted_hf_names)
  flat_mask = dict(nnx.to_flat_state(ck.adapted_mask))
  changed = {p for p, v in nnx.to_flat_state(ck.merged_params)
             if not np.array_equal(np.asarray(v[...]),
                                   np.asarray(dict(nnx.to_flat_state(ck.base_params))[p][...]))}
  assert changed == {p for p, m in flat_mask.items() if m.get_value()}
  # The LoRA-space apply with the trained (A, B) gives the same logits as the merged weights.
  init_free = ck.adapter.init is None
  assert init_free
  apply = lora.lora_apply(ck.graphdef, ck.rest, ck.adapter.layout)
  lo = jax.jit(apply)({"lora": ck.adapter.lora, "base": ck.base_params}, ids, np.ones_like(ids))
  np.testing.assert_allclose(np.asarray(lo), got, atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # torch / peft
def test_is_adapter_folder(tmp_path):
  base_dir, adapter_dir, _, _ = make_peft_adapter(tmp_path, "llama", ["q_proj"])
  assert lora.is_adapter_folder(adapter_dir)
  assert not lora.is_adapter_folder(base_dir)
  assert not lora.is_adapter_folder(tmp_path / "nothing")


def _edit_config(adapter_dir, **changes):
  file = adapter_dir / "adapter_config.json"
  cfg = json.loads(file.read_text())
  cfg.update(changes)
  file.write_text(json.dumps(cfg))


@pytest.mark.slow  # torch / peft
@pytest.mark.parametrize(("changes", "message"), [
  (dict(use_dora=True), "use_dora"),
  (dict(peft_type="IA3"), "peft_type"),
  (dict(modules_to_save=["lm_head"]), "modules_to_save"),
  (dict(rank_pattern={"q_proj": 2}), "rank_pattern"),
  (dict(target_modules=["q_proj", "k_proj"]), "lora_A"),  # k_proj tensors are missing
  (dict(target_modules=["embed_tokens"]), "embed_tokens"),
  (dict(r=2), "shape"),
  (dict(base_model_name_or_path="someone/another-model"), "base_model_name_or_path"),
])
def test_mismatched_adapters_are_refused_in_one_line(tmp_path, changes, message):
  base_dir, adapter_dir, _, _ = make_peft_adapter(tmp_path, "llama", ["q_proj"])
  _edit_config(adapter_dir, **changes)
  with pytest.raises(ValueError, match=message) as err:
    lora.load_lora(base_dir, adapter_dir)
  assert "\n" not in str(err.value)


@pytest.mark.slow  # torch / peft
def test_adapter_for_another_shape_is_refused(tmp_path):
  _, adapter_dir, _, _ = make_peft_adapter(tmp_path, "llama", ["q_proj"])
  torch.manual_seed(1)
  other = tf.AutoModelForCausalLM.from_config(tf.LlamaConfig(
    num_attention_heads=4, num_key_value_heads=2, **{**SMALL, "hidden_size": 48}))
  other_dir = tmp_path / "llama_base_wide"
  other.save_pretrained(other_dir)
  _edit_config(adapter_dir, base_model_name_or_path=None)
  with pytest.raises(ValueError, match="shape"):
    lora.load_lora(other_dir, adapter_dir)


@pytest.mark.slow  # torch / peft
def test_extra_tensor_is_refused(tmp_path):
  from safetensors.numpy import load_file, save_file

  base_dir, adapter_dir, _, _ = make_peft_adapter(tmp_path, "llama", ["q_proj"])
  file = adapter_dir / "adapter_model.safetensors"
  tensors = load_file(str(file))
  tensors["base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"] = np.zeros(
    (4, 32), np.float32)
  save_file(tensors, str(file))
  with pytest.raises(ValueError, match="k_proj"):
    lora.load_lora(base_dir, adapter_dir)


@pytest.mark.slow  # torch / peft
@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_written_adapter_loads_in_peft_with_same_logits(tmp_path, name):
  """Our writer (random A, B) -> peft + transformers give the logits of our merged model."""
  base_dir, _, ids, _ = make_peft_adapter(tmp_path, name, ["c_attn"] if name == "gpt2"
                                          else ["q_proj"])
  from pacbayes.models import load_pretrained

  model, config = load_pretrained(base_dir)
  targets = ["c_attn", "c_fc"] if name == "gpt2" else ["v_proj", "down_proj"]
  layout = lora.make_layout(config, targets, 3, 6.0)
  key_a, key_b = jax.random.split(jax.random.key(3))
  lo = lora.init_lora(layout, key=key_a)
  lo = {m: {"A": v["A"], "B": 0.3 * jax.random.normal(jax.random.fold_in(key_b, i),
                                                       v["B"].shape)}
        for i, (m, v) in enumerate(lo.items())}
  out = tmp_path / "ours"
  lora.write_adapter(out, layout, targets, lo, model_type=config.model_type,
                     base_name=os.fspath(base_dir), init=lora.init_lora(layout, key=key_a),
                     init_info={"seed": 3})
  ck = lora.load_lora(base_dir, out)
  ours = _forward(ck.graphdef, ck.merged_params, ck.rest, ids)
  hf = peft.PeftModel.from_pretrained(tf.AutoModelForCausalLM.from_pretrained(base_dir),
                                      out).eval()
  with torch.no_grad():
    theirs = hf(input_ids=torch.as_tensor(ids, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=1e-5)
  # The recorded initialisation comes back, and the LoRA-space view is centred on it.
  space = lora.lora_space(ck)
  assert space.num_params == sum(3 * (m.in_features + m.out_features) for m in layout.modules)
  for m in layout.modules:
    np.testing.assert_array_equal(np.asarray(space.prior["lora"][m.name]["B"]), 0.0)
  # At the prior mean (B = 0) the LoRA-space model is the base.
  base_logits = _forward(ck.graphdef, ck.base_params, ck.rest, ids)
  prior_logits = np.asarray(jax.jit(space.apply)(space.prior, ids, np.ones_like(ids)))
  np.testing.assert_allclose(prior_logits, base_logits, atol=1e-6)
  loss = jax.jit(space.loss_fn("token_error"))(space.posterior, {
    "input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": np.ones_like(ids)})
  assert loss.shape == (ids.shape[0],)


@pytest.mark.slow  # torch / peft
def test_init_matches_peft_distribution():
  """A ~ U(-1/sqrt(in), 1/sqrt(in)) (torch kaiming_uniform a=sqrt(5)), B = 0."""
  from tests.helpers.models import tiny_config

  config = tiny_config("llama", hidden_size=64)
  layout = lora.make_layout(config, ["q_proj"], 8, 16.0)
  init = lora.init_lora(layout, key=jax.random.key(0))
  a = np.concatenate([np.asarray(v["A"]).ravel() for v in init.values()])
  bound = 1 / np.sqrt(64)
  assert a.min() >= -bound and a.max() <= bound and a.std() > 0.9 * bound / np.sqrt(3)
  assert all(np.all(np.asarray(v["B"]) == 0) for v in init.values())
  torch_a = torch.empty(8, 64)
  torch.nn.init.kaiming_uniform_(torch_a, a=np.sqrt(5))
  assert float(torch_a.abs().max()) <= bound


def test_layout_refuses_bad_targets():
  from tests.helpers.models import tiny_config

  config = tiny_config("llama")
  with pytest.raises(ValueError, match="lm_head"):
    lora.make_layout(config, ["lm_head"], 2, 4.0)
  with pytest.raises(ValueError, match="rank"):
    lora.make_layout(config, ["q_proj"], 0, 4.0)
  with pytest.raises(ValueError, match="exceeds"):
    lora.make_layout(config, ["q_proj"], 1000, 4.0)
  layout = lora.make_layout(config, r".*\.0\.self_attn\.(q|v)_proj", 2, 4.0)
  assert [m.name for m in layout.modules] == ["model.layers.0.self_attn.q_proj",
                                              "model.layers.0.self_attn.v_proj"]
