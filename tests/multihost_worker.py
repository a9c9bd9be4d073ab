"""One of the processes of `tests/test_multihost.py::test_sharding_helpers_across_processes`.

Run as `python tests/multihost_worker.py` with JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID and 4 forced CPU devices per process. Exercises `pacbayes.core.sharding` on a
global mesh whose devices belong to two processes, and prints one line
`RESULT {json}` on stdout; an assertion error exits non-zero with the traceback on stderr.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from pacbayes.core import sharding as shd


def main() -> None:
  assert shd.maybe_initialize_distributed(), "the environment does not describe a multi-host job"
  rank = jax.process_index()
  x_8x6 = np.arange(48, dtype=np.float32).reshape(8, 6)
  mesh_in_host = shd.make_mesh(4, 2)  # 'fsdp' pairs (0,1), (2,3), ... lie inside one process
  mesh_across = shd.make_mesh(1, 8)  # 'fsdp' spans both processes
  mesh_data = shd.make_mesh()  # 'data' = 8 spans both processes
  in_host = shd.put(x_8x6, mesh_in_host, P(None, shd.FSDP))
  across = shd.put(x_8x6, mesh_across, P(shd.FSDP))
  by_data = shd.put(jnp.asarray(x_8x6), mesh_data, P(shd.DATA))  # a local jax.Array
  key = jax.random.key(3)
  key_dev = shd.put(key, mesh_data)
  draws_4 = jax.jit(lambda k: jax.random.normal(k, (4,)), out_shardings=shd.replicated(
      mesh_data))(key_dev)
  result = {
      "process_count": jax.process_count(), "device_count": jax.device_count(),
      "local_device_count": jax.local_device_count(),
      "fully_addressable": [a.is_fully_addressable for a in (in_host, across, by_data)],
      "holds_full_value": [shd.holds_full_value(a) for a in (in_host, across, by_data)],
      # Collectives: every process calls these at the same point.
      "across_ok": bool(np.array_equal(shd.to_host(across), x_8x6)),
      "by_data_ok": bool(np.array_equal(shd.to_host(by_data), x_8x6)),
      "sum_ok": float(jax.jit(jnp.sum)(by_data)) == float(x_8x6.sum()),
      "key_ok": bool(np.array_equal(shd.to_host(jax.random.key_data(key_dev)),
                                    np.asarray(jax.random.key_data(key)))),
      "draws_ok": bool(np.array_equal(shd.to_host(draws_4),
                                      np.asarray(jax.random.normal(key, (4,))))),
  }
  if rank == 0:
    # No communication: process 0 alone fetches an array whose every part it holds (the
    # writer of the outputs does this). A collective here would never return.
    result["in_host_ok"] = bool(np.array_equal(shd.to_host(in_host), x_8x6))
  print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
