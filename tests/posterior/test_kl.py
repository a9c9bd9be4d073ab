"""Tests for pacbayes.posterior.kl: Gaussian KL over pytrees and streamed over safetensors."""

import json
import math
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import mpmath
import numpy as np
import pytest
from safetensors.numpy import save_file
from scipy import integrate, stats

from pacbayes.models import ModelConfig
from pacbayes.models.params import hf_shapes
from pacbayes.posterior import kl as klm
from pacbayes.posterior.kl import (
  CheckpointError,
  SafetensorsFolder,
  checkpoint_kl,
  gaussian_kl,
  isotropic_kl,
)

# ------------------------------------------------------------------------------------------
# References.


def np_kl(mu_q, mu_p, s_q, s_p):
  """Closed form in NumPy float64, elementwise sigmas broadcast against the means."""
  mu_q, mu_p = np.asarray(mu_q, np.float64), np.asarray(mu_p, np.float64)
  s_q = np.broadcast_to(np.asarray(s_q, np.float64), mu_q.shape)
  s_p = np.broadcast_to(np.asarray(s_p, np.float64), mu_q.shape)
  return 0.5 * np.sum(s_q**2 / s_p**2 + (mu_q - mu_p) ** 2 / s_p**2 - 1.0 + np.log(s_p**2 / s_q**2))


def matrix_kl(mu_q, mu_p, cov_q, cov_p):
  """Textbook multivariate form: trace, Mahalanobis term and log-determinants."""
  k = mu_q.size
  inv_p = np.linalg.inv(cov_p)
  diff = mu_p - mu_q
  _, logdet_p = np.linalg.slogdet(cov_p)
  _, logdet_q = np.linalg.slogdet(cov_q)
  return 0.5 * (np.trace(inv_p @ cov_q) + diff @ inv_p @ diff - k + logdet_p - logdet_q)


def tree(rng, dtype=np.float64):
  return {
    "embed": rng.normal(size=(6, 4)).astype(dtype),
    "layers": [
      {"w": rng.normal(size=(4, 4)).astype(dtype), "b": rng.normal(size=(4,)).astype(dtype)},
      {"w": rng.normal(size=(4, 4)).astype(dtype), "b": rng.normal(size=(4,)).astype(dtype)},
    ],
    "scale": np.asarray(rng.normal(), dtype=dtype),
  }


def flat(t):
  return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(t)])


# ------------------------------------------------------------------------------------------
# gaussian_kl.


@pytest.mark.parametrize("dtype", [np.float64, np.float32, ml_dtypes.bfloat16])
@pytest.mark.parametrize("jit", [False, True])
def test_gaussian_kl_isotropic_matches_closed_form(dtype, jit):
  rng = np.random.default_rng(0)
  mu_p = tree(rng, dtype)
  mu_q = jax.tree.map(lambda x: (x + 0.05 * rng.normal(size=x.shape)).astype(dtype), mu_p)
  fn = jax.jit(gaussian_kl) if jit else gaussian_kl
  got = fn(mu_q, mu_p, 0.03, 0.07)
  assert got.dtype == jnp.float64
  want = np_kl(flat(mu_q), flat(mu_p), 0.03, 0.07)
  np.testing.assert_allclose(float(got), want, rtol=1e-12)


def test_gaussian_kl_diagonal_matches_matrix_form():
  rng = np.random.default_rng(1)
  mu_p, mu_q = tree(rng), tree(rng)
  s_q = jax.tree.map(lambda x: np.exp(rng.normal(size=np.shape(x))) * 0.1, mu_q)
  s_p = jax.tree.map(lambda x: np.asarray(0.05 + rng.uniform()), mu_q)  # one scale per leaf
  got = float(gaussian_kl(mu_q, mu_p, s_q, s_p))
  sq_flat = flat(s_q)
  sp_flat = np.concatenate(
    [
      np.full(np.size(m), float(s))
      for m, s in zip(jax.tree.leaves(mu_q), jax.tree.leaves(s_p), strict=True)
    ]
  )
  want = matrix_kl(flat(mu_q), flat(mu_p), np.diag(sq_flat**2), np.diag(sp_flat**2))
  np.testing.assert_allclose(got, want, rtol=1e-10)


