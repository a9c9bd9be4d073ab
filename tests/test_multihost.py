"""Two processes on localhost with `jax.distributed`: the same numbers as one process.

Each command runs through the real CLI (`python -m pacbayes.cli ...`) twice: once as one
process with 8 forced CPU devices, once as 2 processes x 4 forced CPU devices that find each
other through a coordinator on 127.0.0.1 (the environment variables that
`pacbayes.core.sharding.maybe_initialize_distributed` reads: JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID), with JAX's gloo CPU collectives between the processes.
Both runs see 8 devices in the same order, so they build the same mesh and the same XLA
programs; only the cross-process reductions differ (gloo instead of in-process), which moves
float32 sums by a few ulps.

A hung process (a collective that only some processes entered) is killed with SIGKILL: JAX
catches SIGTERM as a preemption notice and keeps waiting.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from pacbayes.core.tensorio import read_tensors
from pacbayes.models import build_model, save_pretrained
from tests.model_fixtures import tiny_config

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DEVICES = 8
PROCESSES = 2
TIMEOUT_S = 300  # one launch, all processes (the whole file: about 2 minutes on 2 cores)
GRACE_S = 25  # after one process is done, the others must be done within this
ROWS = 16
LR = 1e-3
STEP_ATOL = 1e-2 * LR  # weights after one Adam step: see test_finetune_two_processes_match_one
# Variables that would make a child join another job, or size its devices differently.
_CLEARED = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
            "JAX_LOCAL_DEVICE_IDS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "XLA_FLAGS")


@dataclass
class Launch:
  """What the processes of one launch did: exit codes (-9: killed), output, wall seconds,
  CPU seconds (user + system, all processes)."""

  codes: list[int]
  stdout: list[str]
  stderr: list[str]
  seconds: float
  cpu_seconds: float
  hung: str = ""

  def check(self) -> None:
    """Fails with each process's last lines unless every process exited 0."""
    if self.hung or any(c != 0 for c in self.codes):
      tails = "\n".join(f"--- process {i} (exit {c}):\n{e[-3000:]}"
                        for i, (c, e) in enumerate(zip(self.codes, self.stderr, strict=True)))
      pytest.fail(f"{self.hung or 'a process failed'}\n{tails}")


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return int(s.getsockname()[1])


def child_env(devices: int, rank: int | None = None, port: int | None = None) -> dict:
  """Environment of one CLI process: CPU only, `devices` forced devices, optionally a rank."""
  env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
  if rank is not None:
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(PROCESSES),
               JAX_PROCESS_ID=str(rank))
  return env


def cli(*argv: str) -> list[str]:
  """The command line of `pacbayes ARGV` through the real entry point."""
  return [sys.executable, "-m", "pacbayes.cli", *argv]


