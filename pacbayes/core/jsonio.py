"""The project's one strict JSON reader: every failure is one line naming the file, line and key.

Python's `json` accepts things a careful reader should not: a key repeated inside one object
keeps its last value silently (a training row `{"difficulty": 3, "difficulty": 1}` or a
mixture file would change a result without a word), and the non-standard constants `NaN`,
`Infinity` and `-Infinity` are read as floats. Here:

- a repeated key is refused with the file, the line of its second occurrence and the key;
- `NaN` / `Infinity` are refused (unless a caller asks for them: reports it wrote itself);
- syntax errors, a truncated file, bytes that are not UTF-8, nesting too deep and integers
  beyond Python's digit limit are one line naming the file and line;
- `field` checks the type of one key (booleans are booleans: `"false"` is not false), and its
  message names the file and the key.

Every error is a `JSONError` (a `ValueError`, which the command line shows as one line).
"""

from __future__ import annotations

import json
import json.decoder
import json.scanner
import math
import os
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["JSONError", "field", "loads", "read_json", "read_object"]


class JSONError(ValueError):
  """A JSON file or value that cannot be used; the message names the file, line and key."""


class _Constant(Exception):
  def __init__(self, name: str):
    super().__init__(name)
    self.name = name


class _Duplicate(Exception):
  def __init__(self, key: str):
    super().__init__(key)
    self.key = key


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for key, value in pairs:
    if key in out:
      raise _Duplicate(key)
    out[key] = value
  return out


def _refuse_constant(name: str) -> Any:
  raise _Constant(name)


def _line_of(text: str, pos: int) -> int:
  return text.count("\n", 0, pos) + 1


def _key_positions(s: str, start: int, scan_once) -> list[tuple[str, int]]:
  """(key, offset) of each key of the object whose text starts at `start` (after its `{`)."""
  ws = json.decoder.WHITESPACE.match
  out, pos = [], ws(s, start).end()
  while pos < len(s) and s[pos] == '"':
    key, after = json.decoder.scanstring(s, pos + 1)
    out.append((key, pos))
    pos = ws(s, ws(s, after).end() + 1).end()  # past the ':'
    _, pos = scan_once(s, pos)
    pos = ws(s, pos).end()
    if pos < len(s) and s[pos] == ",":
      pos = ws(s, pos + 1).end()
  return out


def _locate_duplicate(text: str) -> tuple[str, int] | None:
  """(key, offset of its second occurrence) of the first repeated key, by a slow re-parse."""
  found: list[tuple[str, int]] = []
  decoder = json.JSONDecoder()

  def parse_object(s_and_end, strict, scan_once, object_hook, object_pairs_hook, memo=None):
    s, start = s_and_end
    pairs, end = json.decoder.JSONObject(s_and_end, strict, scan_once, None, list, memo)
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys) and not found:
      seen = set()
      for key, pos in _key_positions(s, start, scan_once):
        if key in seen:
          found.append((key, pos))
          break
        seen.add(key)
    return dict(pairs), end

  decoder.parse_object = parse_object
  decoder.scan_once = json.scanner.py_make_scanner(decoder)
  try:
    decoder.decode(text)
  except (ValueError, RecursionError):
    return None
  return found[0] if found else None


