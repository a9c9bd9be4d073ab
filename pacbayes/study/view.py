"""A lab results file (schema ``pacbayes.lab/3``, or /2) as arrays: cells x seeds x test items.

Schema 3 (issue 20) differs from 2 by: seeds may differ between cells (the arrays are padded
with NaN where a cell has no such seed); main cells may carry no "certificate" and no
"q_seq_error" items (their bound, b_train and q_seq_error are NaN; only the certified arm
pays for certificates); "test_mixtures" names several test mixtures scored on the same items
("uniform", the primary, and "hard"); each cell records its "base_replica" and per-slice
"gain_by_slice" / "learned_by_slice" / "forgot_by_slice" against that replica; "bases" give the
mean over replicas and each replica under "replicas"; "protocol" records the fine-tuning rule.

The verdicts (`pacbayes.study.theory`) and the figures (`pacbayes.study.plots`) read a study
through this view, and the calibration tests build the same view from simulated arrays, so
one code path judges real and simulated studies. Arrays carry a leading replicate axis R (1
for a real study, thousands in a simulation).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from pacbayes.study.stats import decode_u8

SCHEMA = "pacbayes.lab/3"
READABLE = ("pacbayes.lab/2", SCHEMA)
ITEM_FIELDS = ("correct", "seq_error", "q_seq_error")


class ResultsError(ValueError):
  """A results file that cannot be judged or plotted; the message names the file or key."""


CellKey = tuple[str, str, str, int]  # (base, method, bucket, n)


@dataclasses.dataclass(frozen=True)
class StudyView:
  """Per-item and per-seed arrays of a study.

  Attributes:
    keys: cell keys (base, method, bucket, n), index c of every array below.
    seeds: the fine-tuning seeds (S), the union over cells; a cell without seed s has NaN in
      every array at s.
    ops: [K] op count of each test slice.
    slice_of: [N] slice index (0..K-1) of each test item.
    p_test: [K] test mixture over the slices (the one chosen by `study_view(test=...)`).
    p_bucket: bucket -> [K] training mixture over the same slices (0 outside its support).
    buckets: bucket names, easy -> hard.
    base_acc: base name -> [K] greedy accuracy of the base by slice (before fine-tuning).
    items: field -> [R, C, S, N] float64 per-item values: "correct" (greedy answer right),
      "seq_error" (teacher-forced sequence error of the fine-tuned weights) and
      "q_seq_error" (sequence error under posterior draws, the mean over draws; NaN for a
      cell that was not certified).
    scalars: field -> [R, C, S] float64: "train_seq_error" (R_S of the fine-tuned weights),
      "sq_distance" (||w - w_base||^2 to the cell's base replica), "bound" (full certificate)
      and "b_train" (in-bucket certificate), NaN when not certified; "base_replica".
    headroom_min: a bucket's saturation is judged only if the base's accuracy on the bucket's
      mixture is at most 1 - headroom_min (fixed before training, in the config).
    base_seq_error: base name -> [K] teacher-forced sequence error of the base by slice
      (before fine-tuning; empty when the results file does not carry it).
    p_tests: mixture name -> [K], every test mixture of the results ("uniform" = primary).
    base_acc_replicas: base name -> [B, K] accuracy of each base replica by slice.
  """

  keys: tuple[CellKey, ...]
  seeds: tuple[int, ...]
  ops: np.ndarray
  slice_of: np.ndarray
  p_test: np.ndarray
  p_bucket: Mapping[str, np.ndarray]
  buckets: tuple[str, ...]
  base_acc: Mapping[str, np.ndarray]
  items: Mapping[str, np.ndarray]
  scalars: Mapping[str, np.ndarray]
  headroom_min: float = 0.1
  base_seq_error: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
  p_tests: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
  base_acc_replicas: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def index(self, key: CellKey) -> int | None:
    try:
      return self.keys.index(key)
    except ValueError:
      return None

  def sizes(self, base: str = "base", method: str = "sft", bucket: str | None = None) -> list[int]:
    """Sizes n with a cell for (base, method[, bucket]), ascending."""
    return sorted({k[3] for k in self.keys if k[0] == base and k[1] == method
                   and (bucket is None or k[2] == bucket)})

  def complete_sizes(self, base: str = "base", method: str = "sft") -> list[int]:
    """Sizes n at which every bucket has a cell."""
    return [n for n in self.sizes(base, method)
            if all((base, method, b, n) in self.keys for b in self.buckets)]

  @property
  def replicates(self) -> int:
    return next(iter(self.scalars.values())).shape[0]


def _probs(mapping: Mapping[str, Any], ops: np.ndarray, where: str) -> np.ndarray:
  out = np.zeros(len(ops))
  for k, p in mapping.items():
    hits = np.flatnonzero(ops == int(k))
    if hits.size == 0:
      raise ResultsError(f"{where}: difficulty {k} is not a test slice {ops.tolist()}")
    out[hits[0]] = float(p)
  if not math.isclose(out.sum(), 1.0, abs_tol=1e-6):
    raise ResultsError(f"{where}: probabilities sum to {out.sum()}, expected 1")
  return out


def study_view(results: Mapping[str, Any], *, arm: str = "tilted",
               test: str | None = None) -> StudyView:
  """Builds the `StudyView` of one arm of a results dict.

  Args:
    results: the parsed results.json (schema 2 or 3).
    arm: the arm ("tilted" or "disjoint").
    test: the test mixture to use as `p_test` ("uniform", "hard", ...; None: the primary
      "test_mixture").

  Raises:
    ResultsError: wrong schema, missing keys, an unknown test mixture, item strings of the
      wrong length (the message names the key or cell).
  """
  where = results.get("_path", "results")
  if results.get("schema") not in READABLE:
    raise ResultsError(f"{where}: expected schema {SCHEMA!r}, got {results.get('schema')!r} "
                       "(rerun `pacbayes lab` to regenerate the study)")
  for key in ("test_items", "test_mixture", "arms", "bases", "cells"):
    if key not in results:
      raise ResultsError(f"{where}: lab results lack the key {key!r}")
  if arm not in results["arms"]:
    raise ResultsError(f"{where}: no arm {arm!r} (have {sorted(results['arms'])})")
  ops = np.asarray(results["test_items"]["ops"], dtype=np.int64)
  counts = np.asarray(results["test_items"]["counts"], dtype=np.int64)
  slice_of = np.repeat(np.arange(len(ops)), counts)
  n_items = int(counts.sum())
  p_tests = {name: _probs(m, ops, f"{where}: test_mixtures.{name}")
             for name, m in results.get("test_mixtures", {}).items()}
  if test is None:
    p_test = _probs(results["test_mixture"], ops, f"{where}: test_mixture")
  elif test in p_tests:
    p_test = p_tests[test]
  else:
    raise ResultsError(f"{where}: no test mixture {test!r} (have {sorted(p_tests)})")
  arm_info = results["arms"][arm]
  buckets = tuple(arm_info["order"])
  p_bucket = {b: _probs(arm_info["mixtures"][b], ops, f"{where}: arms.{arm}.mixtures.{b}")
              for b in buckets}
  base_acc, base_seq, base_reps = {}, {}, {}
  for name, b in results["bases"].items():
    by = b["accuracy_by_slice"]
    base_acc[name] = np.array([float(by[str(k)]) for k in ops])
    base_reps[name] = np.array([[float(r["accuracy_by_slice"][str(k)]) for k in ops]
                                for r in b.get("replicas", [b])])
    if "seq_error_by_slice" in b:
      base_seq[name] = np.array([float(b["seq_error_by_slice"][str(k)]) for k in ops])
  groups: dict[CellKey, dict[int, Mapping[str, Any]]] = {}
  for i, cell in enumerate(results["cells"]):
    if cell.get("arm", "tilted") != arm:
      continue
    try:
      key = (cell["base"], cell["method"], cell["bucket"], int(cell["n"]))
      groups.setdefault(key, {})[int(cell["seed"])] = cell
    except (KeyError, TypeError, ValueError) as e:
      raise ResultsError(f"{where}: cells[{i}] lacks or mangles {e}") from None
  if not groups:
    raise ResultsError(f"{where}: no cells in arm {arm!r}")
  keys = tuple(sorted(groups, key=lambda k: (k[0], k[1], buckets.index(k[2]), k[3])))
  seeds = tuple(sorted({s for g in groups.values() for s in g}))
  c, s = len(keys), len(seeds)
  items = {f: np.full((1, c, s, n_items), np.nan) for f in ITEM_FIELDS}
  scalars = {f: np.full((1, c, s), np.nan) for f in ("train_seq_error", "sq_distance", "bound",
                                                      "b_train", "base_replica")}
  for ci, key in enumerate(keys):
    for si, seed in enumerate(seeds):
      cell = groups[key].get(seed)
      if cell is None:
        continue
      try:
        it = cell["items"]
        draws = max(int(it.get("q_draws", 1)), 1)
        for f in ITEM_FIELDS:
          if f not in it and f == "q_seq_error":
            continue  # not certified: no posterior draws
          v = decode_u8(it[f], n_items).astype(np.float64)
          items[f][0, ci, si] = v / draws if f == "q_seq_error" else v
        scalars["train_seq_error"][0, ci, si] = float(cell["train_seq_error"])
        scalars["sq_distance"][0, ci, si] = float(cell["sq_distance"])
        scalars["base_replica"][0, ci, si] = float(cell.get("base_replica", 0))
        cert = cell.get("certificate")
        if cert is not None:
          scalars["bound"][0, ci, si] = float(cert["bound"])
          scalars["b_train"][0, ci, si] = float(cert["b_train"])
      except (KeyError, TypeError, ValueError) as e:
        raise ResultsError(f"{where}: cell {key} seed {seed}: {e}") from None
  headroom = float(results.get("config", {}).get("headroom_min", 0.1))
  return StudyView(keys=keys, seeds=seeds, ops=ops, slice_of=slice_of, p_test=p_test,
                   p_bucket=p_bucket, buckets=buckets, base_acc=base_acc, items=items,
                   scalars=scalars, headroom_min=headroom, base_seq_error=base_seq,
                   p_tests=p_tests, base_acc_replicas=base_reps)
