"""Tests for pacbayes.core.tensorio: reading and writing safetensors checkpoint folders."""

import json
import os

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from pacbayes.core import tensorio
from pacbayes.core.tensorio import (
  CheckpointError,
  SafetensorsFolder,
  iter_tensors,
  read_tensors,
  row_blocks,
  weight_files,
  write_safetensors,
  write_tensors,
)
from pacbayes.models import checkpoint
from pacbayes.posterior import kl


def random_weights(rng):
  return {
    "model.embed_tokens.weight": rng.normal(size=(40, 8)).astype(np.float32),
    "model.layers.0.mlp.up_proj.weight": rng.normal(size=(16, 8)).astype(ml_dtypes.bfloat16),
    "model.layers.0.input_layernorm.weight": rng.normal(size=(8,)).astype(np.float16),
    "model.norm.weight": rng.normal(size=(8,)).astype(np.float64),
    "lm_head.weight": rng.normal(size=(40, 8)).astype(np.float32),
    "position_ids": np.arange(10, dtype=np.int64),
    "scale": np.asarray(2.5, np.float32),
    "mask": np.array([True, False, True]),
  }


def write_reference(folder, weights, num_shards=1, config=True):
  """Writes a checkpoint folder with the safetensors library (the independent reference)."""
  os.makedirs(folder, exist_ok=True)
  if config:
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
  if num_shards == 1:
    save_file(weights, str(folder / "model.safetensors"))
    return folder
  names = list(weights)
  weight_map = {}
  for i in range(num_shards):
    shard = f"model-{i + 1:05d}-of-{num_shards:05d}.safetensors"
    part = {k: weights[k] for k in names[i::num_shards]}
    save_file(part, str(folder / shard))
    weight_map.update(dict.fromkeys(part, shard))
  (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  return folder


def assert_same(got, want):
  assert got.keys() == want.keys()
  for k, v in want.items():
    assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
    assert np.asarray(got[k]).tobytes() == v.tobytes(), k  # bit-exact, NaNs included


# ------------------------------------------------------------------------------------------
# Reading.


@pytest.mark.parametrize("num_shards", [1, 3])
@pytest.mark.parametrize("native", [None, False])
def test_read_matches_reference_writer(tmp_path, monkeypatch, num_shards, native):
  # native=False forces the raw-bytes reader that serves safetensors versions without
  # NumPy bfloat16 support; both paths must give the same bits.
  monkeypatch.setattr(SafetensorsFolder, "_native_bf16", native)
  weights = random_weights(np.random.default_rng(0))
  write_reference(tmp_path / "m", weights, num_shards, config=False)
  assert_same(dict(iter_tensors(tmp_path / "m")), weights)
  assert_same(read_tensors(tmp_path / "m"), weights)
  folder = SafetensorsFolder(tmp_path / "m")
  assert len(folder) == len(weights) and "scale" in folder and "nope" not in folder
  assert folder.dtype("model.layers.0.mlp.up_proj.weight") == "BF16"
  assert folder.numpy_dtype("position_ids") == np.int64
  assert folder.shape("scale") == ()
  files = weight_files(tmp_path / "m")
  assert [f.name for f in files] == sorted(f.name for f in (tmp_path / "m").glob("*.safetensors"))
  assert folder.files() == files


def test_raw_reader_matches_safe_open(tmp_path):
  rng = np.random.default_rng(1)
  weights = {
    "a": rng.normal(size=(7, 3)).astype(ml_dtypes.bfloat16),
    "b": rng.normal(size=(5,)).astype(np.float16),
    "c": np.asarray(2.5, np.float32),
    "d": rng.integers(-5, 5, size=(4, 2)).astype(np.int32),
  }
  write_reference(tmp_path / "m", weights)
  folder = SafetensorsFolder(tmp_path / "m")
  for name, value in weights.items():
    rows = value.shape[0] if value.shape else 0
    np.testing.assert_array_equal(folder._read_raw(name, 0, rows), value)
    assert folder._read_raw(name, 0, rows).dtype == value.dtype
    assert folder.dtype(name) == {"a": "BF16", "b": "F16", "c": "F32", "d": "I32"}[name]
  np.testing.assert_array_equal(folder._read_raw("a", 2, 5), weights["a"][2:5])
  direct = SafetensorsFolder(tmp_path / "m", direct=True)
  for name, value in weights.items():
    assert direct.get(name).dtype == value.dtype
    np.testing.assert_array_equal(direct.get(name), value)
    np.testing.assert_array_equal(folder.memmap(name), value)
    blocks = list(direct.iter_rows(name, max_elems=4))
    np.testing.assert_array_equal(np.concatenate([b.ravel() for b in blocks]), value.ravel())
  assert [b.shape[0] for b in folder.iter_rows("a", max_elems=6)] == [2, 2, 2, 1]


@pytest.mark.parametrize(
  "shape, max_elems, want",
  [
    ((), 4, [(0, 0)]),
    ((0, 3), 4, [(0, 0)]),
    ((5,), 2, [(0, 2), (2, 4), (4, 5)]),
    ((3, 10), 4, [(0, 1), (1, 2), (2, 3)]),  # a block holds at least one row
    ((4, 0), 2, [(0, 2), (2, 4)]),
  ],
)
def test_row_blocks(shape, max_elems, want):
  assert row_blocks(shape, max_elems) == want


def test_iter_tensors_names_and_order(tmp_path):
  weights = random_weights(np.random.default_rng(2))
  write_reference(tmp_path / "m", weights, num_shards=3, config=False)
  picked = list(iter_tensors(tmp_path / "m", names=["lm_head.weight", "model.norm.weight"]))
  assert [k for k, _ in picked] == ["lm_head.weight", "model.norm.weight"]
  with pytest.raises(CheckpointError, match="no tensor named 'missing'"):
    list(iter_tensors(tmp_path / "m", names=["missing"]))
  # On-disk order: file by file, by byte offset.
  folder = SafetensorsFolder(tmp_path / "m")
  order = [(folder._info(n).file, folder._info(n).begin) for n in folder.names()]
  assert order == sorted(order)


def test_single_file_wins_over_index(tmp_path):
  rng = np.random.default_rng(3)
  old, new = random_weights(rng), {"only": np.ones(3, np.float32)}
  write_reference(tmp_path / "m", old, num_shards=2)
  save_file(new, str(tmp_path / "m" / "model.safetensors"))
  assert list(read_tensors(tmp_path / "m")) == ["only"]


def test_empty_tensors(tmp_path):
  weights = {"e": np.zeros((0, 4), np.float32), "f": np.ones((2, 0), ml_dtypes.bfloat16)}
  write_reference(tmp_path / "m", weights)
  for direct in (False, True):
    folder = SafetensorsFolder(tmp_path / "m", direct=direct)
    for name, value in weights.items():
      assert folder.get(name).shape == value.shape and folder.memmap(name).shape == value.shape


def test_old_module_names_still_work():
  assert kl.iter_safetensors is tensorio.iter_tensors
  assert kl.CheckpointError is CheckpointError and kl.SafetensorsFolder is SafetensorsFolder
  for name in ("iter_tensors", "read_tensors", "weight_files", "write_safetensors"):
    assert getattr(checkpoint, name) is getattr(tensorio, name)
  assert issubclass(CheckpointError, ValueError)


# ------------------------------------------------------------------------------------------
# Writing.


def test_write_safetensors_read_by_reference(tmp_path):
  weights = random_weights(np.random.default_rng(4))
  weights["big_endian"] = np.arange(6, dtype=">f4").reshape(2, 3)
  write_safetensors(tmp_path / "w.safetensors", weights)
  got = load_file(str(tmp_path / "w.safetensors"))
  assert got.keys() == weights.keys()
  for k, v in weights.items():
    assert got[k].dtype == v.dtype.newbyteorder("<") and got[k].shape == v.shape
    np.testing.assert_array_equal(got[k], v, err_msg=k)
  raw = (tmp_path / "w.safetensors").read_bytes()
  assert (8 + int.from_bytes(raw[:8], "little")) % 8 == 0  # data starts aligned


def test_write_tensors_sharded_round_trip_and_cleanup(tmp_path):
  weights = random_weights(np.random.default_rng(5))
  write_tensors(tmp_path, weights, max_shard_bytes=600)
  shards = sorted(tmp_path.glob("model-*.safetensors"))
  assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
  index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
  assert index["metadata"]["total_size"] == sum(v.nbytes for v in weights.values())
  assert_same(read_tensors(tmp_path), weights)
  # Saving again as one file removes the shards and the index, and vice versa.
  write_tensors(tmp_path, weights)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
  assert_same(read_tensors(tmp_path), weights)
  write_tensors(tmp_path, weights, max_shard_bytes=10_000)
  assert sorted(p.name for p in tmp_path.iterdir()) == [
    "model-00001-of-00001.safetensors",
    "model.safetensors.index.json",
  ]
  assert_same(read_tensors(tmp_path), weights)


def test_write_refusals(tmp_path):
  with pytest.raises(ValueError, match="'obj': dtype object cannot be saved"):
    write_safetensors(tmp_path / "w.safetensors", {"obj": np.array([None])})
  with pytest.raises(ValueError, match="tensor name '__metadata__'"):
    write_safetensors(tmp_path / "w.safetensors", {"__metadata__": np.zeros(2)})
  with pytest.raises(ValueError, match="max_shard_bytes must be positive"):
    write_tensors(tmp_path, {"a": np.zeros(2)}, max_shard_bytes=0)


# ------------------------------------------------------------------------------------------
# Refusals when reading.


def test_refuses_missing_folder_weights_and_config(tmp_path):
  with pytest.raises(CheckpointError, match="'.*nope' does not exist"):
    SafetensorsFolder(tmp_path / "nope")
  os.makedirs(tmp_path / "empty")
  with pytest.raises(CheckpointError, match="empty' has neither model.safetensors nor"):
    read_tensors(tmp_path / "empty")
  write_reference(tmp_path / "noconfig", {"a": np.zeros(2, np.float32)}, config=False)
  SafetensorsFolder(tmp_path / "noconfig")
  with pytest.raises(CheckpointError, match="noconfig' has no config.json"):
    SafetensorsFolder(tmp_path / "noconfig", require_config=True)


def test_refuses_bad_index(tmp_path):
  weights = random_weights(np.random.default_rng(6))
  folder = write_reference(tmp_path / "m", weights, num_shards=2)
  index_path = folder / "model.safetensors.index.json"
  index = json.loads(index_path.read_text())

  def rewrite(new):
    index_path.write_text(json.dumps(new) if not isinstance(new, str) else new)

  rewrite(dict(weight_map=dict(index["weight_map"], **{"ghost.weight": shard_of(index)})))
  with pytest.raises(CheckpointError, match="'ghost.weight' is not in its shard"):
    SafetensorsFolder(folder)
  rewrite(dict(weight_map=dict(index["weight_map"], **{"x": "../other.safetensors"})))
  with pytest.raises(CheckpointError, match="'x' maps to '../other.safetensors', not a file"):
    SafetensorsFolder(folder)
  rewrite({"weight_map": {}})
  with pytest.raises(CheckpointError, match="'weight_map' must be a non-empty object"):
    SafetensorsFolder(folder)
  rewrite("{not json")
  with pytest.raises(CheckpointError, match="index.json: not a valid index"):
    SafetensorsFolder(folder)
  rewrite(index)
  os.remove(folder / "model-00002-of-00002.safetensors")
  with pytest.raises(CheckpointError, match="lists shard 'model-00002-of-00002.safetensors'"):
    weight_files(folder)


def shard_of(index):
  return next(iter(index["weight_map"].values()))


def raw_header_file(path, text, data=b""):
  raw = text.encode()
  path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)


