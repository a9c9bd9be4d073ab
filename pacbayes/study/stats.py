"""Paired contrasts over test items and fine-tuning seeds, with confidence intervals.

A study evaluates every cell (a trained model: base, method, bucket, n) with several
fine-tuning seeds on ONE shared test set, item by item. A claim about the study is a linear
contrast of per-cell quantities, each quantity a slice-weighted mean of per-item values plus an
optional per-seed offset:

  Q[c, s] = sum_k W[c, k] * mean_{i in slice k} X[c, s, i] + B[c, s]
  theta   = sum_c a[c] * Qbar[c]        (Qbar[c]: the mean over cell c's S_c seeds)

Cells may have different numbers of seeds S_c: the arrays are padded to the largest S with NaN.

Variance: a two-level (seed, item) random-effects decomposition (Searle, Casella & McCulloch
1992, ch. 4-5; docs/THEORY.md §8.1). Per item and seed X[c, s, i] = mu[c, i] + u[c, s] + e[c, s, i]:
an item x cell part mu (the paired contrast over the same items cancels the item main effect),
a seed effect u with variance sigma_seed[c]^2 and an item-by-seed flip e. Then

  var(Qbar[c] | items) = sigma_seed[c]^2 / S_c + F[c] / S_c,
  F[c] = sum_k W[c, k]^2 phi[c, k] / n_k,

with phi[c, k] the flip variance of one item of slice k, estimated without the seed effect by the
residual mean square of the seeds x items table of the slice (two-way ANOVA, (S_c - 1)(n_k - 1)
degrees of freedom). The between-seed variance s_c^2 of Q[c, s] already contains F[c], so the
seed effect is the excess sigma_seed^2 = max(0, s_c^2 - F[c]) and var(Qbar[c]) is estimated by
max(s_c^2, F[c]) / S_c (no double count). The item variance V_I = sum_k var_pop(y_k) / n_k of
the seed-averaged contrast y_i of item i (the ideal stratified bootstrap over items, Efron &
Tibshirani 1993, ch. 6) holds the item x cell part and the flips again, sum_c a_c^2 F[c] / S_c,
which are taken out:

  V = max(0, V_I - sum_c a_c^2 F[c] / S_c) + sum_c a_c^2 max(s_c^2, F[c]) / S_c.

Degrees of freedom: Welch-Satterthwaite (Satterthwaite 1946; Welch 1947) over these mean
squares: V_I and the flips on N - K (items), each cell's max(s_c^2, F[c]) on S_c - 1. Every cell
with >= 2 seeds counts with S_c - 1 even when its excess is 0: with 2-3 seeds s_c^2 falls below
F[c] often although sigma_seed is large, and giving such a cell the items' df made a one-sided
2.5% test reject 3.9% of the time at 2 seeds when one cell's seed sd is 0.065 and the others'
0.02 (this rule: 2.9%; 3.2% at 3 seeds, the worst two-cell contrast; tests/study/test_stats.py holds
every verdict at the nominal level + 3 Monte-Carlo s.e.). A contrast of per-seed
values only (no items) is the plain Welch sum of s_c^2 / S_c.

With one seed in a cell, neither sigma_seed nor F can be estimated there: that cell contributes
its items (flips included) only and the test says so; a contrast of per-seed values with one seed
gets an infinite interval (never judged). Everything is vectorised over a leading replicate
axis R, so the calibration tests can run thousands of simulated studies at once.

Per-item values travel in results files as base64 of uint8 (`encode_u8` / `decode_u8`).
"""

from __future__ import annotations

import base64
import dataclasses

import numpy as np
from scipy import stats as sps


