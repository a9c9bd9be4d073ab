"""Paired contrasts over test items and fine-tuning seeds, with confidence intervals.

A study evaluates every cell (a trained model: base, method, bucket, n) with several
fine-tuning seeds on ONE shared test set, item by item. A claim about the study is a linear
contrast of per-cell quantities, each quantity a slice-weighted mean of per-item values plus an
optional per-seed offset:

  Q[c, s] = sum_k W[c, k] * mean_{i in slice k} X[c, s, i] + B[c, s]
  theta   = sum_c a[c] * Q[c]           (estimate: the mean over seeds of the per-seed contrast)

Two sources of noise are combined:
  - test items: the contrast is paired over the same items (every cell sees the same items, so
    item difficulty cancels); its variance is the ideal (infinitely many replicates) stratified
    bootstrap variance over items, in closed form: sum_k var_pop(y_k) / n_k, with y_i the
    seed-averaged contrast of item i (Efron & Tibshirani 1993, ch. 6; the bootstrap variance of a
    mean is the plug-in variance over n);
  - fine-tuning seeds: every cell's seeds are independent trainings (own subset, order and
    Monte-Carlo keys), so V_seed = sum_c a_c^2 s_c^2 / S with s_c^2 the between-seed variance
    of cell c's quantity (S - 1 degrees of freedom each).
The interval is theta +- t_{df, 1 - alpha/2} sqrt(V_items + V_seed) with the Welch-Satterthwaite
df = V^2 / sum_c (a_c^2 s_c^2 / S)^2 / (S - 1) (Satterthwaite 1946; Welch 1947; the item part
has many degrees of freedom).
With one seed the seed variance is unknown: the interval then covers item noise only and says
so, and a contrast of per-seed values alone gets an infinite interval (never judged).
Everything is vectorised over a leading replicate axis R, so the calibration tests can run
thousands of simulated studies at once.

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
    se: sqrt(V_items + V_seed).
    df: Satterthwaite degrees of freedom (inf when the seed variance is not estimated).
    seeds: S, the number of seeds the contrast averages.
  """

  estimate: np.ndarray
  lo: np.ndarray
  hi: np.ndarray
  se: np.ndarray
  df: np.ndarray
  seeds: int

  def test_name(self) -> str:
    if self.seeds < 2:
      return "paired over test items; 1 seed: seed variance not estimated"
    return (f"paired over test items + {self.seeds} seeds, t on "
            f"{float(np.min(self.df)):.1f} df (Satterthwaite)")