def loads(text: str | bytes, *, where: str, first_line: int = 1, allow_nan: bool = False,
          row: bool = False) -> Any:
  """Parses JSON text strictly (see the module docstring).

  Args:
    text: the JSON text (bytes are decoded as UTF-8, a BOM allowed).
    where: the file (or label) for messages.
    first_line: the file line of the text's first line (a JSONL row: its line number).
    allow_nan: accept `NaN` and `Infinity` (only for files the project wrote itself).
    row: the text is one line of a JSONL file (a value cut short there is said to be one
      that does not fit on its line, not a truncated file).

  Returns:
    The parsed value.

  Raises:
    JSONError: `where:line: <reason>`.
  """
  if isinstance(text, bytes | bytearray):
    try:
      text = bytes(text).decode("utf-8-sig")
    except UnicodeDecodeError as e:
      line = bytes(text).count(b"\n", 0, e.start) + first_line
      raise JSONError(f"{where}:{line}: not UTF-8 text ({e.reason})") from None
  text = text.removeprefix("\ufeff")
  hook = {} if allow_nan else {"parse_constant": _refuse_constant}
  try:
    return json.loads(text, object_pairs_hook=_unique, **hook)
  except _Duplicate as d:
    located = _locate_duplicate(text)
    line = first_line - 1 + (_line_of(text, located[1]) if located else 1)
    raise JSONError(f"{where}:{line}: key {d.key!r} appears twice in one object (JSON keeps "
                    "only the last; refusing to guess)") from None
  except json.JSONDecodeError as e:
    line = first_line - 1 + e.lineno
    reason = e.msg
    if e.pos >= len(text.rstrip()):
      reason = ("the line ends inside a JSON value: a truncated row, or JSON spread over "
                "several lines (JSONL holds one whole object per line)" if row else
                "the file ends early (truncated?)")
    raise JSONError(f"{where}:{line}: not valid JSON ({reason}, column {e.colno})") from None
  except _Constant as c:
    found = re.search(r"(?<![\w\"])" + re.escape(c.name) + r"(?![\w\"])", text)
    line = first_line - 1 + (_line_of(text, found.start()) if found else 1)
    raise JSONError(f"{where}:{line}: not valid JSON ({c.name} is not a JSON number)") from None
  except RecursionError:
    raise JSONError(f"{where}:{first_line}: JSON nested too deeply") from None
  except ValueError as e:  # an integer longer than Python's digit limit
    raise JSONError(f"{where}:{first_line}: not usable JSON ({e})") from None


def read_json(path: str | os.PathLike, *, allow_nan: bool = False) -> Any:
  """Reads a JSON file strictly (see `loads`); a missing or unreadable file names the path."""
  where = os.fspath(path)
  if os.path.isdir(where):
    raise JSONError(f"{where}: is a folder; expected a JSON file")
  try:
    with open(where, "rb") as f:
      raw = f.read()
  except FileNotFoundError:
    raise JSONError(f"{where}: no such file") from None
  except OSError as e:
    raise JSONError(f"{where}: cannot read the file ({e.strerror})") from None
  if not raw.strip():
    raise JSONError(f"{where}: the file is empty (expected JSON)")
  return loads(raw, where=where, allow_nan=allow_nan)


def read_object(path: str | os.PathLike, *, allow_nan: bool = False) -> dict[str, Any]:
  """`read_json` of a file that must hold one JSON object."""
  value = read_json(path, allow_nan=allow_nan)
  if not isinstance(value, dict):
    raise JSONError(f"{os.fspath(path)}: expected a JSON object, got {_kind(value)}")
  return value


_REQUIRED = object()


def _kind(value: Any) -> str:
  if value is None:
    return "null"
  if isinstance(value, bool):
    return f"the boolean {str(value).lower()}"
  if isinstance(value, str):
    return f"the string {json.dumps(value)[:40]}"
  if isinstance(value, int | float):
    return f"the number {value!r}"
  return {dict: "an object", list: "a list"}.get(type(value), type(value).__name__)


def _is_number(v: Any) -> bool:
  return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


_KINDS = {
  "bool": ("a boolean (true or false)", lambda v: isinstance(v, bool)),
  "int": ("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool)),
  "number": ("a finite number", _is_number),
  "str": ("a string", lambda v: isinstance(v, str)),
  "str_list": ("a list of strings",
               lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
  "object": ("an object", lambda v: isinstance(v, dict)),
  "list": ("a list", lambda v: isinstance(v, list)),
}


def field(obj: Mapping[str, Any], key: str, kind: str, *, where: str, default: Any = _REQUIRED,
          nullable: bool = False) -> Any:
  """The value of `key` in a parsed JSON object, checked to be of `kind`.

  Args:
    obj: the object.
    key: the key.
    kind: "bool", "int", "number" (finite), "str", "str_list", "object" or "list".
    where: the file, for the message.
    default: returned when the key is absent (omit: the key is required).
    nullable: also accept null (returned as None).

  Returns:
    The value.

  Raises:
    JSONError: `where: key 'k': expected <kind>, got <what>`, or the key is missing.
  """
  desc, ok = _KINDS[kind]
  if key not in obj:
    if default is _REQUIRED:
      raise JSONError(f"{where}: key {key!r} is missing (expected {desc})")
    return default
  value = obj[key]
  if value is None and nullable:
    return None
  if not ok(value):
    raise JSONError(f"{where}: key {key!r}: expected {desc}, got {_kind(value)}")
  return value
