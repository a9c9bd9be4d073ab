"""Tests for pacbayes.posterior.perturb: a linear classifier whose perturbed risk is exact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from pacbayes.bounds import pac as bounds
from pacbayes.core.sharding import make_mesh
from pacbayes.posterior import perturb
from tests.helpers.linear import FAST, make_problem, zero_one


def out_of_range(params, batch):
  return 2.0 * zero_one(params, batch)


def exact_risk(params, data, sigma, perturb_bias=True):
  """E_Q[R_S]: the perturbed margin is N(m, sigma^2 (||x||^2 + 1)), so P(err) = Phi(-m/sd)."""
  x, y = data["x"].astype(np.float64), data["y"].astype(np.float64)
  w, b = np.asarray(params["w"], np.float64), float(params["b"])
  m = y * (x @ w + b)
  sd = sigma * np.sqrt((x**2).sum(1) + (1.0 if perturb_bias else 0.0))
  return float(stats.norm.cdf(-m / sd).mean())


# ------------------------------------------------------------------------------ masks


def test_leaf_paths_and_mask():
  params = {"layers": [{"attn": {"kernel": jnp.ones((2, 2))}, "norm": {"scale": jnp.ones(2)}}],
            "embed": jnp.ones((3, 2)), "step": jnp.zeros((), jnp.int32)}
  names = perturb.leaf_paths(params)
  assert names == ["embed", "layers/0/attn/kernel", "layers/0/norm/scale", "step"]
  as_list = lambda m: jax.tree.leaves(m)
  assert as_list(perturb.perturbation_mask(params)) == [True, True, True, False]
  assert as_list(perturb.perturbation_mask(params, exclude="*norm*")) == [True, True, False, False]
  assert as_list(perturb.perturbation_mask(params, include="layers/*")) == [
      False, True, True, False]
  assert as_list(perturb.perturbation_mask(
      params, include=["layers/*", "embed"], exclude=["*scale"])) == [True, True, False, False]
  with pytest.raises(ValueError, match="include: pattern 'nothing'"):
    perturb.perturbation_mask(params, include="nothing")
  with pytest.raises(ValueError, match="left to perturb"):
    perturb.perturbation_mask(params, exclude="*")
  with pytest.raises(ValueError, match="no floating-point parameter"):
    perturb.perturbation_mask(params, include="step")
  # One rule with `models.params.match_names`: an exclude pattern that matches nothing is
  # refused, as `--exclude` is.
  with pytest.raises(ValueError, match="exclude: pattern 'nothing'"):
    perturb.perturbation_mask(params, exclude="nothing")


def test_nnx_state_paths():
  from flax import nnx

  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  _, state = nnx.split(model, nnx.Param)
  assert perturb.leaf_paths(state) == ["bias", "kernel"]
  mask = perturb.perturbation_mask(state, exclude="bias")
  theta = perturb.sample_posterior(jax.random.key(0), state, 0.1, mask=mask)
  np.testing.assert_array_equal(theta["bias"][...], state["bias"][...])
  assert not np.array_equal(theta["kernel"][...], state["kernel"][...])


# ----------------------------------------------------------------------------- sampling


def test_sample_posterior_statistics_and_dtypes():
  params = {"a": jnp.zeros((200, 100), jnp.float32), "b": jnp.ones((50, 40), jnp.bfloat16),
            "c": jnp.full((10,), 3.0, jnp.float32)}
  mask = {"a": True, "b": True, "c": False}
  theta = perturb.sample_posterior(jax.random.key(1), params, 0.5, mask=mask)
  assert theta["a"].dtype == jnp.float32 and theta["b"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(theta["c"], params["c"])
  a = np.asarray(theta["a"], np.float64)
  assert abs(a.std() - 0.5) < 0.01 and abs(a.mean()) < 0.01
  bvals = np.asarray(theta["b"], np.float64)
  assert abs(bvals.std() - 0.5) < 0.03 and abs(bvals.mean() - 1) < 0.03
  again = perturb.sample_posterior(jax.random.key(1), params, 0.5, mask=mask)
  np.testing.assert_array_equal(theta["a"], again["a"])
  # Masking a leaf does not change the noise of the others (one key per leaf).
  other = perturb.sample_posterior(jax.random.key(1), params, 0.5,
                                   mask={"a": True, "b": False, "c": False})
  np.testing.assert_array_equal(theta["a"], other["a"])


def test_sample_posterior_diagonal_sigma():
  params = {"w": jnp.zeros((4000, 2), jnp.float32)}
  sigma = {"w": jnp.asarray([[0.1, 2.0]], jnp.float32)}  # broadcast per column
  theta = perturb.sample_posterior(jax.random.key(2), params, sigma)
  std = np.asarray(theta["w"]).std(0)
  np.testing.assert_allclose(std, [0.1, 2.0], rtol=0.05)
  with pytest.raises(ValueError, match="sigma"):
    perturb.sample_posterior(jax.random.key(2), params, {"w": jnp.zeros((1, 2))})
  with pytest.raises(ValueError, match="sigma"):
    perturb.sample_posterior(jax.random.key(2), params, -1.0)
  with pytest.raises(ValueError, match="not broadcastable"):
    perturb.sample_posterior(jax.random.key(2), params, {"w": jnp.ones((3,))})


# ------------------------------------------------------------------------------ MC risk


@pytest.mark.parametrize("scheme,kwargs", [
    ("chunk", dict(chunk_size=7)),     # 7 does not divide 150: uniform fillers complete it
    ("chunk", dict(chunk_size=10)),
    ("passes", dict(num_draws=24)),
])
def test_mc_risk_unbiased_against_closed_form(scheme, kwargs):
  params, data = make_problem(150, seed=3)
  sigma = 0.4
  exact = exact_risk(params, data, sigma)
  means, errs = [], []
  for rep in range(8):
    r = perturb.mc_risk(zero_one, params, data, key=jax.random.key(rep), sigma=sigma,
                        scheme=scheme, **FAST, **kwargs)
    assert r.num_samples == (kwargs.get("num_draws") or -(-150 // kwargs["chunk_size"]))
    assert r.draws.shape == (r.num_samples,) and np.all((r.draws >= 0) & (r.draws <= 1))
    means.append(r.mean)
    errs.append(r.draws.std() / np.sqrt(r.num_samples))
  se = np.sqrt(np.mean(np.square(errs)) / len(means))
  assert abs(np.mean(means) - exact) < 4 * se + 1e-3, (np.mean(means), exact, se)


def test_chunk_fillers_and_unperturbed():
  params, data = make_problem(23, seed=4)
  r = perturb.mc_risk(zero_one, params, data, key=jax.random.key(0), sigma=0.1,
                      chunk_size=8, unperturbed=True, **FAST)
  assert r.num_samples == 3 and r.num_fillers == 1 and r.chunk_size == 8
  base = np.mean(np.asarray(zero_one(params, data)))
  assert r.unperturbed == pytest.approx(base)
  # chunk_size derived from num_draws
  r2 = perturb.mc_risk(zero_one, params, data, key=jax.random.key(0), sigma=0.1, num_draws=3,
                       **FAST)
  assert r2.chunk_size == 8 and r2.num_samples == 3
  np.testing.assert_array_equal(r.draws, r2.draws)


@pytest.mark.parametrize("scheme", ["chunk", "passes"])
def test_mc_bound_coverage(scheme):
  """mc_sample_bound(mean, M, delta) >= E_Q[R_S] in at least 1 - delta of repetitions."""
  params, data = make_problem(80, seed=5)
  sigma, delta, reps = 0.8, 0.2, 100
  exact = exact_risk(params, data, sigma)
  kw = dict(chunk_size=8) if scheme == "chunk" else dict(num_draws=8)
  hits = 0
  for rep in range(reps):
    r = perturb.mc_risk(zero_one, params, data, key=jax.random.key(1000 + rep), sigma=sigma,
                        scheme=scheme, **FAST, **kw)
    hits += float(bounds.mc_sample_bound(r.mean, r.num_samples, delta)) >= exact
  # Binomial(100, 0.8) puts < 0.2% below 0.7: failing means the bound is broken.
  assert hits / reps >= 1 - delta - 0.1, hits


def test_determinism_and_invariance_to_grouping():
  params, data = make_problem(60, seed=6)
  base = dict(key=jax.random.key(7), sigma=0.3)
  for scheme, kw in (("chunk", dict(chunk_size=8)), ("passes", dict(num_draws=8))):
    a = perturb.mc_risk(zero_one, params, data, scheme=scheme, **FAST, **kw, **base)
    b = perturb.mc_risk(zero_one, params, data, scheme=scheme, **FAST, **kw, **base)
    # Other batch size and draws per step: same draws (key per draw index).
    c = perturb.mc_risk(zero_one, params, data, scheme=scheme, batch_size=3,
                        draws_per_step=1, **kw, **base)
    np.testing.assert_array_equal(a.draws, b.draws)
    np.testing.assert_allclose(a.draws, c.draws, rtol=0, atol=1e-12)
    d = perturb.mc_risk(zero_one, params, data, scheme=scheme, **FAST, **kw,
                        key=jax.random.key(8), sigma=0.3)
    assert not np.array_equal(a.draws, d.draws)


@pytest.mark.parametrize("mesh_shape,draws_per_step,schemes", [
    ((8, 1), 8, ("chunk", "passes")),  # draws split over 'data'
    ((4, 2), 1, ("chunk",)),           # rows split over 'data', w split over 'fsdp'
])
def test_mesh_gives_same_numbers(mesh_shape, draws_per_step, schemes):
  assert jax.device_count() == 8
  params, data = make_problem(70, seed=7)
  mesh = make_mesh(*mesh_shape)
  for scheme in schemes:
    kw = dict(chunk_size=8) if scheme == "chunk" else dict(num_draws=8)
    common = dict(key=jax.random.key(11), sigma=0.5, scheme=scheme, batch_size=8,
                  draws_per_step=draws_per_step, **kw)
    ref = perturb.mc_risk(zero_one, params, data, **common)
    got = perturb.mc_risk(zero_one, params, data, mesh=mesh, **common)
    np.testing.assert_array_equal(ref.draws, got.draws)


def test_mc_risk_errors():
  params, data = make_problem(10)
  k = jax.random.key(0)
  with pytest.raises(ValueError, match="sigma"):
    perturb.mc_risk(zero_one, params, data, key=k, sigma=0.0, chunk_size=2)
  with pytest.raises(ValueError, match="scheme"):
    perturb.mc_risk(zero_one, params, data, key=k, sigma=0.1, scheme="bogus")
  with pytest.raises(ValueError, match="empty"):
    perturb.mc_risk(zero_one, params, {"x": data["x"][:0], "y": data["y"][:0]}, key=k,
                    sigma=0.1, chunk_size=2)
  with pytest.raises(ValueError, match="leading axis"):
    perturb.mc_risk(zero_one, params, {"x": data["x"], "y": data["y"][:5]}, key=k,
                    sigma=0.1, chunk_size=2)
  with pytest.raises(ValueError, match="chunk_size"):
    perturb.mc_risk(zero_one, params, data, key=k, sigma=0.1, chunk_size=11)
  with pytest.raises(ValueError, match="num_draws"):
    perturb.mc_risk(zero_one, params, data, key=k, sigma=0.1, scheme="passes")
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    perturb.mc_risk(out_of_range, params, data, key=k, sigma=0.1, chunk_size=2)


# ------------------------------------------------------------- slots, draw counts, memory


@pytest.mark.parametrize("draws_per_step", [1, 3])
@pytest.mark.parametrize("scheme,kw", [("chunk", dict(chunk_size=8)), ("passes",
                                                                       dict(num_draws=3))])
def test_slot_arrays_match_independent_draws(scheme, kw, draws_per_step):
  params, data = make_problem(23, seed=10)
  key = jax.random.key(4)
  r = perturb.mc_risk(zero_one, params, data, key=key, sigma=0.3, scheme=scheme,
                      batch_size=5, draws_per_step=draws_per_step, **kw)
  m, k = (3, 8) if scheme == "chunk" else (3, 23)
  assert r.slot_losses.shape == (m, k) and r.slot_rows.shape == (m, k)
  assert r.slot_losses.dtype == np.float64 and r.slot_rows.dtype == np.int64
  if scheme == "chunk":
    np.testing.assert_array_equal(r.slot_rows.ravel()[:23], np.arange(23))
    assert 0 <= r.slot_rows[-1, -1] < 23 and r.num_fillers == 1
  else:
    np.testing.assert_array_equal(r.slot_rows, np.tile(np.arange(23), (3, 1)))
  np.testing.assert_allclose(r.slot_losses.mean(axis=1), r.draws, rtol=0, atol=1e-15)
  assert r.mean == pytest.approx(r.draws.mean())
  # Each slot is the loss of its row under draw m = sample_posterior(fold_in(key_draws, m)).
  key_draws = jax.random.split(key)[0]
  for i in range(m):
    theta = perturb.sample_posterior(jax.random.fold_in(key_draws, i), params, 0.3)
    rows = r.slot_rows[i]
    want = np.asarray(zero_one(theta, {"x": data["x"][rows], "y": data["y"][rows]}))
    np.testing.assert_array_equal(r.slot_losses[i], want)


def test_only_the_draws_asked_for_are_computed(monkeypatch, capfd):
  from pacbayes.posterior import montecarlo

  params, data = make_problem(10, seed=11)
  fused, copies = [], []
  real_step, real_copy = montecarlo.draw_step, montecarlo.perturbed_copy

  def counting_step(*args):
    step = real_step(*args)
    return lambda *a: (fused.append(len(a[3])), step(*a))[1]

  def counting_copy(key, index, *rest):
    copies.append(index)
    return real_copy(key, index, *rest)

  monkeypatch.setattr(montecarlo, "draw_step", counting_step)
  monkeypatch.setattr(montecarlo, "perturbed_copy", counting_copy)
  common = dict(key=jax.random.key(0), sigma=0.2, scheme="passes", num_draws=4, batch_size=4)
  a = perturb.mc_risk(zero_one, params, data, draws_per_step=3, progress=True, **common)
  nb = 3  # batches of 4 rows over n = 10
  assert sum(fused) == 4 * nb and sorted(set(fused)) == [1, 3] and not copies
  err = capfd.readouterr().err
  assert "MC risk (passes, M=4)" in err and "40.0/40.0" in err  # kept in the log, right count
  b = perturb.mc_risk(zero_one, params, data, **common)
  assert copies == [0, 1, 2, 3] and b.draws_per_step == 1
  np.testing.assert_allclose(a.draws, b.draws, rtol=0, atol=1e-12)


def test_max_memory_and_option_errors():
  params, data = make_problem(16, seed=12)
  k = jax.random.key(0)
  kw = dict(key=k, sigma=0.1, chunk_size=2, batch_size=2)
  assert perturb.mc_risk(zero_one, params, data, max_memory=2**30, **kw).draws_per_step == 8
  with pytest.raises(ValueError, match="max_memory: 1 bytes is below"):
    perturb.mc_risk(zero_one, params, data, max_memory=1, **kw)
  with pytest.raises(ValueError, match="draws_per_step, max_memory"):
    perturb.mc_risk(zero_one, params, data, max_memory=2**30, draws_per_step=2, **kw)
  with pytest.raises(ValueError, match="num_draws, chunk_size"):
    perturb.mc_risk(zero_one, params, data, key=k, sigma=0.1, chunk_size=2, num_draws=8)
  with pytest.raises(ValueError, match="chunk_size: applies to scheme='chunk'"):
    perturb.mc_risk(zero_one, params, data, key=k, sigma=0.1, scheme="passes", num_draws=2,
                    chunk_size=2)
  with pytest.raises(ValueError, match="draws_per_step"):
    perturb.mc_risk(zero_one, params, data, draws_per_step=0, **kw)


def test_engine_modules_have_no_cycle_and_no_private_imports():
  import ast
  import pathlib

  root = pathlib.Path(perturb.__file__).parent
  engine = ("draws", "montecarlo", "sigma", "fit", "perturb")
  deps = {}
  for name in engine:
    tree = ast.parse((root / f"{name}.py").read_text())
    deps[name] = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pacbayes"):
        mod = node.module.split(".")[-1]
        deps[name].add(mod)
        assert not any(a.name.startswith("_") for a in node.names), (name, node.module)
  order = ["draws", "montecarlo", "sigma", "fit", "perturb"]
  for name in engine:  # every engine import points to an earlier module in `order`
    for dep in deps[name] & set(engine):
      assert order.index(dep) < order.index(name), (name, dep)
    assert not hasattr(__import__(f"pacbayes.posterior.{name}", fromlist=["x"]), "__getattr__")
