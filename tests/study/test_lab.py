"""Lab: SFT/DFT losses and steps, slice evaluation, the subspace, cache resume, a micro study."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import pacbayes  # noqa: F401  (x64 on)
from pacbayes.data import synthetic
from pacbayes.data.dataset import Dataset
from pacbayes.data.rows import EncodeOptions
from pacbayes.models import ModelConfig, build_model
from pacbayes.study import cache, studydata, subspace
from pacbayes.study import evaluate as ev
from pacbayes.study.config import DISJOINT, StudyConfig, seq_length
from pacbayes.study.grid import bases_needed, certified_cells, grid_cells
from pacbayes.training import trainer as tr


def _tiny_model(seed=0):
  cfg = ModelConfig(model_type="llama", vocab_size=synthetic.VOCAB_SIZE, hidden_size=16,
                    intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                    max_position_embeddings=128)
  return build_model(cfg, rngs=nnx.Rngs(seed))


def _rows(n, ops, seed=0):
  return synthetic.generate_dataset(n, ops, seed=seed, modulus=5)


def _train_arrays(n=16, ops=(1, 2)):
  ds = Dataset.from_rows(_rows(n, list(ops)), options=EncodeOptions(
    pad_length=seq_length(max(ops))), source="t")
  return studydata.arrays(ds)


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


def test_per_item_evaluation_agrees_with_the_summaries():
  model = _tiny_model()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  rows = _rows(5, [1]) + _rows(3, [2], seed=1)
  test = ev.make_slice_set(rows, {1: 0.5, 2: 0.5})
  per_item = ev.slice_correct(model, test, batch_size=3)
  acc = ev.slice_accuracy(model, test, batch_size=4)
  assert {k: float(v.mean()) for k, v in per_item.items()} == acc
  seq_fn = ev.sequence_error_fn(tr.model_apply(graphdef, rest))
  arrs = studydata.arrays(test.slices[1])
  rows_loss = ev.row_losses(seq_fn, params, arrs, batch_size=2)
  from pacbayes.losses import sequence_error

  logits = model(arrs["input_ids"], attention_mask=arrs["attention_mask"])
  np.testing.assert_array_equal(rows_loss, np.asarray(sequence_error(
    logits, arrs["input_ids"], arrs["loss_mask"])))
  # sequence error upper-bounds the greedy answer error item by item
  assert np.all(rows_loss >= 1 - per_item[1])
  q = ev.posterior_row_losses(seq_fn, params, arrs, key=jax.random.key(0), sigma=1e-6,
                              num_draws=2)
  assert q.shape == (2, 5)
  np.testing.assert_array_equal(q[0], rows_loss)


def test_study_config_checks_and_presets():
  quick = StudyConfig.preset("quick")
  assert quick.name == "quick" and quick.bucket_names == ["easy", "hard"]
  assert len(quick.seeds) >= 2 and quick.sizes == (200, 3200) and quick.num_bases >= 2
  assert quick.test_mixture() == pytest.approx({1: 1 / 3, 2: 1 / 3, 3: 1 / 3})
  assert quick.test_mixtures()["hard"] == pytest.approx({1: 1 / 14, 2: 4 / 14, 3: 9 / 14})
  assert quick.mixture("tilted", "hard") == pytest.approx({1: 1 / 7, 2: 2 / 7, 3: 4 / 7})
  assert quick.ft_lr < quick.pretrain_lr
  full = StudyConfig.preset("full")
  assert full.bucket_names == ["easiest", "easy", "medium", "hard"]
  assert StudyConfig(arms=(DISJOINT,)).mixture("disjoint", "medium") == {2: 1.0}
  with pytest.raises(ValueError, match="preset"):
    StudyConfig.preset("huge")
  with pytest.raises(ValueError, match="unknown StudyConfig field"):
    StudyConfig.preset("quick", bogus=1)
  with pytest.raises(ValueError, match="weights"):
    StudyConfig(arms=(("tilted", (("easy", (1.0, 2.0)),)),))
  with pytest.raises(ValueError, match="dft_sizes"):
    StudyConfig(dft_sizes=(7,))
  with pytest.raises(ValueError, match="certified_steps"):
    StudyConfig(certified_steps=(quick.ft_steps_for(3200),))
  with pytest.raises(ValueError, match="strong_buckets"):
    StudyConfig(strong_buckets=("bogus",))
  with pytest.raises(ValueError, match="seeds_at"):
    StudyConfig(seeds_at=(("bogus", 200, (0,)),))
  with pytest.raises(ValueError, match="seeds_at"):
    StudyConfig(seeds_at=(("easy", 7, (0,)),))
  with pytest.raises(ValueError, match="num_bases"):
    StudyConfig(num_bases=0)
  with pytest.raises(ValueError, match="mc_chunk_size"):
    StudyConfig(sizes=(8, 16), dft_sizes=(), strong_sizes=(), certified_sizes=())
  cells = grid_cells(quick)
  # 2 buckets x (12 seeds at n=200 + 6 at 3200), SFT (no DFT, no stronger base in quick)
  assert len(cells) == 2 * (len(quick.seeds_for("easy", 200)) + len(quick.seeds_for("easy", 3200)))
  assert (len(quick.seeds_for("hard", 200)), len(quick.seeds_for("hard", 3200))) == (12, 6)
  assert len({c.tag for c in cells}) == len(cells)
  assert {c.steps for c in cells} == {quick.ft_steps_for(n) for n in quick.sizes}
  cert = certified_cells(quick)
  assert all(c.certified and c.n in quick.certified_sizes for c in cert)
  assert {c.seed for c in cert} == set(quick.certified_seeds) and len(cert) == 2 * len(
    quick.certified_seeds)
  with pytest.raises(ValueError, match="power_reps"):
    StudyConfig(power_reps=-1)
  micro = StudyConfig.preset("micro")
  assert micro.bucket_names == ["easy", "medium", "hard"] and micro.seeds_for("hard", 8) == (
    0, 1, 2)
  assert bases_needed(cells) == ("base",)
  assert "strong" in bases_needed(grid_cells(full))


def test_fixed_epochs_and_seeds_per_corner():
  cfg = StudyConfig(ft_epochs=3.0, ft_min_steps=50, ft_batch_size=32, sizes=(100, 200, 3200),
                    ft_val_fraction=0.0,
                    certified_sizes=(), seeds=(0, 1),
                    seeds_at=(("*", 200, (0, 1, 2, 3)), ("hard", 200, (5,)),
                              ("easy", 3200, ())))
  # steps = max(min, ceil(epochs * n / batch))
  assert [cfg.ft_steps_for(n) for n in (100, 200, 3200)] == [50, 50, 300]
  assert cfg.protocol()["epochs"]["3200"] == pytest.approx(3.0)
  assert cfg.seeds_for("easy", 200) == (0, 1, 2, 3) and cfg.seeds_for("hard", 200) == (5,)
  assert cfg.seeds_for("easy", 3200) == () and cfg.seeds_for("hard", 100) == (0, 1)
  assert cfg.all_seeds == [0, 1, 2, 3, 5]
  got = sorted((c.bucket, c.n, c.seed) for c in grid_cells(cfg))
  want = sorted([(b, 100, s) for b in ("easy", "hard") for s in (0, 1)]
                + [("easy", 200, s) for s in range(4)] + [("hard", 200, 5)]
                + [("hard", 3200, s) for s in (0, 1)])
  assert got == want
  assert [cfg.base_replica(s) for s in (0, 1, 2, 5)] == [0, 1, 0, 1]
  # the certified arm certifies the main budget (same checkpoint) and shorter ones
  cert = certified_cells(cfg.replace(certified_sizes=(3200,), certified_steps=(10,),
                                     certified_seeds=()))  # (): every seed of the corner
  assert sorted((c.seed, c.steps) for c in cert) == [(0, 10), (0, 300), (1, 10), (1, 300)]
  one = certified_cells(cfg.replace(certified_sizes=(3200,), certified_steps=(10,),
                                    certified_seeds=(1,)))
  # (easy has no cell at n=3200 here)
  assert sorted((c.bucket, c.seed, c.steps) for c in one) == [("hard", 1, 10), ("hard", 1, 300)]


def test_pools_are_seeded_per_seed_and_follow_their_mixture():
  cfg = StudyConfig.preset("quick", test_per_slice=2, sizes=(400,), seeds_at=(), dft_sizes=(),
                           strong_sizes=(), certified_sizes=(), seeds=(0, 1))
  data = studydata.build_data(cfg)
  d0, d1 = data.difficulty[("tilted", "hard", 0)], data.difficulty[("tilted", "hard", 1)]
  assert not np.array_equal(d0, d1)
  freq = np.bincount(d0, minlength=4)[1:] / d0.size
  np.testing.assert_allclose(freq, [1 / 7, 2 / 7, 4 / 7], atol=0.06)
  again = studydata.build_data(cfg)
  np.testing.assert_array_equal(again.pools[("tilted", "easy", 1)].input_ids,
                                data.pools[("tilted", "easy", 1)].input_ids)