def f32(begin, end, n=2):
  return {"dtype": "F32", "shape": [n], "data_offsets": [begin, end]}


# Headers the reference implementation (the safetensors library) refuses; so must we.
def entries(*pairs):
  """A header's JSON text from (name, entry) pairs; a name may repeat (json.dumps cannot)."""
  return "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs) + "}"


BAD_LAYOUTS = [
  (entries(("a", f32(0, 8)), ("b", f32(0, 8))), 8, "'b' at bytes \\[0, 8\\) overlaps"),
  (entries(("a", f32(0, 8)), ("b", f32(4, 12))), 12, "overlaps"),
  (entries(("a", f32(0, 8)), ("b", f32(12, 20))), 20, "leaves a gap"),
  (entries(("a", f32(0, 8))), 12, "4 bytes after the last tensor"),
  (entries(("a", f32(0, 8)), ("a", f32(8, 16))), 16, "key 'a' appears twice"),
  (entries(("__metadata__", {"x": 1}), ("a", f32(0, 8))), 8, "__metadata__"),
]


@pytest.mark.parametrize("text, size, match", BAD_LAYOUTS)
def test_refuses_what_the_reference_refuses(tmp_path, text, size, match):
  os.makedirs(tmp_path / "bad")
  path = tmp_path / "bad" / "model.safetensors"
  raw_header_file(path, text, np.arange(size, dtype=np.uint8).tobytes())
  from safetensors import safe_open

  with pytest.raises(Exception):  # noqa: B017  (the reference raises its own error types)
    with safe_open(path, framework="numpy") as f:
      [f.get_tensor(k) for k in f.keys()]  # noqa: B018
  with pytest.raises(CheckpointError, match=f"model.safetensors: .*{match}"):
    SafetensorsFolder(tmp_path / "bad")