def encode_u8(values) -> str:
  """Base64 text of a 1-D array of small non-negative integers (0..255), e.g. per-item flags.

  Raises:
    ValueError: a value is outside 0..255 or not an integer.
  """
  arr = np.asarray(values)
  if arr.ndim != 1:
    raise ValueError(f"encode_u8: expected a 1-D array, got shape {arr.shape}")
  if arr.size and (arr.min() < 0 or arr.max() > 255 or not np.all(arr == np.round(arr))):
    raise ValueError("encode_u8: expected integers in 0..255")
  return base64.b64encode(arr.astype(np.uint8).tobytes()).decode("ascii")


def decode_u8(text: str, length: int | None = None) -> np.ndarray:
  """Inverse of `encode_u8`: [N] uint8.

  Raises:
    ValueError: not base64, or not `length` values long.
  """
  try:
    raw = base64.b64decode(text.encode("ascii"), validate=True)
  except (ValueError, UnicodeEncodeError) as e:
    raise ValueError(f"decode_u8: not base64 ({e})") from None
  arr = np.frombuffer(raw, dtype=np.uint8).copy()
  if length is not None and arr.size != length:
    raise ValueError(f"decode_u8: expected {length} values, got {arr.size}")
  return arr


def slice_matrix(slice_of_N) -> tuple[np.ndarray, np.ndarray]:
  """([N, K] float64 averaging matrix M with M[i, k] = 1/n_k if item i is in slice k, [K] n_k).

  Slices are numbered 0..K-1 in `slice_of_N` (every slice must be non-empty).
  """
  s = np.asarray(slice_of_N, dtype=np.int64)
  k = int(s.max()) + 1
  counts = np.bincount(s, minlength=k)
  if np.any(counts == 0):
    raise ValueError("slice_matrix: every slice needs at least one item")
  m = np.zeros((s.size, k))
  m[np.arange(s.size), s] = 1.0 / counts[s]
  return m, counts


@dataclasses.dataclass(frozen=True)
class Contrast:
  """Estimates and intervals of one contrast over R replicate studies (arrays of shape [R]).

  Attributes:
    estimate: theta hat.
    lo, hi: the two-sided (1 - alpha) interval.
    se: sqrt(V), V = V_I + the seed excesses (module docstring).
    df: degrees of freedom of the t reference (inf when no seed variance enters).
    seeds: the fewest seeds of a cell in the contrast.
    alpha: 1 - confidence level of lo, hi.
  """

  estimate: np.ndarray
  lo: np.ndarray
  hi: np.ndarray
  se: np.ndarray
  df: np.ndarray
  seeds: int
  alpha: float = 0.05
  items: bool = True

  def test_name(self, r: int = 0) -> str:
    """The test in words, with the df of replicate r."""
    if self.seeds < 2:
      return ("paired over test items; 1 seed: seed variance not estimated" if self.items
              else "1 seed: no variance, not judged")
    df = float(self.df[r])
    dft = "inf" if not np.isfinite(df) else f"{df:.1f}"
    if not self.items:
      return f">= {self.seeds} seeds per cell, Welch t on {dft} df"
    return (f"paired over test items + >= {self.seeds} seeds per cell (seed effect = excess over "
            f"item flips), t on {dft} df")

  def shifted(self, delta) -> Contrast:
    """The same contrast minus a fixed value (a null other than 0, or a fixed base's value)."""
    d = np.asarray(delta, dtype=np.float64)
    return dataclasses.replace(self, estimate=self.estimate - d, lo=self.lo - d, hi=self.hi - d)

  def p_value(self, sign: int) -> np.ndarray:
    """[R] one-sided p of H0: sign * theta <= 0 against sign * theta > 0 (t on df).

    With se 0 (identical cells) p is 0 only if sign * theta clears 0 by more than 1e-12.
    """
    t_num = sign * self.estimate
    with np.errstate(divide="ignore", invalid="ignore"):
      t = np.where(self.se > 0, t_num / self.se, np.where(t_num > 1e-12, np.inf, -np.inf))
    t = np.where(np.isnan(t), -np.inf, t)
    finite = np.isfinite(self.df)
    p_t = sps.t.sf(t, np.where(finite, np.minimum(self.df, 1e9), 1.0))
    return np.where(finite, p_t, sps.norm.sf(t))


