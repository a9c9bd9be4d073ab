"""JSONL rows with line-numbered errors (each row read by the strict `pacbayes.core.jsonio`)."""

from __future__ import annotations

import os
from typing import Any

from pacbayes.core.jsonio import JSONError, loads


class DataError(ValueError):
  """A dataset file or row that cannot be used; the message names the file and line."""


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Reads a JSONL file into a list of dicts.

  Args:
    path: a file with one JSON object per line; blank lines are skipped.

  Returns:
    The rows, in file order.

  Raises:
    DataError: the file is missing, a folder or unreadable, a line is not UTF-8, not JSON
      (or nested too deeply, or holds an integer beyond Python's digit limit, a repeated key
      or NaN/Infinity) or not an object, or the file holds no rows.
  """
  return read_jsonl_with_lines(path)[0]


def read_jsonl_with_lines(path: str | os.PathLike) -> tuple[list[dict[str, Any]], list[int]]:
  """Like `read_jsonl`, also returning the 1-based line number of each row.

  Args:
    path: a file with one JSON object per line; blank lines are skipped.

  Returns:
    ``(rows, line_numbers)``.

  Raises:
    DataError: as `read_jsonl`.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    raise DataError(f"{path}: is a folder; expected a JSONL file")
  if not os.path.isfile(path):
    raise DataError(f"{path}: no such file")
  try:
    f = open(path, "rb")  # noqa: SIM115  (closed below; an OSError here names the path)
  except OSError as e:
    raise DataError(f"{path}: cannot read the file ({e.strerror})") from None
  with f:
    rows, lines = _parse(f, path)
  if not rows:
    raise DataError(f"{path}: the file holds no rows")
  return rows, lines


def _parse(f, path: str) -> tuple[list[dict[str, Any]], list[int]]:
  rows, lines = [], []
  try:
    for lineno, raw in enumerate(f, start=1):
      try:
        line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
      except UnicodeDecodeError as e:
        raise DataError(f"{path}:{lineno}: not UTF-8 text ({e.reason})") from None
      if not line.strip():
        continue
      try:  # repeated keys, NaN/Infinity, bad syntax: one line naming file:line
        row = loads(line.rstrip("\r\n"), where=path, first_line=lineno, row=True)
      except JSONError as e:
        raise DataError(str(e)) from None
      if not isinstance(row, dict):
        raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
      rows.append(row)
      lines.append(lineno)
  except OSError as e:
    raise DataError(f"{path}: cannot read the file ({e.strerror})") from None
  return rows, lines

