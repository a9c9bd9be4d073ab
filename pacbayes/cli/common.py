"""Argument types and output checks shared by the sub-commands (every error names the flag)."""

from __future__ import annotations

import argparse
import json
import os
import stat
from collections.abc import Iterable

from pacbayes.core.atomic import write_text

# Seeds are accepted by every consumer in the project: `jax.random.key` (int64 under x64,
# uint32 halves without), `numpy.random.default_rng` / `SeedSequence` (non-negative) and
# NumPy's legacy `RandomState` (< 2**32). One range for every command.
SEED_MAX = 2**32 - 1
# Default ceiling of `positive_int`: far above any useful batch, chunk or draw count, far
# below a size whose allocation fails with MemoryError.
INT_MAX_DEFAULT = 2**20


class CommandError(ValueError):
  """A bad command line (the message names the flag)."""


def _number(flag: str, text: str) -> float:
  try:
    return float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{flag} expects a number, got {text!r}") from None


def positive_float(flag: str):
  """An argparse type: a finite float > 0, with an error naming `flag`."""
  def parse(text):
    value = _number(flag, text)
    if not 0 < value < float("inf"):
      raise argparse.ArgumentTypeError(f"{flag} must be a finite number > 0, got {text}")
    return value
  return parse


def probability(flag: str):
  """An argparse type: a float in the open interval (0, 1), with an error naming `flag`."""
  def parse(text):
    value = _number(flag, text)
    if not 0 < value < 1:
      raise argparse.ArgumentTypeError(f"{flag} must lie in (0, 1), got {text}")
    return value
  return parse


def finite_float(flag: str):
  """An argparse type: any finite float (no nan, no inf), with an error naming `flag`."""
  def parse(text):
    value = _number(flag, text)
    if value != value or value in (float("inf"), float("-inf")):
      raise argparse.ArgumentTypeError(f"{flag} must be a finite number, got {text}")
    return value
  return parse


def bounded_int(flag: str, minimum: int, maximum: int):
  """An argparse type: a whole number in ``[minimum, maximum]``, with an error naming `flag`.

  Only decimal digits (with an optional sign) are accepted: ``"1e8"`` or ``"2.0"`` are
  refused rather than rounded.
  """
  if minimum > maximum:
    raise ValueError(f"bounded_int({flag!r}): minimum {minimum} > maximum {maximum}")

  def parse(text):
    body = text.strip()
    digits = body[1:] if body[:1] in "+-" else body
    if not digits.isdigit() or not digits.isascii():
      raise argparse.ArgumentTypeError(f"{flag} expects a whole number, got {text!r}")
    if len(digits) > 40:
      raise argparse.ArgumentTypeError(f"{flag} must lie in [{minimum}, {maximum}], got "
                                       f"{text[:20]}...")
    value = int(body)
    if not minimum <= value <= maximum:
      raise argparse.ArgumentTypeError(f"{flag} must lie in [{minimum}, {maximum}], got {text}")
    return value
  return parse


def positive_int(flag: str, maximum: int = INT_MAX_DEFAULT):
  """An argparse type: a whole number in ``[1, maximum]`` (batch sizes, draws, chunk sizes).

  Args:
    flag: the flag's name, for the message (e.g. "--batch-size").
    maximum: the largest value accepted; a larger one is refused before any allocation.
  """
  return bounded_int(flag, 1, maximum)


def seed(flag: str = "--seed"):
  """An argparse type: a seed in ``[0, SEED_MAX]`` = ``[0, 2**32 - 1]``, naming `flag`."""
  return bounded_int(flag, 0, SEED_MAX)


def write_json(obj, path) -> None:
  """Writes JSON atomically, so a failure never leaves a half-written report."""
  write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _inside(path: str, folder: str) -> bool:
  return os.path.commonpath([path, folder]) == folder


def _same_file(a: str, b: str) -> bool:
  try:
    return os.path.samefile(a, b)
  except OSError:
    return False


def _refuse_inputs(text: str, real: str, flag: str, inputs: Iterable) -> None:
  """Refuses `real` when it is an input, lies inside an input folder, or holds an input."""
  for item in inputs:
    if item is None:
      continue
    source = os.path.realpath(os.fspath(item))
    if real == source or _same_file(real, source):
      raise CommandError(f"{flag} {text}: is an input of this command ({item}); refusing to "
                         "overwrite it")
    if os.path.isdir(source) and _inside(real, source):
      raise CommandError(f"{flag} {text}: lies inside the input folder {item}; refusing to "
                         "write there")


def _nearest_existing(path: str) -> str:
  while not os.path.lexists(path):
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return path


def _writable_dir(path: str) -> bool:
  return os.access(path, os.W_OK | os.X_OK)