def test_gaussian_kl_matches_numerical_integration():
  # KL of a product measure is the sum of 1-D KLs; integrate each one with scipy.
  mu_q, mu_p = np.array([0.3, -1.2, 0.0]), np.array([0.1, -0.7, 0.4])
  s_q, s_p = np.array([0.5, 1.3, 0.8]), 0.9
  want = 0.0
  for m_q, m_p, sd in zip(mu_q, mu_p, s_q, strict=True):
    q, p = stats.norm(m_q, sd), stats.norm(m_p, s_p)
    value, _ = integrate.quad(lambda x, q=q, p=p: q.pdf(x) * (q.logpdf(x) - p.logpdf(x)), -20, 20)
    want += value
  np.testing.assert_allclose(float(gaussian_kl(mu_q, mu_p, s_q, s_p)), want, rtol=1e-9)


def test_gaussian_kl_near_equal_sigmas_matches_mpmath():
  # r - 1 - ln r cancels badly near r = 1; the expm1 form must keep relative accuracy.
  n, s_p, s_q = 10**6, 0.01, 0.01 * (1 + 1e-7)
  mpmath.mp.dps = 50
  r = (mpmath.mpf(s_q) / mpmath.mpf(s_p)) ** 2
  want = float(0.5 * n * (r - 1 - mpmath.log(r)))
  got = float(gaussian_kl(jnp.zeros((n,)), jnp.zeros((n,)), s_q, s_p))
  np.testing.assert_allclose(got, want, rtol=1e-7)


def test_gaussian_kl_of_identical_gaussians_is_zero():
  rng = np.random.default_rng(2)
  mu = tree(rng, np.float32)
  assert float(gaussian_kl(mu, mu, 0.02, 0.02)) == 0.0
  s = jax.tree.map(lambda x: np.full(np.shape(x), 0.3), mu)
  assert float(gaussian_kl(mu, mu, s, s)) == 0.0


def test_gaussian_kl_gradients():
  rng = np.random.default_rng(3)
  mu_q, mu_p = rng.normal(size=(5,)), rng.normal(size=(5,))
  s_q, s_p = np.exp(rng.normal(size=(5,))) * 0.2, 0.4
  g_mu, g_s = jax.grad(gaussian_kl, argnums=(0, 2))(mu_q, mu_p, s_q, s_p)
  np.testing.assert_allclose(g_mu, (mu_q - mu_p) / s_p**2, rtol=1e-12)
  np.testing.assert_allclose(g_s, s_q / s_p**2 - 1.0 / s_q, rtol=1e-12)


def test_isotropic_kl_and_kl_at_agree_with_gaussian_kl():
  rng = np.random.default_rng(4)
  mu_q, mu_p = rng.normal(size=(50,)), rng.normal(size=(50,))
  sq = float(np.sum((mu_q - mu_p) ** 2))
  for s_q, s_p in [(0.1, 0.2), (0.5, 0.5), (1.0, 0.3)]:
    want = float(gaussian_kl(mu_q, mu_p, s_q, s_p))
    np.testing.assert_allclose(float(isotropic_kl(sq, 50, s_q, s_p)), want, rtol=1e-12)
  result = checkpoint_kl({"w": mu_p}, {"w": mu_q}, 0.1, 0.2)
  np.testing.assert_allclose(result.kl_at(1.0, 0.3), float(gaussian_kl(mu_q, mu_p, 1.0, 0.3)))


