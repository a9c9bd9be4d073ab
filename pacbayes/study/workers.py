"""A study's numeric work (base pretraining, cells) spread over worker processes.

Why processes: on the 2-core build machine a batch-32 step of the study's decoder took
32.5 ms with Eigen single-threaded and 32.3 ms with XLA's defaults, and two processes side by
side each took 63-66 ms: no gain there (the CLI's default is one worker), but on machines whose
cores do not contend, more workers help.

Why the parent computes nothing: a matmul split over threads may sum in another order, so its
low bits could depend on the process's XLA settings. Each worker is a freshly spawned process
that adds `SINGLE_THREAD_XLA_FLAGS` (Eigen's matmuls on one thread) to ``XLA_FLAGS`` before
its first computation; with ``workers >= 1`` every number comes from processes set up alike,
so results.json is the same for any number of workers (a test runs 1 and 2 workers and
compares the files).
``workers = 0`` computes in the calling process with its own XLA settings (the unit tests'
mode: no process start-up).

Scheduling: the base is pretrained first (every cell needs it); then the stronger base and the
cells that need only the base run in grid order; the stronger base's cells are queued when it
is ready. Every task writes its result to the study cache (atomic writes), so an interrupted
run resumes where it stopped.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from typing import Any

from pacbayes.core.precision import enable_x64_globally
from pacbayes.study.config import StudyConfig
from pacbayes.study.grid import Cell

SINGLE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"

_WORKER: dict[str, Any] = {}


def _tie_to_parent(parent_pid: int) -> None:
  """Ctrl-C is the parent's to handle (one line, exit 130); a worker dies with its parent.

  Linux: the kernel kills the worker (SIGKILL) when its parent ends (PR_SET_PDEATHSIG). The
  parent may already have ended while this worker was starting (imports take seconds); then
  the worker has been re-parented and leaves at once.
  """
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL))
  except (OSError, AttributeError):  # not Linux: a worker ends when its call queue closes
    pass
  if os.getppid() != parent_pid:
    os._exit(1)


def _kill_children() -> None:
  """Kills this process's multiprocessing children at once (the Ctrl-C path: `stop_writes`).

  With the workers gone, the resource tracker sees its pipe close and ends too.
  """
  for child in multiprocessing.active_children():
    try:
      child.kill()
    except (OSError, ValueError):
      pass


def _start_quiet_tracker() -> None:
  """Starts multiprocessing's resource tracker with its stderr on /dev/null.

  After a Ctrl-C the parent ends at once (`os._exit`) and the tracker frees the pool's
  semaphores, which is right, but it also prints a multi-line warning about them on the
  terminal; the command's one line ("interrupted") must stay the only one.
  """
  from multiprocessing import resource_tracker

  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    resource_tracker.ensure_running()
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


def _init_worker(make_study: Callable[..., Any], config: StudyConfig, out_dir: str,
                 parent_pid: int) -> None:
  _tie_to_parent(parent_pid)
  flags = os.environ.get("XLA_FLAGS", "")
  os.environ["XLA_FLAGS"] = (flags + " " + SINGLE_THREAD_XLA_FLAGS).strip()
  enable_x64_globally()  # as in the parent's command line: the study's numbers are float64
  _WORKER["study"] = make_study(config, out_dir, progress=False)


def _needed_bases(cell_base: str) -> tuple[str, ...]:
  return ("base",) if cell_base == "base" else ("base", "strong")


def _run_task(kind: str, what: Any) -> Any:
  study = _WORKER["study"]
  bases = _needed_bases(what) if kind == "base" else _needed_bases(what.base)
  for which in bases:
    if which not in study.bases:
      study.pretrain(which)  # cache hit unless this worker is the one pretraining it
  if kind == "base":
    return study.base_info[what]
  return study.run_cell(what)


def run_tasks(make_study: Callable[..., Any], config: StudyConfig, out_dir: str,
              cells: Sequence[Cell], *, workers: int,
              on_base: Callable[[str, dict[str, Any]], None],
              on_cell: Callable[[int, dict[str, Any]], None]) -> None:
  """Pretrains both bases and runs every cell in `workers` spawned processes.

  Args:
    make_study: ``make_study(config, out_dir, progress=False)`` builds a worker's study state
      (`pacbayes.study.runner.Study`; passed in, so this module does not import the study's).
    config, out_dir: the study (its cache lives in ``out_dir/cache``).
    cells: the cells in grid order; `on_cell(i, result)` is called as cell i finishes (in
      completion order), `on_base(which, info)` as each base is ready.
    workers: number of processes (>= 1).

  Raises:
    Whatever a task raised (the remaining tasks are cancelled).
  """
  if workers < 1:
    raise ValueError(f"workers: expected >= 1, got {workers}")
  from pacbayes.core.atomic import add_stop_hook

  ctx = multiprocessing.get_context("spawn")
  _start_quiet_tracker()
  remove_hook = add_stop_hook(_kill_children)
  with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                              initargs=(make_study, config, out_dir, os.getpid())) as pool:
    try:
      on_base("base", pool.submit(_run_task, "base", "base").result())
      pending: dict[cf.Future, tuple[str, Any]] = {}
      strong_cells = [(i, c) for i, c in enumerate(cells) if c.base != "base"]
      pending[pool.submit(_run_task, "base", "strong")] = ("base", "strong")
      for i, c in enumerate(cells):
        if c.base == "base":
          pending[pool.submit(_run_task, "cell", c)] = ("cell", i)
      while pending:
        done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
        for fut in done:
          kind, what = pending.pop(fut)
          if kind == "base":
            on_base(what, fut.result())
            for i, c in strong_cells:
              pending[pool.submit(_run_task, "cell", c)] = ("cell", i)
          else:
            on_cell(what, fut.result())
    except BaseException:
      pool.shutdown(wait=False, cancel_futures=True)
      _kill_children()
      raise
    finally:
      remove_hook()