def check_output_path(path: str | os.PathLike | None, flag: str, inputs: Iterable = ()) -> None:
  """Refuses, before any work, an output file that would overwrite an input or cannot be written.

  Refused: an empty path or one ending with a separator; an existing folder; a path that
  resolves to an input file (also through symlinks or hard links) or lies inside an input
  folder (e.g. a checkpoint folder); an existing read-only file; a missing or unwritable
  parent folder.

  Args:
    path: the output file the command will write (None: nothing to check).
    flag: the flag that named it, for the message (e.g. "--out").
    inputs: paths of the command's input files and folders.

  Raises:
    CommandError: naming `flag` and the path.
  """
  if path is None:
    return
  text = os.fspath(path)
  if not text or text.endswith(("/", os.sep)):
    raise CommandError(f"{flag} {text!r}: expected a file path, not a folder")
  real = os.path.realpath(text)
  if os.path.isdir(real):
    raise CommandError(f"{flag} {text}: is a folder; expected a file path")
  _refuse_inputs(text, real, flag, inputs)
  if os.path.lexists(real) and not os.path.isfile(real):
    raise CommandError(f"{flag} {text}: exists and is not a regular file")
  parent = os.path.dirname(real) or "."
  shown = os.path.dirname(text) or "."
  if not os.path.isdir(parent):
    raise CommandError(f"{flag} {text}: the folder {shown} does not exist")
  if not _writable_dir(parent):
    raise CommandError(f"{flag} {text}: the folder {shown} is not writable")
  if os.path.isfile(real) and not os.access(real, os.W_OK):
    raise CommandError(f"{flag} {text}: the file exists and is read-only")


def check_output_folder(path: str | os.PathLike | None, flag: str, inputs: Iterable = ()) -> None:
  """Refuses, before any work, an output folder that cannot be created or written.

  The folder may be missing (it is created later) when its nearest existing ancestor is a
  writable folder. An existing folder must be writable, and so must every folder below it
  (a results folder holds the study cache; a read-only cache fails after hours otherwise).

  Args:
    path: the folder the command will write into (None or "": nothing to check).
    flag: the flag that named it, for the message (e.g. "--figures").
    inputs: paths of the command's input files and folders; the folder may not be an input,
      lie inside an input folder, or hold an input file.

  Raises:
    CommandError: naming `flag` and the path.
  """
  if path is None:
    return
  text = os.fspath(path)
  if not text:
    return
  real = os.path.realpath(text)
  _refuse_inputs(text, real, flag, inputs)
  for item in inputs:
    if item is not None and _inside(os.path.realpath(os.fspath(item)), real):
      raise CommandError(f"{flag} {text}: holds the input {item}; choose another folder")
  if os.path.lexists(real) or os.path.lexists(text):
    if not os.path.isdir(real):
      raise CommandError(f"{flag} {text}: is a file; expected a folder")
    for folder, subfolders, _ in os.walk(real):
      if not _writable_dir(folder):
        raise CommandError(f"{flag} {text}: the folder {folder} is not writable")
      subfolders[:] = [s for s in subfolders if not s.startswith(".")]
    return
  ancestor = _nearest_existing(real)
  if not os.path.isdir(ancestor):
    raise CommandError(f"{flag} {text}: {ancestor} is a file, so the folder cannot be created")
  if not _writable_dir(ancestor):
    raise CommandError(f"{flag} {text}: cannot create it, the folder {ancestor} is not writable")


def check_input_file(path: str | os.PathLike, flag: str) -> None:
  """Refuses an input that is missing, a folder, or unreadable, naming `flag` and the path."""
  text = os.fspath(path)
  if not os.path.exists(text):
    raise CommandError(f"{flag} {text}: no such file")
  if os.path.isdir(text):
    raise CommandError(f"{flag} {text}: is a folder; expected a file")
  if not stat.S_ISREG(os.stat(text).st_mode):
    raise CommandError(f"{flag} {text}: not a regular file")
  if not os.access(text, os.R_OK):
    raise CommandError(f"{flag} {text}: not readable")


def bounded_float(flag: str, low: float, high: float, *,
                  closed: tuple[bool, bool] = (False, True)):
  """An argparse type: a finite float between `low` and `high`, with an error naming `flag`.

  Args:
    flag: the flag's name, for the message.
    low, high: the range.
    closed: whether each end is included (default ``(low, high]``).
  """
  def parse(text):
    value = _number(flag, text)
    above = value >= low if closed[0] else value > low
    below = value <= high if closed[1] else value < high
    if not (above and below):
      left, right = "[" if closed[0] else "(", "]" if closed[1] else ")"
      raise argparse.ArgumentTypeError(f"{flag} must lie in {left}{low:g}, {high:g}{right}, "
                                       f"got {text}")
    return value
  return parse


class DefaultsHelpFormatter(argparse.HelpFormatter):
  """Help that shows each flag's default, unless it is None/False or the help already says it."""

  def _get_help_string(self, action):
    text = action.help or ""
    if ("default" in text or action.default in (None, False, argparse.SUPPRESS)
        or not action.option_strings):
      return text
    return f"{text} (default: %(default)s)"
