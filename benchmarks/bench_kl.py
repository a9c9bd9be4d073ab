"""Benchmark: streamed checkpoint KL against merely reading the bytes, with peak memory.

Writes two sharded float32 safetensors folders of about ``--gb`` GB each into a temporary
directory (removed afterwards), then times, each in a fresh subprocess so that peak RSS
(``ru_maxrss``) belongs to that step alone:

- ``import``: the interpreter with pacbayes imported (the RSS floor);
- ``read bytes``: reading every file of both folders in 16 MiB chunks, no parsing;
- ``get_tensor``: ``iter_safetensors`` over both folders, no arithmetic;
- ``checkpoint_kl``: the KL itself (default reader, ``safe_open``);
- ``kl, direct``: the KL with ``direct=True`` (plain file reads, no memory map).

Usage: ``python benchmarks/bench_kl.py [--gb 1.0] [--dir /tmp]``.
"""

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HIDDEN = 2048
SHARDS = 4


def llama_config(gb: float):
  """A real Llama architecture of about ``gb`` GB in float32 (checkpoint_kl reads the config
  and refuses tensors outside the architecture's parameter set)."""
  from pacbayes.models import ModelConfig

  base = dict(model_type="llama", vocab_size=32000, hidden_size=HIDDEN, intermediate_size=5632,
              num_attention_heads=16, num_key_value_heads=16)
  per_layer = 4 * HIDDEN * HIDDEN + 3 * HIDDEN * 5632 + 2 * HIDDEN
  rest = 2 * 32000 * HIDDEN + HIDDEN
  layers = max(1, round((gb * 1e9 / 4 - rest) / per_layer))
  return ModelConfig(num_hidden_layers=layers, **base)


def layout(gb: float) -> dict[str, tuple[int, ...]]:
  """Tensor shapes of the Llama model of ``llama_config(gb)``."""
  from pacbayes.models.params import hf_shapes

  return hf_shapes(llama_config(gb))


def write_pair(root: str, shapes: dict[str, tuple[int, ...]], gb: float) -> tuple[str, str]:
  from safetensors.numpy import save_file

  rng = np.random.default_rng(0)
  folders = [os.path.join(root, "prior"), os.path.join(root, "posterior")]
  names = list(shapes)
  weight_map = {}
  for folder in folders:
    os.makedirs(folder)
    with open(os.path.join(folder, "config.json"), "w") as f:
      json.dump(llama_config(gb).to_hf_config(), f)
  for s in range(SHARDS):
    shard = f"model-{s + 1:05d}-of-{SHARDS:05d}.safetensors"
    prior, post = {}, {}
    for name in names[s::SHARDS]:
      prior[name] = rng.standard_normal(shapes[name], dtype=np.float32) * 0.02
      post[name] = prior[name] + rng.standard_normal(shapes[name], dtype=np.float32) * 1e-3
      weight_map[name] = shard
    save_file(prior, os.path.join(folders[0], shard))
    save_file(post, os.path.join(folders[1], shard))
    del prior, post
  for folder in folders:
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {}, "weight_map": weight_map}, f)
  return folders[0], folders[1]


def measure(step: str, prior: str, post: str) -> dict:
  """Runs one step in this (fresh) process; returns seconds and peak RSS in MiB."""
  import pacbayes  # noqa: F401  (the floor includes jax)
  from pacbayes.posterior.kl import checkpoint_kl, iter_safetensors

  reset = _reset_peak_rss()
  start_mib = _rss_mib("VmRSS")
  start = time.perf_counter()
  extra = {}
  if step == "read bytes":
    buf = bytearray(16 << 20)
    total = 0
    for folder in (prior, post):
      for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb", buffering=0) as f:
          while n := f.readinto(buf):
            total += n
    extra["bytes"] = total
  elif step == "get_tensor":
    count = 0
    for folder in (prior, post):
      for _, array in iter_safetensors(folder):
        count += array.size
    extra["elements"] = count
  elif step == "checkpoint_kl":
    result = checkpoint_kl(prior, post, 1e-3, 2e-3)
    extra.update(kl=result.kl, num_params=result.num_params)
  elif step == "kl, direct":
    result = checkpoint_kl(prior, post, 1e-3, 2e-3, direct=True)
    extra.update(kl=result.kl, num_params=result.num_params)
  seconds = time.perf_counter() - start
  if reset:
    peak_mib = _rss_mib("VmHWM")
  else:  # no peak reset available: the peak may include the import
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
  return dict(step=step, seconds=seconds, start_mib=start_mib, peak_rss_mib=peak_mib, **extra)


def _reset_peak_rss() -> bool:
  """Resets the kernel's peak-RSS mark (Linux >= 4.0), so VmHWM covers only what follows."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _rss_mib(field: str) -> float:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return float("nan")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--gb", type=float, default=1.0, help="size of each checkpoint in GB")
  parser.add_argument("--dir", default=None, help="where to put the temporary folders")
  parser.add_argument("--measure", nargs=3, metavar=("STEP", "PRIOR", "POSTERIOR"))
  args = parser.parse_args()
  if args.measure:
    print(json.dumps(measure(*args.measure)))
    return

  shapes = layout(args.gb)
  largest = max(math.prod(s) for s in shapes.values()) * 4 / 2**20
  num_params = sum(math.prod(s) for s in shapes.values())
  root = tempfile.mkdtemp(prefix="bench_kl_", dir=args.dir)
  try:
    t0 = time.perf_counter()
    prior, post = write_pair(root, shapes, args.gb)
    write_s = time.perf_counter() - t0
    rows = []
    for step in ("import", "read bytes", "get_tensor", "checkpoint_kl", "kl, direct"):
      out = subprocess.run(
        [sys.executable, __file__, "--measure", step, prior, post],
        check=True,
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
      )
      rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
  finally:
    shutil.rmtree(root, ignore_errors=True)

  size_mib = 2 * num_params * 4 / 2**20
  print(
    f"two checkpoints of {num_params / 1e6:.1f}M float32 parameters ({size_mib:.0f} MiB in all, "
    f"{SHARDS} shards each, {len(shapes)} tensors), largest tensor {largest:.0f} MiB; "
    f"written in {write_s:.1f} s"
  )
  print(
    f"{'step':<14} {'seconds':>8} {'MiB/s':>8} {'RSS before':>11} {'peak RSS':>9} {'added':>7}"
    "   (MiB)"
  )
  for row in rows:
    rate = size_mib / row["seconds"] if row["step"] != "import" else float("nan")
    print(
      f"{row['step']:<14} {row['seconds']:>8.2f} {rate:>8.0f} {row['start_mib']:>11.0f} "
      f"{row['peak_rss_mib']:>9.0f} {row['peak_rss_mib'] - row['start_mib']:>7.0f}"
    )
  kl_row = rows[-2]
  assert rows[-1]["kl"] == kl_row["kl"]
  print(f"KL = {kl_row['kl']:.6e} over {kl_row['num_params']} parameters (both readers agree)")


if __name__ == "__main__":
  main()
