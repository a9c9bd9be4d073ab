"""Concentration bounds on a binomial proportion (numbers only: NumPy and SciPy)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats


def clopper_pearson_lower(successes: Any, trials: Any, alpha: float) -> np.ndarray:
  """One-sided Clopper-Pearson lower bound: P(p < lower) <= alpha (vectorised).

  `lower = Beta.ppf(alpha; k, n - k + 1)`, and 0 when k = 0.

  References:
    Clopper & Pearson (1934), "The use of confidence or fiducial limits illustrated in the
    case of the binomial", Biometrika 26(4).
  """
  k = np.asarray(successes, dtype=np.float64)
  n = np.asarray(trials, dtype=np.float64)
  safe_k = np.maximum(k, 1.0)
  lo = stats.beta.ppf(alpha, safe_k, n - safe_k + 1.0)
  return np.where(k > 0, lo, 0.0)


__all__ = ["clopper_pearson_lower"]
