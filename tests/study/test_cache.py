"""The study cache: damaged or stale entries read as None (recompute), never as data."""

import os
import stat

import jax.numpy as jnp
import numpy as np
import pytest

from pacbayes.study import cache

PARAMS = {"w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3), "z": {"v": jnp.ones(2)}}
CELL_SCHEMA = {"accuracy": float, "n": int, "certificate": {"bound": float}}
GOOD_CELL = {"accuracy": 0.5, "n": 100, "certificate": {"bound": 0.9, "kl": 3.0}}


def test_json_round_trip_and_mode(tmp_path):
  path = tmp_path / "cells" / "a.json"
  old = os.umask(0o022)
  try:
    cache.write_json(path, GOOD_CELL)
  finally:
    os.umask(old)
  assert cache.read_json(path) == GOOD_CELL
  assert cache.read_json(path, CELL_SCHEMA) == GOOD_CELL
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


@pytest.mark.parametrize("text", [
  "[]", "{}", "null", "3", '"x"', "", "{\"accuracy\": 0.5,", "\x00\x01\x02", "\ufeff{",
])
def test_damaged_json_is_recomputed_even_without_schema(tmp_path, text):
  path = tmp_path / "a.json"
  path.write_bytes(text.encode("utf-8", "surrogatepass") if text != "\x00\x01\x02"
                   else b"\xff\xfe\x00")
  assert cache.read_json(path) is None
  assert cache.read_json(path, CELL_SCHEMA) is None


@pytest.mark.parametrize("cell", [
  {"n": 100, "certificate": {"bound": 0.9}},                      # a key missing
  {"accuracy": "0.5", "n": 100, "certificate": {"bound": 0.9}},   # a string for a float
  {"accuracy": None, "n": 100, "certificate": {"bound": 0.9}},    # null
  {"accuracy": True, "n": 100, "certificate": {"bound": 0.9}},    # a bool is not a number
  {"accuracy": 0.5, "n": 1.5, "certificate": {"bound": 0.9}},     # a float for an int
  {"accuracy": 0.5, "n": 100, "certificate": []},                 # nested: wrong type
  {"accuracy": 0.5, "n": 100, "certificate": {}},                 # nested: key missing
  {"accuracy": float("nan"), "n": 100, "certificate": {"bound": 0.9}},  # not finite
])
def test_stale_json_fails_the_schema(tmp_path, cell):
  path = tmp_path / "a.json"
  cache.write_json(path, cell)
  assert cache.read_json(path, CELL_SCHEMA) is None


def test_int_is_a_float_and_extra_keys_pass(tmp_path):
  path = tmp_path / "a.json"
  cache.write_json(path, GOOD_CELL | {"accuracy": 1, "extra": [1]})
  assert cache.read_json(path, CELL_SCHEMA)["accuracy"] == 1


def test_callable_validator(tmp_path):
  path = tmp_path / "a.json"
  cache.write_json(path, GOOD_CELL)
  assert cache.read_json(path, lambda d: d["n"] == 100) == GOOD_CELL
  assert cache.read_json(path, lambda d: d["n"] == 7) is None
  assert cache.read_json(path, lambda d: d["missing"]) is None

  def raises(d):
    raise ValueError("stale")

  assert cache.read_json(path, raises) is None


def test_params_round_trip(tmp_path):
  path = tmp_path / "p.npz"
  cache.save_params(path, PARAMS)
  back = cache.load_params(path, PARAMS)
  np.testing.assert_array_equal(np.asarray(back["w"]), np.asarray(PARAMS["w"]))
  assert back["w"].dtype == jnp.float32
  assert cache.load_params(path, {"w": jnp.zeros((3, 3))}) is None       # other names
  assert cache.load_params(path, {"w": jnp.zeros((3, 2)), "z": {"v": jnp.ones(2)}}) is None
  assert cache.load_params(tmp_path / "missing.npz", PARAMS) is None


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "flipped", "pickle",
                                    "folder", "strings"])
def test_damaged_npz_is_recomputed(tmp_path, damage):
  path = tmp_path / "p.npz"
  cache.save_params(path, PARAMS)
  blob = path.read_bytes()
  if damage == "empty":
    path.write_bytes(b"")
  elif damage == "truncated":
    path.write_bytes(blob[: len(blob) // 2])
  elif damage == "garbage":
    path.write_bytes(b"not a zip at all" * 10)
  elif damage == "flipped":  # a byte of array data changed: the zip CRC check fails
    header = blob.index(b"\x93NUMPY")
    start = header + 10 + int.from_bytes(blob[header + 8:header + 10], "little") + 4
    path.write_bytes(blob[:start] + bytes([blob[start] ^ 0xFF]) + blob[start + 1:])
  elif damage == "pickle":
    obj = np.empty(2, dtype=object)
    np.savez(path, **{"['w']": obj, "['z']['v']": obj})
  elif damage == "strings":
    np.savez(path, **{"['w']": np.array([["a"] * 3] * 2), "['z']['v']": np.ones(2)})
  else:
    path.unlink()
    path.mkdir()
  assert cache.load_params(path, PARAMS) is None
