"""Benchmark: jitted kl_inv_upper on 10^6 pairs against a SciPy brentq loop (time and accuracy).

Also the extrapolation terms (pacbayes.bounds.extrapolation): the vectorised mixture-shift bound
against a scipy linprog loop (the LP it solves), and the per-slice / weighted-loss bounds on
one Monte-Carlo run of n rows against the certificate's own B_train step, as ratios.
"""

import argparse
import math
import statistics
import time

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
from scipy import optimize

from pacbayes.bounds import extrapolation as ex
from pacbayes.bounds import mixture as mixtures
from pacbayes.bounds import pac as bounds


def _kl(q: float, p: float) -> float:
  t1 = q * math.log(q / p) if q > 0 else 0.0
  t2 = (1 - q) * math.log((1 - q) / (1 - p)) if q < 1 else 0.0
  return t1 + t2


def brentq_inv_upper(q: float, c: float) -> float:
  """The textbook way: a scalar root finder per pair, on [q, largest double below 1]."""
  top = math.nextafter(1.0, 0.0)
  if c == 0.0 or q == 1.0:
    return q if c == 0.0 else 1.0
  if _kl(q, top) <= c:
    return 1.0
  return optimize.brentq(lambda p: _kl(q, p) - c, q, top, xtol=1e-15, rtol=4 * np.finfo(float).eps)


def mpmath_inv_upper(q: float, c: float) -> mpmath.mpf:
  """50-digit reference: right end of a 200-step bisection (within 2^-200 of the supremum)."""
  with mpmath.workdps(50):
    q, c = mpmath.mpf(q), mpmath.mpf(c)
    if q == 1 or c == 0:
      return mpmath.mpf(1) if q == 1 else q
    lo, hi = q, mpmath.mpf(1)
    for _ in range(200):
      mid = (lo + hi) / 2
      t1 = q * mpmath.log(q / mid) if q > 0 else 0
      t2 = (1 - q) * mpmath.log((1 - q) / (1 - mid)) if mid < 1 else mpmath.inf
      if t1 + t2 <= c:
        lo = mid
      else:
        hi = mid
    return hi