def test_gaussian_kl_rejects_mismatched_trees():
  rng = np.random.default_rng(5)
  mu = tree(rng)
  other = dict(mu, extra=np.zeros(3))
  with pytest.raises(ValueError, match=r"\['extra'\].*mu_p only"):
    gaussian_kl(mu, other, 0.1, 0.1)
  bad_shape = jax.tree.map(lambda x: x, mu)
  bad_shape["layers"][1]["b"] = np.zeros(5)
  with pytest.raises(ValueError, match=r"\['layers'\]\[1\]\['b'\].*\(4,\).*\(5,\)"):
    gaussian_kl(mu, bad_shape, 0.1, 0.1)
  with pytest.raises(ValueError, match="sigma_q.*structure"):
    gaussian_kl(mu, mu, {"embed": 0.1}, 0.1)
  s = jax.tree.map(lambda x: np.full(np.shape(x), 0.1), mu)
  s["embed"] = np.full((3,), 0.1)
  with pytest.raises(ValueError, match=r"sigma_q at leaf \['embed'\] has shape"):
    gaussian_kl(mu, mu, s, 0.1)


@pytest.mark.parametrize("bad", [0.0, -0.1, float("nan"), float("inf")])
def test_gaussian_kl_rejects_bad_sigma(bad):
  mu = {"w": np.zeros(3)}
  with pytest.raises(ValueError, match="sigma_q must be positive"):
    gaussian_kl(mu, mu, bad, 0.1)
  with pytest.raises(ValueError, match="sigma_p must be positive"):
    gaussian_kl(mu, mu, 0.1, bad)
  with pytest.raises(ValueError, match=r"sigma_q at leaf \['w'\] must be positive"):
    gaussian_kl(mu, mu, {"w": np.array([0.1, bad, 0.1])}, 0.1)


# ------------------------------------------------------------------------------------------
# Checkpoint folders.


# A tiny untied Llama: every test folder is a complete checkpoint of this architecture.
CONFIG = ModelConfig(model_type="llama", vocab_size=40, hidden_size=8, intermediate_size=16,
                     num_hidden_layers=2, num_attention_heads=2)
SHAPES = hf_shapes(CONFIG)


def random_weights(rng, dtype=np.float32, shapes=SHAPES):
  return {name: rng.normal(size=shape).astype(dtype) for name, shape in shapes.items()}


def perturbed(weights, rng, scale=0.01, keep=()):
  return {
    k: v if k in keep else (v.astype(np.float64) + scale * rng.normal(size=v.shape)).astype(v.dtype)
    for k, v in weights.items()
  }


def write_checkpoint(folder, weights, num_shards=1, config=True):
  os.makedirs(folder, exist_ok=True)
  if config:
    with open(os.path.join(folder, "config.json"), "w") as f:
      json.dump((CONFIG if config is True else config).to_hf_config(), f)
  if num_shards == 1:
    save_file(weights, os.path.join(folder, "model.safetensors"))
    return folder
  names = list(weights)
  weight_map = {}
  for i in range(num_shards):
    shard = f"model-{i + 1:05d}-of-{num_shards:05d}.safetensors"
    part = {k: weights[k] for k in names[i::num_shards]}
    save_file(part, os.path.join(folder, shard))
    weight_map.update({k: shard for k in part})
  index = {"metadata": {"total_size": sum(v.nbytes for v in weights.values())}}
  index["weight_map"] = weight_map
  with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
    json.dump(index, f)
  return folder


def closed_form(prior, posterior, s_q, s_p, names=None):
  names = list(prior) if names is None else names
  a = np.concatenate([np.asarray(prior[k], np.float64).ravel() for k in names])
  b = np.concatenate([np.asarray(posterior[k], np.float64).ravel() for k in names])
  return np_kl(b, a, s_q, s_p), a.size, float(np.sum((b - a) ** 2))


