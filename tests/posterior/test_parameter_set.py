"""One parameter set per checkpoint: the streamed KL equals the KL of the loaded models' params.

Checkpoint folders as exporters write them (GPT-2 causal-mask buffers, rotary inv_freq
buffers, a redundant lm_head.weight beside tied embeddings, bare GPT2Model names) must give
the same KL through `checkpoint_kl` (files) and `gaussian_kl` over the parameters of
`load_pretrained` (what `pacbayes bound` uses), and HF-name selection must pick the same
tensors on both paths.
"""

import json
import math

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from pacbayes.core.tensorio import CheckpointError, write_tensors
from pacbayes.models import (
  build_model,
  hf_name_of_path,
  hf_names,
  load_pretrained,
  parameter_mask,
  paths_of_hf_name,
  save_pretrained,
  select_parameters,
)
from pacbayes.models.checkpoint import read_tensors
from pacbayes.models.weights import storage_dtypes, storage_report
from pacbayes.posterior.kl import checkpoint_kl, gaussian_kl
from tests.helpers.models import tiny_config

ARCHS = [("llama", False), ("llama", True), ("qwen2", True), ("gpt2", True), ("gpt2", False)]


def _buffers(config):
  """Non-parameter tensors that real exports carry, as those exporters store them."""
  out = {}
  for i in range(config.num_hidden_layers):
    if config.model_type == "gpt2":
      p = config.max_position_embeddings
      out[f"transformer.h.{i}.attn.bias"] = np.tril(np.ones((p, p), np.float32))[None, None]
      out[f"transformer.h.{i}.attn.masked_bias"] = np.asarray(-1e4, np.float32)
    else:
      dh = config.head_dim
      inv = 1.0 / config.rope_theta ** (np.arange(0, dh, 2, dtype=np.float32) / dh)
      out[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv.astype(np.float32)
  return out


def _export(folder, config, tensors, *, extras=True):
  """Writes a checkpoint folder with buffers and (tied) a redundant lm_head.weight."""
  tensors = dict(tensors)
  if extras:
    tensors.update(_buffers(config))
    if config.tie_word_embeddings:
      embed = "transformer.wte.weight" if config.model_type == "gpt2" else (
        "model.embed_tokens.weight")
      tensors["lm_head.weight"] = tensors[embed].copy()
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "config.json").write_text(json.dumps(config.to_hf_config()))
  write_tensors(folder, tensors, max_shard_bytes=20_000)
  return folder


def _pair(tmp_path, model_type, tied, extras=True, scale=0.01):
  config = tiny_config(model_type, tie_word_embeddings=tied)
  save_pretrained(build_model(config, rngs=nnx.Rngs(1)), config, tmp_path / "plain")
  prior = {k: np.array(v) for k, v in read_tensors(tmp_path / "plain").items()}
  rng = np.random.default_rng(2)
  post = {k: (v + scale * rng.normal(size=v.shape)).astype(np.float32) for k, v in prior.items()}
  return (config, _export(tmp_path / "pre", config, prior, extras=extras),
          _export(tmp_path / "ft", config, post, extras=extras), prior, post)


def _params(folder):
  model, _ = load_pretrained(folder)
  _, params, _ = nnx.split(model, nnx.Param, ...)
  return params


@pytest.mark.parametrize("model_type, tied", ARCHS)
def test_checkpoint_kl_equals_kl_of_loaded_parameters(tmp_path, model_type, tied):
  config, pre, ft, prior, post = _pair(tmp_path, model_type, tied)
  got = checkpoint_kl(pre, ft, 0.003, 0.02)
  want = float(gaussian_kl(_params(ft), _params(pre), 0.003, 0.02))
  np.testing.assert_allclose(got.kl, want, rtol=1e-12)
  # The count is the architecture's, buffers and the tied duplicate excluded.
  p_leaves = jax.tree.leaves(_params(pre))
  assert got.num_params == sum(x.size for x in p_leaves)
  assert sorted(t.name for t in got.tensors) == sorted(hf_names(config))
  # An independent float64 sum over the table's tensors, read straight from the arrays.
  sq = math.fsum(float(np.sum((post[n].astype(np.float64) - prior[n]) ** 2))
                 for n in hf_names(config))
  n = got.num_params
  r = (0.003 / 0.02) ** 2
  np.testing.assert_allclose(got.kl, 0.5 * (n * (r - 1 - math.log(r)) + sq / 0.02**2), rtol=1e-12)
  # Without the buffers and duplicate the files give the same number.
  clean = checkpoint_kl(_export(tmp_path / "pre2", config, prior, extras=False),
                        _export(tmp_path / "ft2", config, post, extras=False), 0.003, 0.02)
  assert clean.kl == got.kl and clean.num_params == got.num_params


