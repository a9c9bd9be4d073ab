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
  embedding at the input only), and every block with the same `apply`."""
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
  flat = [n for stage in seen for n in stage]
  assert sorted(flat) == sorted(draws.leaf_paths(params))
  assert seen[-1] == ([] if config.tie_word_embeddings else ["lm_head"])
  layers = config.num_hidden_layers
  assert len(seen) == layers + 3  # embedding, blocks, final norm, head
  assert len(set(applies[1:1 + layers])) == 1 and len(set(applies)) == 4  # one per kind
  # The model's loss (a ModelLoss) equals the loss of the plain logits.
  loss_fn = losses.model_loss_fn(graphdef, rest, loss="smoothed_nll", alpha=0.1)
  batch = {**data, "weight": np.ones(3, np.float32)}
  want = losses.smoothed_nll(plain, ids, data["loss_mask"], alpha=0.1)
  np.testing.assert_array_equal(jax.jit(loss_fn)(params, batch), want)
  # Staged through StageNoise outside jit, the noise reaches every masked leaf.
  leaves, _ = jax.tree.flatten(params)
  mask = tuple(True for _ in leaves)
  runner = steps.StageNoise(jax.random.key(0), jnp.int32(0), draws.sigma_leaves(
      0.01, params, mask), mask, draws.leaf_paths(params))
  out = loss_fn.with_runner(params, batch, runner)
  runner.check_all_seen()
  assert out.shape == (3,) and np.isfinite(np.asarray(out)).all()