@pytest.mark.parametrize("shards", [(1, 1), (3, 3), (1, 4), (2, 1)])
def test_checkpoint_kl_matches_closed_form(tmp_path, shards):
  rng = np.random.default_rng(10)
  prior = random_weights(rng)
  post = perturbed(prior, rng)
  write_checkpoint(tmp_path / "pre", prior, shards[0])
  write_checkpoint(tmp_path / "ft", post, shards[1])
  result = checkpoint_kl(tmp_path / "pre", tmp_path / "ft", 0.004, 0.02)
  want, count, sq = closed_form(prior, post, 0.004, 0.02)
  np.testing.assert_allclose(result.kl, want, rtol=1e-9)
  np.testing.assert_allclose(result.sq_distance, sq, rtol=1e-9)
  assert result.num_params == count
  assert sorted(t.name for t in result.tensors) == sorted(prior)
  assert result.excluded == ()
  assert (result.sigma_q, result.sigma_p) == (0.004, 0.02)
  for t in result.tensors:
    np.testing.assert_allclose(t.kl, closed_form(prior, post, 0.004, 0.02, [t.name])[0])
    assert t.shape == prior[t.name].shape and t.count == prior[t.name].size
  np.testing.assert_allclose(math.fsum(t.kl for t in result.tensors), result.kl, rtol=1e-15)


def test_checkpoint_kl_small_blocks_and_memory_sources_agree(tmp_path, monkeypatch):
  rng = np.random.default_rng(11)
  prior = random_weights(rng)
  post = perturbed(prior, rng)
  write_checkpoint(tmp_path / "pre", prior, 2)
  write_checkpoint(tmp_path / "ft", post, 3)
  whole = checkpoint_kl(tmp_path / "pre", tmp_path / "ft", 0.01, 0.03)
  monkeypatch.setattr(klm, "_CHUNK_ELEMS", 20)  # several row blocks per tensor
  blocked = checkpoint_kl(tmp_path / "pre", tmp_path / "ft", 0.01, 0.03)
  in_memory = checkpoint_kl(prior, post, 0.01, 0.03)
  direct = checkpoint_kl(tmp_path / "pre", tmp_path / "ft", 0.01, 0.03, direct=True)
  assert direct.kl == blocked.kl
  direct_folders = checkpoint_kl(
    SafetensorsFolder(tmp_path / "pre", direct=True), SafetensorsFolder(tmp_path / "ft"), 0.01, 0.03
  )
  assert direct_folders.kl == whole.kl
  np.testing.assert_allclose(blocked.kl, whole.kl, rtol=1e-13)
  np.testing.assert_allclose(in_memory.kl, whole.kl, rtol=1e-13)


def test_checkpoint_kl_per_tensor_sigma(tmp_path):
  rng = np.random.default_rng(12)
  prior = random_weights(rng)
  post = perturbed(prior, rng)
  scales = {k: 0.001 * (i + 1) for i, k in enumerate(prior)}
  by_dict = checkpoint_kl(prior, post, scales, 0.05)
  by_call = checkpoint_kl(prior, post, scales.__getitem__, 0.05)
  want = sum(closed_form(prior, post, scales[k], 0.05, [k])[0] for k in prior)
  np.testing.assert_allclose(by_dict.kl, want, rtol=1e-9)
  assert by_call.kl == by_dict.kl and by_dict.sigma_q is None and by_dict.sigma_p == 0.05
  with pytest.raises(ValueError, match="sigma_q has no value for perturbed tensor 'lm_head"):
    checkpoint_kl(prior, post, {k: v for k, v in scales.items() if k != "lm_head.weight"}, 0.05)
  with pytest.raises(ValueError, match=r"sigma_q\['model.norm.weight'\] must be positive"):
    checkpoint_kl(prior, post, dict(scales, **{"model.norm.weight": 0.0}), 0.05)