@dataclasses.dataclass(frozen=True)
class ItemStats:
  """Per-cell summaries of per-item values [R, C, S, N] that every contrast of them needs.

  Attributes:
    smean: [R, C, S, K] mean of each seed over each slice's items (0 for a missing seed).
    phi: [R, C, K] item-by-seed flip variance of one item (module docstring; 0 with 1 seed).
    xbar: [R, C, N] mean of each item over the cell's seeds.
    n_seeds: [R, C] seeds of each cell; valid: [R, C, S] which seeds a cell has.
  """

  smean: np.ndarray
  phi: np.ndarray
  xbar: np.ndarray
  n_seeds: np.ndarray
  valid: np.ndarray

  def take(self, idx) -> ItemStats:
    """The summaries of cells idx (in that order)."""
    return ItemStats(self.smean[:, idx], self.phi[:, idx], self.xbar[:, idx],
                     self.n_seeds[:, idx], self.valid[:, idx])


def item_stats(X_RxCxSxN, slice_of) -> ItemStats:
  """`ItemStats` of per-item values (NaN in a cell's missing seeds).

  phi is the residual mean square of the (seeds x items of slice k) table of a cell: the
  item-by-seed interaction with the seed and item main effects removed (two-way ANOVA).
  """
  X = np.asarray(X_RxCxSxN)
  if X.ndim != 4:
    raise ValueError(f"item_stats: X must be [R, C, S, N], got {X.shape}")
  m_NxK, counts = slice_matrix(slice_of)
  ind_NxK = m_NxK * counts[None, :]
  valid = np.isfinite(X[..., 0])
  x0 = X.astype(np.float64, copy=False) if valid.all() else np.where(valid[..., None], X, 0.0)
  n_seeds = valid.sum(axis=2).astype(np.float64)  # [R, C]
  r, c, s, n = x0.shape
  flat = x0.reshape(-1, n)
  smean = (flat @ ind_NxK).reshape(r, c, s, -1) / counts  # [R, C, S, K]
  sumsq = ((flat * flat) @ ind_NxK).reshape(r, c, s, -1).sum(axis=2)  # [R, C, K]
  s_c = np.maximum(n_seeds, 1.0)[..., None]  # [R, C, 1]
  xbar = x0.sum(axis=2) / s_c  # [R, C, N]
  isq = ((xbar * xbar).reshape(-1, n) @ ind_NxK).reshape(r, c, -1)
  grand = smean.sum(axis=2) / s_c
  ss = sumsq - counts * (smean**2).sum(axis=2) - s_c * isq + s_c * counts * grand**2
  with np.errstate(divide="ignore", invalid="ignore"):
    phi = np.maximum(ss, 0.0) / ((s_c - 1) * (counts - 1))
  phi = np.where(s_c >= 2, phi, 0.0)
  return ItemStats(smean=smean, phi=phi, xbar=xbar, n_seeds=n_seeds, valid=valid)


