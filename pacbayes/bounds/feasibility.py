"""Certifiability before compute: the smallest B_train any posterior of a sigma grid can reach.

For the isotropic Gaussians Q = N(w_q, sigma_q^2 I) and P = N(w_p, sigma_p^2 I) on d
parameters (docs/THEORY.md §6.1),

  KL(Q || P) = d/2 (r - 1 - ln r) + ||w_q - w_p||^2 / (2 sigma_p^2),   r = sigma_q^2 / sigma_p^2,

and ``r - 1 - ln r >= 0`` with equality at r = 1, so at a fixed sigma_p no sigma_q gives a KL
below the floor ``||dw||^2 / (2 sigma_p^2)``. Maurer's B_train (`pacbayes.bounds.btrain`) grows
with the risk and with the KL, so no certificate at that prior scale can be below
``kl_inv_upper(0, (KL_floor + ln(2 sqrt(n)/delta_pb) + ln k)/n) = 1 - exp(-budget)``, its
value at empirical risk 0 (and a Monte-Carlo term of 0). The minimum over the grid (the largest
sigma_p, where the floor is smallest) is the best any grid point could reach: when it is
already near 1, the sigma search and its forward passes cannot produce a useful certificate.
All numbers come from ||dw||^2, n, delta_pb and the grid: no forward pass.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from pacbayes.bounds.btrain import maurer_budget, maurer_upper

__all__ = ["FUTILE", "Feasibility", "best_possible_bound"]

# A best possible B_train at or above this says nothing worth a search.
FUTILE = 0.99


@dataclasses.dataclass(frozen=True)
class Feasibility:
  """What the grid allows, before any forward pass.

  Attributes:
    best_possible_bound: min over the grid of B_train at empirical risk 0 and the KL floor.
    sigma_p: the grid point that reaches it (the largest).
    kl_floor: [k] ||dw||^2 / (2 sigma_p^2) per grid point, nats.
    floor_bounds: [k] B_train at risk 0 and that KL, per grid point.
    kl_fit: the largest KL for which B_train at risk 0 stays below `threshold` (nats; <= 0
      when even KL = 0 does not).
    sigma_fit: the prior scale whose KL floor equals `kl_fit` (None when kl_fit <= 0; inf
      when ||dw|| = 0).
    sq_distance, num_params, n, delta_pb, grid_size, threshold: the inputs.
  """

  best_possible_bound: float
  sigma_p: float
  kl_floor: tuple[float, ...]
  floor_bounds: tuple[float, ...]
  kl_fit: float
  sigma_fit: float | None
  sq_distance: float
  num_params: int
  n: int
  delta_pb: float
  grid_size: int
  threshold: float = FUTILE

  @property
  def futile(self) -> bool:
    """True when no grid point can give B_train below `threshold`."""
    return self.best_possible_bound >= self.threshold

  def reason(self) -> str:
    """One line: the best possible bound and why (the KL floor against n, sigma_fit)."""
    j = self.kl_floor.index(min(self.kl_floor))
    fit = ("no prior scale fits: ln(2 sqrt(n)/delta_pb) + ln k alone exceeds the budget"
           if self.sigma_fit is None else
           f"the KL would fit (<= {self.kl_fit:.4g} nats) only at sigma_p >= "
           f"{self.sigma_fit:.3g} (rule of thumb KL <= n: sqrt(||dw||^2 / (2 n)) = "
           f"{math.sqrt(self.sq_distance / (2 * self.n)):.3g})")
    return (f"best possible bound {self.best_possible_bound:.4f} (empirical risk 0 at the "
            f"smallest KL of each prior sigma): the KL floor ||dw||^2 / (2 sigma_p^2) is "
            f"{self.kl_floor[j]:.4g} nats at the largest sigma_p = {self.sigma_p:.3g} "
            f"(||dw||^2 = {self.sq_distance:.4g} over {self.num_params} parameters) against "
            f"n = {self.n} examples (KL/n = {self.kl_floor[j] / self.n:.3g}); {fit}")

  def to_dict(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["kl_floor"] = list(self.kl_floor)
    out["floor_bounds"] = list(self.floor_bounds)
    out["futile"] = self.futile
    if self.sigma_fit is not None and math.isinf(self.sigma_fit):
      out["sigma_fit"] = None
    return out


def best_possible_bound(sq_distance: float, num_params: int, n: int, delta_pb: float,
                        sigma_grid: Sequence[float], *,
                        threshold: float = FUTILE) -> Feasibility:
  """The smallest B_train any posterior N(w_q, sigma_q^2 I) of the grid could reach.

  ``min_j maurer_upper(0, ||dw||^2 / (2 sigma_j^2), n, delta_pb, k)`` with k = len(grid)
  (ln k paid as in every certificate); see the module docstring for the proof that no
  certificate of the grid is below it.

  Args:
    sq_distance: ||w_q - w_p||^2 over the perturbed parameters (>= 0, finite).
    num_params: d, the number of perturbed parameters (recorded; the floor does not need it).
    n: training examples (>= 1).
    delta_pb: the PAC-Bayes share of delta, in (0, 1).
    sigma_grid: the prior scales (k >= 1 values > 0).
    threshold: the B_train at or above which the grid is called futile.

  Returns:
    A `Feasibility`.

  Raises:
    ValueError: naming the argument, for out-of-range inputs.
  """
  grid = np.asarray(sigma_grid, np.float64).reshape(-1)
  if grid.size == 0 or not np.all(np.isfinite(grid) & (grid > 0)):
    raise ValueError(f"sigma_grid: expected values > 0, got {list(sigma_grid)!r}")
  if not (math.isfinite(sq_distance) and sq_distance >= 0):
    raise ValueError(f"sq_distance: expected a finite value >= 0, got {sq_distance!r}")
  if isinstance(n, bool) or int(n) != n or n < 1:
    raise ValueError(f"n: expected an integer >= 1, got {n!r}")
  if not 0.0 < delta_pb < 1.0:
    raise ValueError(f"delta_pb: expected a value in (0, 1), got {delta_pb!r}")
  if not 0.0 < threshold <= 1.0:
    raise ValueError(f"threshold: expected a value in (0, 1], got {threshold!r}")
  n, k = int(n), int(grid.size)
  floors = sq_distance / (2.0 * grid**2)
  values = np.atleast_1d(np.asarray(maurer_upper(0.0, floors, n, delta_pb, k), np.float64))
  j = min(range(k), key=lambda i: (values[i], floors[i]))  # ties (all 1): the smallest floor
  # 1 - exp(-c) < threshold  <=>  c < -ln(1 - threshold); c = budget(KL) is affine in KL.
  c_max = -math.log1p(-threshold) if threshold < 1.0 else math.inf
  kl_fit = c_max * n - (maurer_budget(0.0, n, delta_pb, k) * n)
  if kl_fit <= 0:
    sigma_fit = None
  elif sq_distance == 0:
    sigma_fit = math.inf
  else:
    sigma_fit = math.sqrt(sq_distance / (2.0 * kl_fit))
  return Feasibility(
      best_possible_bound=float(values[j]), sigma_p=float(grid[j]),
      kl_floor=tuple(float(x) for x in floors), floor_bounds=tuple(float(x) for x in values),
      kl_fit=float(kl_fit), sigma_fit=sigma_fit, sq_distance=float(sq_distance),
      num_params=int(num_params), n=n, delta_pb=float(delta_pb), grid_size=k,
      threshold=float(threshold))
