"""Tests for pacbayes.core.sharding on 8 forced CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from pacbayes.core import sharding as shd


def test_make_mesh_shapes_and_errors():
  assert jax.device_count() == 8
  mesh = shd.make_mesh()
  assert mesh.axis_names == ("data", "fsdp") and dict(mesh.shape) == {"data": 8, "fsdp": 1}
  mesh = shd.make_mesh(fsdp=2)
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
  assert dict(shd.make_mesh(2, 2).shape) == {"data": 2, "fsdp": 2}
  assert shd.axis_size(None, "data") == 1
  with pytest.raises(ValueError, match="fsdp=3"):
    shd.make_mesh(fsdp=3)
  with pytest.raises(ValueError, match="needs 16 devices"):
    shd.make_mesh(8, 2)
  with pytest.raises(ValueError, match="data"):
    shd.make_mesh(0)


def test_specs():
  mesh = shd.make_mesh(4, 2)
  assert shd.leading_axis_spec((8, 3), mesh) == P("data")
  assert shd.leading_axis_spec((3, 8), mesh, axes=(0, 1)) == P(None, "data")
  assert shd.leading_axis_spec((3, 5), mesh, axes=(0, 1)) == P()
  assert shd.leading_axis_spec((8,), None) == P()
  assert shd.param_spec((3, 10), mesh) == P(None, "fsdp")
  assert shd.param_spec((5, 3), mesh) == P()
  assert shd.param_spec((), mesh) == P()
  assert shd.param_spec((4, 6), shd.make_mesh(8, 1)) == P()


def test_placement_round_trip():
  mesh = shd.make_mesh(4, 2)
  params = {"w": jnp.arange(24.0).reshape(4, 6), "b": jnp.ones(3)}
  placed = shd.shard_params(params, mesh)
  assert placed["w"].sharding.spec == P(None, "fsdp")
  assert placed["b"].sharding.spec == P()
  np.testing.assert_array_equal(shd.to_host(placed["w"]), np.asarray(params["w"]))
  batch = {"x": np.arange(16).reshape(8, 2), "y": np.arange(8)}
  dev = shd.shard_batch(batch, mesh)
  assert dev["x"].sharding.spec == P("data")
  np.testing.assert_array_equal(shd.to_host(dev["x"]), batch["x"])
  tree = shd.param_shardings(params, mesh)
  assert tree["w"].spec == P(None, "fsdp")
  assert shd.shard_params(params, None) is params
  assert shd.padded_size(10, 4) == 12 and shd.padded_size(8, 4) == 8


def test_put_keys_and_local_arrays_in_one_process():
  """One process holds every device: every array is held in full; keys keep their type.

  The multi-process paths (a local array or key placed on a mesh spanning two processes, a
  gather of an array split across them) run in tests/test_multihost.py.
  """
  mesh = shd.make_mesh(4, 2)
  key = jax.random.key(3)
  placed = shd.put(key, mesh)
  assert jax.dtypes.issubdtype(placed.dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(jax.random.key_data(placed), jax.random.key_data(key))
  x = shd.put(jnp.arange(8.0), mesh, P("data"))
  assert x.sharding.spec == P("data") and shd.holds_full_value(x)
  np.testing.assert_array_equal(shd.to_host(x), np.arange(8.0))
  assert shd.to_host([1, 2]).tolist() == [1, 2]


def test_maybe_initialize_distributed(monkeypatch):
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_NTASKS",
               "OMPI_COMM_WORLD_SIZE"):
    monkeypatch.delenv(name, raising=False)
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  assert shd.maybe_initialize_distributed() is False and not calls
  monkeypatch.setenv("SLURM_NTASKS", "1")
  assert shd.maybe_initialize_distributed() is False
  monkeypatch.setenv("SLURM_NTASKS", "4")
  assert shd.maybe_initialize_distributed() is True and calls == [{}]
  monkeypatch.delenv("SLURM_NTASKS")
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("JAX_PROCESS_ID", "1")
  assert shd.maybe_initialize_distributed() is True
  assert calls[-1] == {"num_processes": 2, "process_id": 1}
  monkeypatch.setenv("JAX_PROCESS_ID", "one")
  with pytest.raises(ValueError, match="JAX_PROCESS_ID"):
    shd.maybe_initialize_distributed()
