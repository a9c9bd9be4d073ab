"""Checks of a lab results file before `pacbayes select` reads pilots from it.

`pacbayes.study.view` builds the arrays of a study; it trusts the file's structure. A
selection is a decision, so here a file is refused (one line naming the file, the cell and
the key) rather than read by a guess:

- the file is read strictly (`pacbayes.core.jsonio`): a truncated file, a key repeated in one
  object (JSON would keep the last silently), or bytes that are not UTF-8;
- a file of another kind (a bound report, a lab/1 file) is named as such;
- every cell is an object with string "base", "method", "bucket" (a bucket of its arm) and
  whole numbers "n" >= 1 and "seed" >= 0; no (arm, base, method, bucket, n, seed) twice
  (the view would keep one of them);
- a cell used by the selection agrees with itself: its "accuracy", when present, is a finite
  number equal to its per-item answers weighted by the test mixture (1 - risk), and its
  cost fields ("ft_steps", "train_time_s") are finite numbers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from pacbayes.core.jsonio import JSONError, read_object
from pacbayes.study.view import READABLE, ResultsError, StudyView

# Fine-tuning cell identity: (arm, base, method, bucket, n, seed).
CellId = tuple[str, str, str, str, int, int]
_ACCURACY_TOL = 1e-6  # u8 items are exact; the weighted mean differs by rounding only


def read_results(path: str | os.PathLike) -> dict[str, Any]:
  """Reads a lab results file strictly, with ``_path`` added.

  Raises:
    ResultsError: not JSON, truncated, a repeated key, not an object, or a file of another
      kind (the message names the file, and the line where JSON is at fault).
  """
  where = os.fspath(path)
  try:
    data = read_object(where, allow_nan=True)  # the lab writes NaN for missing measures
  except JSONError as e:
    raise ResultsError(str(e)) from None
  schema = data.get("schema")
  if schema not in READABLE:
    kind = ("a bound report" if str(schema).startswith("pacbayes.certificate")
            else f"schema {schema!r}")
    raise ResultsError(f"{where}: {kind}, not a lab results file (schema "
                       f"{' or '.join(READABLE)}); run `pacbayes lab` for pilots")
  data["_path"] = where
  return data


def _describe(cell: Mapping[str, Any]) -> str:
  return (f"{cell.get('arm', 'tilted')}/{cell.get('base')}/{cell.get('method')}/"
          f"{cell.get('bucket')} n={cell.get('n')} seed={cell.get('seed')}")


def _whole(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def check_cells(results: Mapping[str, Any]) -> dict[CellId, int]:
  """Checks the structure of every cell; returns cell identity -> index in "cells".

  Raises:
    ResultsError: naming the file, ``cells[i]`` and the key.
  """
  where = results.get("_path", "results")
  cells = results.get("cells")
  if not isinstance(cells, list):
    raise ResultsError(f"{where}: key 'cells' must be a list of cells, got "
                       f"{type(cells).__name__}")
  arms = results.get("arms")
  if not isinstance(arms, dict):
    raise ResultsError(f"{where}: key 'arms' must be an object")
  seen: dict[CellId, int] = {}
  for i, cell in enumerate(cells):
    at = f"{where}: cells[{i}]"
    if not isinstance(cell, dict):
      raise ResultsError(f"{at}: expected an object, got {type(cell).__name__}")
    for key in ("base", "method", "bucket"):
      if not isinstance(cell.get(key), str):
        raise ResultsError(f"{at}: key {key!r} is missing or not a string")
    arm = cell.get("arm", "tilted")
    if not isinstance(arm, str) or not isinstance(arms.get(arm), dict):
      raise ResultsError(f"{at}: arm {arm!r} is not an arm of the file ({sorted(arms)})")
    order = arms[arm].get("order", [])
    if cell["bucket"] not in order:
      raise ResultsError(f"{at}: bucket {cell['bucket']!r} is not a bucket of arm {arm!r} "
                         f"({order})")
    for key, low in (("n", 1), ("seed", 0)):
      if not _whole(cell.get(key)) or cell[key] < low:
        raise ResultsError(f"{at}: key {key!r} must be a whole number >= {low}, got "
                           f"{cell.get(key)!r}")
    ident = (arm, cell["base"], cell["method"], cell["bucket"], cell["n"], cell["seed"])
    if ident in seen:
      raise ResultsError(f"{at}: the same run as cells[{seen[ident]}] ({_describe(cell)}); "
                         "refusing to pick one")
    seen[ident] = i
  return seen


def check_used_cells(results: Mapping[str, Any], view: StudyView, index: Mapping[CellId, int],
                     arm: str, groups: Mapping[tuple[str, str, str, int], int]) -> None:
  """Checks the values of the cells a selection reads (pilots and cells at the budget).

  Args:
    results: the results dict.
    view: its `study_view` for `arm`.
    index: `check_cells`' map from cell identity to index.
    arm: the arm.
    groups: (base, method, bucket, n) -> view cell index c, for the cells used.

  Raises:
    ResultsError: an accuracy that is not finite or disagrees with the cell's items, or a
      cost field that is not a finite number (naming the file, cells[i] and the key).
  """
  where = results.get("_path", "results")
  counts_K = np.bincount(view.slice_of, minlength=len(view.ops))
  w_I = view.p_test[view.slice_of] / counts_K[view.slice_of]
  batch = results.get("config", {}).get("ft_batch_size")
  if batch is not None and (not _whole(batch) or batch < 1):
    raise ResultsError(f"{where}: config.ft_batch_size must be a whole number >= 1, got "
                       f"{batch!r}")
  for (base, method, bucket, n), c in groups.items():
    for s, seed in enumerate(view.seeds):
      i = index.get((arm, base, method, bucket, n, seed))
      if i is None:
        continue
      cell = results["cells"][i]
      at = f"{where}: cells[{i}] ({_describe(cell)})"
      if "ft_steps" in cell and (not _whole(cell["ft_steps"]) or cell["ft_steps"] < 1):
        raise ResultsError(f"{at}: key 'ft_steps' must be a whole number >= 1, got "
                           f"{cell['ft_steps']!r}")
      if "train_time_s" in cell and not _finite(cell["train_time_s"], 0.0):
        raise ResultsError(f"{at}: key 'train_time_s' must be a finite number >= 0, got "
                           f"{cell['train_time_s']!r}")
      if "accuracy" not in cell:
        continue
      if not _finite(cell["accuracy"], 0.0, 1.0):
        raise ResultsError(f"{at}: key 'accuracy' must be a number in [0, 1], got "
                           f"{cell['accuracy']!r}")
      from_items = float(view.items["correct"][0, c, s] @ w_I)
      if abs(from_items - cell["accuracy"]) > _ACCURACY_TOL:
        raise ResultsError(f"{at}: key 'accuracy' is {cell['accuracy']!r} but its items give "
                           f"{from_items:.6f} on the test mixture; the file contradicts itself")


def _finite(value: Any, low: float, high: float = math.inf) -> bool:
  return (isinstance(value, int | float) and not isinstance(value, bool)
          and math.isfinite(value) and low <= value <= high)
