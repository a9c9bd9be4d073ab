"""Tests for pacbayes.pipeline: tiny random checkpoints and JSONL files in temp folders."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pacbayes import bounds, pipeline
from pacbayes.certificate import certify
from pacbayes.models import ModelConfig, build_model, load_pretrained, save_pretrained

VOCAB = 32
SIGMA = 0.02
# One step shape for every run: chunk size 1, 8 draws in parallel (sharded over the 8 CPU
# devices by mesh="auto"), so the model's perturbed forward compiles once per process.
RUN = dict(sigma=SIGMA, sigma_prior=SIGMA, chunk_size=1, draws_per_step=8, progress=False)


def tiny_config(hidden=16):
  return ModelConfig(model_type="llama", vocab_size=VOCAB, hidden_size=hidden,
                     intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=1, max_position_embeddings=64)


def write_rows(path, n, seed, difficulty=None, length=6):
  rng = np.random.default_rng(seed)
  with open(path, "w") as f:
    for i in range(n):
      row = {"input_ids": rng.integers(1, VOCAB, size=length).tolist()}
      if difficulty is not None:
        row["difficulty"] = int(difficulty[i % len(difficulty)])
      f.write(json.dumps(row) + "\n")
  return str(path)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
  """Prior, posterior = prior + 1e-3 (every weight), and a wider model."""
  root = tmp_path_factory.mktemp("ckpt")
  cfg = tiny_config()
  model = build_model(cfg, rngs=nnx.Rngs(0))
  save_pretrained(model, cfg, root / "prior")
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  moved = jax.tree.map(lambda x: x + jnp.asarray(1e-3, x.dtype), params)
  save_pretrained(nnx.merge(graphdef, moved, rest), cfg, root / "posterior")
  wide = tiny_config(hidden=24)
  save_pretrained(build_model(wide, rngs=nnx.Rngs(1)), wide, root / "wide")
  train = write_rows(root / "train.jsonl", 24, 0, difficulty=[1, 2, 3])
  test = write_rows(root / "test.jsonl", 24, 1, difficulty=[2, 3, 3])
  plain = write_rows(root / "plain.jsonl", 24, 2)
  empty = root / "empty.jsonl"
  empty.write_text("")
  return {k: str(root / k) for k in ("prior", "posterior", "wide")} | {
      "train": train, "test": test, "plain": plain, "empty": str(empty)}


def sq_distance(a_dir, b_dir):
  """||w_b - w_a||^2 in float64 from the loaded checkpoints (independent of pacbayes.kl)."""
  pa = jax.tree.leaves(nnx.split(load_pretrained(a_dir)[0], nnx.Param, ...)[1])
  pb = jax.tree.leaves(nnx.split(load_pretrained(b_dir)[0], nnx.Param, ...)[1])
  return sum(float(np.sum((np.asarray(y, np.float64) - np.asarray(x, np.float64)) ** 2))
             for x, y in zip(pa, pb, strict=True)), sum(int(np.size(x)) for x in pa)


def test_kl_closed_form_and_terms(ckpts):
  cert = pipeline.run_bound(ckpts["prior"], ckpts["posterior"], ckpts["train"], **RUN)
  d2, count = sq_distance(ckpts["prior"], ckpts["posterior"])
  assert cert.num_params == count and cert.n == 24
  assert cert.kl == pytest.approx(d2 / (2 * SIGMA**2), rel=1e-6)
  assert cert.grid_size == 1 and cert.sigma_p == SIGMA
  # the draws use sigma in float32, and the KL describes that same Q
  assert cert.sigma_q == float(np.float32(SIGMA))
  assert cert.bound == cert.emp_risk + cert.epsilon + cert.g_gen + cert.g_ext
  assert cert.g_ext == 0.0 and cert.g_ext_kind == "none"
  # The terms against independent formulas (delta split in halves without a test set).
  n, m, d = cert.n, cert.num_mc, cert.delta
  assert m == 24 and cert.extra["chunk_size"] == 1
  up = float(bounds.kl_inv_upper(cert.emp_risk, math.log(2 / (d / 2)) / m))
  assert cert.epsilon == pytest.approx(up - cert.emp_risk, abs=1e-9)
  c = (cert.kl + math.log(2 * math.sqrt(n) / (d / 2))) / n
  assert cert.g_gen == pytest.approx(float(bounds.kl_inv_upper(up, c)) - up, abs=1e-9)
  assert 0.0 <= cert.extra["unperturbed_risk"] <= 1.0


def test_same_seed_same_report_and_g_ext(ckpts):
  a = pipeline.run_bound(ckpts["prior"], ckpts["posterior"], ckpts["train"], ckpts["test"],
                         seed=3, **RUN)
  b = pipeline.run_bound(ckpts["prior"], ckpts["posterior"], ckpts["train"], ckpts["test"],
                         seed=3, **RUN)
  strip = lambda c: {k: v for k, v in c.to_dict().items() if k != "extra"} | {
      "extra": {k: v for k, v in c.extra.items() if "seconds" not in k}}
  assert strip(a) == strip(b)
  assert a.g_ext_kind == "certified under difficulty shift" and 0 < a.g_ext <= 1
  assert a.delta_ext == pytest.approx(a.delta / 3)
  assert a.extra["shift"]["feature"] == "difficulty"
  # Without difficulty on the test side: the n-gram classifier's estimate.
  # Run on one device (mesh=None) instead of the 8-device mesh: the same draws and numbers.
  c = pipeline.run_bound(ckpts["prior"], ckpts["posterior"], ckpts["train"], ckpts["plain"],
                         seed=3, mesh=None, **RUN)
  assert c.g_ext_kind == "estimate" and c.extra["shift"]["feature"] == "ngram"
  assert c.emp_risk == a.emp_risk and c.kl == a.kl


def test_bad_inputs(ckpts):
  p, q, tr = ckpts["prior"], ckpts["posterior"], ckpts["train"]
  with pytest.raises(ValueError, match="different architectures: .*hidden_size"):
    pipeline.run_bound(p, ckpts["wide"], tr, **RUN)
  with pytest.raises(ValueError, match="sigma"):
    pipeline.run_bound(p, q, tr, **{**RUN, "sigma": 0.0})
  with pytest.raises(ValueError, match="sigma_prior"):
    pipeline.run_bound(p, q, tr, **{**RUN, "sigma_prior": -1.0})
  for bad in (0.0, 1.0, 1.5):
    with pytest.raises(ValueError, match="delta"):
      pipeline.run_bound(p, q, tr, delta=bad, **RUN)
  with pytest.raises(ValueError, match="empty"):
    pipeline.run_bound(p, q, ckpts["empty"], **RUN)
  with pytest.raises(ValueError, match="mc_scheme"):
    pipeline.run_bound(p, q, tr, mc_scheme="half", **RUN)
  with pytest.raises(ValueError, match="infinite"):
    pipeline.run_bound(p, q, tr, exclude="*norm*", **RUN)


# ------------------------------------------------------------- certify_params on a toy


def zero_one(params, batch):
  margin = batch["y"] * (batch["x"] @ params["w"])
  return (margin <= 0).astype(jnp.float32)


def toy(n=64, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 4)).astype(np.float32)
  w = rng.normal(size=(4,)).astype(np.float32)
  return {"w": jnp.asarray(w)}, {"x": x, "y": np.sign(x @ w).astype(np.float32)}


def test_certify_params_search_and_grid():
  post, data = toy()
  prior = {"w": post["w"] * 0.5}
  grid = [0.1, 0.3, 1.0, 3.0]
  cert = pipeline.certify_params(
      zero_one, prior, post, data, key=jax.random.key(0), sigma_grid=grid, chunk_size=8,
      batch_size=8, progress=False, loss_name="zero_one")
  assert cert.grid_size == 4 and cert.sigma_p in grid and cert.sigma_q > 0
  assert cert.num_mc == 8 and cert.loss == "zero_one"
  assert cert.extra["sigma_search"]["risk"] <= cert.extra["sigma_search"]["unperturbed"] + 0.02
  # The chosen prior minimises the bound (with ln 4 paid) over the grid.
  singles = [pipeline.certify_params(
      zero_one, prior, post, data, key=jax.random.key(0), sigma_q=cert.sigma_q,
      sigma_prior=s, chunk_size=8, batch_size=8, progress=False) for s in grid]
  assert all(c.emp_risk == cert.emp_risk for c in singles)
  totals = [certify(c.emp_risk, c.num_mc, c.kl, c.n, delta=0.05, grid_size=4).bound
            for c in singles]
  assert cert.bound == pytest.approx(min(totals), rel=1e-12)
  assert cert.sigma_p == grid[int(np.argmin(totals))]
  with pytest.raises(ValueError, match="different parameters"):
    pipeline.certify_params(zero_one, {"v": prior["w"]}, post, data, key=jax.random.key(0),
                            sigma_q=0.1, sigma_prior=0.1, progress=False)
  with pytest.raises(ValueError, match="shape"):
    pipeline.certify_params(zero_one, {"w": jnp.zeros(5)}, post, data, key=jax.random.key(0),
                            sigma_q=0.1, sigma_prior=0.1, progress=False)
  with pytest.raises(ValueError, match="empty"):
    pipeline.certify_params(zero_one, prior, post, {"x": data["x"][:0], "y": data["y"][:0]},
                            key=jax.random.key(0), sigma_q=0.1, sigma_prior=0.1,
                            progress=False)
  with pytest.raises(ValueError, match="sigma_grid"):
    pipeline.certify_params(zero_one, prior, post, data, key=jax.random.key(0), sigma_q=0.1,
                            sigma_grid=[0.1, 0.0], progress=False)
