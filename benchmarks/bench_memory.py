"""Peak memory and time of the Monte-Carlo pass against the same pass without perturbation.

Model: a SmolLM2-135M-shaped Llama with random weights (hidden 576, 30 layers, 9 query / 3
key-value heads, MLP 1536, vocab 49152, tied embeddings, float32; about 135M parameters,
0.54 GB). Data: `--rows` random token rows of `--length` tokens, token error on every token.

Two workers, each in its own subprocess so that each peak RSS is its own:
  plain:     `pacbayes.posterior.montecarlo.empirical_risk` over the rows (`--chunk`-row batches);
  perturbed: `pacbayes.posterior.montecarlo.mc_risk`, chunk scheme, one posterior draw per chunk of
             `--chunk` rows (batch = chunk, draws_per_step = 1), sigma = 1e-3.
Each worker builds the model, runs its pass once (compile) and times a second run. The
parent prints both and the ratios perturbed / plain (goal: <= 1.5 for peak RSS and time).

Run: `python benchmarks/bench_memory.py [--rows 16] [--length 128] [--chunk 8]`.

Measured 2026-11-30 (jax 0.10.2 CPU, 2 cores shared by ~15 busy processes, defaults):
  plain 1.09 GiB peak, perturbed 1.85 GiB (1.70x; goal 1.5x); time 0.77x (noise of the
  shared machine; the noise costs ~10 s per draw of 135M parameters unloaded). The extra
  0.76 GiB is the one perturbed copy (0.50 GiB) plus the noise transients of the largest
  leaf (the 49152 x 576 embedding) and allocator slack. With the older fused step
  (draws_per_step > 1 path, noise inside the vmapped step) it was 3.43 GiB (3.14x) and a
  700 s compile. Under 1.5x at this size needs the noise made layer by layer inside the
  model's forward pass (no full perturbed copy), which needs a hook in pacbayes.models.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

SMOLLM2_135M = dict(
  model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
  num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
  max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True)


def _worker(kind: str, rows: int, length: int, chunk: int) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  import pacbayes  # noqa: F401
  from pacbayes import losses
  from pacbayes.models import ModelConfig, build_model
  from pacbayes.posterior import montecarlo

  config = ModelConfig(**SMOLLM2_135M)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: build_model(config, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(0)

  def fill(leaf):  # one leaf at a time from NumPy: no second float32 copy of the model
    return jnp.asarray((rng.standard_normal(leaf.shape, dtype=np.float32) * 0.02)
                       .astype(leaf.dtype))

  params = jax.tree.map(fill, abstract)
  num_params = sum(int(np.size(x)) for x in jax.tree.leaves(params))
  built_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  ids = rng.integers(0, config.vocab_size, (rows, length)).astype(np.int32)
  data = {"input_ids": ids, "attention_mask": np.ones_like(ids),
          "loss_mask": np.ones_like(ids)}
  loss_fn = losses.model_loss_fn(graphdef, loss="token_error")

  def run():
    if kind == "plain":
      return montecarlo.empirical_risk(loss_fn, params, data, batch_size=chunk)
    return montecarlo.mc_risk(loss_fn, params, data, key=jax.random.key(0), sigma=1e-3,
                              scheme="chunk", chunk_size=chunk, batch_size=chunk,
                              draws_per_step=1).mean

  start = time.perf_counter()
  run()
  first = time.perf_counter() - start
  start = time.perf_counter()
  value = run()
  steady = time.perf_counter() - start
  return {"kind": kind, "num_params": num_params, "risk": float(value), "first_s": first,
          "steady_s": steady, "built_rss": built_rss,
          "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", type=int, default=16)
  parser.add_argument("--length", type=int, default=128)
  parser.add_argument("--chunk", type=int, default=8)
  parser.add_argument("--worker", choices=["plain", "perturbed"], help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(_worker(args.worker, args.rows, args.length, args.chunk)))
    return
  env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
  results = {}
  for kind in ("plain", "perturbed"):
    out = subprocess.run(
        [sys.executable, __file__, "--worker", kind, "--rows", str(args.rows), "--length",
         str(args.length), "--chunk", str(args.chunk)], env=env, check=True,
        capture_output=True, text=True)
    results[kind] = json.loads(out.stdout.strip().splitlines()[-1])
  gib = 2.0**30
  p, q = results["plain"], results["perturbed"]
  print(f"SmolLM2-135M-shaped Llama, {p['num_params'] / 1e6:.1f}M parameters (float32), "
        f"{args.rows} rows x {args.length} tokens, chunk/batch {args.chunk}, "
        f"{-(-args.rows // args.chunk)} posterior draws")
  for r in (p, q):
    print(f"  {r['kind']:<10} peak RSS {r['peak_rss'] / gib:6.2f} GiB (after build "
          f"{r['built_rss'] / gib:5.2f})  first run {r['first_s']:7.2f} s  second run "
          f"{r['steady_s']:7.2f} s  risk {r['risk']:.4f}")
  print(f"  ratio perturbed / plain: peak RSS {q['peak_rss'] / p['peak_rss']:.2f}x, "
        f"time {q['steady_s'] / p['steady_s']:.2f}x (goal <= 1.5x each)")


if __name__ == "__main__":
  main()
