"""Independent 50-digit mpmath references for the binary kl and its inverses (shared by tests)."""

import mpmath

MP_DPS = 50


def mp_kl(q, p):
  with mpmath.workdps(MP_DPS):
    q, p = mpmath.mpf(q), mpmath.mpf(p)
    if (p == 0 and q > 0) or (p == 1 and q < 1):
      return mpmath.inf
    t1 = q * mpmath.log(q / p) if q > 0 else mpmath.mpf(0)
    # log1p keeps tiny p exact (1 - p rounds to 1 at 50 digits when p ~ 1e-159)
    t2 = (1 - q) * (mpmath.log1p(-q) - mpmath.log1p(-p)) if q < 1 else mpmath.mpf(0)
    return t1 + t2


def mp_inv_upper(q, c):
  """Right end of a 200-step bisection: within 2^-200 above the supremum."""
  with mpmath.workdps(MP_DPS):
    q, c = mpmath.mpf(q), mpmath.mpf(c)
    lo, hi = q, mpmath.mpf(1)
    if q == 1 or c == 0:
      return hi if q == 1 else q
    for _ in range(200):
      mid = (lo + hi) / 2
      if mp_kl(q, mid) <= c:
        lo = mid
      else:
        hi = mid
    return hi


def mp_inv_lower(q, c):
  """Left end of a bisection that is geometric while the bracket spans more than a factor 4."""
  with mpmath.workdps(MP_DPS):
    q, c = mpmath.mpf(q), mpmath.mpf(c)
    if q == 0 or c == 0:
      return q
    lo, hi = q * mpmath.exp(-(c + 1) / q - 10), q
    while mp_kl(q, lo) <= c:
      lo = lo * lo
    for _ in range(400):
      mid = mpmath.sqrt(lo * hi) if hi > 4 * lo else (lo + hi) / 2
      if mp_kl(q, mid) <= c:
        hi = mid
      else:
        lo = mid
    return lo