def test_include_exclude(tmp_path):
  rng = np.random.default_rng(13)
  prior = random_weights(rng)
  frozen = ["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"]
  post = perturbed(prior, rng, keep=frozen)
  write_checkpoint(tmp_path / "pre", prior)
  write_checkpoint(tmp_path / "ft", post)
  result = checkpoint_kl(
    tmp_path / "pre", tmp_path / "ft", 0.01, 0.02, exclude=["*embed*", "lm_head.*", "*.norm.*"]
  )
  assert sorted(result.excluded) == sorted(frozen)
  moved = [k for k in prior if k not in frozen]
  want, count, _ = closed_form(prior, post, 0.01, 0.02, moved)
  np.testing.assert_allclose(result.kl, want, rtol=1e-9)
  assert result.num_params == count

  with pytest.raises(ValueError, match=r"'model\.layers\.1\..*infinite"):
    # include leaves layer 1 unperturbed, but it moved.
    checkpoint_kl(tmp_path / "pre", tmp_path / "ft", 0.01, 0.02, include=["model.layers.0.*"])
  same1 = dict(post)
  for k in prior:
    if not k.startswith("model.layers.0."):
      same1[k] = prior[k]
  result = checkpoint_kl(prior, same1, 0.01, 0.02, include=["model.layers.0.*"])
  layer0 = [k for k in prior if k.startswith("model.layers.0.")]
  assert sorted(t.name for t in result.tensors) == sorted(layer0)
  np.testing.assert_allclose(result.kl, closed_form(prior, same1, 0.01, 0.02, layer0)[0])
  with pytest.raises(ValueError, match="include: pattern 'nothing.*' matches no parameter"):
    checkpoint_kl(prior, post, 0.01, 0.02, include="nothing.*")
  with pytest.raises(ValueError, match="exclude: pattern 'transformer.wte.weight' matches no"):
    checkpoint_kl(tmp_path / "pre", tmp_path / "ft", 0.01, 0.02, exclude="transformer.wte.weight")
  with pytest.raises(ValueError, match="no parameter is left to perturb"):
    checkpoint_kl(prior, post, 0.01, 0.02, exclude="*")


def test_non_parameter_tensors_are_refused(tmp_path):
  rng = np.random.default_rng(14)
  prior = random_weights(rng)
  post = perturbed(prior, rng)
  # In memory without a config every entry is a parameter, and must be floating point.
  with pytest.raises(CheckpointError, match="parameter 'position_ids' has dtype int64"):
    checkpoint_kl(dict(prior, position_ids=np.arange(10)), dict(post, position_ids=np.arange(10)),
                  0.01, 0.02)
  # A folder: an unknown tensor is refused by name, whatever its dtype.
  write_checkpoint(tmp_path / "pre", dict(prior, position_ids=np.arange(10)))
  write_checkpoint(tmp_path / "ft", post)
  with pytest.raises(CheckpointError, match="'position_ids' is not a parameter of model_type="):
    checkpoint_kl(tmp_path / "pre", tmp_path / "ft", 0.01, 0.02)


@pytest.mark.parametrize("native", [None, False])
def test_bf16_checkpoints(tmp_path, monkeypatch, native):
  # native=False forces the raw-bytes reader that serves safetensors versions without
  # NumPy bfloat16 support; both paths must give the same bits.
  monkeypatch.setattr(SafetensorsFolder, "_native_bf16", native)
  rng = np.random.default_rng(15)
  prior = random_weights(rng, ml_dtypes.bfloat16)
  post = perturbed(prior, rng, scale=0.05)
  post["lm_head.weight"] = post["lm_head.weight"].astype(np.float32)  # mixed dtypes
  write_checkpoint(tmp_path / "pre", prior, 2)
  write_checkpoint(tmp_path / "ft", post)
  result = checkpoint_kl(tmp_path / "pre", tmp_path / "ft", 0.01, 0.05)
  np.testing.assert_allclose(result.kl, closed_form(prior, post, 0.01, 0.05)[0], rtol=1e-9)


# ------------------------------------------------------------------------------------------
# Refusals.


@pytest.fixture
def pair(tmp_path):
  rng = np.random.default_rng(20)
  prior = random_weights(rng)
  post = perturbed(prior, rng)
  return tmp_path, prior, post