def launch(command: list[str], folder: Path, *, processes: int, done: str) -> Launch:
  """Runs `command` as one process with 8 devices, or as `processes` processes with
  8 / processes devices each that form one JAX job, and waits for all of them.

  A process counts as done when it exits or prints `done` on stdout; once one is done the
  others get GRACE_S seconds, and every process is killed after TIMEOUT_S or when one exits
  with an error, so a hang costs seconds and leaves no stray process.
  """
  folder.mkdir(parents=True, exist_ok=True)
  port = free_port() if processes > 1 else None
  procs, files = [], []
  start = time.monotonic()
  cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
  try:
    for rank in range(processes):
      env = child_env(DEVICES // processes, rank if processes > 1 else None, port)
      out, err = folder / f"stdout{rank}.txt", folder / f"stderr{rank}.txt"
      files.append((out, err))
      with open(out, "w") as fo, open(err, "w") as fe:
        procs.append(subprocess.Popen(command, env=env, cwd=folder, stdout=fo, stderr=fe,
                                      start_new_session=True))
    hung, first_done, all_done = "", None, None
    while True:
      codes = [p.poll() for p in procs]
      if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
        break
      now = time.monotonic()
      if now - start > TIMEOUT_S:
        hung = f"killed after {TIMEOUT_S} s"
        break
      finished = [c is not None or done in f[0].read_text() for c, f in zip(codes, files,
                                                                             strict=True)]
      if all(finished):  # all printed `done`: now they must exit
        all_done = all_done or now
        if now - all_done > GRACE_S:
          hung = f"done, but not exited {GRACE_S} s later"
          break
      elif any(finished):
        first_done = first_done or now
        if now - first_done > GRACE_S:
          waiting = [i for i, f in enumerate(finished) if not f]
          hung = (f"process(es) {waiting} not done {GRACE_S} s after another finished "
                  "(a collective entered by only some processes?)")
          break
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
      p.wait()
  return Launch(codes=[p.returncode for p in procs],
                stdout=[o.read_text() for o, _ in files],
                stderr=[e.read_text() for _, e in files],
                seconds=time.monotonic() - start, cpu_seconds=_cpu_since(cpu_before), hung=hung)


def test_sharding_helpers_across_processes(tmp_path):
  """`pacbayes.core.sharding` on a mesh whose devices belong to two processes."""
  # -P: the script's folder (tests/, whose select/ would shadow the stdlib) is not on sys.path.
  run = launch([sys.executable, "-P", str(REPO / "tests" / "multihost_worker.py")], tmp_path,
               processes=PROCESSES, done="RESULT ")
  run.check()
  results = [json.loads(out.split("RESULT ", 1)[1].splitlines()[0]) for out in run.stdout]
  for rank, res in enumerate(results):
    assert res["process_count"] == PROCESSES and res["device_count"] == DEVICES
    assert res["local_device_count"] == DEVICES // PROCESSES
    assert res["fully_addressable"] == [False, False, False]
    # Split inside a process: held in full; split across processes: not.
    assert res["holds_full_value"] == [True, False, False]
    for name in ("across_ok", "by_data_ok", "sum_ok", "key_ok", "draws_ok"):
      assert res[name] is True, (rank, name)
  assert results[0]["in_host_ok"] is True and "in_host_ok" not in results[1]


def _cpu_since(before) -> float:
  now = resource.getrusage(resource.RUSAGE_CHILDREN)
  return now.ru_utime + now.ru_stime - before.ru_utime - before.ru_stime


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """A tiny random Llama (written by pacbayes.models.save_pretrained) and 16 training rows."""
  root = tmp_path_factory.mktemp("multihost")
  cfg = tiny_config(num_hidden_layers=1)  # one layer: less to compile in each process
  save_pretrained(build_model(cfg, rngs=nnx.Rngs(0)), cfg, str(root / "base"))
  rng = np.random.default_rng(0)
  with open(root / "train.jsonl", "w") as f:
    for _ in range(ROWS):
      prompt = rng.integers(2, cfg.vocab_size, size=int(rng.integers(2, 6))).tolist()
      completion = rng.integers(2, cfg.vocab_size, size=int(rng.integers(2, 5))).tolist()
      f.write(json.dumps({"prompt_ids": prompt, "completion_ids": completion}) + "\n")
  return {"root": root, "base": root / "base", "train": root / "train.jsonl"}


def finetune_command(inputs, out: Path, mesh: str) -> list[str]:
  return cli("finetune", "--model", str(inputs["base"]), "--train", str(inputs["train"]),
          "--out", str(out), "--steps", "1", "--batch-size", "8", "--lr", str(LR),
          "--mesh", mesh, "--seed", "1", "--no-progress")


@pytest.fixture(scope="module")
def finetuned(inputs):
  """One step of full SFT on mesh data=4,fsdp=2: one process x 8 devices, 2 x 4."""
  root = inputs["root"]
  runs = {name: launch(finetune_command(inputs, root / f"ft_{name}", "data=4,fsdp=2"),
                       root / f"log_ft_{name}", processes=n, done="wrote ")
          for name, n in (("one", 1), ("two", PROCESSES))}
  return runs


def test_finetune_two_processes_match_one(inputs, finetuned):
  for run in finetuned.values():
    run.check()
  root = inputs["root"]
  one = json.loads((root / "ft_one" / "finetune.json").read_text())
  two = json.loads((root / "ft_two" / "finetune.json").read_text())
  assert one["devices"] == two["devices"] == DEVICES
  assert one["mesh"] == two["mesh"] == {"data": 4, "fsdp": 2}
  # float32 losses; gloo sums across processes in another order (a few ulps).
  np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-6)
  base = read_tensors(str(inputs["base"]))
  w_one = read_tensors(str(root / "ft_one"))
  w_two = read_tensors(str(root / "ft_two"))
  assert set(w_one) == set(w_two) == set(base)
  moved = min(float(np.max(np.abs(w_one[k] - base[k]))) for k in base)
  assert moved > 5e-4  # Adam's first step moves each tensor by about --lr (1e-3)
  # Adam's first update of a weight is lr * g / (|g| + eps): where g nearly cancels over the
  # batch (|g| ~ eps), the last bits of the gradient sum, which depend on the reduction
  # order, move the update by a visible fraction of lr (measured: at most 6e-7 here). A
  # wrong or missing shard of the batch would flip whole signs (differences ~ 2 lr).
  for name, value in w_one.items():
    np.testing.assert_allclose(w_two[name], value, rtol=0, atol=STEP_ATOL, err_msg=name)
  # One writer: the finished folder holds the outputs and nothing left by a second process.
  assert sorted(os.listdir(root / "ft_two")) == sorted(os.listdir(root / "ft_one"))


