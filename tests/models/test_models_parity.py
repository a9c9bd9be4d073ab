"""Live parity with transformers (torch): tiny random HF checkpoints loaded and saved by us."""

import jax
import numpy as np
import pytest
from flax import nnx

import pacbayes  # noqa: F401  (x64 on, as in real use)
from pacbayes.models import load_pretrained, save_pretrained

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # torch parity

SMALL = dict(vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             max_position_embeddings=64)


def _hf_config(name):
  if name == "llama_mha":
    return tf.LlamaConfig(num_attention_heads=4, num_key_value_heads=4, **SMALL)
  if name == "llama_gqa_tied":
    return tf.LlamaConfig(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                          **SMALL)
  if name == "llama_bias_head_dim":
    return tf.LlamaConfig(num_attention_heads=4, num_key_value_heads=1, head_dim=24,
                          attention_bias=True, mlp_bias=True, rope_theta=500.0, **SMALL)
  if name == "llama_rope3":
    # Llama 3 rope scaling; a short original context so that all three frequency bands occur.
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16, "rope_theta": 500.0}
    return tf.LlamaConfig(num_attention_heads=2, num_key_value_heads=1, rope_parameters=rope,
                          **SMALL)
  if name == "qwen2_gqa":
    return tf.Qwen2Config(num_attention_heads=8, num_key_value_heads=2, **SMALL)
  if name == "qwen2_mha_tied":
    return tf.Qwen2Config(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True,
                          **SMALL)
  if name in ("gpt2_tied", "gpt2_untied"):
    return tf.GPT2Config(vocab_size=100, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                         bos_token_id=0, eos_token_id=1,
                         tie_word_embeddings=name == "gpt2_tied")
  raise KeyError(name)


CASES = [  # (name, max_shard_size)
  ("llama_mha", None),
  ("llama_gqa_tied", "30KB"),
  ("llama_bias_head_dim", None),
  ("llama_rope3", None),
  ("qwen2_gqa", "40KB"),
  ("qwen2_mha_tied", None),
  ("gpt2_tied", None),
  ("gpt2_untied", "40KB"),
]


def _jit_forward(model):
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda s, x, m: nnx.merge(graphdef, s)(x, m))
  return lambda ids, mask: np.asarray(fn(state, ids.astype(np.int32), mask.astype(np.int32)))


@pytest.mark.parametrize("name, shard", CASES)
def test_parity_and_round_trip(tmp_path, name, shard):
  torch.manual_seed(0)
  hf_model = tf.AutoModelForCausalLM.from_config(_hf_config(name)).eval()
  with torch.no_grad():
    for p in hf_model.parameters():  # norms are 1 and biases 0 at init: make them matter
      p.add_(0.1 * torch.randn_like(p))
  kwargs = {} if shard is None else {"max_shard_size": shard}
  hf_model.save_pretrained(tmp_path / "hf", **kwargs)
  if shard is not None:
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()

  rng = np.random.default_rng(0)
  ids = rng.integers(0, 100, (3, 11))
  lengths = np.array([11, 7, 2])
  mask = (np.arange(11)[None, :] < lengths[:, None]).astype(np.int64)
  with torch.no_grad():
    ref = hf_model(torch.from_numpy(ids)).logits.numpy()
    ref_masked = hf_model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
    ref_masked = ref_masked.numpy()
    # Left padding: transformers given the position ids that the mask implies.
    left_ids = np.zeros_like(ids)
    left_mask = np.zeros_like(mask)
    for b, n in enumerate(lengths):
      left_ids[b, 11 - n:] = ids[b, :n]
      left_mask[b, 11 - n:] = 1
    positions = np.where(left_mask == 1, np.cumsum(left_mask, axis=1) - 1, 1)
    ref_left = hf_model(torch.from_numpy(left_ids), attention_mask=torch.from_numpy(left_mask),
                        position_ids=torch.from_numpy(positions)).logits.numpy()

  model, config = load_pretrained(tmp_path / "hf")
  assert config.dtype == "float32"
  forward = _jit_forward(model)
  np.testing.assert_allclose(forward(ids, np.ones_like(ids)), ref, atol=2e-5, rtol=1e-5)
  ours_masked = forward(ids, mask)
  ours_left = forward(left_ids, left_mask)
  for b, n in enumerate(lengths):
    np.testing.assert_allclose(ours_masked[b, :n], ref_masked[b, :n], atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(ours_left[b, 11 - n:], ref_left[b, 11 - n:], atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(ours_left[b, 11 - n:], ref_masked[b, :n], atol=2e-5, rtol=1e-5)

  # Round trip: our save -> transformers load -> the same logits.
  save_pretrained(model, config, tmp_path / "ours")
  again = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
  with torch.no_grad():
    np.testing.assert_allclose(again(torch.from_numpy(ids)).logits.numpy(), ref, atol=1e-6)
  hf_state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
  for k, v in again.state_dict().items():
    np.testing.assert_array_equal(v.numpy(), hf_state[k], err_msg=k)


def test_bfloat16_checkpoint_round_trip(tmp_path):
  torch.manual_seed(1)
  hf_model = tf.AutoModelForCausalLM.from_config(_hf_config("qwen2_gqa")).eval()
  hf_model = hf_model.to(torch.bfloat16)
  hf_model.save_pretrained(tmp_path / "hf")
  model, config = load_pretrained(tmp_path / "hf")
  assert config.dtype == "bfloat16"
  save_pretrained(model, config, tmp_path / "ours")
  again = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.bfloat16)
  for k, v in again.state_dict().items():
    assert v.dtype == torch.bfloat16, k
    assert torch.equal(v, hf_model.state_dict()[k]), k
