"""The prior read one leaf at a time (pacbayes.models.checkpoint.ParameterReader) and its use by
the certificate route (pacbayes.certificate.route.streamed_prior_distance).

A leaf read alone must be the leaf `load_pretrained` loads (every architecture, casts, shards,
a stored redundant tied head), and the streamed squared distance and checks must equal those of
the loaded prior.
"""

import jax
import numpy as np
import pytest
from flax import nnx

from pacbayes.certificate.route import streamed_prior_distance
from pacbayes.core.tensorio import read_tensors, write_safetensors
from pacbayes.models import build_model, load_pretrained, save_pretrained
from pacbayes.models.checkpoint import ParameterReader
from pacbayes.posterior import draws
from tests.helpers.models import tiny_config


def params_of(model):
  return nnx.split(model, nnx.Param, ...)[1]


@pytest.mark.parametrize("kw", [dict(), dict(tie_word_embeddings=True), dict(model_type="qwen2"),
                                dict(model_type="gpt2")], ids=["llama", "llama_tied", "qwen2",
                                                               "gpt2"])
@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_each_leaf_read_alone_is_the_loaded_leaf(tmp_path, kw, dtype):
  config = tiny_config(**kw)
  save_pretrained(build_model(config, rngs=nnx.Rngs(0)), config, tmp_path,
                  max_shard_bytes=20_000)  # several shards
  model, _ = load_pretrained(tmp_path, dtype=dtype)
  loaded = params_of(model)
  reader = ParameterReader(tmp_path, dtype=dtype)
  names = draws.leaf_paths(loaded)
  assert sorted(reader.names) == sorted(names)
  for name, leaf in zip(names, jax.tree.leaves(loaded), strict=True):
    got = reader.leaf(name)
    assert got.dtype == leaf.dtype
    np.testing.assert_array_equal(got, np.asarray(leaf))
  with pytest.raises(KeyError, match="no parameter 'nope'"):
    reader.leaf("nope")


def test_a_stored_tied_head_is_checked_like_load_pretrained(tmp_path):
  config = tiny_config(tie_word_embeddings=True)
  save_pretrained(build_model(config, rngs=nnx.Rngs(0)), config, tmp_path)
  tensors = {k: np.array(v) for k, v in read_tensors(tmp_path).items()}
  head = tensors["model.embed_tokens.weight"].copy()
  head[0, 0] += 1.0
  write_safetensors(tmp_path / "model.safetensors", {**tensors, "lm_head.weight": head})
  with pytest.raises(ValueError, match="tie_word_embeddings is true but") as loaded:
    load_pretrained(tmp_path)
  with pytest.raises(ValueError, match="tie_word_embeddings is true but") as streamed:
    ParameterReader(tmp_path)
  assert str(streamed.value) == str(loaded.value)


def test_streamed_distance_and_checks_equal_those_of_the_loaded_prior(tmp_path):
  config = tiny_config()
  base = build_model(config, rngs=nnx.Rngs(0))
  save_pretrained(base, config, tmp_path / "prior")
  prior = params_of(load_pretrained(tmp_path / "prior")[0])
  posterior = jax.tree.map(lambda x: x + 0.01 * np.sign(np.asarray(x)), prior)
  reader = ParameterReader(tmp_path / "prior")
  mask = draws.perturbation_mask(posterior)
  assert streamed_prior_distance(reader, posterior, mask) == draws.sq_distance(
      posterior, prior, mask)  # same terms, same order: bit for bit
  # Only the MLP perturbed: the embedding (first leaf) moved but is excluded -> refused.
  part = draws.perturbation_mask(posterior, include=["layers/*/mlp/*"])
  with pytest.raises(ValueError) as streamed:
    streamed_prior_distance(reader, posterior, part)
  assert str(streamed.value) == (
      "parameter 'embed' differs between prior and posterior but is "
      "excluded from the perturbation (include/exclude); its KL would be infinite. Perturb "
      "it, or keep it equal in both checkpoints")
  # Another architecture: refused, naming a parameter.
  other = params_of(build_model(tiny_config(num_hidden_layers=1), rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="different parameters"):
    streamed_prior_distance(reader, other, draws.perturbation_mask(other))