# smoothed_nll keeps B_train below 1 for a random model (token error would saturate it), so
# the comparison is of unclipped numbers; one posterior draw per row (M = 16).
BOUND_FLAGS = ["--loss", "smoothed_nll", "--sigma", "0.05", "--sigma-prior", "0.05",
               "--chunk-size", "1", "--batch-size", "8", "--seed", "5", "--quiet"]


@pytest.fixture(scope="module")
def bounds(inputs, finetuned):
  """`pacbayes bound` on (base, the one-process fine-tune): one process x 8 devices, 2 x 4."""
  finetuned["one"].check()
  root = inputs["root"]
  out = {}
  for name, n in (("one", 1), ("two", PROCESSES)):
    command = cli("bound", "--prior", str(inputs["base"]), "--posterior", str(root / "ft_one"),
                  "--train", str(inputs["train"]), *BOUND_FLAGS, "--out",
                  str(root / f"bound_{name}.json"))
    out[name] = launch(command, root / f"log_bound_{name}", processes=n, done="B_train")
  return out


def test_bound_two_processes_match_one(inputs, bounds):
  for run in bounds.values():
    run.check()
  one = json.loads((inputs["root"] / "bound_one.json").read_text())
  two = json.loads((inputs["root"] / "bound_two.json").read_text())
  assert one["n"] == two["n"] == ROWS and one["num_mc"] == two["num_mc"] == ROWS
  assert 0 < one["emp_risk"] < 1 and one["kl"] > 0 and not one["saturated"]
  assert 0 < one["b_train"] < 1
  # The KL comes from the weights in float64 on the host. Each posterior draw runs on one
  # device with the same key in both layouts, and no reduction crosses devices inside a
  # forward pass, so the per-row losses (and their float64 mean) agree to the last bit;
  # the tolerance only allows for a reduction XLA might split differently.
  for key in ("kl", "emp_risk", "epsilon", "b_train", "bound"):
    assert two[key] == pytest.approx(one[key], rel=1e-9, abs=0), key
  assert two["raw_terms"]["g_gen"] == pytest.approx(one["raw_terms"]["g_gen"], rel=1e-9)


def test_bound_only_process_zero_writes(bounds):
  bounds["two"].check()
  assert "report written" in bounds["two"].stdout[0]
  assert "report written" not in bounds["two"].stdout[1]


def test_finetune_fsdp_across_processes(inputs, finetuned):
  """Mesh data=1,fsdp=8: each weight split over both processes; same weights as data=4,fsdp=2.

  Another mesh reduces the gradient in another order, so near-cancelling gradient components
  differ more than between two runs on one mesh (measured 2.5e-5 with the gather fixed).
  """
  root = inputs["root"]
  run = launch(finetune_command(inputs, root / "ft_fsdp8", "data=1,fsdp=8"), root / "log_fsdp8",
               processes=PROCESSES, done="wrote ")
  run.check()
  ref = read_tensors(str(root / "ft_one"))
  got = read_tensors(str(root / "ft_fsdp8"))
  for name, value in ref.items():
    np.testing.assert_allclose(got[name], value, rtol=0, atol=10 * STEP_ATOL, err_msg=name)