def contrast(a_C, *, X=None, W=None, slice_of=None, B=None, alpha: float = 0.05) -> Contrast:
  """theta = sum_c a[c] Q[c] with its paired item + seed interval (see the module docstring).

  Args:
    a_C: [C] contrast coefficients.
    X: [R, C, S, N] per-item values (or None when the quantity has no item part).
    W: [C, K] slice weights of each cell's quantity (required with X).
    slice_of: [N] slice index 0..K-1 of every item (required with X).
    B: [R, C, S] per-seed offsets (or None).
    alpha: 1 - confidence level (two-sided).

  Returns:
    A `Contrast` of [R] arrays.

  Raises:
    ValueError: neither X nor B, or shapes that disagree.
  """
  a = np.asarray(a_C, dtype=np.float64)
  if X is None and B is None:
    raise ValueError("contrast: give per-item values X, per-seed offsets B, or both")
  q_RxCxS = None
  v_items = 0.0
  if X is not None:
    X = np.asarray(X)
    if X.ndim != 4 or X.shape[1] != a.size:
      raise ValueError(f"contrast: X must be [R, C={a.size}, S, N], got {X.shape}")
    m_NxK, counts = slice_matrix(slice_of)
    w = np.asarray(W, dtype=np.float64)
    if w.shape != (a.size, m_NxK.shape[1]):
      raise ValueError(f"contrast: W must be [C, K] = [{a.size}, {m_NxK.shape[1]}], got {w.shape}")
    sl = np.asarray(slice_of)
    w_CxN = w[:, sl] / counts[sl][None, :]  # W[c, k(i)] / n_k(i)
    q_RxCxS = np.einsum("rcsn,cn->rcs", X, w_CxN, dtype=np.float64)
    coef_CxN = (a[:, None] * w)[:, sl]  # a_c W[c, k(i)]
    ybar_RxN = np.einsum("rcsn,cn->rn", X, coef_CxN, dtype=np.float64) / X.shape[2]
    means_RxK = ybar_RxN @ m_NxK
    sq_RxK = (ybar_RxN**2) @ m_NxK
    var_RxK = np.maximum(sq_RxK - means_RxK**2, 0.0)
    v_items = (var_RxK / counts[None, :]).sum(axis=1)
  if B is not None:
    B = np.asarray(B, dtype=np.float64)
    if B.ndim != 3 or B.shape[1] != a.size:
      raise ValueError(f"contrast: B must be [R, C={a.size}, S], got {B.shape}")
    q_RxCxS = B if q_RxCxS is None else q_RxCxS + B
  r, _, s = q_RxCxS.shape
  est = np.einsum("rcs,c->r", q_RxCxS, a) / s
  if s >= 2:
    # Seeds are independent across cells (own subsets, orders, keys): Welch's sum of per-cell
    # between-seed variances, each with S - 1 degrees of freedom.
    part_RxC = a[None, :] ** 2 * q_RxCxS.var(axis=2, ddof=1) / s
    v_seed = part_RxC.sum(axis=1)
    v = v_items + v_seed
    with np.errstate(divide="ignore", invalid="ignore"):
      df = np.where(v_seed > 0, v**2 / ((part_RxC**2).sum(axis=1) / (s - 1)), np.inf)
  elif X is None:
    v = np.full(r, np.inf)  # per-seed values only and one seed: no variance to speak of
    df = np.full(r, np.inf)
  else:
    v = np.broadcast_to(np.asarray(v_items, dtype=np.float64), (r,)).copy()
    df = np.full(r, np.inf)
  se = np.sqrt(v)
  q = np.where(np.isinf(df), sps.norm.ppf(1 - alpha / 2),
               sps.t.ppf(1 - alpha / 2, np.minimum(df, 1e9)))
  return Contrast(estimate=est, lo=est - q * se, hi=est + q * se, se=se, df=df, seeds=s)


def slope_weights(x) -> np.ndarray:
  """Least-squares slope coefficients: slope = sum_j c_j y_j with c = (x - mean x) / Sxx."""
  x = np.asarray(x, dtype=np.float64)
  d = x - x.mean()
  sxx = float(np.sum(d**2))
  if sxx == 0:
    raise ValueError("slope_weights: needs at least two distinct x values")
  return d / sxx


def bootstrap_argmax(X_CxSxN, W_CxK, slice_of, groups, *, num: int = 1000,
                     seed: int = 0) -> np.ndarray:
  """Bootstrap distribution of the best cell within each group (stratified over items, seeds).

  Each replicate resamples the test items within every slice and the seeds, both with
  replacement, recomputes every cell's slice-weighted mean, and records which cell of each
  group is largest (ties go to the first).

  Args:
    X_CxSxN: per-item values of every cell.
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
  c, s, _ = X.shape
  sl = np.asarray(slice_of)
  w = np.asarray(W_CxK, dtype=np.float64)
  seed_idx = rng.integers(0, s, size=(num, s))
  vals = np.zeros((num, c))
  for k in range(w.shape[1]):
    items = np.flatnonzero(sl == k)
    pick = items[rng.integers(0, items.size, size=(num, items.size))]  # [num, n_k]
    # mean over resampled seeds and items of X[c, seed, item]
    xk = X[:, :, :][:, seed_idx[:, :, None], pick[:, None, :]]  # [C, num, S, n_k]
    vals += w[:, k][None, :] * xk.mean(axis=(2, 3)).T
  width = max(len(g) for g in groups)
  out = np.zeros((len(groups), width))
  for gi, g in enumerate(groups):
    best = np.argmax(vals[:, g], axis=1)
    out[gi, :len(g)] = np.bincount(best, minlength=len(g)) / num
  return out
