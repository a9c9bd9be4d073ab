"""B_train: the in-distribution PAC-Bayes bound every certificate, search and kind uses.

One definition of the budget and of the bound, so that the certificate (`pacbayes.certificate`),
the sigma search (`pacbayes.posterior.sigma`), the weighted-loss and per-slice kinds
(`pacbayes.bounds.extrapolation`) and the certifiability check (`pacbayes.bounds.feasibility`)
give the same number for the same inputs. The union bound over k prior scales is paid one
way everywhere: ``ln k`` is added to the KL (docs/THEORY.md §1.8, §1.9). For every method here the
confidence enters as ``KL + ln(c / delta)``, so adding ``ln k`` to the KL is the same as
spending ``delta / k`` per prior.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pacbayes.bounds import pac

__all__ = ["B_TRAIN_METHODS", "b_train_upper", "maurer_budget", "maurer_upper"]

B_TRAIN_METHODS = ("maurer", "mcallester", "catoni", "fquad", "flamb")


def maurer_budget(kl: Any, n: Any, delta_pb: float, grid_size: int = 1) -> Any:
  """The Maurer budget ``(KL + ln(2 sqrt(n) / delta_pb) + ln k) / n``, nats per example.

  Args:
    kl: KL(Q || P) in nats (float or array, broadcast).
    n: training examples (>= 1; float or array).
    delta_pb: the PAC-Bayes share of delta, in (0, 1).
    grid_size: k prior scales fixed in advance (ln k paid).

  Returns:
    A float for scalar inputs, else a float64 array.

  References:
    Maurer, "A note on the PAC Bayesian theorem", 2004, Theorem 5; docs/THEORY.md §1.
  """
  n = np.asarray(n, dtype=np.float64)
  out = (np.asarray(kl, np.float64) + np.log(2.0 * np.sqrt(n) / delta_pb)
         + math.log(grid_size)) / n
  return float(out) if np.ndim(out) == 0 else out


def maurer_upper(mc_upper: Any, kl: Any, n: Any, delta: float, grid_size: int = 1) -> Any:
  """``kl_inv_upper(mc_upper, maurer_budget(kl, n, delta, k))``: B_train by Maurer's bound.

  ``mc_upper`` (an upper value of E_Q[R_S], clipped to [0, 1]), ``kl`` and ``n`` may be arrays
  (broadcast); returns a float for scalars, else a float64 array (Maurer 2004, Theorem 5,
  with a union bound over k prior scales).
  """
  c = np.asarray(maurer_budget(kl, n, delta, grid_size), np.float64)
  q = np.clip(np.asarray(mc_upper, dtype=np.float64), 0.0, 1.0)
  out = np.asarray(pac.kl_inv_upper(q, c), dtype=np.float64)
  return float(out) if out.ndim == 0 else out


def b_train_upper(mc_upper: Any, kl: Any, n: int, delta_pb: float, *, grid_size: int = 1,
                  method: str = "maurer", lam: float | None = None) -> Any:
  """Upper value of E_Q[R_train] from an upper value ``mc_upper`` of E_Q[R_S] (B_train).

  ``method`` "maurer" is `maurer_upper`; "mcallester", "catoni", "fquad" and "flamb" are the
  baselines of `pacbayes.bounds.pac` with ``KL + ln k`` (not clipped at 1: a caller shows a
  value >= 1 as vacuous). "flamb" uses ``lam`` or its closed-form optimum.

  Returns:
    A float for scalar inputs, else a float64 array (broadcast over mc_upper and kl).

  Raises:
    ValueError: an unknown method.
  """
  if method not in B_TRAIN_METHODS:
    raise ValueError(f"method: expected one of {B_TRAIN_METHODS}, got {method!r}")
  if method == "maurer":
    return maurer_upper(mc_upper, kl, n, delta_pb, grid_size)
  a = np.clip(np.asarray(mc_upper, dtype=np.float64), 0.0, 1.0)
  kl_k = np.asarray(kl, np.float64) + math.log(grid_size)
  if method == "flamb":
    if lam is None:
      lam = pac.flamb_optimal_lam(a, kl_k, n, delta_pb)
    out = pac.flamb(a, kl_k, n, delta_pb, lam)
  else:
    out = getattr(pac, method)(a, kl_k, n, delta_pb)
  out = np.asarray(out, np.float64)
  return float(out) if out.ndim == 0 else out