def test_refuses_missing_folder_config_and_weights(pair):
  tmp, prior, post = pair
  write_checkpoint(tmp / "ft", post)
  with pytest.raises(CheckpointError, match="'.*nope' does not exist"):
    checkpoint_kl(tmp / "nope", tmp / "ft", 0.01, 0.02)
  write_checkpoint(tmp / "noconfig", prior, config=False)
  with pytest.raises(CheckpointError, match="noconfig' has no config.json"):
    checkpoint_kl(tmp / "noconfig", tmp / "ft", 0.01, 0.02)
  os.makedirs(tmp / "empty")
  (tmp / "empty" / "config.json").write_text("{}")
  with pytest.raises(CheckpointError, match="empty' has neither model.safetensors nor"):
    checkpoint_kl(tmp / "ft", tmp / "empty", 0.01, 0.02)
  with pytest.raises(ValueError):  # a ValueError for callers that catch only that
    checkpoint_kl(tmp / "ft", tmp / "empty", 0.01, 0.02)


def test_refuses_missing_shard(pair):
  tmp, prior, post = pair
  write_checkpoint(tmp / "pre", prior, num_shards=3)
  write_checkpoint(tmp / "ft", post)
  os.remove(tmp / "pre" / "model-00002-of-00003.safetensors")
  with pytest.raises(CheckpointError, match="lists shard 'model-00002-of-00003.safetensors'"):
    checkpoint_kl(tmp / "pre", tmp / "ft", 0.01, 0.02)


def test_refuses_truncated_file(pair):
  tmp, prior, _ = pair
  write_checkpoint(tmp / "cut", prior)
  path = tmp / "cut" / "model.safetensors"
  data = path.read_bytes()
  path.write_bytes(data[:-10])
  with pytest.raises(CheckpointError, match="model.safetensors: tensor .* truncated or malformed"):
    checkpoint_kl(tmp / "cut", tmp / "cut", 0.01, 0.02)


def test_refuses_mismatched_names_and_shapes(pair):
  tmp, prior, post = pair
  write_checkpoint(tmp / "pre", prior)
  renamed = dict(post)
  renamed["model.extra.weight"] = renamed.pop("model.norm.weight")
  write_checkpoint(tmp / "renamed", renamed)
  with pytest.raises(CheckpointError, match=r"renamed: tensor 'model.extra.weight' is not a param"):
    checkpoint_kl(tmp / "pre", tmp / "renamed", 0.01, 0.02)
  tied = CONFIG.replace(tie_word_embeddings=True)
  write_checkpoint(tmp / "tied", {k: v for k, v in post.items() if k != "lm_head.weight"},
                   config=tied)
  with pytest.raises(
    CheckpointError, match=r"different parameters: only in the prior: \['lm_head.weight'\]"
  ):
    checkpoint_kl(tmp / "pre", tmp / "tied", 0.01, 0.02)
  reshaped = dict(post, **{"lm_head.weight": np.zeros((8, 40), np.float32)})
  write_checkpoint(tmp / "reshaped", reshaped)
  with pytest.raises(CheckpointError, match=r"'lm_head.weight' has shape \(8, 40\).*\(40, 8\)"):
    checkpoint_kl(tmp / "pre", tmp / "reshaped", 0.01, 0.02)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("side", ["prior", "posterior"])
@pytest.mark.parametrize("excluded", [False, True])
def test_refuses_non_finite_weights(pair, value, side, excluded):
  tmp, prior, post = pair
  post = dict(post, **{"model.norm.weight": prior["model.norm.weight"]})
  target = prior if side == "prior" else post
  bad = target["model.norm.weight"].copy()
  bad[3] = value
  target["model.norm.weight"] = bad
  folder = write_checkpoint(tmp / side, target)
  other = write_checkpoint(tmp / "other", post if side == "prior" else prior)
  args = (folder, other) if side == "prior" else (other, folder)
  exclude = "*.norm.*" if excluded else None
  with pytest.raises(CheckpointError, match=f"'model.norm.weight' in '.*{side}' has non-finite"):
    checkpoint_kl(*args, 0.01, 0.02, exclude=exclude)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "x"])
def test_refuses_bad_sigma(pair, bad):
  _, prior, post = pair
  with pytest.raises(ValueError, match="sigma_q must be"):
    checkpoint_kl(prior, post, bad, 0.02)
  with pytest.raises(ValueError, match="sigma_p must be"):
    checkpoint_kl(prior, post, 0.01, bad)
  result = checkpoint_kl(prior, post, 0.01, 0.02)
  with pytest.raises(ValueError, match="sigma_p must be"):
    result.kl_at(0.01, bad)


