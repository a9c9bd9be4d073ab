"""Forward and greedy-decoding timings of pacbayes.models (random weights, no download).

Usage: python benchmarks/bench_models.py [--only qwen2|lab] [--repeats 3]

Rows:
  qwen2-0.5b: a Qwen2-0.5B-shaped decoder (hidden 896, 24 layers, 14 query / 2 key-value heads,
    MLP 4864, vocab 151936, tied embeddings) in bfloat16, forward on 1 x 128 tokens.
  lab-*: the small Llama-type models of the synthetic study: forward on 64 x 128 tokens and
    greedy_generate of 100 new tokens for 64 prompts of 40 tokens.
Reports compile time (first call minus steady state), steady-state time and peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import pacbayes  # noqa: F401
from pacbayes.models import ModelConfig, build_model
from pacbayes.models.generate import greedy_generate

QWEN2_05B = ModelConfig(
  model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
  num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
  max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=True, attention_bias=True,
  dtype="bfloat16")
LAB = ModelConfig(
  model_type="llama", vocab_size=50, hidden_size=256, intermediate_size=768,
  num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512)


def _peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _build(config: ModelConfig):
  """Random weights on the abstract model (nnx.eval_shape), one leaf at a time from NumPy, so
  that at most one float32 leaf exists beside the final weights."""
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: build_model(config, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(0)

  def fill(leaf):
    values = rng.standard_normal(leaf.shape, dtype=np.float32)
    values *= config.initializer_range
    return jnp.asarray(values.astype(leaf.dtype))

  state = jax.tree.map(fill, abstract)
  return graphdef, state


def _time(fn, repeats: int) -> tuple[float, float]:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  steady = float(np.median(times))
  return first - steady, steady


def bench_forward(name, config, batch, length, repeats):
  start = time.perf_counter()
  graphdef, state = _build(config)
  jax.block_until_ready(state)
  build_s = time.perf_counter() - start
  num_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(state))
  built_rss = _peak_rss_gib()
  ids = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (batch, length)),
                    jnp.int32)
  forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
  compile_s, steady_s = _time(lambda: forward(state, ids), repeats)
  tokens_per_s = batch * length / steady_s
  print(f"{name:<14} {config.dtype:<9} {num_params / 1e6:>8.1f}M  forward {batch}x{length:<5} "
        f"build {build_s:6.2f}s  compile {compile_s:6.2f}s  steady {steady_s * 1e3:9.1f} ms  "
        f"{tokens_per_s:10.0f} tok/s  peak RSS {_peak_rss_gib():.2f} GiB "
        f"(after build {built_rss:.2f})")
  return graphdef, state


def bench_generate(name, config, graphdef, state, batch, prompt, new, repeats):
  model = nnx.merge(graphdef, state)
  ids = np.random.default_rng(1).integers(0, config.vocab_size, (batch, prompt)).astype(np.int32)
  lengths = np.random.default_rng(2).integers(prompt // 2, prompt + 1, batch).astype(np.int32)
  compile_s, steady_s = _time(lambda: greedy_generate(model, ids, lengths, new), repeats)
  print(f"{name:<14} {config.dtype:<9} {'':>9}  generate {batch}x{new:<4} "
        f"prompt {prompt:<4} compile {compile_s:6.2f}s  steady {steady_s * 1e3:9.1f} ms  "
        f"{batch * new / steady_s:10.0f} tok/s  peak RSS {_peak_rss_gib():.2f} GiB")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", choices=["qwen2", "lab"], default=None)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} x{jax.device_count()}")
  if args.only in (None, "lab"):
    for name, dtype in (("lab-f32", "float32"), ("lab-bf16", "bfloat16")):
      config = LAB.replace(dtype=dtype)
      graphdef, state = bench_forward(name, config, 64, 128, args.repeats)
      bench_generate(name, config, graphdef, state, 64, 40, 100, args.repeats)
      del graphdef, state
  if args.only in (None, "qwen2"):
    bench_forward("qwen2-0.5b", QWEN2_05B, 1, 128, args.repeats)


if __name__ == "__main__":
  main()