def contrast(a_C, *, X=None, W=None, slice_of=None, B=None, alpha: float = 0.05,
             stats: ItemStats | None = None) -> Contrast:
  """theta = sum_c a[c] Qbar[c] with its paired item + seed interval (see the module docstring).

  Args:
    a_C: [C] contrast coefficients.
    X: [R, C, S, N] per-item values (or None when the quantity has no item part); a cell with
      fewer than S seeds has NaN in its missing seeds.
    W: [C, K] slice weights of each cell's quantity (required with X).
    slice_of: [N] slice index 0..K-1 of every item (required with X).
    B: [R, C, S] per-seed offsets (or None), NaN where a cell has no such seed.
    alpha: 1 - confidence level (two-sided).
    stats: `item_stats(X, slice_of)` of the same cells, computed once for many contrasts
      (X is then not needed).

  Returns:
    A `Contrast` of [R] arrays.

  Raises:
    ValueError: neither X nor B, shapes that disagree, or a cell with no seed.
  """
  a = np.asarray(a_C, dtype=np.float64)
  if X is None and B is None and stats is None:
    raise ValueError("contrast: give per-item values X, per-seed offsets B, or both")
  q_RxCxS = None
  v_items, flip = 0.0, None
  df_items = np.inf
  has_items = X is not None or stats is not None
  if has_items:
    if stats is None:
      X = np.asarray(X)
      if X.ndim != 4 or X.shape[1] != a.size:
        raise ValueError(f"contrast: X must be [R, C={a.size}, S, N], got {X.shape}")
      stats = item_stats(X, slice_of)
    m_NxK, counts = slice_matrix(slice_of)
    w = np.asarray(W, dtype=np.float64)
    if w.shape != (a.size, m_NxK.shape[1]) or stats.phi.shape[1] != a.size:
      raise ValueError(f"contrast: W must be [C, K] = [{a.size}, {m_NxK.shape[1]}], got {w.shape}")
    sl = np.asarray(slice_of)
    flip = (stats.phi * (w**2 / counts)).sum(axis=2)  # [R, C]
    q_RxCxS = np.where(stats.valid, np.einsum("rcsk,ck->rcs", stats.smean, w), np.nan)
    coef_CxN = (a[:, None] * w)[:, sl]  # a_c W[c, k(i)]
    ybar_RxN = np.einsum("rcn,cn->rn", stats.xbar, coef_CxN)
    means_RxK = ybar_RxN @ m_NxK
    var_RxK = np.maximum((ybar_RxN**2) @ m_NxK - means_RxK**2, 0.0)
    v_items = (var_RxK / counts[None, :]).sum(axis=1)
    df_items = float(sl.size - counts.size) if sl.size > counts.size else np.inf
  if B is not None:
    B = np.asarray(B, dtype=np.float64)
    if B.ndim != 3 or B.shape[1] != a.size:
      raise ValueError(f"contrast: B must be [R, C={a.size}, S], got {B.shape}")
    q_RxCxS = B if q_RxCxS is None else q_RxCxS + B
  valid = np.isfinite(q_RxCxS)
  n_seeds = valid.sum(axis=2).astype(np.float64)  # [R, C]
  if np.any(n_seeds == 0):
    raise ValueError("contrast: a cell has no seed with a finite value")
  r = q_RxCxS.shape[0]
  qbar = np.where(valid, q_RxCxS, 0.0).sum(axis=2) / n_seeds
  est = qbar @ a
  s_min = int(n_seeds.min())
  has_var = n_seeds >= 2
  dev = np.where(valid, q_RxCxS - qbar[..., None], 0.0)
  with np.errstate(divide="ignore", invalid="ignore"):
    s2 = np.where(has_var, (dev**2).sum(axis=2) / (n_seeds - 1), 0.0)
  seed_df = np.where(has_var, n_seeds - 1, np.inf)
  if not has_items:
    if s_min < 2:
      v = np.full(r, np.inf)  # per-seed values only and one seed: no variance to speak of
      df = np.full(r, np.inf)
    else:
      part = a**2 * s2 / n_seeds
      v = part.sum(axis=1)
      with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(v > 0, v**2 / (part**2 / seed_df).sum(axis=1), np.inf)
  else:
    # var(Qbar[c]) = (sigma_seed^2 + F[c]) / S_c, estimated by max(s_c^2, F[c]) / S_c (the seed
    # effect is the excess over the flips); the items' part is V_I less the flips it holds.
    own_flip = np.where(has_var, a**2 * flip / n_seeds, 0.0)
    part_s = a**2 * np.where(has_var, np.maximum(s2, flip), 0.0) / n_seeds
    v_pure = np.maximum(v_items - own_flip.sum(axis=1), 0.0)
    v = v_pure + part_s.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
      den = ((np.asarray(v_items) ** 2 + own_flip.sum(axis=1) ** 2) / df_items
             + (part_s**2 / seed_df).sum(axis=1))
      df = np.where(den > 0, v**2 / den, np.inf)
    v = np.broadcast_to(v, (r,)).astype(np.float64)
  se = np.sqrt(v)
  finite = np.isfinite(df)
  q = np.where(finite, sps.t.ppf(1 - alpha / 2, np.where(finite, np.minimum(df, 1e9), 1.0)),
               sps.norm.ppf(1 - alpha / 2))
  return Contrast(estimate=est, lo=est - q * se, hi=est + q * se, se=se, df=df, seeds=s_min,
                  alpha=alpha, items=has_items)


