"""Risk-versus-n curves of one training bucket: constrained least squares, vectorised.

The curve family is the rectified scaling law of fine-tuning (Lin et al., ICML 2024,
"Selecting Large Language Model to Fine-tune via Rectified Scaling Law", eq. 2):

  R(n) = E + A (n + n0)^(-alpha),   E in [0, 1], A >= 0, alpha in [0.05, 2], n0 >= 0,

with n the number of training rows and R a risk in [0, 1]. n0 (the "pre-learned data
size") bends the curve flat at small n: that is the "pre-power phase" in which a plain power
law fitted to small pilots extrapolates badly (Lin et al. §3). Three nested families share
the form; `auto_family` picks the largest one the pilots can identify:

  "sqrt"       n0 = 0, alpha = 1/2 fixed (2 free parameters: E, A). The two-gap form of the
               bound, train risk + G_ext + c sqrt(KL / n) (docs/THEORY.md §1.7; arXiv 2605.12906
               Proposition 4.1): E stands for the n-free terms and A for c sqrt(KL).
  "power"      n0 = 0, alpha free (3 parameters).
  "rectified"  everything free (4 parameters).

A family needs at least as many distinct pilot sizes as it has free parameters: with fewer,
whole ranges of curves pass through the pilot means and the extrapolation is set by the
parameter bounds, not by data. Hence two budgets give "sqrt", three "power", four or more
"rectified". With one budget nothing is identified (callers refuse).

The fit: for fixed (alpha, n0) the model is linear in (E, A), and the box-constrained
weighted least squares has a closed form (`constrained_line`). The exponents are profiled
over a fixed grid (`ALPHA_GRID`, `n0_grid`): exact up to the grid's resolution, free of
starting points and local minima, and vectorised over a leading batch axis B (bootstrap
replicates), so a thousand refits cost one matrix product per grid.
"""

from __future__ import annotations

import dataclasses

import numpy as np

FAMILIES = ("sqrt", "power", "rectified")
FREE_PARAMETERS = {"sqrt": 2, "power": 3, "rectified": 4}
ALPHA_MIN, ALPHA_MAX = 0.05, 2.0
# 161 log-spaced exponents: neighbours differ by 2.3 %, well below the spread of any fit.
ALPHA_GRID = np.geomspace(ALPHA_MIN, ALPHA_MAX, 161)
# The rectified family profiles a coarser alpha grid (4.8 % apart) times `n0_grid`.
ALPHA_GRID_RECTIFIED = np.geomspace(ALPHA_MIN, ALPHA_MAX, 79)
N0_GRID_SIZE = 48  # positive n0 values, plus n0 = 0
_CHUNK = 256  # batch rows per grid evaluation (bounds memory: _CHUNK x grid floats)


@dataclasses.dataclass(frozen=True)
class CurveFit:
  """Fitted parameters of R(n) = E + A (n + n0)^-alpha for a batch of B fits.

  Attributes:
    family: one of FAMILIES.
    E_B, A_B, alpha_B, n0_B: [B] parameters (risk units for E and A, rows for n0).
    sse_B: [B] weighted residual sum of squares at the optimum (weights: seeds per size).
  """

  family: str
  E_B: np.ndarray
  A_B: np.ndarray
  alpha_B: np.ndarray
  n0_B: np.ndarray
  sse_B: np.ndarray

  def risk(self, n) -> np.ndarray:
    """[B, ...] risk at sizes `n` (scalar or [M]): E + A (n + n0)^-alpha."""
    n_M = np.asarray(n, dtype=np.float64)
    shape = (-1,) + (1,) * n_M.ndim
    return (self.E_B.reshape(shape) + self.A_B.reshape(shape)
            * (n_M + self.n0_B.reshape(shape)) ** (-self.alpha_B.reshape(shape)))

  def params(self, b: int = 0) -> dict[str, float]:
    """The parameters of fit `b` as plain floats."""
    return {"E": float(self.E_B[b]), "A": float(self.A_B[b]), "alpha": float(self.alpha_B[b]),
            "n0": float(self.n0_B[b])}


def auto_family(distinct_sizes: int) -> str | None:
  """The largest family the given number of distinct pilot sizes identifies (None below 2)."""
  if distinct_sizes >= 4:
    return "rectified"
  return {3: "power", 2: "sqrt"}.get(distinct_sizes)


def n0_grid(sizes_P) -> np.ndarray:
  """[G0] n0 values profiled by "rectified": 0, then log-spaced from min(n)/64 to 64 max(n).

  Scale-free (relative to the pilots); beyond 64 max(n) the curve is a straight line in n
  over the pilots and the exponent, not n0, carries the shape.
  """
  sizes = np.asarray(sizes_P, dtype=np.float64)
  return np.concatenate([[0.0], np.geomspace(sizes.min() / 64, sizes.max() * 64, N0_GRID_SIZE)])