def _time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--num-pairs", type=int, default=10**6)
  parser.add_argument("--num-brentq", type=int, default=2000)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--num-mpmath", type=int, default=300)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  rng = np.random.default_rng(args.seed)
  n = args.num_pairs
  # Empirical risks over the whole range, with a share near 0 and 1; budgets from 1e-6 to 10.
  q = rng.uniform(size=n)
  q[: n // 4] = 10 ** rng.uniform(-8, 0, n // 4)
  q[n // 4 : n // 2] = 1 - 10 ** rng.uniform(-8, 0, n // 2 - n // 4)
  c = 10 ** rng.uniform(-6, 1, n)
  q_dev, c_dev = jnp.asarray(q), jnp.asarray(c)

  upper = jax.jit(bounds.kl_inv_upper)
  lower = jax.jit(bounds.kl_inv_lower)
  grad = jax.jit(jax.vmap(jax.grad(bounds.kl_inv_upper, argnums=(0, 1))))
  maurer = jax.jit(lambda e, k: bounds.maurer(e, k, 50_000.0, 0.05))
  rows = []
  for name, fn in [
    ("kl_inv_upper", lambda: upper(q_dev, c_dev)),
    ("kl_inv_lower", lambda: lower(q_dev, c_dev)),
    ("grad kl_inv_upper (q, c)", lambda: grad(q_dev, c_dev)),
    ("maurer (kl = 1e4 c)", lambda: maurer(q_dev, 1e4 * c_dev)),
  ]:
    start = time.perf_counter()
    jax.block_until_ready(fn())  # compile + first run
    compile_s = time.perf_counter() - start
    t = _time(fn, args.repeats)
    rows.append((name, n, t, 1e9 * t / n, compile_s))

  ours = np.asarray(upper(q_dev, c_dev))
  idx = rng.choice(n, size=args.num_brentq, replace=False)
  start = time.perf_counter()
  ref = np.array([brentq_inv_upper(float(q[i]), float(c[i])) for i in idx])
  brentq_s = time.perf_counter() - start
  per_call = brentq_s / args.num_brentq
  rows.append(("scipy brentq loop (extrapolated)", n, per_call * n, 1e9 * per_call, 0.0))

  sub = idx[: args.num_mpmath]
  exact = [mpmath_inv_upper(float(q[i]), float(c[i])) for i in sub]
  err_ours = np.array([float(mpmath.mpf(ours[i]) - e) for i, e in zip(sub, exact, strict=True)])
  err_brentq = np.array([float(mpmath.mpf(r) - e) for r, e in zip(ref, exact, strict=False)])
  diff = ours[idx] - ref

  print(f"devices: {jax.devices()}  x64: {jax.config.jax_enable_x64}")
  print(f"{'function':36s} {'pairs':>9s} {'time [s]':>10s} {'ns/pair':>9s} {'compile [s]':>12s}")
  for name, size, t, ns, comp in rows:
    print(f"{name:36s} {size:9d} {t:10.3f} {ns:9.1f} {comp:12.2f}")
  speedup = per_call * n / rows[0][2]
  print(f"\nspeed-up of jitted kl_inv_upper over the brentq loop: {speedup:.0f}x")
  print(f"max |ours - brentq| on {args.num_brentq} pairs: {np.max(np.abs(diff)):.3e}")
  print(f"error against 50-digit mpmath on {len(sub)} pairs (value - exact supremum):")
  print(f"  ours  : min {err_ours.min():+.3e}  max {err_ours.max():+.3e}  (>= 0: conservative)")
  print(f"  brentq: min {err_brentq.min():+.3e}  max {err_brentq.max():+.3e}")


def bench_extrapolation(num_b: int, num_lp: int, n: int, repeats: int, seed: int) -> None:
  """Times the extrapolation terms; prints ratios against baselines run in this process."""
  rng = np.random.default_rng(seed)
  support = tuple(float(d) for d in range(1, 7))
  mix = mixtures.mixture_bounds(test_mixture={d: d / 21 for d in support},
                          train_mixture={1.0: 0.25, 2.0: 0.25, 3.0: 0.5})
  b = rng.uniform(0.0, 1.0, num_b)
  t_vec = _time(lambda: mixtures.mixture_shift_bound(b, mix), repeats)
  p_test, p_train = np.array(mix.test_upper), np.array(mix.train_lower)
  inside = p_train > 0

  def lp(bi):
    res = optimize.linprog(-p_test[inside], A_ub=[p_train[inside]], b_ub=[bi],
                           bounds=[(0, 1)] * int(inside.sum()), method="highs")
    return p_test[~inside].sum() - res.fun

  start = time.perf_counter()
  ref = np.array([lp(x) for x in b[:num_lp]])
  t_lp = (time.perf_counter() - start) / num_lp * num_b
  err = np.max(np.abs(mixtures.mixture_shift_bound(b[:num_lp], mix) - ref))
  print(f"\nmixture_shift_bound on {num_b} values: {t_vec:.4f} s; scipy linprog loop "
        f"(extrapolated): {t_lp:.1f} s; ratio {t_lp / t_vec:.0f}x; max |diff| {err:.1e}")

  diff = rng.choice(support[:3], size=n, p=[0.25, 0.25, 0.5])
  rows = np.arange(n)[:, None]
  losses = (rng.random((n, 1)) < 0.2).astype(np.float64)
  kw = dict(kl=500.0, grid_size=9, delta_mc=0.01, delta_pb=0.01)
  base = _time(lambda: ex.maurer_upper(bounds.mc_sample_bound(losses.mean(), n, 0.01), 500.0,
                                       n, 0.01, 9), repeats)
  t_slice = _time(lambda: ex.per_slice_bounds(losses, rows, diff, mix, **kw).value, repeats)
  t_w = _time(lambda: ex.weighted_loss_bound(losses, rows, diff, mix, **kw).value, repeats)
  print(f"n = {n} rows, chunk size 1: B_train step {1e3 * base:.2f} ms; per_slice_bounds "
        f"{t_slice / base:.1f}x of it; weighted_loss_bound {t_w / base:.1f}x of it")


if __name__ == "__main__":
  main()
  bench_extrapolation(num_b=10**5, num_lp=300, n=10**5, repeats=3, seed=0)