# ------------------------------------------------------------------------------------------
# Sigma checks and non-finite values: the real cause, before any expensive work.


@pytest.mark.parametrize("value, dtype, match", [
  (1e-200, "float32", "square underflows in float64"),
  (4e-320, None, "square underflows in float64"),
  (1e160, None, "square overflows in float64"),
  (1e-50, "float32", "underflows in float32 .*rounds to 0.0"),
  (1e-39, "float32", "underflows in float32"),  # a float32 subnormal
  (1e39, "float32", "overflows in float32"),
  (1e-39, "bfloat16", "underflows in bfloat16"),
  (1e-6, "float16", "underflows in float16"),
  (0.0, "float32", "must be positive and finite"),
  (float("nan"), "float32", "must be positive and finite"),
  (True, "float32", "must be a positive number"),
  ("0.1", "float32", "must be a positive number"),
])
def test_check_sigma_names_the_cause(value, dtype, match):
  with pytest.raises(ValueError, match=f"--sigma-prior.*{match}"):
    klm.check_sigma(value, "--sigma-prior", dtype=dtype)


def test_check_sigma_accepts_usable_values():
  for value, dtype in [(1e-3, "float32"), (2e-38, "float32"), (1e-30, "bfloat16"),
                       (1e-4, "float16"), (1e-150, None), (3, "float32")]:
    assert klm.check_sigma(value, "s", dtype=dtype) == float(value)
  got = klm.check_sigmas({"--sigma": 1e-3, "--sigma-grid": [1e-4, 3e-4], "--sigma-prior": None},
                         dtype="bfloat16")
  assert got == {"--sigma": 1e-3, "--sigma-grid": (1e-4, 3e-4), "--sigma-prior": None}
  with pytest.raises(ValueError, match=r"--sigma-grid\[1\]=4e-320 is outside"):
    klm.check_sigmas({"--sigma-grid": [1e-3, 4e-320]})
  with pytest.raises(ValueError, match="--sigma-grid must hold at least one value"):
    klm.check_sigmas({"--sigma-grid": []})
  with pytest.raises(ValueError, match="dtype='float8'"):
    klm.check_sigma(0.1, "s", dtype="float8")


def test_tiny_sigma_is_refused_before_reading(pair, monkeypatch):
  tmp, prior, post = pair
  write_checkpoint(tmp / "pre", prior)
  write_checkpoint(tmp / "ft", post)

  def no_reading(*args, **kwargs):
    raise AssertionError("the checkpoints were read before the sigma check")

  monkeypatch.setattr(klm, "open_parameters", no_reading)
  for sigma in (1e-200, 4e-320):
    with pytest.raises(ValueError, match=f"sigma_p={sigma!r} is outside the usable range"):
      checkpoint_kl(tmp / "pre", tmp / "ft", 0.01, sigma)
    with pytest.raises(ValueError, match=f"sigma_p={sigma!r} is outside the usable range"):
      gaussian_kl(prior, post, 0.01, sigma)


@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_gaussian_kl_names_a_non_finite_leaf(value):
  rng = np.random.default_rng(30)
  mu = tree(rng)
  bad = jax.tree.map(np.copy, mu)
  bad["layers"][1]["w"][2, 3] = value
  with pytest.raises(ValueError, match=r"mu_q: leaf \['layers'\]\[1\]\['w'\] holds a non-finite"):
    gaussian_kl(bad, mu, 0.1, 0.2)
  with pytest.raises(ValueError, match=r"mu_p: leaf \['layers'\]\[1\]\['w'\]"):
    gaussian_kl(mu, bad, 0.1, 0.2)
  with pytest.raises(ValueError, match=r"params: leaf \['layers'\]\[1\]\['w'\]"):
    klm.check_finite(bad)
  klm.check_finite(mu)
