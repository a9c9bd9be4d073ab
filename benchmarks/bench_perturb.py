"""Benchmark of the Monte-Carlo risk: time to epsilon <= 0.02 per scheme, and FLOP/s.

(a) A random tiny Llama labels its own data: every completion is the model's greedy
    continuation of a random prompt, so the unperturbed token error is 0 and the perturbed
    error is set by sigma. Both schemes run on the same S; the time to reach
    epsilon <= 0.02 (delta_mc = 0.025) is measured for "chunk" (one pass, M = n) and, for
    "passes", measured per pass and multiplied by the number of passes needed (running
    thousands of passes is the point the comparison makes).
(b) Achieved FLOP/s of the compiled perturbed step (FLOPs from XLA's cost analysis) and of
    the plain forward, against the dense float32 matmul rate measured in the same run.

Run: `python benchmarks/bench_perturb.py [--rows 4000] [--quick]`. Prints tables.
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pacbayes import losses
from pacbayes.bounds import pac as bounds
from pacbayes.models import ModelConfig, build_model
from pacbayes.models.generate import greedy_generate
from pacbayes.posterior import perturb

DELTA_MC = 0.025  # delta = 0.05 split in halves (no g_ext)
TARGET_EPS = 0.02


def tiny_llama(hidden: int, layers: int, vocab: int, seed: int = 0):
  cfg = ModelConfig(model_type="llama", vocab_size=vocab, hidden_size=hidden,
                    intermediate_size=2 * hidden, num_hidden_layers=layers,
                    num_attention_heads=4, num_key_value_heads=2,
                    max_position_embeddings=512, initializer_range=0.1)
  return build_model(cfg, rngs=nnx.Rngs(seed)), cfg


def self_labelled_data(model, vocab: int, rows: int, prompt: int, new: int, seed: int = 0):
  """Random prompts + the model's own greedy completions; loss on the completion only."""
  rng = np.random.default_rng(seed)
  prompts = rng.integers(1, vocab, size=(rows, prompt)).astype(np.int32)
  outs = []
  for s in range(0, rows, 500):
    p = prompts[s:s + 500]
    outs.append(np.asarray(greedy_generate(model, p, np.full(len(p), prompt, np.int32), new)))
  ids = np.concatenate([prompts, np.concatenate(outs)], axis=1).astype(np.int32)
  loss_mask = np.zeros_like(ids)
  loss_mask[:, prompt:] = 1
  return {"input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": loss_mask}


def epsilon(mean: float, m: int) -> float:
  return float(bounds.kl_inv_upper(mean, math.log(2 / DELTA_MC) / m)) - mean


def draws_needed(mean: float) -> int:
  """Smallest M with epsilon(mean, M) <= TARGET_EPS (bisection over integers)."""
  lo, hi = 1, 1
  while epsilon(mean, hi) > TARGET_EPS:
    hi *= 2
  while lo < hi:
    mid = (lo + hi) // 2
    if epsilon(mean, mid) <= TARGET_EPS:
      hi = mid
    else:
      lo = mid + 1
  return lo


def bench_schemes(rows: int, draws_per_step: int, passes_probe: int):
  model, cfg = tiny_llama(hidden=64, layers=2, vocab=256)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  loss_fn = losses.model_loss_fn(graphdef, rest, loss="token_error")
  t0 = time.perf_counter()
  data = self_labelled_data(model, cfg.vocab_size, rows, prompt=8, new=24)
  print(f"data: {rows} rows x {data['input_ids'].shape[1]} tokens, generated in "
        f"{time.perf_counter() - t0:.1f}s; params: "
        f"{sum(int(np.size(x)) for x in jax.tree.leaves(params)):,}")
  key = jax.random.key(0)
  t0 = time.perf_counter()
  found = perturb.search_sigma(loss_fn, params, data, key=key, tolerance=0.15, low=1e-3,
                               high=1.0, num_steps=8, num_draws=4, subset_size=256,
                               batch_size=32, draws_per_step=4)
  sigma = found.sigma
  old_s = time.perf_counter() - t0
  print(f"old sigma search (risk tolerance): sigma={sigma:.4g} (risk {found.risk:.3f} vs "
        f"{found.unperturbed:.3f}) in {old_s:.1f}s, {len(found.history)} evaluations")
  bench_choose_sigma(loss_fn, params, data, old_s)

  results = []
  # Chunk scheme, chunk_size 1: M = n draws in one pass. Warm-up compiles on a subset.
  common = dict(key=jax.random.key(1), sigma=sigma, draws_per_step=draws_per_step)
  sub = {k: v[:draws_per_step] for k, v in data.items()}
  t0 = time.perf_counter()
  perturb.mc_risk(loss_fn, params, sub, scheme="chunk", chunk_size=1, **common)
  compile_chunk = time.perf_counter() - t0
  r = perturb.mc_risk(loss_fn, params, data, scheme="chunk", chunk_size=1, **common)
  eps = epsilon(r.mean, r.num_samples)
  results.append(("chunk (C=1)", r.num_samples, r.mean, eps, r.seconds, r.seconds,
                  compile_chunk, "measured"))

  # Passes scheme: time a few passes, then the passes needed for the same epsilon.
  b = 32
  common["draws_per_step"] = passes_probe  # no discarded draws in the probe
  sub = {k: v[:b] for k, v in data.items()}
  t0 = time.perf_counter()
  perturb.mc_risk(loss_fn, params, sub, scheme="passes", num_draws=passes_probe,
                  batch_size=b, **common)
  compile_passes = time.perf_counter() - t0
  r = perturb.mc_risk(loss_fn, params, data, scheme="passes", num_draws=passes_probe,
                      batch_size=b, **common)
  per_pass = r.seconds / passes_probe
  m_need = draws_needed(r.mean)
  results.append((f"passes ({passes_probe} run)", passes_probe, r.mean,
                  epsilon(r.mean, passes_probe), r.seconds, per_pass * m_need, compile_passes,
                  f"projected: {m_need} passes"))
  m_chunk = draws_needed(results[0][2])
  print(f"\n(a) time to epsilon <= {TARGET_EPS} (delta_mc={DELTA_MC}); chunk needs M >= "
        f"{m_chunk}, n = {rows}")
  print(f"{'scheme':<20}{'M':>7}{'mean':>8}{'eps':>8}{'run s':>9}{'to eps s':>11}"
        f"{'compile s':>11}  note")
  for name, m, mean, e, secs, to_eps, comp, note in results:
    print(f"{name:<20}{m:>7}{mean:>8.4f}{e:>8.4f}{secs:>9.1f}{to_eps:>11.1f}{comp:>11.1f}  {note}")
  return results