def test_buffers_used_to_count(tmp_path):
  # The phantom parameters the old reading counted: every stored tensor.
  config, pre, _, _, _ = _pair(tmp_path, "gpt2", True)
  stored = read_tensors(pre)
  phantom = sum(np.asarray(v).size for k, v in stored.items() if k not in set(hf_names(config)))
  embed = config.vocab_size * config.hidden_size
  assert phantom == embed + sum(b.size for b in _buffers(config).values())
  assert checkpoint_kl(pre, pre, 0.01, 0.01).num_params == sum(
    np.asarray(stored[n]).size for n in hf_names(config))


def test_bare_gpt2_names(tmp_path):
  config, pre, ft, prior, post = _pair(tmp_path, "gpt2", True)
  bare = {k.removeprefix("transformer."): v for k, v in post.items()}
  _export(tmp_path / "bare", config, bare, extras=False)
  a = checkpoint_kl(pre, ft, 0.01, 0.02)
  b = checkpoint_kl(pre, tmp_path / "bare", 0.01, 0.02)
  assert a.kl == b.kl


def test_tied_duplicate_must_equal_the_embedding(tmp_path):
  config, pre, ft, prior, post = _pair(tmp_path, "llama", True, extras=False)
  bad = dict(post, **{"lm_head.weight": post["model.embed_tokens.weight"] + 1})
  _export(tmp_path / "bad", config, bad, extras=False)
  with pytest.raises(CheckpointError, match="'lm_head.weight' differs from 'model.embed_tokens"):
    checkpoint_kl(pre, tmp_path / "bad", 0.01, 0.02)
  with pytest.raises(ValueError, match="'lm_head.weight' differs from 'model.embed_tokens"):
    load_pretrained(tmp_path / "bad")


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_unknown_tensor_is_refused_by_name(tmp_path, model_type):
  config, pre, _, prior, _ = _pair(tmp_path, model_type, False, extras=False)
  _export(tmp_path / "odd", config, dict(prior, **{"score.weight": np.zeros((2, 32), np.float32)}))
  with pytest.raises(CheckpointError, match="'score.weight' is not a parameter"):
    checkpoint_kl(pre, tmp_path / "odd", 0.01, 0.02)
  with pytest.raises(ValueError, match="'score.weight' is not a parameter"):
    load_pretrained(tmp_path / "odd")


@pytest.mark.parametrize("model_type, tied", ARCHS)
def test_names_and_paths_round_trip(model_type, tied):
  config = tiny_config(model_type, tie_word_embeddings=tied)
  model = build_model(config, rngs=nnx.Rngs(0))
  _, params, _ = nnx.split(model, nnx.Param, ...)
  names = set()
  for path, _ in nnx.to_flat_state(params):
    name = hf_name_of_path(config, path)
    assert name == hf_name_of_path(config, "/".join(map(str, path)))
    assert tuple(path) in paths_of_hf_name(config, name)
    names.add(name)
  assert names == set(hf_names(config))
  with pytest.raises(ValueError, match="'layers/9/attn' is not a parameter path"):
    hf_name_of_path(config, "layers/9/attn")


