"""Device meshes ('data', 'fsdp'), array placement, and multi-host start-up."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"
FSDP = "fsdp"

# Environment variables that say "this process is one of several"; see
# `maybe_initialize_distributed`.
_MULTI_HOST_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def make_mesh(
    data: int | None = None,
    fsdp: int = 1,
    *,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
  """Builds a 2-D mesh with axes ('data', 'fsdp') over the visible devices.

  Posterior draws and batches are spread along 'data'; parameters may be split along
  'fsdp' when one copy of the model does not fit a device. In a multi-host run
  (after `maybe_initialize_distributed`) `jax.devices()` lists every host's devices, so
  the same call builds the global mesh.

  Args:
    data: size of the 'data' axis; default: all devices not used by 'fsdp'.
    fsdp: size of the 'fsdp' axis (1 = parameters replicated).
    devices: devices to use; default `jax.devices()`.

  Returns:
    A `jax.sharding.Mesh` of shape (data, fsdp).
  """
  devices = list(jax.devices() if devices is None else devices)
  if not isinstance(fsdp, int) or fsdp < 1:
    raise ValueError(f"fsdp: expected a positive integer, got {fsdp!r}")
  if data is None:
    if len(devices) % fsdp:
      raise ValueError(f"fsdp={fsdp} does not divide the number of devices ({len(devices)})")
    data = len(devices) // fsdp
  if not isinstance(data, int) or data < 1:
    raise ValueError(f"data: expected a positive integer, got {data!r}")
  if data * fsdp > len(devices):
    raise ValueError(
        f"mesh data={data} x fsdp={fsdp} needs {data * fsdp} devices, only {len(devices)} exist")
  grid = np.asarray(devices[: data * fsdp], dtype=object).reshape(data, fsdp)
  return Mesh(grid, (DATA, FSDP))


def axis_size(mesh: Mesh | None, axis: str) -> int:
  """Size of a mesh axis (1 without a mesh)."""
  return 1 if mesh is None else int(mesh.shape[axis])


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding that keeps a full copy on every device of `mesh`."""
  return NamedSharding(mesh, P())


def leading_axis_spec(shape: Sequence[int], mesh: Mesh | None, axes: Sequence[int] = (0,)) -> P:
  """PartitionSpec splitting the first of `axes` that 'data' divides (else replicated).

  Args:
    shape: array shape.
    mesh: the mesh (None gives a replicated spec).
    axes: candidate dimensions, tried in order.

  Returns:
    A PartitionSpec with 'data' on one dimension, or `P()`.
  """
  size = axis_size(mesh, DATA)
  if size > 1:
    for ax in axes:
      if ax < len(shape) and shape[ax] % size == 0:
        return P(*([None] * ax + [DATA]))
  return P()


def put(x: Any, mesh: Mesh | None, spec: P | None = None) -> jax.Array:
  """Places a host array on the mesh with `spec` (plain `jnp.asarray` without a mesh).

  Every process must hold the same full value of `x` (true when each host loads the same
  checkpoint and dataset); each device then takes its slice from its own process's copy, so
  one code path serves one or many hosts. A local `jax.Array` (on this process's devices,
  PRNG keys included) counts as such a value; an array already spread over the mesh is
  moved with `jax.device_put`.
  """
  if mesh is None:
    return jax.numpy.asarray(x)
  sharding = NamedSharding(mesh, P() if spec is None else spec)
  if isinstance(x, jax.Array):
    if sharding.is_fully_addressable or not x.is_fully_addressable:
      return jax.device_put(x, sharding)
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      # A typed key has no NumPy form: place its raw bits, then wrap them again.
      data = put(jax.random.key_data(x), mesh, spec)
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def shard_batch(batch: dict[str, Any], mesh: Mesh | None, axes: Sequence[int] = (0,)) -> dict:
  """Places every array of a batch with 'data' on the first of `axes` that it divides."""
  return {k: put(v, mesh, leading_axis_spec(np.shape(v), mesh, axes)) for k, v in batch.items()}