def constrained_line(x_GxP, y_BxP, w_P):
  """Weighted least squares of y = E + A x under E in [0, 1], A >= 0, for every (b, g).

  The problem is a convex quadratic over a polygon, so its minimum is the unconstrained one
  when feasible, else the best of the 1-D minima on the edges E = 0, E = 1 (A >= 0) and
  A = 0 (E in [0, 1]), each clipped to its edge; all candidates are evaluated in closed form.

  Args:
    x_GxP: [G, P] regressor per grid point (assumed scaled to O(1) by the caller).
    y_BxP: [B, P] targets (mean risk per pilot size).
    w_P: [P] non-negative weights (seeds per pilot size).

  Returns:
    (E_BxG, A_BxG, sse_BxG) as float64 arrays.
  """
  w_P = np.asarray(w_P, dtype=np.float64)
  sw = w_P.sum()
  sx_G = x_GxP @ w_P
  sxx_G = (x_GxP**2) @ w_P
  sy_B = y_BxP @ w_P
  syy_B = (y_BxP**2) @ w_P
  sxy_BxG = (y_BxP * w_P) @ x_GxP.T

  def sse(e, a):
    return (syy_B[:, None] - 2 * e * sy_B[:, None] - 2 * a * sxy_BxG + e * e * sw
            + 2 * e * a * sx_G + a * a * sxx_G)

  det_G = sw * sxx_G - sx_G**2
  ok_G = det_G > 1e-12 * np.maximum(sw * sxx_G, 1e-300)
  safe_G = np.where(ok_G, det_G, 1.0)
  a0 = (sw * sxy_BxG - sx_G * sy_B[:, None]) / safe_G
  e0 = (sy_B[:, None] - a0 * sx_G) / sw
  feasible = ok_G & (a0 >= 0) & (e0 >= 0) & (e0 <= 1)
  best_e = np.where(feasible, e0, 0.0)
  best_a = np.where(feasible, a0, 0.0)
  best = np.where(feasible, sse(best_e, best_a), np.inf)
  sxx_safe = np.maximum(sxx_G, 1e-300)
  # Edge A = 0: E = the weighted mean clipped to [0, 1]; constant over the grid.
  e_flat_B = np.clip(sy_B / sw, 0.0, 1.0)
  s = (syy_B - 2 * e_flat_B * sy_B + e_flat_B**2 * sw)[:, None]
  better = s < best
  best = np.where(better, s, best)
  best_e = np.where(better, e_flat_B[:, None], best_e)
  best_a = np.where(better, 0.0, best_a)
  # Edges E = e in {0, 1}, A >= 0: with t = sxy - e sx, A = max(t / sxx, 0) and
  # SSE = (syy - 2 e sy + e^2 sw) - A (2 t - A sxx).
  for e in (0.0, 1.0):
    t = sxy_BxG - e * sx_G
    a = np.maximum(t / sxx_safe, 0.0)
    s = (syy_B - 2 * e * sy_B + e * e * sw)[:, None] - a * (2 * t - a * sxx_G)
    better = s < best
    best = np.where(better, s, best)
    best_e = np.where(better, e, best_e)
    best_a = np.where(better, a, best_a)
  return best_e, best_a, np.maximum(best, 0.0)


def _grid(family: str, sizes_P) -> tuple[np.ndarray, np.ndarray]:
  """([G] alpha, [G] n0) profiled by `family`."""
  if family == "sqrt":
    return np.array([0.5]), np.array([0.0])
  if family == "power":
    return ALPHA_GRID.copy(), np.zeros_like(ALPHA_GRID)
  if family == "rectified":
    alpha, n0 = np.meshgrid(ALPHA_GRID_RECTIFIED, n0_grid(sizes_P), indexing="ij")
    return alpha.ravel(), n0.ravel()
  raise ValueError(f"unknown curve family {family!r} (expected one of {FAMILIES})")


def fit_curves(sizes_P, y_BxP, w_P, family: str) -> CurveFit:
  """Fits R(n) = E + A (n + n0)^-alpha to B sets of pilot means at the same sizes.

  Args:
    sizes_P: [P] distinct pilot sizes n (rows), ascending, all >= 1.
    y_BxP: [B, P] mean risk at each size (one row per bootstrap replicate).
    w_P: [P] weight of each size (the number of seeds averaged into y).
    family: "sqrt", "power" or "rectified" (see the module docstring).

  Returns:
    The `CurveFit` minimising the weighted squared error over the family's grid.

  Raises:
    ValueError: unknown family, fewer distinct sizes than the family's free parameters,
      or mismatched shapes.
  """
  sizes = np.asarray(sizes_P, dtype=np.float64)
  y = np.atleast_2d(np.asarray(y_BxP, dtype=np.float64))
  if family not in FAMILIES:
    raise ValueError(f"unknown curve family {family!r} (expected one of {FAMILIES})")
  if sizes.ndim != 1 or y.shape[1] != sizes.size or np.size(w_P) != sizes.size:
    raise ValueError(f"fit_curves: sizes {sizes.shape}, y {y.shape}, w {np.shape(w_P)} disagree")
  if np.unique(sizes).size < FREE_PARAMETERS[family]:
    raise ValueError(f"curve family {family!r} has {FREE_PARAMETERS[family]} free parameters "
                     f"but the pilots have {np.unique(sizes).size} distinct sizes")
  alpha_G, n0_G = _grid(family, sizes)
  x_GxP = (sizes[None, :] + n0_G[:, None]) ** (-alpha_G[:, None])
  scale_G = x_GxP[:, 0].copy()  # x at the smallest pilot: brings every column to O(1)
  xs_GxP = x_GxP / scale_G[:, None]
  out = {k: np.empty(y.shape[0]) for k in ("E", "A", "alpha", "n0", "sse")}
  for lo in range(0, y.shape[0], _CHUNK):
    e, a, s = constrained_line(xs_GxP, y[lo:lo + _CHUNK], w_P)
    g = np.argmin(s, axis=1)
    rows = np.arange(g.size)
    out["E"][lo:lo + _CHUNK] = e[rows, g]
    out["A"][lo:lo + _CHUNK] = a[rows, g] / scale_G[g]
    out["alpha"][lo:lo + _CHUNK] = alpha_G[g]
    out["n0"][lo:lo + _CHUNK] = n0_G[g]
    out["sse"][lo:lo + _CHUNK] = s[rows, g]
  return CurveFit(family=family, E_B=out["E"], A_B=out["A"], alpha_B=out["alpha"],
                  n0_B=out["n0"], sse_B=out["sse"])