def test_selection_by_hf_names():
  config = tiny_config("gpt2")
  assert select_parameters(config, include="transformer.h.0.attn.*") == (
    "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias",
    "transformer.h.0.attn.c_proj.weight", "transformer.h.0.attn.c_proj.bias")
  assert "transformer.wte.weight" not in select_parameters(config, exclude="transformer.wte.*")
  with pytest.raises(ValueError, match="exclude: pattern 'layers/0/attn/\\*' matches no param"):
    select_parameters(config, exclude="layers/0/attn/*")  # internal paths are not names
  with pytest.raises(ValueError, match="include: pattern 'lm_head.weight' matches no parameter.*"
                                       "tied to 'transformer.wte.weight'"):
    select_parameters(config, include="lm_head.weight")
  with pytest.raises(ValueError, match="no parameter is left"):
    select_parameters(config, exclude="*")
  llama = tiny_config("llama")
  with pytest.raises(ValueError, match="exclude: pattern 'transformer.wte.weight' matches no"):
    select_parameters(llama, exclude="transformer.wte.weight")


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_checkpoint_kl_and_mask_select_the_same_tensors(tmp_path, model_type):
  config, pre, _, prior, post = _pair(tmp_path, model_type, False)
  exclude = ["*.ln_*", "*attn*"] if model_type == "gpt2" else ["*norm*", "*attn*"]
  frozen = select_parameters(config, include=exclude)
  for n in frozen:
    post[n] = prior[n]
  ft = _export(tmp_path / "ft3", config, post)
  got = checkpoint_kl(pre, ft, 0.004, 0.03, exclude=exclude)
  assert sorted(got.excluded) == sorted(frozen)
  params_p, params_q = _params(pre), _params(ft)
  mask = parameter_mask(config, params_q, exclude=exclude)
  leaves_mask = jax.tree.leaves(mask)
  assert any(leaves_mask) and not all(leaves_mask)
  pick = lambda tree: [x for x, m in zip(jax.tree.leaves(tree), leaves_mask, strict=True) if m]  # noqa: E731
  want = float(gaussian_kl(pick(params_q), pick(params_p), 0.004, 0.03))
  np.testing.assert_allclose(got.kl, want, rtol=1e-12)
  # A moved parameter left out of the selection is refused (infinite KL).
  with pytest.raises(ValueError, match="is not perturbed .* its KL is infinite"):
    checkpoint_kl(pre, tmp_path / "ft", 0.004, 0.03, exclude=exclude)


def test_non_finite_weight_is_named_on_both_paths(tmp_path):
  config, pre, _, prior, post = _pair(tmp_path, "llama", False, extras=False)
  post["model.layers.1.mlp.up_proj.weight"][3, 4] = np.inf
  bad = _export(tmp_path / "inf", config, post, extras=False)
  with pytest.raises(CheckpointError, match="'model.layers.1.mlp.up_proj.weight' in .*inf' has "
                                            "non-finite"):
    checkpoint_kl(pre, bad, 0.01, 0.02)
  with pytest.raises(ValueError, match="parameter 'model.layers.1.mlp.up_proj.weight' holds a "
                                       "non-finite value"):
    load_pretrained(bad)


def test_storage_report_counts_rounding(tmp_path):
  config, pre, _, prior, _ = _pair(tmp_path, "llama", False, extras=False)
  assert set(storage_dtypes(pre).values()) == {"float32"}
  rep = storage_report(pre, pre)
  assert rep.sixteen_bit is None and rep.note() is None and rep.num_moved is None
  # A bf16 save of the prior itself: every change is rounding (<= half an ulp).
  as_bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in prior.items()}
  rounded = _export(tmp_path / "bf16", config, as_bf16, extras=False)
  rep = storage_report(pre, rounded)
  assert set(storage_dtypes(rounded).values()) == {"bfloat16"}
  want_moved = sum(int(np.count_nonzero(v.astype(np.float64) != as_bf16[k].astype(np.float64)))
                   for k, v in prior.items())
  assert rep.sixteen_bit == "bfloat16" and rep.num_moved == want_moved == rep.num_rounding
  assert rep.posterior_dtypes == {"bfloat16": rep.num_params}
  assert "posterior stored in bfloat16" in rep.note()
  # Both bf16, a fine-tune that moves one tensor by exactly one ulp and another by 4 ulps.
  name1, name2 = "model.norm.weight", "model.layers.0.mlp.up_proj.weight"
  moved = dict(as_bf16)
  one = np.asarray(as_bf16[name1])
  exp = np.frexp(np.abs(one.astype(np.float64)))[1] - 1
  moved[name1] = (one.astype(np.float64) + np.ldexp(1.0, exp - 7)).astype(ml_dtypes.bfloat16)
  two = as_bf16[name2].astype(np.float64)
  moved[name2] = (two + 4 * np.ldexp(1.0, np.frexp(np.abs(two))[1] - 1 - 7)).astype(
    ml_dtypes.bfloat16)
  rep = storage_report(rounded, _export(tmp_path / "ft16", config, moved, extras=False))
  assert rep.num_rounding == one.size
  assert rep.num_moved == one.size + two.size
