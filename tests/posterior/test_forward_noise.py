"""The posterior noise made inside the forward pass (pacbayes.posterior.steps.forward_draw_step).

It must give the numbers of a whole perturbed copy made with the same keys (tied embeddings,
partial masks and per-leaf sigmas included), leave the model's plain pass unchanged, and run
the pass stage by stage with one compiled program per kind of stage (all blocks share one).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pacbayes import losses
from pacbayes.models import build_model
from pacbayes.posterior import draws, montecarlo, steps
from tests.helpers.models import tiny_config


def split(config, seed=0):
  model = build_model(config, rngs=nnx.Rngs(seed))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return model, graphdef, params, rest


def token_rows(vocab, rows=6, length=10, seed=0):
  ids = np.random.default_rng(seed).integers(0, vocab, (rows, length)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 7:] = 0  # one right-padded row
  return {"input_ids": ids, "attention_mask": mask, "loss_mask": mask.copy()}


def per_leaf_sigmas(params, seed=0):
  """A sigma per leaf: scalars of different sizes, and a full array for the embedding."""
  rng = np.random.default_rng(seed)
  names = draws.leaf_paths(params)
  leaves, treedef = jax.tree.flatten(params)
  out = []
  for name, leaf in zip(names, leaves, strict=True):
    if name == "embed":
      out.append(jnp.asarray(rng.uniform(0.05, 0.3, leaf.shape), jnp.float32))
    else:
      out.append(jnp.float32(rng.uniform(0.02, 0.1)))
  return jax.tree.unflatten(treedef, out)


CHUNK = dict(chunk_size=2, batch_size=2)
CASES = {
    # tied embedding perturbed (its noise used twice), only the second block among the layers
    "llama_tied": (dict(tie_word_embeddings=True), ["embed", "layers/1/*", "final_norm/*"], 1,
                   CHUNK),
    # learned positions, biases, LayerNorm, tied; two draws per step
    "gpt2": (dict(model_type="gpt2"), ["embed", "pos_embed", "layers/0/attn/*"], 2, CHUNK),
    # untied head, q/k/v biases, every leaf perturbed; passes: one batch shared by the draws
    "qwen2": (dict(model_type="qwen2"), None, 2, dict(scheme="passes", num_draws=2,
                                                      batch_size=4)),
    # a tied table of 140,000 x 32 > BLOCKED_NOISE_MIN elements: its noise drawn in row blocks,
    # with a full per-entry sigma (sliced per block)
    "llama_tied_blocked": (dict(tie_word_embeddings=True, vocab_size=140_000, hidden_size=32,
                                num_hidden_layers=1), ["embed", "layers/0/mlp/*"], 1, CHUNK),
    # an untied head [32, 140000] drawn in blocks of 7 rows (the last block overlaps)
    "qwen2_head_blocked": (dict(model_type="qwen2", vocab_size=140_000, num_hidden_layers=1),
                           ["lm_head", "final_norm/*"], 2, CHUNK),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_noise_gives_the_numbers_of_a_perturbed_copy(case):
  kw, include, group, sizes = CASES[case]
  config = tiny_config(**kw)
  _, graphdef, params, rest = split(config)
  loss_fn = losses.model_loss_fn(graphdef, rest, loss="smoothed_nll", alpha=0.1)
  data = token_rows(config.vocab_size)
  mask = draws.perturbation_mask(params, include=include)
  sigma = per_leaf_sigmas(params)
  common = dict(key=jax.random.key(3), sigma=sigma, mask=mask, **sizes)
  copy = montecarlo.mc_risk(loss_fn, params, data, noise="copy", **common)
  fwd = montecarlo.mc_risk(loss_fn, params, data, draws_per_step=group, **common)
  assert (copy.noise, fwd.noise) == ("copy", "forward")
  np.testing.assert_array_equal(fwd.slot_rows, copy.slot_rows)
  np.testing.assert_allclose(fwd.slot_losses, copy.slot_losses, rtol=0, atol=2e-6)
  # The noise is there: the draws are far from the posterior mean's own losses.
  plain = montecarlo.row_losses(loss_fn, params, data, batch_size=6)
  assert np.abs(copy.slot_losses.ravel()[:6] - plain).max() > 1e-3


def test_forward_noise_on_a_mesh_gives_the_same_numbers():
  """Parameters split over 'fsdp', rows over 'data': the staged programs get sharded inputs."""
  from pacbayes.core.sharding import make_mesh

  config = tiny_config(tie_word_embeddings=True)
  _, graphdef, params, rest = split(config)
  loss_fn = losses.model_loss_fn(graphdef, rest, loss="smoothed_nll", alpha=0.1)
  data = token_rows(config.vocab_size, rows=8)
  common = dict(key=jax.random.key(5), sigma=0.05, chunk_size=4, batch_size=4)
  ref = montecarlo.mc_risk(loss_fn, params, data, noise="copy", **common)
  got = montecarlo.mc_risk(loss_fn, params, data, mesh=make_mesh(4, 2), **common)
  assert got.noise == "forward"
  np.testing.assert_allclose(got.slot_losses, ref.slot_losses, rtol=0, atol=2e-6)


def test_forward_noise_is_the_default_for_a_model_loss_only():
  config = tiny_config(num_hidden_layers=1)
  _, graphdef, params, rest = split(config)
  loss_fn = losses.model_loss_fn(graphdef, rest, loss="token_error")
  generic = lambda p, b: loss_fn(p, b)  # noqa: E731  (a plain function of (params, batch))
  assert steps.forward_noise_supported(loss_fn) and loss_fn.accepts_runner
  assert not steps.forward_noise_supported(generic)
  data = token_rows(config.vocab_size, rows=2)
  kw = dict(key=jax.random.key(0), sigma=0.01, chunk_size=2, batch_size=2)
  assert montecarlo.mc_risk(generic, params, data, **kw).noise == "copy"
  with pytest.raises(ValueError, match="noise: 'forward' needs"):
    montecarlo.mc_risk(generic, params, data, noise="forward", **kw)
  with pytest.raises(ValueError, match="noise: expected one of"):
    montecarlo.MonteCarloOptions(noise="inside")


@pytest.mark.parametrize("kw", [dict(tie_word_embeddings=True), dict(model_type="gpt2"),
                                dict()], ids=["llama_tied", "gpt2", "llama"])
def test_model_plain_pass_is_unchanged_and_every_parameter_is_handed_over(kw):
  """runner=None and a plain runner (traced into one program) give the plain logits bit for
  bit; the stages hand over every parameter once under its `leaf_paths` name (a tied
  embedding at the input and again at the head), and every block with the same `apply`."""
  config = tiny_config(**kw)
  _, graphdef, params, rest = split(config, seed=1)
  data = token_rows(config.vocab_size, rows=3)
  seen, applies = [], []

  def plain_runner(prefix, stage_params, apply, *inputs):
    seen.append([f"{prefix}/{n}" if prefix else n for n in draws.leaf_paths(stage_params)])
    applies.append(apply)
    return apply(stage_params, *inputs)

  def logits(p, ids, m, **kw):
    return nnx.merge(graphdef, p, rest)(ids, m, **kw)

  ids, m = data["input_ids"], data["attention_mask"]
  plain = jax.jit(logits)(params, ids, m)
  none = jax.jit(lambda p, i, a: logits(p, i, a, runner=None))(params, ids, m)
  staged = jax.jit(lambda p, i, a: logits(p, i, a, runner=plain_runner))(params, ids, m)
  np.testing.assert_array_equal(none, plain)
  np.testing.assert_array_equal(staged, plain)
  flat = [n for stage in seen[:-1] for n in stage]
  assert seen[-1] == (["embed"] if config.tie_word_embeddings else ["lm_head"])
  if not config.tie_word_embeddings:
    flat += seen[-1]
  assert sorted(flat) == sorted(draws.leaf_paths(params))
  layers = config.num_hidden_layers
  assert len(seen) == layers + 3  # embedding, blocks, final norm, head
  assert len(set(applies[1:1 + layers])) == 1 and len(set(applies)) == 4  # one per kind
  # The model's loss (a ModelLoss) equals the loss of the plain logits
  loss_fn = losses.model_loss_fn(graphdef, rest, loss="smoothed_nll", alpha=0.1)
  batch = {**data, "weight": np.ones(3, np.float32)}
  want = losses.smoothed_nll(plain, ids, data["loss_mask"], alpha=0.1)
  # (to round-off: the loss reads the logits' statistics streamed over the vocabulary)
  np.testing.assert_allclose(jax.jit(loss_fn)(params, batch), want, rtol=1e-6, atol=1e-6)
  # Staged through StageNoise outside jit, the noise reaches every masked leaf.
  leaves, _ = jax.tree.flatten(params)
  mask = tuple(True for _ in leaves)
  runner = steps.StageNoise(jax.random.key(0), jnp.int32(0), draws.sigma_leaves(
      0.01, params, mask), mask, draws.leaf_paths(params))
  out = loss_fn.with_runner(params, batch, runner)
  runner.check_all_seen()
  assert out.shape == (3,) and np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize("shape", [(5000, 1000), (32, 140_000), (3000, 40, 40)])
def test_blocked_noise_of_a_large_leaf(shape):
  """A leaf over BLOCKED_NOISE_MIN elements: every entry gets its own N(0, 1) draw (blocks do
  not repeat, the overlapping last block leaves no row undrawn), sigma of any broadcastable
  shape gives the same noise, and a draw vmapped over keys is the draw made alone."""
  x = jnp.zeros(shape, jnp.float32)
  assert x.size > draws.BLOCKED_NOISE_MIN
  key = jax.random.key(7)
  perturb = jax.jit(draws.perturb_leaf)
  eps = np.asarray(perturb(key, x, jnp.float32(1.0)))
  assert abs(eps.mean()) < 5 / np.sqrt(eps.size) and abs(eps.std() - 1) < 5e-3
  rows = eps.reshape(shape[0], -1)
  assert np.all(np.abs(rows).max(axis=1) > 0)  # every row drawn
  r = max(1, draws.NOISE_BLOCK // rows.shape[1])
  assert abs(np.corrcoef(rows[:r].ravel()[:4096], rows[r:2 * r].ravel()[:4096])[0, 1]) < 0.1
  lead = (shape[0],) + (1,) * (len(shape) - 1)
  for sigma in (jnp.full(shape[1:], 0.5), jnp.full(lead, 0.5), jnp.full(shape, 0.5)):
    np.testing.assert_allclose(perturb(key, x, sigma), perturb(key, x, jnp.float32(0.5)),
                               rtol=0, atol=1e-6)  # the same noise, to fused multiply-add
  keys = jax.random.split(key, 2)
  both = jax.jit(jax.vmap(draws.perturb_leaf, in_axes=(0, None, None)))(keys, x, 0.5)
  np.testing.assert_array_equal(both[1], perturb(keys[1], x, jnp.float32(0.5)))
  # Per-row sigma reaches the right rows.
  ramp = jnp.arange(1, shape[0] + 1, dtype=jnp.float32).reshape(lead) * 1e-3
  got = np.asarray(perturb(key, x, ramp)).reshape(shape[0], -1)
  np.testing.assert_allclose(got, rows * np.asarray(ramp).reshape(-1, 1), rtol=1e-6)


@pytest.mark.parametrize("kw", [dict(tie_word_embeddings=True), dict(model_type="qwen2")],
                         ids=["llama_tied", "qwen2"])
def test_row_by_row_reduce_equals_the_loss_of_the_logits(kw):
  """model(..., reduce=loss) applies the loss to one row's logits at a time: the same losses
  as the loss of the whole [B, L, V] logits, plain and staged."""
  config = tiny_config(**kw)
  _, graphdef, params, rest = split(config, seed=2)
  data = token_rows(config.vocab_size, rows=5)
  ids, m, lm = data["input_ids"], data["attention_mask"], data["loss_mask"]
  for name in ("token_error", "sequence_error", "smoothed_nll"):
    loss = losses.get_loss(name, **({"alpha": 0.1} if name == "smoothed_nll" else {}))

    def run(p, runner=None, loss=loss):
      return nnx.merge(graphdef, p, rest)(ids, m, runner=runner, reduce=loss,
                                          reduce_args=(ids, lm))

    want = loss(jax.jit(lambda p: nnx.merge(graphdef, p, rest)(ids, m))(params), ids, lm)
    got = jax.jit(run)(params)
    staged = jax.jit(lambda p, run=run: run(p, lambda _, q, apply, *a: apply(q, *a)))(params)
    assert got.shape == (5,)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(staged, want, rtol=1e-6, atol=1e-6)


def test_streamed_token_stats_equal_the_stats_of_whole_logits():
  """The vocabulary read in blocks (the last one overlapping), with tied rows: the argmax
  (first of the ties), the logsumexp and the target logits of the whole logits."""
  from pacbayes.models import stages

  rng = np.random.default_rng(0)
  b, t, d, v = 70, 100, 8, 1000
  table = rng.standard_normal((v, d)).astype(np.float32)
  table /= np.linalg.norm(table, axis=1, keepdims=True)  # unit rows: <t_u, t_w> is max at u
  table[500] = table[7]  # a tie: id 7 comes first
  table[999] = table[998]  # a tie inside the overlap of the last block
  hidden = rng.standard_normal((b, t, d)).astype(np.float32)
  hidden[0, 0] = table[7] * 10  # position (0, 0) has its max at ids 7 and 500
  hidden[0, 1] = table[998] * 10
  targets = rng.integers(0, v, (b, t)).astype(np.int32)
  r = min(v, stages.STATS_TABLE_BLOCK // d, stages.STATS_LOGITS_BLOCK // (b * t))
  assert r < v and v % r  # several blocks, the last overlapping
  want = stages.token_stats(jnp.einsum("btd,vd->btv", hidden, table), targets)
  got = jax.jit(lambda h, w, y: stages.streamed_token_stats(
      lambda ids: jnp.take(w, ids, axis=0), v, h, y))(hidden, table, targets)
  np.testing.assert_array_equal(got.argmax, want.argmax)
  assert (int(got.argmax[0, 0]), int(got.argmax[0, 1])) == (7, 998)
  np.testing.assert_allclose(got.lse, want.lse, rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(got.target_logit, want.target_logit, rtol=1e-6, atol=1e-5)
  assert got.vocab_size == v


def test_streamed_token_stats_of_non_finite_logits_match_whole_logits():
  """-inf blocks, all -inf, +inf and NaN logits: the stats of `token_stats` (D = 1, so the
  logits are the table's values)."""
  from pacbayes.models import stages

  v = 3000
  r = min(v, stages.STATS_TABLE_BLOCK, stages.STATS_LOGITS_BLOCK // 3000)
  base = np.linspace(-1, 1, v).astype(np.float32)
  cases = [base.copy() for _ in range(5)]
  cases[0][:r] = -np.inf  # a whole first block of -inf
  cases[1][:] = -np.inf
  cases[2][r + 5] = np.inf
  cases[3][r + 7] = np.nan
  cases[3][2 * r + 1] = np.nan
  cases[4][5] = np.nan  # a NaN in the first block
  for values in cases:
    table = values[:, None]
    hidden = np.ones((1, 3000, 1), np.float32)
    targets = np.zeros((1, 3000), np.int32)
    want = stages.token_stats(jnp.einsum("btd,vd->btv", hidden, table), targets)
    got = stages.streamed_token_stats(lambda ids, t=table: jnp.take(t, ids, axis=0), v,
                                      hidden, targets)
    np.testing.assert_array_equal(got.argmax, want.argmax)
    np.testing.assert_allclose(got.lse, want.lse, rtol=1e-6)
