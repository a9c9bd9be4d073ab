"""Resumable study cache: content hashes, atomic JSON files and parameter checkpoints (.npz)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from pacbayes.atomic import write_atomic, write_text


def config_hash(fields: Mapping[str, Any], *, length: int = 16) -> str:
  """A short stable hash of JSON-serialisable fields (sorted keys, tuples as lists)."""
  text = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=_jsonable)
  return hashlib.blake2b(text.encode(), digest_size=length // 2).hexdigest()


def _jsonable(x: Any) -> Any:
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  raise TypeError(f"config_hash: cannot hash a value of type {type(x).__name__}")


def write_json(path: str | os.PathLike, data: Any) -> None:
  """Writes JSON atomically (temporary file in the same folder, then a rename)."""
  text = json.dumps(data, indent=1, default=_jsonable, allow_nan=True) + "\n"
  write_text(path, text)


def read_json(path: str | os.PathLike) -> Any | None:
  """Reads a JSON file, or returns None when it is missing or unreadable (a stale cache)."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


def _flat(params: Any) -> dict[str, np.ndarray]:
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def save_params(path: str | os.PathLike, params: Any) -> None:
  """Saves a parameter pytree as .npz, one array per leaf keyed by its tree path."""
  arrays = _flat(params)
  write_atomic(path, lambda f: np.savez(f, **arrays), binary=True)


def load_params(path: str | os.PathLike, like: Any) -> Any | None:
  """Loads parameters saved by `save_params` into the structure of `like`.

  Returns:
    The pytree (leaves as `jax.Array` of the template's dtypes), or None when the file is
    missing, unreadable or does not match the template (the caller then recomputes).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    return None
  try:
    with np.load(path) as data:
      stored = {k: data[k] for k in data.files}
  except (OSError, ValueError):
    return None
  leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
  out = []
  for p, leaf in leaves:
    name = jax.tree_util.keystr(p)
    arr = stored.get(name)
    if arr is None or arr.shape != np.shape(leaf):
      return None
    out.append(jax.numpy.asarray(arr, dtype=leaf.dtype))
  if len(stored) != len(out):
    return None
  return jax.tree_util.tree_unflatten(treedef, out)
