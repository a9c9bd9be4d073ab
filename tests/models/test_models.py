"""Tests for pacbayes.models without torch: config checks, forward, masks, save/load, errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import pacbayes  # noqa: F401  (x64 on, as in real use)
from pacbayes.models import ModelConfig, build_model, load_config, load_pretrained, save_pretrained
from pacbayes.models.checkpoint import read_tensors, write_safetensors
from tests.helpers.models import jit_forward, tiny_config


@pytest.fixture(scope="module")
def llama():
  config = tiny_config(num_key_value_heads=2)
  return build_model(config, rngs=nnx.Rngs(0)), config


# --------------------------------------------------------------------------------- config


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gpt2"])
def test_hf_config_round_trip(model_type):
  config = tiny_config(model_type)
  assert ModelConfig.from_hf_config(config.to_hf_config()) == config


def test_transformers_default_configs_accepted():
  tf = pytest.importorskip("transformers")
  for cls, model_type in ((tf.LlamaConfig, "llama"), (tf.Qwen2Config, "qwen2"),
                          (tf.GPT2Config, "gpt2")):
    config = ModelConfig.from_hf_config(cls().to_dict())
    assert config.model_type == model_type


def _llama_hf():
  return tiny_config(num_key_value_heads=2).to_hf_config()


@pytest.mark.parametrize("change, attribute", [
  ({"model_type": "mistral"}, "model_type"),
  ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"),
  ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}},
   "rope_parameters"),
  ({"hidden_act": "gelu"}, "hidden_act"),
  ({"sliding_window": 16}, "sliding_window"),
  ({"layer_types": ["sliding_attention", "full_attention"]}, "layer_types"),
  ({"quantization_config": {"bits": 4}}, "quantization_config"),
  ({"some_new_feature": 1}, "some_new_feature"),
])
def test_llama_config_rejects_unimplemented(change, attribute):
  hf = {**_llama_hf(), **change}
  with pytest.raises(ValueError, match=attribute):
    ModelConfig.from_hf_config(hf)


def test_llama3_rope_scaling_parsed_and_saved():
  rope = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}
  hf = {**_llama_hf(), "rope_scaling": rope, "rope_theta": 5e5}
  del hf["rope_parameters"]
  config = ModelConfig.from_hf_config(hf)
  assert config.rope_scaling.factor == 32.0 and config.rope_theta == 5e5
  assert ModelConfig.from_hf_config(config.to_hf_config()) == config
  with pytest.raises(ValueError, match="rope_scaling"):
    ModelConfig.from_hf_config({**hf, "rope_scaling": {**rope, "beta_fast": 1.0}})
  qwen = {**tiny_config("qwen2").to_hf_config(), "rope_parameters": {**rope, "rope_theta": 1e4}}
  with pytest.raises(ValueError, match="rope_parameters"):
    ModelConfig.from_hf_config(qwen)


@pytest.mark.parametrize("change, attribute", [
  ({"use_sliding_window": True, "sliding_window": 16}, "use_sliding_window"),
  ({"mlp_bias": True}, "mlp_bias"),
])
def test_qwen2_config_rejects_unimplemented(change, attribute):
  hf = {**tiny_config("qwen2").to_hf_config(), **change}
  with pytest.raises(ValueError, match=attribute):
    ModelConfig.from_hf_config(hf)


@pytest.mark.parametrize("change, attribute", [
  ({"activation_function": "relu"}, "activation_function"),
  ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
  ({"scale_attn_weights": False}, "scale_attn_weights"),
  ({"add_cross_attention": True}, "add_cross_attention"),
])
def test_gpt2_config_rejects_unimplemented(change, attribute):
  hf = {**tiny_config("gpt2").to_hf_config(), **change}
  with pytest.raises(ValueError, match=attribute):
    ModelConfig.from_hf_config(hf)


@pytest.mark.parametrize("kw, name", [
  (dict(num_key_value_heads=3), "num_key_value_heads"),
  (dict(dtype="float16"), "dtype"),
  (dict(hidden_act="gelu_new"), "hidden_act"),
  (dict(vocab_size=0), "vocab_size"),
  (dict(model_type="t5"), "model_type"),
])
def test_config_post_init_checks(kw, name):
  with pytest.raises(ValueError, match=name):
    tiny_config(**kw)


@pytest.mark.parametrize("model_type, key, value, expected", [
  ("llama", "num_key_value_heads", "2", "an integer or null"),
  ("llama", "head_dim", 8.0, "an integer or null"),
  ("qwen2", "layer_types", 3, "a list of strings or null"),
  ("llama", "rope_theta", "ten thousand", "a finite number"),
  ("llama", "hidden_size", True, "an integer"),
  ("llama", "rms_norm_eps", None, "a finite number"),
  ("llama", "tie_word_embeddings", "yes", "true or false"),
  ("llama", "eos_token_id", "2", "an integer, a list of integers or null"),
  ("gpt2", "n_head", 4.0, "an integer"),
  ("gpt2", "layer_norm_epsilon", "1e-5", "a finite number"),
])
def test_config_wrong_types_name_file_key_and_type(tmp_path, model_type, key, value, expected):
  hf = tiny_config(model_type).to_hf_config()
  hf[key] = value
  (tmp_path / "config.json").write_text(json.dumps(hf))
  with pytest.raises(ValueError) as info:
    load_config(tmp_path)
  message = str(info.value)
  assert str(tmp_path / "config.json") in message
  assert f"config attribute {key!r}" in message and f"expected {expected}" in message



def test_config_wrong_type_inside_rope_parameters():
  hf = tiny_config().to_hf_config()
  hf["rope_parameters"] = {"rope_type": "default", "rope_theta": "ten thousand"}
  with pytest.raises(ValueError, match="'rope_parameters.rope_theta'='ten thousand': expected a"):
    ModelConfig.from_hf_config(hf)


def test_config_post_init_type_errors_are_value_errors():
  for kw in (dict(num_key_value_heads="2"), dict(head_dim=8.0), dict(rope_theta="x"),
             dict(tie_word_embeddings=1)):
    with pytest.raises(ValueError, match=next(iter(kw))):
      tiny_config(**kw)


def test_transformers_written_config_with_metadata_loads(tmp_path):
  # A SmolLM2-like config as transformers writes it after a GGUF conversion: metadata keys
  # (paths, names, token ids, versions, dtypes) must not be taken for architecture.
  hf = tiny_config(num_key_value_heads=2, tie_word_embeddings=True).to_hf_config()
  hf.update({
    "_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "_name_or_path": "/tmp/smollm2", "unk_token_id": 0, "sep_token_id": None,
    "transformers_version": "4.47.0", "torch_dtype": "float32", "dtype": "float32",
    "architectures": ["LlamaForCausalLM"], "pretraining_tp": 1, "use_cache": True,
    "is_llama_config": True, "rope_interleaved": False, "attention_dropout": 0.0,
    "_attn_implementation_autoset": True, "mask_token_id": None, "model_name": "smollm2",
    "transformers.js_config": {"kv_cache_dtype": {"q4f16": "float16", "fp16": "float16"}},
  })
  (tmp_path / "config.json").write_text(json.dumps(hf))
  config = load_config(tmp_path)
  assert config == tiny_config(num_key_value_heads=2, tie_word_embeddings=True)
  tf = pytest.importorskip("transformers")
  written = tf.LlamaConfig(**{k: v for k, v in hf.items() if not k.startswith("_")}).to_dict()
  written["_model_name_or_path"] = "x"
  assert ModelConfig.from_hf_config(written).num_key_value_heads == 2
  # A key that would change the function is still refused.
  with pytest.raises(ValueError, match="'logit_scale'"):
    ModelConfig.from_hf_config({**hf, "logit_scale": 0.5})


# -------------------------------------------------------------------------------- forward


def test_forward_shapes_dtypes_and_jit(llama):
  model, config = llama
  ids = np.random.default_rng(0).integers(0, config.vocab_size, (3, 7)).astype(np.int32)
  logits = model(ids)
  assert logits.shape == (3, 7, config.vocab_size) and logits.dtype == jnp.float32
  hidden = model.hidden_states(ids)
  assert hidden.shape == (3, 7, config.hidden_size) and hidden.dtype == jnp.float32
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  jitted = jax.jit(lambda p, x: nnx.merge(graphdef, p, rest)(x))(params, ids)
  np.testing.assert_allclose(jitted, logits, atol=1e-5)
  leaves = jax.tree.leaves(params)
  assert all(leaf.dtype == jnp.float32 for leaf in leaves)


def test_causality(llama):
  model, config = llama
  ids = np.random.default_rng(1).integers(0, config.vocab_size, (1, 8)).astype(np.int32)
  changed = ids.copy()
  changed[0, 5] = (changed[0, 5] + 1) % config.vocab_size
  forward = jit_forward(model)
  a, b = forward(ids), forward(changed)
  np.testing.assert_allclose(a[:, :5], b[:, :5], atol=1e-6)
  assert np.abs(a[:, 5:] - b[:, 5:]).max() > 1e-4


def test_bad_input_ids():
  config = tiny_config("gpt2", max_position_embeddings=8)
  model = build_model(config, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="max_position_embeddings"):
    model(np.zeros((1, 9), np.int32))
  with pytest.raises(ValueError, match="input_ids"):
    model(np.zeros((9,), np.int32))


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gpt2"])
def test_right_padding_matches_unpadded(model_type):
  config = tiny_config(model_type)
  model = build_model(config, rngs=nnx.Rngs(3))
  rng = np.random.default_rng(2)
  lengths = [9, 4, 1]
  ids = rng.integers(0, config.vocab_size, (3, 9)).astype(np.int32)
  mask = (np.arange(9)[None, :] < np.array(lengths)[:, None]).astype(np.int32)
  padded = np.where(mask == 1, ids, 0).astype(np.int32)
  graphdef, state = nnx.split(model)
  both = jax.jit(lambda s, x, m: (nnx.merge(graphdef, s)(x, m),
                                  nnx.merge(graphdef, s).hidden_states(x, m)))
  logits, hidden = map(np.asarray, both(state, padded, mask))
  alone = jax.jit(lambda s, x: (nnx.merge(graphdef, s)(x), nnx.merge(graphdef, s).hidden_states(x)))
  for b, n in enumerate(lengths):
    alone_logits, alone_hidden = alone(state, ids[b:b + 1, :n])
    np.testing.assert_allclose(logits[b, :n], alone_logits[0], atol=1e-5)
    np.testing.assert_allclose(hidden[b, :n], alone_hidden[0], atol=1e-5)
  assert np.all(np.isfinite(logits))


def test_bfloat16_model_close_to_float32():
  config = tiny_config(num_key_value_heads=2, initializer_range=0.1)
  model32 = build_model(config, rngs=nnx.Rngs(4))
  _, state = nnx.split(model32)
  config16 = config.replace(dtype="bfloat16")
  graphdef16, _ = nnx.split(build_model(config16, rngs=nnx.Rngs(4)))
  model16 = nnx.merge(graphdef16, jax.tree.map(lambda a: a.astype(jnp.bfloat16), state))
  assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(nnx.state(model16)))
  ids = np.random.default_rng(5).integers(0, config.vocab_size, (2, 12)).astype(np.int32)
  l32, l16 = jit_forward(model32)(ids), jit_forward(model16)(ids)
  assert l16.dtype == np.float32
  assert np.abs(l32 - l16).max() < 0.05 * np.abs(l32).max()


# ------------------------------------------------------------------------ save/load (ours)


@pytest.mark.parametrize("model_type, tied, dtype, shard", [
  ("llama", False, "float32", None),
  ("qwen2", True, "float32", 4000),
  ("gpt2", True, "bfloat16", None),
  ("gpt2", False, "float32", 6000),
])
def test_save_load_round_trip(tmp_path, model_type, tied, dtype, shard):
  config = tiny_config(model_type, tie_word_embeddings=tied, dtype=dtype)
  model = build_model(config, rngs=nnx.Rngs(8))
  save_pretrained(model, config, tmp_path, max_shard_bytes=shard)
  assert (tmp_path / ("model.safetensors.index.json" if shard else "model.safetensors")).exists()
  loaded, loaded_config = load_pretrained(tmp_path)
  assert loaded_config == config
  for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(loaded)),
                  strict=True):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
  if dtype == "bfloat16":
    as32, config32 = load_pretrained(tmp_path, dtype="float32")
    assert config32.dtype == "float32"
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(nnx.state(as32)))


# ------------------------------------------------------------------- bad checkpoint errors


@pytest.fixture()
def saved(tmp_path):
  config = tiny_config(num_key_value_heads=2)
  save_pretrained(build_model(config, rngs=nnx.Rngs(9)), config, tmp_path / "ckpt")
  return tmp_path / "ckpt"


def _edit_config(folder, **changes):
  file = folder / "config.json"
  hf = json.loads(file.read_text())
  hf.update(changes)
  file.write_text(json.dumps(hf))


def _edit_tensors(folder, fn):
  tensors = {k: np.array(v) for k, v in read_tensors(folder).items()}
  fn(tensors)
  write_safetensors(folder / "model.safetensors", tensors)


def test_error_missing_folder(tmp_path):
  with pytest.raises(ValueError, match="nope"):
    load_pretrained(tmp_path / "nope")


def test_error_missing_config(saved):
  (saved / "config.json").unlink()
  with pytest.raises(ValueError, match="config.json"):
    load_pretrained(saved)


def test_error_missing_weights(saved):
  (saved / "model.safetensors").unlink()
  with pytest.raises(ValueError, match="model.safetensors"):
    load_pretrained(saved)


def test_error_missing_shard(tmp_path):
  config = tiny_config()
  save_pretrained(build_model(config, rngs=nnx.Rngs(0)), config, tmp_path, max_shard_bytes=5000)
  shards = sorted(tmp_path.glob("model-*.safetensors"))
  assert len(shards) > 1
  shards[-1].unlink()
  with pytest.raises(ValueError, match=shards[-1].name):
    load_pretrained(tmp_path)


def test_error_unknown_model_type(saved):
  _edit_config(saved, model_type="mistral")
  with pytest.raises(ValueError, match="model_type"):
    load_pretrained(saved)


def test_error_unsupported_attribute(saved):
  _edit_config(saved, rope_scaling={"rope_type": "dynamic", "factor": 2.0})
  with pytest.raises(ValueError, match="rope_scaling"):
    load_pretrained(saved)


def test_error_shape_mismatch(saved):
  _edit_config(saved, intermediate_size=50)
  with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.\w+_proj\.weight"):
    load_pretrained(saved)


def test_error_missing_tensor(saved):
  _edit_tensors(saved, lambda t: t.pop("model.layers.1.self_attn.k_proj.weight"))
  with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.k_proj\.weight.*missing"):
    load_pretrained(saved)


def test_error_unexpected_tensor(saved):
  def add(t):
    t["model.layers.0.self_attn.q_norm.weight"] = np.ones(8, np.float32)
  _edit_tensors(saved, add)
  with pytest.raises(ValueError,
                     match=r"tensor 'model\.layers\.0\.self_attn\.q_norm\.weight' is not a param"):
    load_pretrained(saved)


def test_error_untied_head_in_tied_checkpoint(tmp_path):
  config = tiny_config(tie_word_embeddings=True)
  save_pretrained(build_model(config, rngs=nnx.Rngs(0)), config, tmp_path)
  def add(t):
    t["lm_head.weight"] = t["model.embed_tokens.weight"] + 1
  _edit_tensors(tmp_path, add)
  with pytest.raises(ValueError, match="lm_head.weight"):
    load_pretrained(tmp_path)


def test_error_corrupt_safetensors(saved):
  (saved / "model.safetensors").write_bytes(b"\x05")
  with pytest.raises(ValueError, match="model.safetensors"):
    load_pretrained(saved)


def test_error_invalid_config_json(saved):
  (saved / "config.json").write_text("{not json")
  with pytest.raises(ValueError, match="config.json"):
    load_pretrained(saved)


def test_gpt2_hub_layout_bare_names_and_buffers(tmp_path):
  # The original GPT-2 files use GPT2Model names (no "transformer." prefix) and carry the
  # causal-mask buffers h.i.attn.bias; both load.
  config = tiny_config("gpt2")
  model = build_model(config, rngs=nnx.Rngs(0))
  save_pretrained(model, config, tmp_path)
  def strip(t):
    for name in list(t):
      t[name.removeprefix("transformer.")] = t.pop(name)
    t["h.0.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))
  _edit_tensors(tmp_path, strip)
  loaded, _ = load_pretrained(tmp_path)
  for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(loaded)),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