def param_spec(shape: Sequence[int], mesh: Mesh | None) -> P:
  """Splits the largest dimension that the 'fsdp' axis divides; replicated otherwise."""
  size = axis_size(mesh, FSDP)
  if size == 1 or not shape:
    return P()
  order = sorted(range(len(shape)), key=lambda i: -shape[i])
  for ax in order:
    if shape[ax] % size == 0:
      return P(*([None] * ax + [FSDP]))
  return P()


def param_shardings(params: Any, mesh: Mesh) -> Any:
  """Pytree of `NamedSharding`s for `params` (fsdp on the largest divisible axis)."""
  return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(np.shape(x), mesh)), params)


def shard_params(params: Any, mesh: Mesh | None) -> Any:
  """Places a parameter pytree on the mesh, split along 'fsdp' (no-op without a mesh)."""
  if mesh is None:
    return params
  return jax.tree.map(lambda x: put(x, mesh, param_spec(np.shape(x), mesh)), params)


def _index_key(index: tuple[slice, ...]) -> tuple:
  """A hashable form of a shard index (slices are not hashable before Python 3.12)."""
  return tuple((s.start, s.stop, s.step) for s in index)


def holds_full_value(x: jax.Array) -> bool:
  """True when this process's devices hold every part of `x` (no other process needed).

  Always true in a single-process run; in a multi-host run true for a replicated array and
  for one split only along mesh axes whose devices all belong to this process (for example
  'fsdp' inside a host), false for one split across hosts.
  """
  index_map = x.sharding.devices_indices_map(x.shape)
  here = jax.process_index()
  local = {_index_key(i) for d, i in index_map.items() if d.process_index == here}
  return local == {_index_key(i) for i in index_map.values()}


def to_host(x: Any) -> np.ndarray:
  """Fetches a (possibly multi-host, sharded) array as one NumPy array.

  When this process holds every part of `x` (`holds_full_value`) the array is assembled from
  the local shards with no communication, so one process alone may call this (e.g. the one
  that writes the outputs). An array split across hosts is gathered with
  `multihost_utils.process_allgather`, a collective: then every process must call `to_host`
  on it at the same point of the program, or the caller waits forever.
  """
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  if holds_full_value(x):
    out = np.empty(x.shape, x.dtype)
    for shard in x.addressable_shards:
      out[shard.index] = np.asarray(shard.data)
    return out
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def maybe_initialize_distributed() -> bool:
  """Calls `jax.distributed.initialize()` when the environment describes a multi-host job.

  The job counts as multi-host when `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` or
  `JAX_PROCESS_ID` is set (then `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` are passed on when
  present), or when a cluster manager that JAX detects by itself reports more than one task
  (`SLURM_NTASKS` or `OMPI_COMM_WORLD_SIZE` > 1). It must run before any other JAX call
  that touches devices. Afterwards `jax.devices()` lists the devices of all hosts and
  `make_mesh` builds the global mesh; every host runs the same program on the same data
  files and gets the same numbers. Calling it twice is harmless.

  Returns:
    True if the distributed runtime is (now) initialised, False for a single-process run.
  """
  if jax.distributed.is_initialized():
    return True
  explicit = any(os.environ.get(name) for name in _MULTI_HOST_ENV)
  cluster = any(
      int(os.environ.get(name, "1") or 1) > 1 for name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"))
  if not (explicit or cluster):
    return False
  kwargs = {}
  if explicit:
    for name, arg in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
      value = os.environ.get(name)
      if value:
        try:
          kwargs[arg] = int(value)
        except ValueError as err:
          raise ValueError(
              f"environment variable {name}: expected an integer, got {value!r}") from err
  jax.distributed.initialize(**kwargs)
  return True


def padded_size(n: int, multiple: int) -> int:
  """Smallest multiple of `multiple` that is >= n."""
  return int(math.ceil(n / multiple) * multiple)