def test_shared_byte_range_cannot_fake_a_zero_kl(tmp_path):
  # Two tensors on one byte range used to load as equal weights (KL ~0 instead of ~2e6).
  rng = np.random.default_rng(3)
  a, b = rng.normal(size=(2,)).astype(np.float32), rng.normal(size=(2,)).astype(np.float32)
  os.makedirs(tmp_path / "ok")
  save_file({"a": a, "b": b}, str(tmp_path / "ok" / "model.safetensors"))
  assert sorted(SafetensorsFolder(tmp_path / "ok").names()) == ["a", "b"]
  os.makedirs(tmp_path / "bad")
  raw_header_file(tmp_path / "bad" / "model.safetensors",
                  json.dumps({"a": f32(0, 8), "b": f32(0, 8)}), a.tobytes())
  with pytest.raises(CheckpointError, match="overlaps"):
    SafetensorsFolder(tmp_path / "bad")


def test_index_with_repeated_name_is_refused(tmp_path):
  os.makedirs(tmp_path / "ix")
  save_file({"a": np.zeros(2, np.float32)}, str(tmp_path / "ix" / "s1.safetensors"))
  save_file({"a": np.ones(2, np.float32)}, str(tmp_path / "ix" / "s2.safetensors"))
  (tmp_path / "ix" / "model.safetensors.index.json").write_text(
    '{"weight_map": {"a": "s1.safetensors", "a": "s2.safetensors"}}')
  with pytest.raises(CheckpointError, match="key 'a' appears twice"):
    SafetensorsFolder(tmp_path / "ix")


