"""Tests for pacbayes.models.generate and parity with committed transformers goldens (no torch)."""

from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

import pacbayes  # noqa: F401  (x64 on, as in real use)
from pacbayes.models import build_model, load_pretrained, save_pretrained
from pacbayes.models.checkpoint import read_tensors
from pacbayes.models.generate import greedy_generate
from tests.helpers.models import jit_forward, tiny_config

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


@pytest.fixture(scope="module")
def llama():
  config = tiny_config(num_key_value_heads=2)
  return build_model(config, rngs=nnx.Rngs(0)), config

# ------------------------------------------------------------------------------- generate


def naive_greedy(forward, prompt, n, eos=None, size=32):
  """Recomputes the full forward every step (no cache), on a fixed-size buffer."""
  buf = np.zeros((1, size), np.int32)
  buf[0, :len(prompt)] = prompt
  length, out = len(prompt), []
  for _ in range(n):
    if eos is not None and out and out[-1] == eos:
      out.append(eos)
      continue
    # Causal attention: the zeros right of `length` cannot affect position length - 1.
    token = int(np.argmax(forward(buf)[0, length - 1]))
    buf[0, length] = token
    length += 1
    out.append(token)
  return out


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_greedy_generate_matches_naive_loop(model_type):
  config = tiny_config(model_type, num_attention_heads=4)
  model = build_model(config, rngs=nnx.Rngs(7))
  rng = np.random.default_rng(3)
  lengths = np.array([7, 2, 1, 5], np.int32)
  ids = rng.integers(0, config.vocab_size, (4, 7)).astype(np.int32)
  out = np.asarray(greedy_generate(model, ids, lengths, 10))
  assert out.shape == (4, 10) and out.dtype == np.int32
  forward = jit_forward(model)
  for b in range(4):
    assert list(out[b]) == naive_greedy(forward, ids[b, :lengths[b]], 10)
  if model_type == "gpt2":
    return
  # With an eos: rows stop at their first eos and emit it afterwards.
  eos = int(out[0, 2])
  stopped = np.asarray(greedy_generate(model, ids, lengths, 10, eos_id=eos))
  for b in range(4):
    assert list(stopped[b]) == naive_greedy(forward, ids[b, :lengths[b]], 10, eos=eos)


@pytest.mark.parametrize("kwargs, name", [
  (dict(prompt_lengths=np.array([0, 3])), "prompt_lengths"),
  (dict(prompt_lengths=np.array([3])), "prompt_lengths"),
  (dict(max_new_tokens=0), "max_new_tokens"),
  (dict(eos_id=10_000), "eos_id"),
])
def test_greedy_generate_errors(llama, kwargs, name):
  model, _ = llama
  args = dict(prompt_ids=np.zeros((2, 3), np.int32), prompt_lengths=np.array([3, 2]),
              max_new_tokens=2)
  args.update(kwargs)
  with pytest.raises(ValueError, match=name):
    greedy_generate(model, **args)


# ------------------------------------------------------------------------ goldens (no torch)


GOLDEN_CASES = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir()) if GOLDEN.exists() else []


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_golden_parity(case, tmp_path):
  ref = load_file(str(GOLDEN / case / "reference.safetensors"))
  model, config = load_pretrained(GOLDEN / case / "checkpoint", dtype="float32")
  logits = jit_forward(model)(ref["input_ids"])
  np.testing.assert_allclose(logits, ref["logits"], atol=1e-5, rtol=1e-5)
  # Greedy generation against transformers' own generate().
  n = ref["generated"].shape[1]
  padded = np.where(np.arange(ref["input_ids"].shape[1])[None, :] <
                    ref["prompt_lengths"][:, None], ref["input_ids"], 0).astype(np.int32)
  out = np.asarray(greedy_generate(model, padded, ref["prompt_lengths"], n))
  np.testing.assert_array_equal(out, ref["generated"])
  # The checkpoint's own dtype (bfloat16 for one case) gives close logits.
  native, native_config = load_pretrained(GOLDEN / case / "checkpoint")
  if native_config.dtype == "bfloat16":
    diff = np.abs(jit_forward(native)(ref["input_ids"]) - ref["logits"]).max()
    assert diff < 0.05 * np.abs(ref["logits"]).max()
  # Our save of what we loaded holds the same tensors as the transformers checkpoint.
  save_pretrained(native, native_config, tmp_path)
  ours, theirs = read_tensors(tmp_path), read_tensors(GOLDEN / case / "checkpoint")
  assert sorted(ours) == sorted(theirs)
  for name, array in theirs.items():
    assert ours[name].dtype == array.dtype, name
    np.testing.assert_array_equal(ours[name], array, err_msg=name)


def test_golden_files_small():
  total = sum(f.stat().st_size for f in GOLDEN.rglob("*") if f.is_file())
  assert GOLDEN_CASES and total < 2 * 1024 * 1024
