"""Lab: SFT/DFT losses and steps, slice evaluation, the subspace, cache resume, a micro study."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import pacbayes  # noqa: F401  (x64 on)
from pacbayes.data import synthetic
from pacbayes.lab import cache, study, subspace
from pacbayes.lab import evaluate as ev
from pacbayes.lab import train as tr
from pacbayes.models import ModelConfig, build_model


def _tiny_model(seed=0):
  cfg = ModelConfig(model_type="llama", vocab_size=synthetic.VOCAB_SIZE, hidden_size=16,
                    intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                    max_position_embeddings=128)
  return build_model(cfg, rngs=nnx.Rngs(seed))


def _rows(n, ops, seed=0):
  return synthetic.generate_dataset(n, ops, seed=seed, modulus=5)


def _train_arrays(n=16, ops=(1, 2)):
  ds = study._to_dataset(_rows(n, list(ops)), max(ops), full_loss=False, source="t")
  return study._arrays(ds)


def _np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def test_token_loss_ce_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 7)).astype(np.float32)
  ids = rng.integers(0, 7, size=(3, 5)).astype(np.int32)
  mask = (rng.random((3, 5)) < 0.7).astype(np.int32)
  mask[:, 0] = 0
  mask[0, 1] = 1
  got = jax.jit(lambda a, b, c: tr.token_loss(a, b, c, method="ce"))(logits, ids, mask)
  lp = _np_log_softmax(logits)[:, :-1]
  nll = -np.take_along_axis(lp, ids[:, 1:, None], axis=-1)[..., 0]
  want = (nll * mask[:, 1:]).sum() / mask[:, 1:].sum()
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_dft_weights_are_stop_gradient_p():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(2, 6, 5)), jnp.float32)
  ids = jnp.asarray(rng.integers(0, 5, size=(2, 6)), jnp.int32)
  mask = jnp.ones((2, 6), jnp.int32).at[:, 0].set(0)
  p_target = np.exp(np.take_along_axis(_np_log_softmax(logits)[:, :-1],
                                       np.asarray(ids)[:, 1:, None], axis=-1)[..., 0])
  np.testing.assert_allclose(np.asarray(tr.dft_token_weights(logits, ids)), p_target, rtol=1e-5)
  # Value: mean of p * (-log p); gradient: that of -mean(p) (the weight is not differentiated).
  value = tr.token_loss(logits, ids, mask, method="dft")
  np.testing.assert_allclose(float(value), np.mean(-p_target * np.log(p_target)), rtol=1e-5)
  g_dft = jax.grad(lambda x: tr.token_loss(x, ids, mask, method="dft"))(logits)
  g_ref = jax.grad(lambda x: -jnp.mean(jnp.exp(tr.target_log_probs(x, ids))))(logits)
  np.testing.assert_allclose(np.asarray(g_dft), np.asarray(g_ref), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("method", ["ce", "dft"])
def test_one_step_reduces_the_objective_on_a_batch(method):
  # CE minimises -log p; DFT's gradient is -grad p, so it raises the mean target probability.
  model = _tiny_model()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  apply = tr.model_apply(graphdef, rest)
  data = _train_arrays(n=8)
  batch = {k: jnp.asarray(v) for k, v in data.items()}

  @jax.jit
  def objective(p):
    logits = apply(p, batch["input_ids"], batch["attention_mask"])
    if method == "ce":
      return tr.token_loss(logits, batch["input_ids"], batch["loss_mask"], method="ce")
    prob = jnp.exp(tr.target_log_probs(logits, batch["input_ids"]))
    mask = batch["loss_mask"][:, 1:].astype(jnp.float32)
    return -jnp.sum(prob * mask) / jnp.sum(mask)

  before = float(objective(params))
  cfg = tr.TrainConfig(steps=1, batch_size=8, learning_rate=1e-3, method=method)
  res = tr.train(apply, params, data, cfg, key=jax.random.key(0), progress=False)
  assert res.losses.shape == (1,)
  assert float(objective(res.params)) < before


def test_learning_rate_schedule():
  cfg = tr.TrainConfig(steps=10, batch_size=1, learning_rate=1.0, warmup_steps=3,
                       end_lr_ratio=0.1)
  lr = tr.learning_rates(cfg)
  assert lr[0] < lr[1] < lr[2] <= 1.0
  assert lr[3] == pytest.approx(1.0)
  assert lr[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 6 / 7)), rel=1e-5)
  assert np.all(np.diff(lr[3:]) <= 0)


def test_train_config_rejects_bad_values():
  with pytest.raises(ValueError, match="method"):
    tr.TrainConfig(steps=1, batch_size=1, learning_rate=1.0, method="rl")
  with pytest.raises(ValueError, match="steps"):
    tr.TrainConfig(steps=0, batch_size=1, learning_rate=1.0)


def test_batch_indices_cover_epochs():
  idx = tr.batch_indices(5, 4, 5, key=jax.random.key(0))  # 20 rows = 4 epochs of 5
  assert idx.shape == (5, 4)
  for e in range(4):
    assert sorted(idx.ravel()[5 * e:5 * (e + 1)]) == list(range(5))


def test_answer_grader_on_reference_completions():
  rows = _rows(6, [1, 2])
  tok = synthetic.SyntheticTokenizer()
  good = np.array([r["completion_ids"] for r in rows if r["difficulty"] == 1])
  answers = [r["answer"] for r in rows if r["difficulty"] == 1]
  assert ev.answer_correct(good, answers, tokenizer=tok).all()
  wrong = [str((int(a) + 1) % 5) for a in answers]
  assert not ev.answer_correct(good, wrong, tokenizer=tok).any()


def test_slice_evaluation_on_a_tiny_model():
  model = _tiny_model()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  rows = _rows(4, [1]) + _rows(4, [2], seed=1)
  test = ev.make_slice_set(rows, {1: 0.25, 2: 0.75})
  assert test.ops == [1, 2]
  assert len({ds.max_length for ds in test.slices.values()}) == 1
  loss_fn = ev.error_loss_fn(tr.model_apply(graphdef, rest))
  out = ev.evaluate_model(model, loss_fn, test, batch_size=4, generate_batch_size=3)
  assert set(out["accuracy_by_slice"]) == {"1", "2"}
  acc = out["accuracy_by_slice"]
  assert out["accuracy"] == pytest.approx(0.25 * acc["1"] + 0.75 * acc["2"])
  risk = out["risk_by_slice"]
  assert 0 <= risk["1"] <= 1 and 0 <= risk["2"] <= 1
  # The teacher-forced risk equals a direct per-row token error average.
  logits = model(test.slices[2].input_ids, attention_mask=test.slices[2].attention_mask)
  from pacbayes.losses import token_error

  direct = float(np.mean(token_error(logits, test.slices[2].input_ids,
                                     test.slices[2].loss_mask)))
  assert risk["2"] == pytest.approx(direct, abs=1e-6)
  with pytest.raises(ValueError, match="mixture"):
    ev.make_slice_set(rows, {1: 1.0})


def test_subspace_projection_is_orthonormal():
  params = {"a": jnp.zeros((3, 4), jnp.float32), "b": jnp.ones((5,), jnp.float32)}
  sub = subspace.make_subspace(params, 4, key=jax.random.key(0))
  assert sub.num_weights == 17
  np.testing.assert_array_equal(
    np.asarray(subspace.expand(sub, params, jnp.zeros(4))["b"]), np.ones(5))
  cols = []
  for i in range(4):
    e = jnp.zeros(4, jnp.float32).at[i].set(1.0)
    delta = subspace.expand(sub, jax.tree.map(jnp.zeros_like, params), e)
    cols.append(np.concatenate([np.ravel(x) for x in jax.tree.leaves(delta)]))
  gram = np.stack(cols) @ np.stack(cols).T
  np.testing.assert_allclose(gram, np.eye(4), atol=1e-6)


def test_params_cache_round_trip(tmp_path):
  params = {"w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3), "z": {"v": jnp.ones(2)}}
  cache.save_params(tmp_path / "p.npz", params)
  back = cache.load_params(tmp_path / "p.npz", params)
  np.testing.assert_array_equal(np.asarray(back["w"]), np.asarray(params["w"]))
  assert cache.load_params(tmp_path / "p.npz", {"w": jnp.zeros((3, 3))}) is None
  assert cache.load_params(tmp_path / "missing.npz", params) is None
  assert cache.config_hash({"a": (1, 2)}) == cache.config_hash({"a": [1, 2]})


def test_study_config_checks_and_presets():
  quick = study.StudyConfig.preset("quick")
  assert quick.name == "quick" and quick.bucket_names == ["easy", "medium", "hard"]
  full = study.StudyConfig.preset("full")
  assert full.name == "full" and max(full.sizes) > max(quick.sizes)
  with pytest.raises(ValueError, match="preset"):
    study.StudyConfig.preset("huge")
  with pytest.raises(ValueError, match="buckets"):
    study.StudyConfig(buckets=(("easy", 3, 4), ("hard", 1, 2)))
  with pytest.raises(ValueError, match="dft_sizes"):
    study.StudyConfig(dft_sizes=(7,))
  mix = study.test_mixture(quick)
  assert sum(mix.values()) == pytest.approx(1.0)
  probs = [mix[k] for k in sorted(mix)]
  assert probs == sorted(probs)  # leans harder
  for cfg in (quick, full):
    # a fixed fine-tuning step budget for every n, and posterior scales the prior grid holds
    assert len({cfg.ft_steps(n) for n in cfg.sizes}) == 1
    assert set(cfg.sigma_q_grid) <= set(cfg.sigma_prior_grid)


MICRO = dict(
  test_ops=(1, 3), buckets=(("easy", 1, 1), ("medium", 2, 2), ("hard", 3, 3)),
  test_per_slice=2, sizes=(6, 8), pad_to_test_length=True, hidden_size=16,
  intermediate_size=32, num_layers=1, num_heads=2, pretrain_ops=(1, 2),
  strong_pretrain_ops=(1, 3), pretrain_steps=2,
  strong_pretrain_steps=3, pretrain_examples=16, pretrain_batch_size=4, ft_batch_size=4,
  ft_min_steps=1, ft_max_steps=1, dft_buckets=("hard",), dft_sizes=(6, 8), strong_sizes=(6,),
  ft_subspace_dim=8, sigma_prior_grid=(0.1, 1.0), sigma_q_grid=(0.1,), sigma_subset=4,
  test_draws=1, eval_batch_size=4, generate_batch_size=8,
)


@pytest.mark.slow
def test_micro_study_schema_and_resume(tmp_path, monkeypatch):
  cfg = study.StudyConfig.preset("quick", **MICRO)
  res = study.run_study(cfg, tmp_path, progress=False)
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert on_disk["schema"] == "pacbayes.lab/1" and on_disk["preset"] == "quick"
  assert set(on_disk["config"]) == {f for f in cfg.to_dict()}
  assert list(on_disk["buckets"]) == ["easy", "medium", "hard"]
  assert on_disk["sizes"] == [6, 8]
  assert sum(on_disk["test_mixture"].values()) == pytest.approx(1.0)
  for name in ("base", "strong"):
    b = on_disk["bases"][name]
    assert {"pretrain_ops", "steps", "accuracy", "accuracy_by_slice", "test_risk"} <= set(b)
  cells = on_disk["cells"]
  assert len(cells) == 6 + 2 + 3
  keys = {"base", "method", "bucket", "difficulty", "n", "seed", "accuracy",
          "accuracy_by_slice", "test_risk", "test_risk_point", "certificate", "train_time_s"}
  g_ext = {}
  for c in cells:
    assert keys <= set(c)
    cert = c["certificate"]
    assert cert["g_ext_kind"] == "certified under difficulty shift"
    assert cert["bound"] == pytest.approx(
      cert["emp_risk"] + cert["epsilon"] + cert["g_gen"] + cert["g_ext"])
    assert set(c["accuracy_by_slice"]) == {"1", "2", "3"}
    g_ext[c["bucket"]] = cert["g_ext"]
  assert g_ext["easy"] > g_ext["medium"] > g_ext["hard"]  # the test mixture leans harder
  # TV(p_test, bucket) computed by hand: p_test = (1, 2, 3) / 6.
  assert g_ext["hard"] == pytest.approx(0.5)

  # Second run: everything comes from the cache; training must not be called.
  def boom(*a, **k):
    raise AssertionError("train called on a cached study")

  monkeypatch.setattr(tr, "train", boom)
  again = study.run_study(cfg, tmp_path, progress=False)
  assert [c["accuracy"] for c in again["cells"]] == [c["accuracy"] for c in res["cells"]]
  assert [c["certificate"]["bound"] for c in again["cells"]] == [
    c["certificate"]["bound"] for c in res["cells"]]
