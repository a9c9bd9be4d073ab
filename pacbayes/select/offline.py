"""Pilots from a lab results file (schema ``pacbayes.lab/2``): the offline `pacbayes select`.

A study cell is one fine-tune (base, method, bucket, n, seed) evaluated item by item on one
shared test set (`pacbayes.study.view`). The pilots of a selection are the cells of one
(arm, base, method) at the chosen sizes; the risk of a run is the slice-weighted mean of its
per-item losses under the target mixture (by default the study's test mixture):

  risk = sum_k p_target[k] * mean_{i in slice k} loss_i,

with loss = 1 - correct (greedy answer error: regret in accuracy is regret in this risk) or
the teacher-forced sequence error.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pacbayes.select.checks import check_cells, check_used_cells, read_results
from pacbayes.select.predict import (
    DEFAULT_OPTIONS,
    NUMBERS,
    Pilots,
    SelectOptions,
    select_bucket,
)
from pacbayes.study.view import StudyView, study_view

# Commit 984cf91 renamed the lab to the study, and the schema string with it; the committed
# results (experiments/results/*/results.json) still carry the old name of the same format.
RISKS = {"error": "1 - correct (greedy answer error)",
         "seq_error": "teacher-forced sequence error"}


@dataclasses.dataclass(frozen=True)
class StudyQuery:
  """Which cells of a study are the pilots, and which risk they are judged by.

  Attributes:
    arm: the study arm (a family of buckets, e.g. "tilted").
    base: the base model's name.
    method: "sft" or "dft".
    pilot_sizes: sizes n used as pilots (None: every size below the budget).
    risk: a key of RISKS.
    target_mixture: test slice (difficulty) -> probability (None: the study's test mixture).
  """

  arm: str = "tilted"
  base: str = "base"
  method: str = "sft"
  pilot_sizes: tuple[int, ...] | None = None
  risk: str = "error"
  target_mixture: Mapping[int, float] | None = None

  def __post_init__(self):
    if self.risk not in RISKS:
      raise ValueError(f"risk must be one of {sorted(RISKS)}, got {self.risk!r}")


def load_study_results(path: str | os.PathLike) -> dict[str, Any]:
  """Reads a lab results file strictly, with ``_path`` added (`checks.read_results`).

  Raises:
    ResultsError: not UTF-8 JSON, truncated, a repeated key, not an object, or not a lab
      results file (the message names the file).
  """
  return read_results(path)


def _group(view: StudyView, query: StudyQuery) -> dict[tuple[str, int], int]:
  return {(k[2], k[3]): c for c, k in enumerate(view.keys)
          if k[0] == query.base and k[1] == query.method}


def target_weights(view: StudyView, mixture: Mapping[int, float] | None,
                   where: str = "--test-mixture") -> np.ndarray:
  """[I] item weights of a target mixture over the test slices (sum 1).

  Raises:
    ValueError: a difficulty that is not a test slice, a negative mass, or masses that do not
      sum to 1 (the message names `where`).
  """
  ops = view.ops.tolist()
  if mixture is None:
    p_K = view.p_test
  else:
    p_K = np.zeros(len(ops))
    for d, mass in mixture.items():
      if int(d) not in ops:
        raise ValueError(f"{where}: difficulty {d} has mass {mass} but is not a test slice of "
                         f"the study (slices {ops})")
      if not mass >= 0:
        raise ValueError(f"{where}: difficulty {d} has negative mass {mass}")
      p_K[ops.index(int(d))] = float(mass)
    if not math.isclose(p_K.sum(), 1.0, abs_tol=1e-6):
      raise ValueError(f"{where}: masses sum to {p_K.sum():.6g}, expected 1")
  counts_K = np.bincount(view.slice_of, minlength=len(ops))
  return p_K[view.slice_of] / counts_K[view.slice_of]


def study_pilots(view: StudyView, query: StudyQuery, sizes: Sequence[int]) -> Pilots:
  """The `Pilots` of (query.base, query.method) at `sizes` (cells missing there are NaN)."""
  group = _group(view, query)
  buckets = tuple(b for b in view.buckets if any(key[0] == b for key in group))
  field = "correct" if query.risk == "error" else "seq_error"
  values = view.items[field][0]  # [C, S, I]
  loss_CxSxI = 1.0 - values if field == "correct" else values
  s, n_items = loss_CxSxI.shape[1:]
  loss = np.full((len(buckets), len(sizes), s, n_items), np.nan)
  for k, b in enumerate(buckets):
    for p, n in enumerate(sizes):
      c = group.get((b, int(n)))
      if c is not None:
        loss[k, p] = loss_CxSxI[c]
  return Pilots(buckets=buckets, sizes=tuple(int(n) for n in sizes), loss_KxPxSxI=loss,
                item_weights_I=target_weights(view, query.target_mixture),
                item_strata_I=view.slice_of, seeds=view.seeds)


def pilot_sizes(view: StudyView, query: StudyQuery, budget: int) -> tuple[int, ...]:
  """The pilot sizes of a query: the listed ones, or every size of the group below `budget`.

  Raises:
    ValueError: no cell of (base, method) in the arm, a listed size without cells, a budget
      not above the pilots, or fewer than two distinct pilot sizes (no curve can be fitted;
      the message names the flag).
  """
  where = f"--base {query.base} --method {query.method} --arm {query.arm}"
  have = sorted({n for (_, n) in _group(view, query)})
  if not have:
    raise ValueError(f"{where}: the results have no cell of this base and method")
  if query.pilot_sizes is None:
    sizes = tuple(n for n in have if n < budget)
    if not sizes:
      raise ValueError(f"--budget {budget} is not above any pilot size (smallest cell n="
                       f"{have[0]}): a selection predicts beyond the pilots")
    if len(sizes) < 2:
      raise ValueError(f"--budget {budget}: {where} has one pilot size below it (n={sizes[0]}; "
                       f"sizes {have}); a curve needs at least 2 sizes")
    return sizes
  for n in query.pilot_sizes:
    if n not in have:
      raise ValueError(f"--pilot-sizes: {where} has no cell at n={n} (sizes {have})")
  if max(query.pilot_sizes) >= budget:
    raise ValueError(f"--budget {budget} is not above the largest pilot n="
                     f"{max(query.pilot_sizes)}: a selection predicts beyond the pilots")
  if len(set(query.pilot_sizes)) < 2:
    raise ValueError(f"--pilot-sizes: one size (n={query.pilot_sizes[0]}); a curve needs at "
                     f"least 2 distinct sizes (the file has {have})")
  return tuple(sorted(set(query.pilot_sizes)))


def _cells_at(results, query, n):
  """Cells (dicts) of the group at size n."""
  return [c for c in results.get("cells", []) if c.get("arm", "tilted") == query.arm
          and c.get("base") == query.base and c.get("method") == query.method
          and c.get("n") == n]


COST_DEFINITIONS = {
  "rows": "training rows of a run (n), summed over runs; each seed's run counts",
  "examples_processed": "optimiser steps x batch size (training tokens are not recorded in "
                        "lab results)",
  "every_bucket_at_budget": "one run (one seed) per bucket at N: the alternative to pilots",
}


def cost_summary(results: Mapping[str, Any], query: StudyQuery, sizes: Sequence[int],
                 buckets: Sequence[str], budget: int) -> dict[str, Any]:
  """Training cost of the pilots against one run per bucket at the budget.

  Rows: every pilot run's n (all seeds) against K x N. Examples processed (optimiser steps x
  batch) and seconds come from the cells where recorded; at the budget from its cells when
  the study has them, else, when every pilot trains the same number of steps whatever n
  (the study's fixed-steps protocol), that number (stated as an assumption). Ratios above 1
  mean the pilots cost more than training every bucket once at N.
  """
  pilot_cells = [c for n in sizes for c in _cells_at(results, query, n)
                 if c.get("bucket") in buckets]
  budget_cells = [c for c in _cells_at(results, query, budget) if c.get("bucket") in buckets]
  batch = results.get("config", {}).get("ft_batch_size")
  k = len(buckets)
  out: dict[str, Any] = {
    "definitions": dict(COST_DEFINITIONS),
    "pilot_runs": len(pilot_cells),
    "pilot_rows": int(sum(int(c["n"]) for c in pilot_cells)),
    "every_bucket_at_budget_runs": k,
    "every_bucket_at_budget_rows": int(k * budget),
  }
  out["rows_ratio"] = out["pilot_rows"] / out["every_bucket_at_budget_rows"]
  pilot_steps = [int(c["ft_steps"]) for c in pilot_cells if "ft_steps" in c]
  budget_steps = {int(c["ft_steps"]) for c in budget_cells if "ft_steps" in c}
  steps_at_budget, basis = None, None
  if budget_cells and len(budget_steps) == 1 and len(budget_cells) == sum(
      "ft_steps" in c for c in budget_cells):
    steps_at_budget, basis = budget_steps.pop(), "the study's runs at N"
  elif len(pilot_steps) == len(pilot_cells) and len(set(pilot_steps)) == 1:
    steps_at_budget = pilot_steps[0]
    basis = f"assumed: every pilot trains {steps_at_budget} steps whatever n"
  if batch and pilot_steps and len(pilot_steps) == len(pilot_cells):
    out["pilot_examples_processed"] = int(sum(pilot_steps) * int(batch))
    if steps_at_budget is not None:
      out["every_bucket_at_budget_examples_processed"] = int(k * steps_at_budget * int(batch))
      out["every_bucket_at_budget_steps_basis"] = basis
      out["examples_ratio"] = (out["pilot_examples_processed"]
                               / out["every_bucket_at_budget_examples_processed"])
  if pilot_cells and all("train_time_s" in c for c in pilot_cells):
    out["pilot_train_s"] = float(sum(float(c["train_time_s"]) for c in pilot_cells))
    if budget_cells and all("train_time_s" in c for c in budget_cells):
      seeds = len({c.get("seed") for c in budget_cells})
      out["measured_every_bucket_at_budget_train_s"] = float(
          sum(float(c["train_time_s"]) for c in budget_cells) / max(seeds, 1))
      out["train_time_ratio"] = (out["pilot_train_s"]
                                 / out["measured_every_bucket_at_budget_train_s"])
  out["statement"] = _cost_statement(out, k, len(sizes), budget)
  return out


def _cost_statement(cost: Mapping[str, Any], k: int, p: int, budget: int) -> str:
  ratios = [f"{cost['rows_ratio']:.2f}x the rows"]
  if "examples_ratio" in cost:
    ratios.append(f"{cost['examples_ratio']:.2f}x the examples processed")
  if "train_time_ratio" in cost:
    ratios.append(f"{cost['train_time_ratio']:.2f}x the training time")
  listed = ", ".join(ratios[:-1]) + (" and " if len(ratios) > 1 else "") + ratios[-1]
  text = (f"the pilots ({cost['pilot_runs']} runs of {k} buckets at {p} sizes, all seeds; "
          f"{cost['pilot_rows']} rows) cost {listed} of training each of the {k} buckets once "
          f"at N={budget} ({cost['every_bucket_at_budget_rows']} rows)")
  costly = [r for r in ("rows_ratio", "examples_ratio", "train_time_ratio")
            if cost.get(r, 0) >= 1]
  if costly:
    text += ("; they save no " + " or ".join(
        {"rows_ratio": "data", "examples_ratio": "compute", "train_time_ratio": "time"}[r]
        for r in costly) + " here")
  return text


def measured_at(view: StudyView, query: StudyQuery, budget: int, buckets: Sequence[str]
                ) -> dict[str, Any] | None:
  """Measured mean risk of each bucket at the budget when the study has those cells."""
  probe = study_pilots(view, query, [budget])
  counts = probe.seed_counts_KxP[:, 0]
  if probe.buckets != tuple(buckets) or np.any(counts == 0):
    return None
  risk = np.nanmean(probe.risk_KxPxS()[:, 0], axis=1)
  return {"risk": {b: float(r) for b, r in zip(buckets, risk, strict=True)},
          "best": buckets[int(np.argmin(risk))], "seeds": int(counts.min())}


def select_from_results(results: Mapping[str, Any], budget: int, query: StudyQuery,
                        options: SelectOptions = DEFAULT_OPTIONS) -> dict[str, Any]:
  """`select_bucket` on the cells of a lab results dict; adds the source, cost and the
  measured risks at the budget when the study has them.

  Raises:
    ValueError (ResultsError): a malformed results file (`pacbayes.select.checks`), a query
      without cells, fewer than two buckets or two pilot sizes, or a budget not above the
      pilots.
  """
  index = check_cells(results)
  view = study_view(results, arm=query.arm)
  group = _group(view, query)
  buckets = [b for b in view.buckets if any(key[0] == b for key in group)]
  if len(buckets) == 1:
    raise ValueError(f"{results.get('_path', 'results')}: --arm {query.arm} --base "
                     f"{query.base} --method {query.method} has cells of one bucket only "
                     f"({buckets[0]}): nothing to select")
  sizes = pilot_sizes(view, query, budget)
  used = {(query.base, query.method) + key: c for key, c in group.items()
          if key[1] in sizes or key[1] == budget}
  check_used_cells(results, view, index, query.arm, used)
  pilots = study_pilots(view, query, sizes)
  out = select_bucket(pilots, budget, options)
  out["source"] = {"results": results.get("_path"), "preset": results.get("preset"),
                   "arm": query.arm, "base": query.base, "method": query.method,
                   "risk": RISKS[query.risk], "pilot_sizes": list(sizes),
                   "target_mixture": {str(int(d)): float(p) for d, p in zip(
                       view.ops, _mixture(view, query), strict=True)}}
  out["cost"] = cost_summary(results, query, sizes, pilots.buckets, budget)
  out["measured_at_budget"] = measured_at(view, query, budget, pilots.buckets)
  out["numbers"] = {**NUMBERS, "measured": NUMBERS["measured"] + "; measured_at_budget: the "
                    "study's own runs at N when it has them (not used by the prediction, "
                    "shown to check it); cost: recorded by the runs"}
  return out


def _mixture(view: StudyView, query: StudyQuery) -> np.ndarray:
  w = target_weights(view, query.target_mixture)
  return np.bincount(view.slice_of, weights=w, minlength=len(view.ops))