def header_file(path, header, data=b""):
  raw = json.dumps(header).encode()
  path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)


@pytest.mark.parametrize(
  "header, data, match",
  [
    (None, b"\x05\x00", "not a safetensors file"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "truncated"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "byte range"),
    ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, -8]}}, b"", "malformed header"),
    ({"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8, "dtype 'C64'"),
    ({"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, "malformed header entry for tensor 'a'"),
    ({"a": "F32"}, b"", "malformed header entry for tensor 'a'"),
    ([1, 2], b"", "header is not a JSON object"),
  ],
)
def test_refuses_malformed_file(tmp_path, header, data, match):
  os.makedirs(tmp_path / "bad")
  path = tmp_path / "bad" / "model.safetensors"
  if header is None:
    path.write_bytes(data)
  else:
    header_file(path, header, data)
  with pytest.raises(CheckpointError, match=f"model.safetensors: .*{match}"):
    SafetensorsFolder(tmp_path / "bad")


def test_refuses_truncated_reference_file(tmp_path):
  folder = write_reference(tmp_path / "cut", random_weights(np.random.default_rng(7)))
  path = folder / "model.safetensors"
  path.write_bytes(path.read_bytes()[:-10])
  with pytest.raises(CheckpointError, match="model.safetensors: tensor .* truncated or malformed"):
    read_tensors(folder)
