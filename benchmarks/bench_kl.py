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

HIDDEN = 4096
SHARDS = 4


def layout(gb: float) -> dict[str, tuple[int, int]]:
  """Tensor shapes of a Llama-like model of about ``gb`` GB in float32."""
  shapes = {"model.embed_tokens.weight": (2 * HIDDEN, HIDDEN)}  # the largest tensor
  target = gb * 1e9 / 4
  i = 0
  while sum(math.prod(s) for s in shapes.values()) + HIDDEN * HIDDEN <= target:
    shapes[f"model.layers.{i // 4}.w{i % 4}.weight"] = (HIDDEN, HIDDEN)
    i += 1
    if i % 4 == 0:
      shapes[f"model.layers.{i // 4 - 1}.input_layernorm.weight"] = (HIDDEN,)
  shapes["model.norm.weight"] = (HIDDEN,)
  return shapes


def write_pair(root: str, shapes: dict[str, tuple[int, ...]]) -> tuple[str, str]:
  from safetensors.numpy import save_file

  rng = np.random.default_rng(0)
  folders = [os.path.join(root, "prior"), os.path.join(root, "posterior")]
  names = list(shapes)
  weight_map = {}
  for folder in folders:
    os.makedirs(folder)
    with open(os.path.join(folder, "config.json"), "w") as f:
      json.dump({"model_type": "llama", "hidden_size": HIDDEN}, f)
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
  from pacbayes.kl import checkpoint_kl, iter_safetensors

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
    prior, post = write_pair(root, shapes)
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
