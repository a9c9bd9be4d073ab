"""Paths, meshes and files of `pacbayes finetune` (checked before any work, written after)."""

from __future__ import annotations

import hashlib
import os
import shutil
from typing import Any

CHECKPOINTS = "checkpoints"
REPORT = "finetune.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json",
                   "chat_template.jinja", "generation_config.json")
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # transformers' default max_shard_size ("5GB")


def parse_mesh(text: str) -> dict[str, int]:
  """"data=2,fsdp=4" -> {"data": 2, "fsdp": 4} (--mesh); a missing axis is left to make_mesh."""
  out: dict[str, int] = {}
  for part in str(text).split(","):
    name, sep, value = part.strip().partition("=")
    if not sep or name not in ("data", "fsdp") or name in out:
      raise ValueError(f"--mesh {text!r}: expected 'data=D,fsdp=F' (each axis at most once)")
    try:
      out[name] = int(value)
    except ValueError:
      raise ValueError(f"--mesh {text!r}: {name} must be an integer, got {value!r}") from None
    if out[name] < 1:
      raise ValueError(f"--mesh {text!r}: {name} must be >= 1")
  return out


def sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def check_paths(cfg: Any) -> None:
  if not os.path.isdir(cfg.model):
    raise ValueError(f"--model {cfg.model}: no such folder")
  if not os.path.isfile(cfg.train):
    raise ValueError(f"--train {cfg.train}: no such file")
  out = os.path.realpath(cfg.out)
  for flag, path in (("--model", cfg.model), ("--train", cfg.train)):
    real = os.path.realpath(path)
    if out == real or os.path.commonpath([out, real]) == out or (
        os.path.isdir(real) and os.path.commonpath([out, real]) == real):
      raise ValueError(f"--out {cfg.out}: overlaps the input {flag} {path}; refusing to write")
  parent = os.path.dirname(out)
  if not os.path.isdir(parent):
    raise ValueError(f"--out {cfg.out}: the folder {parent} does not exist")
  if os.path.exists(out):
    if not os.path.isdir(out):
      raise ValueError(f"--out {cfg.out}: exists and is not a folder")
    if os.path.exists(os.path.join(out, REPORT)):
      raise ValueError(f"--out {cfg.out}: already holds a finished fine-tune; choose another")
    # With checkpoints the folder is an interrupted run of this command (the fingerprint
    # check decides whether it is the same run); its partial outputs are replaced.
    extra = [n for n in os.listdir(out) if n != CHECKPOINTS]
    if extra and not os.path.isdir(os.path.join(out, CHECKPOINTS)):
      raise ValueError(f"--out {cfg.out}: folder is not empty ({extra[0]!r}) and holds no "
                       "checkpoint of this command; choose another")
  if not os.access(parent, os.W_OK):
    raise ValueError(f"--out {cfg.out}: the folder {parent} is not writable")


def make_mesh(cfg: Any, batch_size: int):
  import jax

  from pacbayes.core import sharding as shd

  if cfg.mesh is None:
    n = jax.device_count()
    return shd.make_mesh() if n > 1 and batch_size % n == 0 else None
  axes = parse_mesh(cfg.mesh)
  try:
    mesh = shd.make_mesh(axes.get("data"), axes.get("fsdp", 1))
  except ValueError as e:
    raise ValueError(f"--mesh {cfg.mesh}: {e}") from None
  data = shd.axis_size(mesh, shd.DATA)
  if batch_size % data:
    raise ValueError(f"--mesh {cfg.mesh}: data={data} must divide the micro-batch "
                     f"(--batch-size / --grad-accum = {batch_size})")
  return mesh


def max_shard_bytes(model_dir: str) -> int | None:
  from pacbayes.models import weight_files

  files = weight_files(model_dir)
  if len(files) > 1:
    return max(os.path.getsize(f) for f in files)
  return DEFAULT_MAX_SHARD_BYTES if os.path.getsize(files[0]) > DEFAULT_MAX_SHARD_BYTES else None


def copy_tokenizer(src: str, dst: str) -> None:
  for name in TOKENIZER_FILES:
    if os.path.isfile(os.path.join(src, name)):
      shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))


def to_host_tree(tree: Any) -> Any:
  import jax

  from pacbayes.core.sharding import to_host

  return jax.tree.map(to_host, tree)
