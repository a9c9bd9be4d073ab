"""The binary kl and its inverses, in float64, conservative and differentiable under jit.

The public functions run in a float64 scope (`pacbayes.core.precision.with_float64`), so they
are float64 whether or not the program has turned on JAX's x64 mode: JAX arrays with x64 on,
NumPy float64 arrays without it, float64 tracers under ``jax.jit`` / ``jax.grad``. The
``custom_jvp`` rules open the scope themselves, as JAX may trace them after the public call
has returned (when an enclosing ``jax.jit`` is differentiated). docs/THEORY.md §1.4.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from pacbayes.bounds.checks import as_float64, check_at_least, check_interval
from pacbayes.core.precision import float64_scope, with_float64

__all__ = ["kl_bernoulli", "kl_inv_lower", "kl_inv_upper"]

# Bisection runs over the ordered bit patterns of non-negative doubles: [0, 1] spans fewer than
# 2^62 patterns, so 64 halvings always end on two adjacent doubles whatever the magnitude (the
# loop stops early once every bracket is that narrow).
_NUM_BISECT = 64
# A few safeguarded Newton steps first shrink the bracket to +-2^12 doubles around the root, so
# the bisection usually stops after ~13 steps; where the guess fails its check, the full
# bracket is kept and the 64 steps still apply.
_NUM_NEWTON = 6
_NEWTON_WINDOW = 2**12
_ONE_MINUS = float(np.nextafter(1.0, 0.0))
_EPS = float(np.finfo(np.float64).eps)
_TINY = float(np.finfo(np.float64).tiny)


# ----------------------------------------------------------------------------------------------
# Binary kl.


def _log_ratio(num: jax.Array, den: jax.Array, diff: jax.Array) -> jax.Array:
  """ln(num / den) for num, den >= 0 given diff = num - den, accurate also near num == den.

  Within a factor 1.5 of 1 the logarithm is log1p(diff / den) with a difference formed from the
  inputs, not from rounded 1 - p and 1 - q (whose rounding, ~1e-16 absolute, would swamp a kl of
  1e-12); farther away ln(num / den) loses nothing. One log serves both branches (log1p through
  Kahan's identity log1p(y) = y ln(u) / (u - 1), u = fl(1 + y)), halving the work per step.
  """
  safe_den = jnp.where(den > 0, den, 1.0)
  y = diff / safe_den
  near = jnp.abs(y) < 0.5
  u = jnp.where(near, 1.0 + y, num / safe_den)
  log_u = jnp.log(u)
  kahan = log_u * (y / jnp.where(u == 1.0, 1.0, u - 1.0))
  return jnp.where(near, jnp.where(u == 1.0, y, kahan), log_u)


def _kl_terms(q: jax.Array, p: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The two terms q ln(q / p) and (1 - q) ln((1 - q) / (1 - p)) of kl(q || p), no checks."""
  d = p - q  # exact when p is within a factor 2 of q (Sterbenz), where it matters
  t1 = jnp.where(q > 0, -q * _log_ratio(p, jnp.where(q > 0, q, 1.0), d), 0.0)
  oq = 1.0 - q
  t2 = jnp.where(q < 1, -oq * _log_ratio(1.0 - p, jnp.where(q < 1, oq, 1.0), -d), 0.0)
  return t1, t2


def _kl_raw(q: jax.Array, p: jax.Array) -> jax.Array:
  """kl(q || p) for q, p in [0, 1] (inf where p hits 0 or 1 and q does not), no checks."""
  t1, t2 = _kl_terms(q, p)
  return t1 + t2


def _root_error(q: jax.Array, p: jax.Array) -> jax.Array:
  """Bound on how far a double p next to a root of kl(q || .) = c may sit on the wrong side.

  Each term of the computed kl carries a relative error of a few eps (log1p / log of an exactly
  formed ratio or difference, one product), so |computed - true| <= 16 eps (|t1| + |t2|);
  dividing by the slope |d kl / dp| = |p - q| / (p (1 - p)) turns it into a distance in p.
  Near q this is about 32 eps q (1 - q); near 0 it grows like eps p ln(q / p), which is why a
  fixed number of ulps would not do.
  """
  interior = (p > 0) & (p < 1) & (p != q)
  ps = jnp.where(interior, p, 0.5)
  qs = jnp.where(interior, q, 0.25)
  t1, t2 = _kl_terms(qs, ps)
  slope = jnp.abs(ps - qs) / (ps * (1.0 - ps))
  return jnp.where(interior, 16.0 * _EPS * (jnp.abs(t1) + jnp.abs(t2)) / slope, 0.0)


@jax.custom_jvp
@float64_scope()
def _kl_core(q: jax.Array, p: jax.Array) -> jax.Array:
  return _kl_raw(q, p)


@_kl_core.defjvp
@float64_scope()
def _kl_core_jvp(primals, tangents):
  q, p = primals
  dq, dp = tangents
  out = _kl_core(q, p)
  # d/dp = (p - q) / (p (1 - p)); d/dq = ln(q / p) - ln((1 - q) / (1 - p)). Both diverge where p
  # reaches 0 or 1 with q away from it (kl itself is infinite there); they are 0 where p == q.
  interior = (p > 0) & (p < 1)
  ps = jnp.where(interior, p, 0.5)
  # At p == q on the boundary only the one-sided derivative exists: 1 at (0, 0), -1 at (1, 1).
  edge = jnp.where(p == q, jnp.where(p == 0, 1.0, -1.0), jnp.inf)
  d_p = jnp.where(interior, (ps - q) / (ps * (1.0 - ps)), edge)
  qs = jnp.clip(q, _TINY, None)
  oqs = jnp.clip(1.0 - q, _TINY, None)
  d_q = jnp.where(
    interior, jnp.log(qs / ps) - jnp.log(oqs / (1.0 - ps)), jnp.where(p == q, 0.0, jnp.inf)
  )
  return out, d_q * dq + d_p * dp


@with_float64
def kl_bernoulli(q: ArrayLike, p: ArrayLike) -> jax.Array | np.ndarray:
  r"""Binary (Bernoulli) relative entropy kl(q || p).

  .. math::
    \mathrm{kl}(q \| p) = q \ln\frac{q}{p} + (1 - q) \ln\frac{1 - q}{1 - p},

  with the conventions 0 ln 0 = 0 and a / 0 = inf for a > 0, so kl(0 || p) = -ln(1 - p),
  kl(1 || p) = -ln p, and kl(q || p) = inf where p is 0 or 1 and q is not.

  Args:
    q: first argument(s) in [0, 1] (an empirical risk).
    p: second argument(s) in [0, 1] (a true risk); broadcast against `q`.

  Returns:
    float64 array of the broadcast shape.

  Raises:
    ValueError: if a concrete `q` or `p` lies outside [0, 1].

  Numerical caveats:
    The logarithms use log1p of exact differences when p is within a factor 1.5 of q (and
    1 - p of 1 - q), so the result keeps about 13 correct digits even when kl is as small as
    1e-20. Gradients are the exact formulas; they are infinite (and may
    give NaN in a product with a zero tangent) only where kl itself is infinite.
  """
  check_interval("q", q, 0.0, 1.0)
  check_interval("p", p, 0.0, 1.0)
  q, p = as_float64(q, p)
  return _kl_core(q, p)


# ----------------------------------------------------------------------------------------------
# kl inverses: bisection on bit patterns, conservative end of the final bracket.


def _bits(x: jax.Array) -> jax.Array:
  return lax.bitcast_convert_type(x, jnp.int64)


def _from_bits(b: jax.Array) -> jax.Array:
  return lax.bitcast_convert_type(b, jnp.float64)


def _bisect(q: jax.Array, c: jax.Array, lo: jax.Array, hi: jax.Array, upper: bool):
  """Bisection over bit patterns until every bracket [lo, hi] holds two adjacent doubles.

  Invariant (upper): lo is feasible (kl <= c) and hi is infeasible or the top of the range;
  (lower): hi is feasible and lo infeasible or the bottom. At most _NUM_BISECT steps.
  """

  def cond(state):
    i, lo, hi = state
    return (i < _NUM_BISECT) & jnp.any(hi - lo > 1)

  def body(state):
    i, lo, hi = state
    # Upper rounds the midpoint down and lower rounds it up, so the loop ends on adjacent doubles.
    mid = lo + (hi - lo) // 2 if upper else lo + (hi - lo + 1) // 2
    feasible = _kl_raw(q, _from_bits(mid)) <= c
    if upper:
      return i + 1, jnp.where(feasible, mid, lo), jnp.where(feasible, hi, mid)
    return i + 1, jnp.where(feasible, lo, mid), jnp.where(feasible, mid, hi)

  _, lo, hi = lax.while_loop(cond, body, (jnp.int32(0), lo, hi))
  return lo, hi


def _narrow(q, c, guess, lo, hi, upper: bool):
  """A bracket of +-_NEWTON_WINDOW doubles around a Newton guess, checked against kl.

  Ends that fail the check fall back to the safe ends lo, hi (the guess end that failed then
  becomes the other side's end, so the bracket stays valid and usually still narrow).
  """
  g = _bits(guess)
  lo_w = jnp.clip(g - _NEWTON_WINDOW, lo, hi)
  hi_w = jnp.clip(g + _NEWTON_WINDOW, lo, hi)
  feas_lo = _kl_raw(q, _from_bits(lo_w)) <= c
  feas_hi = _kl_raw(q, _from_bits(hi_w)) <= c
  if upper:  # want feasible lo_w, infeasible hi_w
    new_lo = jnp.where(feas_lo, lo_w, jnp.where(feas_hi, hi_w, lo))
    new_hi = jnp.where(~feas_hi, hi_w, jnp.where(~feas_lo, lo_w, hi))
  else:  # want infeasible lo_w, feasible hi_w
    new_lo = jnp.where(~feas_lo, lo_w, jnp.where(~feas_hi, hi_w, lo))
    new_hi = jnp.where(feas_hi, hi_w, jnp.where(feas_lo, lo_w, hi))
  ok = jnp.isfinite(guess)
  return jnp.where(ok, new_lo, lo), jnp.where(ok, new_hi, hi)


@jax.jit
def _bisect_upper(q: jax.Array, c: jax.Array) -> jax.Array:
  oq = 1.0 - q
  # Bounds on p - q from d^2 kl / dp^2 = q / p^2 + (1 - q) / (1 - p)^2, which is >= 4 (Pinsker),
  # >= 1 / (1 - q) on [q, 1], and gives kl >= (p - q)^2 / (2p); the slack factor and 4 eps
  # cover rounding so the right end is never left of the true root.
  bound = jnp.minimum(jnp.sqrt(0.5 * c), c + jnp.sqrt(c * c + 2.0 * q * c))
  bound = jnp.minimum(bound, jnp.sqrt(2.0 * c * oq))
  hi0 = jnp.minimum(1.0, q + (1.0 + 1e-7) * bound + 4.0 * _EPS)
  lo0 = q

  # Newton in s = ln((1 - q) / (1 - p)), where kl is convex and increasing with slope 1 - q / p
  # in [0, 1): started right of the root it converges monotonically from the right (a step from
  # the left, after rounding, lands right of it), quickly also when the root is close to 1 (kl
  # is nearly linear in s there). Its result is only a guess: _narrow checks it.
  s_max = (c - jnp.where(q > 0, q * jnp.log(jnp.where(q > 0, q, 1.0)), 0.0)) / oq
  s = jnp.minimum(-jnp.log1p(-jnp.minimum(bound, oq) / oq), s_max)

  def newton(_, s):
    p = q + oq * -jnp.expm1(-s)
    excess = _kl_raw(q, p) - c
    slope = (p - q) / p
    ok = (slope > 0) & jnp.isfinite(excess)
    step = jnp.where(ok, excess / jnp.where(slope > 0, slope, 1.0), 0.0)
    return jnp.maximum(s - step, 0.0)

  s = lax.fori_loop(0, _NUM_NEWTON, newton, s)
  guess = jnp.clip(q + oq * -jnp.expm1(-s), lo0, hi0)
  lo, hi = _narrow(q, c, guess, _bits(lo0), _bits(hi0), upper=True)
  # A supremum within half an ulp of 1 needs no search.
  at_top = _kl_raw(q, jnp.full_like(q, _ONE_MINUS)) <= c
  lo = jnp.where(at_top, _bits(jnp.full_like(q, _ONE_MINUS)), lo)
  hi = jnp.where(at_top, _bits(jnp.ones_like(q)), hi)
  _, hi = _bisect(q, c, lo, hi, upper=True)

  # hi is the smallest double whose computed kl exceeds c; step outward by the rounding error of
  # kl (and one ulp for the addition), so the result is above the true supremum.
  p = _from_bits(hi)
  p = jnp.minimum(1.0, jnp.nextafter(p + _root_error(q, p), 1.0))
  # Closed forms (widened by 4 eps relative: XLA's expm1 and exp are off by up to ~1.4 ulp) and
  # exact cases; NaN in gives NaN out.
  p = jnp.where(q == 0.0, jnp.minimum(1.0, -jnp.expm1(-c) * (1.0 + 4.0 * _EPS)), p)
  p = jnp.where(c == 0.0, q, p)
  p = jnp.where(q == 1.0, 1.0, p)
  return jnp.where(jnp.isnan(q) | jnp.isnan(c), jnp.nan, p)


@jax.jit
def _bisect_lower(q: jax.Array, c: jax.Array) -> jax.Array:
  oq = 1.0 - q
  # The mirror images of the bounds above (d^2 kl / dp^2 >= 1 / q on [0, q]).
  bound = jnp.minimum(jnp.sqrt(0.5 * c), c + jnp.sqrt(c * c + 2.0 * oq * c))
  bound = jnp.minimum(bound, jnp.sqrt(2.0 * c * q))
  lo0 = jnp.maximum(0.0, q - (1.0 + 1e-7) * bound - 4.0 * _EPS)
  hi0 = q

  # Newton in s = ln(q / p): kl is convex and increasing with slope (q - p) / (1 - p) in [0, q).
  s_max = (c - jnp.where(oq > 0, oq * jnp.log1p(-jnp.where(oq > 0, q, 0.0)), 0.0)) / q
  s = jnp.minimum(-jnp.log1p(-jnp.minimum(bound, q) / q), s_max)

  def from_s(s):  # p = q exp(-s), without cancellation near s = 0 or far from it
    return jnp.where(s < 0.5, q + q * jnp.expm1(-s), q * jnp.exp(-s))

  def newton(_, s):
    p = from_s(s)
    excess = _kl_raw(q, p) - c
    slope = (q - p) / (1.0 - p)
    ok = (slope > 0) & jnp.isfinite(excess)
    step = jnp.where(ok, excess / jnp.where(slope > 0, slope, 1.0), 0.0)
    return jnp.maximum(s - step, 0.0)

  s = lax.fori_loop(0, _NUM_NEWTON, newton, s)
  guess = jnp.clip(from_s(s), lo0, hi0)
  lo, hi = _narrow(q, c, guess, _bits(lo0), _bits(hi0), upper=False)
  # An infimum below the smallest normal double needs no search: the answer is 0 (see below).
  at_bottom = _kl_raw(q, jnp.full_like(q, _TINY)) <= c
  lo = jnp.where(at_bottom, 0, lo)
  hi = jnp.where(at_bottom, 1, hi)
  lo, _ = _bisect(q, c, lo, hi, upper=False)

  # lo is the largest double whose computed kl exceeds c; step outward as in the upper case.
  # CPU backends may flush subnormals to zero inside kl, so the bracket can stop at a subnormal
  # that is above an infimum which underflows; 0 is always on the safe side.
  p = _from_bits(lo)
  p = jnp.maximum(0.0, jnp.nextafter(p - _root_error(q, p), 0.0))
  p = jnp.where(q == 1.0, jnp.exp(-c) * (1.0 - 4.0 * _EPS), p)
  p = jnp.where(p < _TINY, 0.0, p)
  p = jnp.where(c == 0.0, q, p)
  p = jnp.where(q == 0.0, 0.0, p)
  return jnp.where(jnp.isnan(q) | jnp.isnan(c), jnp.nan, p)


def _implicit_coefs(q: jax.Array, p: jax.Array) -> tuple[jax.Array, jax.Array]:
  """dp/dq and dp/dc of a root of kl(q || p) = c, from the implicit function theorem.

  dp/dc = 1 / (d kl / dp) = p (1 - p) / (p - q) and dp/dq = -(d kl / dq) dp/dc. The log
  singularity of d kl / dq at q = 0 (q = 1) is cut by evaluating it at q = tiny (1 - q = tiny).
  """
  generic = (p > 0) & (p < 1) & (p != q)
  ps = jnp.where(generic, p, 0.5)
  qs = jnp.where(generic, q, 0.25)
  dp_dc = ps * (1.0 - ps) / (ps - qs)
  log_q = jnp.log(jnp.clip(qs, _TINY, None) / ps)
  log_oq = jnp.log(jnp.clip(1.0 - qs, _TINY, None) / (1.0 - ps))
  dkl_dq = log_q - log_oq
  return -dkl_dq * dp_dc, dp_dc


def _at_next_double(q: jax.Array, toward: float) -> jax.Array:
  """|dp/dc| = p (1 - p) / |p - q| evaluated one double away from q (finite stand-in for inf)."""
  step = jnp.abs(jnp.nextafter(q, toward) - q)
  return q * (1.0 - q) / jnp.where(step > 0, step, 1.0)


@jax.custom_jvp
@float64_scope()
def _inv_upper(q: jax.Array, c: jax.Array) -> jax.Array:
  return _bisect_upper(q, c)


@_inv_upper.defjvp
@float64_scope()
def _inv_upper_jvp(primals, tangents):
  q, c = primals
  dq, dc = tangents
  p = _inv_upper(q, c)
  coef_q, coef_c = _implicit_coefs(q, p)
  # q == 0: p = 1 - exp(-c), so dp/dc = 1 - p exactly (also at c = 0).
  coef_c = jnp.where(q == 0, 1.0 - p, coef_c)
  # p == q (c == 0, or c below the resolution of p): dp/dq = 1, and dp/dc is the derivative at
  # the next double, finite but huge (the true one is +inf: p - q ~ sqrt(2 q (1 - q) c)).
  same = p == q
  coef_q = jnp.where(same, 1.0, coef_q)
  coef_c = jnp.where(same & (q > 0), _at_next_double(q, 1.0), coef_c)
  # p == 1: saturated, the bound cannot move (q == 1 included).
  coef_q = jnp.where(p >= 1, 0.0, coef_q)
  coef_c = jnp.where(p >= 1, 0.0, coef_c)
  return p, coef_q * dq + coef_c * dc


@jax.custom_jvp
@float64_scope()
def _inv_lower(q: jax.Array, c: jax.Array) -> jax.Array:
  return _bisect_lower(q, c)


@_inv_lower.defjvp
@float64_scope()
def _inv_lower_jvp(primals, tangents):
  q, c = primals
  dq, dc = tangents
  p = _inv_lower(q, c)
  coef_q, coef_c = _implicit_coefs(q, p)
  coef_c = jnp.where(q == 1, -p, coef_c)  # p = exp(-c)
  same = p == q
  coef_q = jnp.where(same, 1.0, coef_q)
  coef_c = jnp.where(same & (q < 1), -_at_next_double(q, 0.0), coef_c)
  coef_q = jnp.where(p <= 0, 0.0, coef_q)
  coef_c = jnp.where(p <= 0, 0.0, coef_c)
  return p, coef_q * dq + coef_c * dc


@with_float64
def kl_inv_upper(q: ArrayLike, c: ArrayLike) -> jax.Array | np.ndarray:
  r"""Upper kl inverse: the largest p >= q with kl(q || p) <= c.

  .. math::
    \mathrm{kl}^{-1}_{+}(q, c) = \sup\{p \in [q, 1] : \mathrm{kl}(q \| p) \le c\}.

  Closed forms: q = 0 gives 1 - exp(-c) (rounded up by 4 eps); q = 1 gives 1; c = 0 gives q;
  c = inf gives 1.

  Args:
    q: empirical risk(s) in [0, 1].
    c: budget(s) >= 0 (e.g. (KL + ln(2 sqrt(n) / delta)) / n); broadcast against `q`.

  Returns:
    float64 array of the broadcast shape.

  Raises:
    ValueError: if a concrete `q` lies outside [0, 1] or a concrete `c` is negative or NaN.

  Numerical caveats:
    Conservative by construction. Six Newton steps (in s = ln((1 - q) / (1 - p))) give a guess;
    a bracket of +-4096 doubles around it is checked against kl (the full bracket from
    Pinsker-type bounds is kept where the check fails), then bisection over the bit patterns of
    doubles (at most 64 steps) ends on two adjacent doubles and keeps the right end, never the
    midpoint: the smallest double at which the computed kl exceeds c. That end is then moved
    outward by a bound on the rounding error of kl divided by the slope of kl (~32 eps q (1 - q)
    near q), so the result is never below the true supremum and above it by a few 1e-15 at most
    (checked against 50-digit mpmath). A supremum within half an ulp of 1 (e.g. q = 0.3,
    c = 1e3) returns exactly 1.0. Gradients use the implicit function theorem,
    dp/dc = 1 / (d kl/dp) and dp/dq = -(d kl/dq) / (d kl/dp), and are never NaN or inf:
    they are 0 where p == 1 (saturated); at c == 0 with q > 0, where the true dp/dc is +inf
    (p - q ~ sqrt(2 q (1 - q) c)), dp/dq = 1 and dp/dc is its value one double above q (about
    1e15); the log singularity of dp/dq at q == 0 is evaluated at q = 2.2e-308.

  References:
    Langford & Seeger, "Bounds for averaging classifiers", CMU-CS-01-102, 2001.
    Maurer, "A note on the PAC Bayesian theorem", arXiv:cs/0411099, 2004.
  """
  check_interval("q", q, 0.0, 1.0)
  check_at_least("c", c, 0.0)
  q, c = as_float64(q, c)
  return _inv_upper(q, c)


@with_float64
def kl_inv_lower(q: ArrayLike, c: ArrayLike) -> jax.Array | np.ndarray:
  r"""Lower kl inverse: the smallest p <= q with kl(q || p) <= c.

  .. math::
    \mathrm{kl}^{-1}_{-}(q, c) = \inf\{p \in [0, q] : \mathrm{kl}(q \| p) \le c\}.

  Closed forms: q = 1 gives exp(-c) (rounded down by 4 eps); q = 0 gives 0; c = 0 gives q;
  c = inf gives 0.

  Args:
    q: empirical risk(s) in [0, 1].
    c: budget(s) >= 0; broadcast against `q`.

  Returns:
    float64 array of the broadcast shape.

  Raises:
    ValueError: if a concrete `q` lies outside [0, 1] or a concrete `c` is negative or NaN.

  Numerical caveats:
    Mirror image of :func:`kl_inv_upper` (Newton in s = ln(q / p)): the left end of the final
    bracket (the largest double at which the computed kl exceeds c), moved down by the rounding
    error bound of kl, so it is never above the true infimum. A true infimum below the smallest
    normal double (2.2e-308) is returned as 0. Gradients are finite: 0 where p == 0; at c == 0
    with q < 1, dp/dq = 1 and dp/dc is its value one double below q (the true one is -inf);
    dp/dq at q == 1 is evaluated at 1 - q = 2.2e-308.

  References:
    Langford & Seeger, "Bounds for averaging classifiers", CMU-CS-01-102, 2001.
  """
  check_interval("q", q, 0.0, 1.0)
  check_at_least("c", c, 0.0)
  q, c = as_float64(q, c)
  return _inv_lower(q, c)
