"""Argument types and helpers shared by the sub-commands (errors name the flag)."""

from __future__ import annotations

import argparse
import json

from pacbayes.atomic import write_text


class CommandError(ValueError):
  """A bad command line (the message names the flag)."""


def positive_float(flag: str):
  """An argparse type: a float > 0, with an error naming `flag`."""
  def parse(text):
    try:
      value = float(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"{flag} expects a number, got {text!r}") from None
    if not value > 0:
      raise argparse.ArgumentTypeError(f"{flag} must be > 0, got {text}")
    return value
  return parse


def probability(flag: str):
  """An argparse type: a float in the open interval (0, 1), with an error naming `flag`."""
  def parse(text):
    try:
      value = float(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"{flag} expects a number, got {text!r}") from None
    if not 0 < value < 1:
      raise argparse.ArgumentTypeError(f"{flag} must lie in (0, 1), got {text}")
    return value
  return parse


def write_json(obj, path) -> None:
  """Writes JSON atomically, so a failure never leaves a half-written report."""
  write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def check_output_path(path: str | None, flag: str, inputs=()) -> None:
  """Refuses, before any work, an output path that would overwrite an input or cannot be written.

  Args:
    path: the output file the command will write (None: nothing to check).
    flag: the flag that named it, for the message (e.g. "--out").
    inputs: paths of the command's input files and folders; the output may not resolve to
      an input file nor lie inside an input folder.

  Raises:
    CommandError: naming `flag` and the path.
  """
  import os

  if path is None:
    return
  text = os.fspath(path)
  if not text or text.endswith(os.sep):
    raise CommandError(f"{flag} {text!r}: expected a file path, not a folder")
  real = os.path.realpath(text)
  if os.path.isdir(real):
    raise CommandError(f"{flag} {text}: is a folder; expected a file path")
  for item in inputs:
    if item is None:
      continue
    source = os.path.realpath(os.fspath(item))
    if real == source:
      raise CommandError(f"{flag} {text}: is an input of this command; refusing to overwrite it")
    if os.path.isdir(source) and os.path.commonpath([real, source]) == source:
      raise CommandError(f"{flag} {text}: lies inside the input folder {item}; refusing to "
                         "write there")
  parent = os.path.dirname(real) or "."
  if not os.path.isdir(parent):
    raise CommandError(f"{flag} {text}: the folder {os.path.dirname(text) or '.'} does not exist")
  if not os.access(parent, os.W_OK):
    raise CommandError(f"{flag} {text}: the folder {os.path.dirname(text) or '.'} is not writable")