def slope_weights(x) -> np.ndarray:
  """Least-squares slope coefficients: slope = sum_j c_j y_j with c = (x - mean x) / Sxx."""
  x = np.asarray(x, dtype=np.float64)
  d = x - x.mean()
  sxx = float(np.sum(d**2))
  if sxx == 0:
    raise ValueError("slope_weights: needs at least two distinct x values")
  return d / sxx


def lack_of_fit_weights(x) -> np.ndarray:
  """Coefficients of the curvature of y on x: the quadratic orthogonal-polynomial contrast.

  sum_j c_j y_j is the least-squares coefficient b2 of y = b0 + b1 x + b2 x^2 (> 0: convex in
  x). With J = 3 points it is the only lack-of-fit direction of a straight line (one df).
  """
  x = np.asarray(x, dtype=np.float64)
  if np.unique(x).size < 3:
    raise ValueError("lack_of_fit_weights: needs at least three distinct x values")
  design = np.stack([np.ones_like(x), x, x**2], axis=1)
  return np.linalg.pinv(design)[2]


def bootstrap_argmax(X_CxSxN, W_CxK, slice_of, groups, *, num: int = 1000,
                     seed: int = 0) -> np.ndarray:
  """Bootstrap distribution of the best cell within each group (stratified over items, seeds).

  Each replicate resamples the test items within every slice (the same items for every cell:
  paired) and each cell's own seeds, both with replacement, recomputes every cell's
  slice-weighted mean, and records which cell of each group is largest (ties go to the first).
  A cell's missing seeds (NaN) are never drawn.

  Args:
    X_CxSxN: per-item values of every cell (NaN for a seed a cell does not have).
    W_CxK: slice weights of every cell.
    slice_of: [N] slice index.
    groups: list of lists of cell indices (e.g. the buckets at one n, easy -> hard).
    num: replicates.
    seed: NumPy seed (fixed, so the distribution is reproducible).

  Returns:
    [G, max group size] float64 frequencies (rows sum to 1).
  """
  rng = np.random.default_rng(seed)
  X = np.asarray(X_CxSxN, dtype=np.float64)
  c = X.shape[0]
  sl = np.asarray(slice_of)
  w = np.asarray(W_CxK, dtype=np.float64)
  # items: one resample per slice shared by every cell (paired); seeds: each cell's own seeds
  picks = []
  for k in range(w.shape[1]):
    items = np.flatnonzero(sl == k)
    picks.append(items[rng.integers(0, items.size, size=(num, items.size))])  # [num, n_k]
  vals = np.zeros((num, c))
  for ci in range(c):
    own = np.flatnonzero(np.isfinite(X[ci, :, 0]))
    seeds = own[rng.integers(0, own.size, size=(num, own.size))]  # [num, S_c]
    for k, pick in enumerate(picks):
      vals[:, ci] += w[ci, k] * X[ci][seeds[:, :, None], pick[:, None, :]].mean(axis=(1, 2))
  width = max(len(g) for g in groups)
  out = np.zeros((len(groups), width))
  for gi, g in enumerate(groups):
    best = np.argmax(vals[:, g], axis=1)
    out[gi, :len(g)] = np.bincount(best, minlength=len(g)) / num
  return out
