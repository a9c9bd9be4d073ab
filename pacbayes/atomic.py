"""Atomic file writes: a temporary file in the target folder, flushed, then renamed."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import IO, Any


def write_atomic(path: str | os.PathLike, write: Callable[[IO[Any]], Any], *,
                 binary: bool = False, suffix: str = "") -> None:
  """Calls ``write(f)`` on a temporary file beside ``path``, then moves it into place.

  A reader sees the old file or the whole new one, never half of it; on any error the
  temporary file is removed and the old file is left as it was.

  Args:
    path: the destination; its folder is created if missing.
    write: writes the content to the open file object.
    binary: open the temporary file in binary mode (else UTF-8 text).
    suffix: suffix of the temporary file's name (some writers choose a format by it).
  """
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
  try:
    with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes ``text`` to ``path`` atomically (see `write_atomic`)."""
  write_atomic(path, lambda f: f.write(text))