def bench_choose_sigma(loss_fn, params, data, old_seconds: float) -> None:
  """choose_sigma (bound-minimising) against a stand-in prior 1% of the weights away."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(9), len(leaves))
  prior = jax.tree.unflatten(treedef, [
      x + 0.01 * jnp.std(x) * jax.random.normal(k, x.shape, x.dtype) if x.size > 1 else x
      for x, k in zip(leaves, keys, strict=True)])
  n = len(data["input_ids"])
  t0 = time.perf_counter()
  target = perturb.BoundTarget(
      sigma_grid=tuple(np.geomspace(1e-4, 1e-1, 7)), sq_distance=perturb.sq_distance(params, prior),
      num_params=perturb.count_perturbed(params), num_mc=n, delta_mc=0.025, delta_pb=0.025)
  choice = perturb.choose_sigma(
      loss_fn, params, data, key=jax.random.key(3), target=target,
      mc=perturb.MonteCarloOptions(batch_size=32, draws_per_step=2))
  secs = time.perf_counter() - t0
  print(f"choose_sigma (bound): sigma_q={choice.sigma_q:.4g} sigma_p={choice.sigma_p:.4g} "
        f"subset bound {choice.bound:.4f} in {secs:.1f}s, {len(choice.trace)} evaluations "
        f"({choice.forward_rows} row-draws); {old_seconds / secs:.1f}x faster than the old")


def matmul_rate(size: int = 1024, reps: int = 10) -> float:
  a = jnp.ones((size, size), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(reps):
    out = f(a)
  out.block_until_ready()
  return 2 * size**3 * reps / (time.perf_counter() - t0)


def timed(fn, *args, reps: int = 5) -> float:
  jax.block_until_ready(fn(*args))
  t0 = time.perf_counter()
  for _ in range(reps):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / reps


def bench_flops(configs, draws: int, rows: int, length: int):
  peak = matmul_rate()
  print(f"\n(b) dense f32 matmul 1024^3: {peak / 1e9:.1f} GFLOP/s on "
        f"{jax.devices()[0].platform} ({jax.device_count()} device(s))")
  print(f"{'model':<22}{'params':>10}{'what':>22}{'GFLOP':>9}{'ms':>9}{'GFLOP/s':>9}"
        f"{'of peak':>9}")
  for hidden, layers, vocab in configs:
    model, cfg = tiny_llama(hidden, layers, vocab)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    loss_fn = losses.model_loss_fn(graphdef, rest, loss="token_error")
    leaves, treedef = jax.tree.flatten(params)
    mask = tuple(True for _ in leaves)
    sig = [jnp.asarray(0.01, jnp.float32) for _ in leaves]
    rng = np.random.default_rng(0)
    batch = {"input_ids": rng.integers(0, vocab, (draws, rows, length)).astype(np.int32),
             "attention_mask": np.ones((draws, rows, length), np.int32),
             "loss_mask": np.ones((draws, rows, length), np.int32),
             "weight": np.ones((draws, rows), np.float32)}
    batch = jax.tree.map(jnp.asarray, batch)
    idx = jnp.arange(draws, dtype=jnp.int32)
    step = perturb.draw_step(loss_fn, treedef, mask, False)
    flat = {k: v.reshape((draws * rows,) + v.shape[2:]) for k, v in batch.items()}
    plain = jax.jit(loss_fn)
    n_params = sum(int(np.size(x)) for x in leaves)
    name = f"h{hidden} L{layers} V{vocab}"
    for what, fn, args in (
        (f"perturbed {draws}x{rows}x{length}", step, (leaves, sig, jax.random.key(0), idx, batch)),
        (f"plain {draws * rows}x{length}", plain, (params, flat))):
      cost = fn.lower(*args).compile().cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      flops = float(cost.get("flops", float("nan")))
      secs = timed(fn, *args)
      print(f"{name:<22}{n_params:>10,}{what:>22}{flops / 1e9:>9.3f}{secs * 1e3:>9.1f}"
            f"{flops / secs / 1e9:>9.2f}{flops / secs / peak:>9.1%}")


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--rows", type=int, default=4000)
  ap.add_argument("--draws-per-step", type=int, default=32)
  ap.add_argument("--passes-probe", type=int, default=4)
  ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
  args = ap.parse_args()
  rows = 300 if args.quick else args.rows
  print(f"jax {jax.__version__}, devices: {jax.devices()}")
  bench_schemes(rows, args.draws_per_step, 2 if args.quick else args.passes_probe)
  configs = [(64, 2, 256)] if args.quick else [(64, 2, 256), (256, 4, 1024)]
  bench_flops(configs, draws=4, rows=2 if args.quick else 4, length=64 if args.quick else 128)


if __name__ == "__main__":
  main()
