"""Atomic file writes: a temporary file in the target folder, flushed, then renamed."""

from __future__ import annotations

import os
import stat
import tempfile
import threading
from collections.abc import Callable
from typing import IO, Any


def current_umask() -> int:
  """The process's umask, read without changing it where the OS allows (Linux /proc)."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  mask = os.umask(0o022)  # Elsewhere: the only portable read is a set and a restore.
  os.umask(mask)
  return mask


def new_file_mode(path: str | os.PathLike) -> int:
  """The permission bits a plain ``open(path, "w")`` would leave.

  An existing file keeps its mode; a new one gets ``0o666 & ~umask`` (0644 under umask 022).
  ``tempfile.mkstemp`` creates 0600 files, so `write_atomic` applies this before the rename.
  """
  try:
    return stat.S_IMODE(os.stat(path).st_mode)
  except OSError:
    return 0o666 & ~current_umask()


# After `stop_writes` (an interrupt), no write commits: a KeyboardInterrupt that Python swallowed
# (raised inside a garbage-collector callback, say) must not let the work finish and write.
_STOPPED = threading.Event()
_PENDING: set[str] = set()
_PENDING_LOCK = threading.Lock()
_STOP_HOOKS: list[Callable[[], Any]] = []


def add_stop_hook(hook: Callable[[], Any]) -> Callable[[], None]:
  """Registers `hook()` to run in `stop_writes` (e.g. killing worker processes on Ctrl-C).

  Returns:
    A function that unregisters it.
  """
  _STOP_HOOKS.append(hook)

  def remove() -> None:
    if hook in _STOP_HOOKS:
      _STOP_HOOKS.remove(hook)

  return remove


def stop_writes() -> None:
  """From now on `write_atomic` commits nothing; removes the temporary files in flight, and
  runs the hooks of `add_stop_hook` (each error ignored).

  Called by the command line on Ctrl-C, before it ends the process, so that an interrupted
  command leaves no file written, no temporary file and no worker process behind.
  """
  _STOPPED.set()
  for hook in list(_STOP_HOOKS):
    try:
      hook()
    except Exception:  # noqa: BLE001  (the process is ending; the rest must still run)
      pass
  with _PENDING_LOCK:
    pending = list(_PENDING)
  for tmp in pending:
    try:
      os.remove(tmp)
    except OSError:
      pass


def write_atomic(path: str | os.PathLike, write: Callable[[IO[Any]], Any], *,
                 binary: bool = False, suffix: str = "") -> None:
  """Calls ``write(f)`` on a temporary file beside ``path``, then moves it into place.

  A reader sees the old file or the whole new one, never half of it; on any error (or an
  interrupt) the temporary file is removed and the old file is left as it was. The new file
  gets the mode `new_file_mode` gives (the usual mode, not mkstemp's 0600).

  Args:
    path: the destination; its folder is created if missing.
    write: writes the content to the open file object.
    binary: open the temporary file in binary mode (else UTF-8 text).
    suffix: suffix of the temporary file's name (some writers choose a format by it).

  Raises:
    OSError: the folder or the file cannot be written; ``filename`` is ``path`` (not the
      temporary file), so the message names what the caller asked for.
  """
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  mode = new_file_mode(path)
  try:
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
  except OSError as e:
    raise OSError(e.errno, e.strerror, path) from e
  with _PENDING_LOCK:
    _PENDING.add(tmp)
  try:
    with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
      write(f)
      f.flush()
      os.fchmod(f.fileno(), mode)
      os.fsync(f.fileno())
    if _STOPPED.is_set():
      raise KeyboardInterrupt
    os.replace(tmp, path)
  except BaseException as e:
    try:
      os.remove(tmp)
    except OSError:
      pass
    if isinstance(e, OSError) and e.errno is not None and e.filename in (None, tmp):
      raise OSError(e.errno, e.strerror, path) from e
    raise
  finally:
    with _PENDING_LOCK:
      _PENDING.discard(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes ``text`` to ``path`` atomically (see `write_atomic`)."""
  write_atomic(path, lambda f: f.write(text))
