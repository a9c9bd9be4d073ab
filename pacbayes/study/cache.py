"""Resumable study cache: content hashes, atomic JSON files and parameter checkpoints (.npz)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from pacbayes.core import jsonio
from pacbayes.core.atomic import write_atomic, write_text


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


Validator = Mapping[str, Any] | Callable[[Any], Any]


def _check_schema(data: Any, schema: Mapping[str, Any]) -> bool:
  """True when `data` is a dict holding every key of `schema` with a value of its type.

  A type may be a class or a tuple of classes; ``float`` also admits ``int``; ``bool`` never
  passes for a number; a nested mapping checks a nested dict.
  """
  if not isinstance(data, dict):
    return False
  for key, expected in schema.items():
    if key not in data:
      return False
    value = data[key]
    if isinstance(expected, Mapping):
      if not _check_schema(value, expected):
        return False
      continue
    types = expected if isinstance(expected, tuple) else (expected,)
    if float in types:
      types = (*types, int)
    if isinstance(value, bool) and bool not in types:
      return False
    if not isinstance(value, types):
      return False
    if isinstance(value, float) and not math.isfinite(value) and float in types:
      return False
  return True


def read_json(path: str | os.PathLike, schema: Validator | None = None) -> Any | None:
  """Reads a cache entry, or returns None when it is missing, damaged or stale (recompute).

  Args:
    path: the JSON file.
    schema: what a valid entry looks like. A mapping ``{key: type}`` (types may be tuples;
      a nested mapping checks a nested dict; ``float`` admits ints, never bools, and must be
      finite) is checked by `_check_schema`; a callable ``validate(data)`` rejects an entry by
      returning False or raising ``ValueError``/``TypeError``/``KeyError``. Without a schema
      the entry must still be a non-empty JSON object (every entry of the study cache is).

  Returns:
    The parsed entry, or None: no file, unreadable, not UTF-8 JSON, or rejected by `schema`.
  """
  try:
    data = jsonio.read_json(path, allow_nan=True)
  except (OSError, jsonio.JSONError, RecursionError):
    return None
  if schema is None:
    return data if isinstance(data, dict) and data else None
  if isinstance(schema, Mapping):
    return data if _check_schema(data, schema) else None
  try:
    verdict = schema(data)
  except (ValueError, TypeError, KeyError, IndexError, AttributeError):
    return None
  return None if verdict is False else data


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
    missing, damaged (zero bytes, truncated, not a zip, a failed checksum), holds a
    non-numeric array, or does not match the template's names and shapes (the caller then
    recomputes).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    return None
  try:
    with zipfile.ZipFile(path) as archive:
      if archive.testzip() is not None:  # np.load skips the CRC check of stored members.
        return None
    with np.load(path, allow_pickle=False) as data:
      stored = {k: np.asarray(data[k]) for k in data.files}
  except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error):
    return None  # Zero-byte, truncated, not a zip, object arrays, CRC failure.
  leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
  out = []
  for p, leaf in leaves:
    arr = stored.get(jax.tree_util.keystr(p))
    if arr is None or arr.shape != np.shape(leaf) or arr.dtype.kind not in "fiub":
      return None
    out.append(jax.numpy.asarray(arr, dtype=leaf.dtype))
  if len(stored) != len(out):
    return None
  return jax.tree_util.tree_unflatten(treedef, out)
