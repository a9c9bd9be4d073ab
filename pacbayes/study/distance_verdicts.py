"""Verdicts on a per-seed scalar of the study's cells, ln ||w - w_base||^2 above all.

`scalar_contrast` is the contrast of a scalar field (one value per cell and seed, no items);
`ln_distance_line` judges ln ||dw||^2 (the KL at one fixed sigma, up to a constant: docs/
THEORY.md §1.3) on the seeds that moved, since early stopping may keep a cell's base
(||dw||^2 = 0, whose logarithm is -inf).
"""

from __future__ import annotations

import numpy as np

from pacbayes.study.stats import Contrast, contrast
from pacbayes.study.verdict import ALPHA, Verdict, not_judged, single
from pacbayes.study.view import StudyView


def scalar_contrast(view: StudyView, terms, field: str, transform=None,
                    alpha: float = ALPHA) -> Contrast:
  """Contrast sum_c a_c mean_s transform(field[c, s]) over `terms` ((key, a_c) pairs)."""
  idx = [view.index(k) for k, _ in terms]
  a = np.array([t[1] for t in terms])
  B = view.scalars[field][:, idx]
  if transform is not None:
    B = transform(B)
  return contrast(a, B=B, alpha=alpha)


def log_moved(B: np.ndarray) -> np.ndarray:
  """ln ||w - w_base||^2 of the seeds that moved; NaN (left out) where early stopping kept the
  base (||dw||^2 = 0: no KL, and its logarithm is -inf)."""
  B = np.asarray(B, dtype=np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.log(np.where(B > 0, B, np.nan))


def ln_distance_line(view: StudyView, claim: str, pairs, sign: int, at: str,
                     null: float = 0.0) -> Verdict:
  """The ln ||dw||^2 contrast over `pairs` ((key, weight) of base/sft cells) on the seeds that
  moved; the line counts the seeds left out because their cell kept the base, and is not
  judged when some cell kept the base in every seed."""
  idx = [view.index(k) for k, _ in pairs]
  dist = view.scalars["sq_distance"][0, idx]
  kept = int(np.sum(dist == 0))
  note = at + (f"; {kept} seed(s) that kept their base (||dw||^2 = 0) left out" if kept else "")
  try:
    c = scalar_contrast(view, pairs, "sq_distance", log_moved)
  except ValueError:
    return not_judged(view.replicates, claim, f"a cell kept its base in every seed "
                                              f"(||dw||^2 = 0, no logarithm); {at}")
  return single(claim, c, sign, note, null=null)
