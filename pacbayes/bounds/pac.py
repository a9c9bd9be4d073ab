"""PAC-Bayes risk bounds (Maurer, McAllester, Catoni, fquad, flamb) and Monte-Carlo bounds.

The binary kl and its inverses live in `pacbayes.bounds.binary_kl` and are re-exported here.

Every function computes in float64 whether or not the program has turned on JAX's x64 mode
(`pacbayes.core.precision.with_float64`): with x64 on it returns JAX arrays; without it,
NumPy float64 arrays; under ``jax.jit`` / ``jax.grad`` float64 tracers (code that goes on
computing with them should run in `pacbayes.core.precision.float64_scope`).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from pacbayes.bounds.binary_kl import kl_bernoulli, kl_inv_lower, kl_inv_upper
from pacbayes.bounds.checks import as_float64, check_at_least, check_interval
from pacbayes.core.precision import with_float64

__all__ = [
  "DEFAULT_CATONI_GRID",
  "catoni",
  "flamb",
  "flamb_optimal_lam",
  "fquad",
  "hoeffding_upper",
  "kl_bernoulli",
  "kl_inv_lower",
  "kl_inv_upper",
  "maurer",
  "mc_epsilon",
  "mc_sample_bound",
  "mcallester",
]

# Catoni's parameter C on a fixed geometric grid 2^(j/2), j = -8..8 (17 points, ln 17 ~ 2.83 nats).
DEFAULT_CATONI_GRID: tuple[float, ...] = tuple(float(2.0 ** (j / 2)) for j in range(-8, 9))


def _log_confidence(n: jax.Array, delta: jax.Array) -> jax.Array:
  """ln(2 sqrt(n) / delta), the confidence term of Maurer's bound."""
  return jnp.log(2.0) + 0.5 * jnp.log(n) - jnp.log(delta)


# ----------------------------------------------------------------------------------------------
# PAC-Bayes bounds on the true risk of a posterior Q, for a loss in [0, 1].


def _check_delta(delta: ArrayLike) -> None:
  check_interval("delta", delta, 0.0, 1.0, open_lo=True, open_hi=True)


def _bound_args(emp_risk: ArrayLike, kl: ArrayLike, n: ArrayLike, delta: ArrayLike, *,
                lam: ArrayLike | None = None) -> list[jax.Array]:
  """The arguments of a PAC-Bayes bound checked (emp_risk in [0, 1], kl >= 0, n >= 1, delta and
  then lam, when given, in the open (0, 1) and (0, 2)) and cast to broadcast float64 arrays."""
  check_interval("emp_risk", emp_risk, 0.0, 1.0)
  check_at_least("kl", kl, 0.0)
  check_at_least("n", n, 1.0)
  _check_delta(delta)
  if lam is None:
    return as_float64(emp_risk, kl, n, delta)
  check_interval("lam", lam, 0.0, 2.0, open_lo=True, open_hi=True)
  return as_float64(emp_risk, kl, n, delta, lam)


@with_float64
def maurer(
  emp_risk: ArrayLike, kl: ArrayLike, n: ArrayLike, delta: ArrayLike
) -> jax.Array | np.ndarray:
  r"""PAC-Bayes-kl bound (Langford-Seeger / Maurer): an upper bound on the true risk.

  With probability at least 1 - delta over an i.i.d. sample of size n, simultaneously for all
  posteriors Q,

  .. math::
    \mathrm{kl}(\hat R_S(Q) \| R(Q)) \le \frac{\mathrm{KL}(Q\|P) + \ln(2\sqrt{n}/\delta)}{n},

  so R(Q) <= kl_inv_upper(emp_risk, (kl + ln(2 sqrt(n) / delta)) / n), which is returned.

  Args:
    emp_risk: empirical risk(s) of Q on the sample, in [0, 1].
    kl: KL(Q || P) in nats, >= 0 (add ln k here for a union bound over k priors).
    n: sample size(s), >= 1.
    delta: confidence parameter(s) in (0, 1).

  Returns:
    float64 bound in [emp_risk, 1], broadcast over the inputs.

  Raises:
    ValueError: naming the argument, for concrete out-of-range inputs.

  Numerical caveats:
    Inherits the conservative rounding of :func:`kl_inv_upper`; differentiable in emp_risk and
    kl (and n, delta) through the implicit gradient.

  References:
    Maurer, "A note on the PAC Bayesian theorem", arXiv:cs/0411099, 2004, Theorem 5.
    Langford & Seeger, "Bounds for averaging classifiers", CMU-CS-01-102, 2001.
  """
  emp_risk, kl, n, delta = _bound_args(emp_risk, kl, n, delta)
  return kl_inv_upper(emp_risk, (kl + _log_confidence(n, delta)) / n)


@with_float64
def mcallester(
  emp_risk: ArrayLike, kl: ArrayLike, n: ArrayLike, delta: ArrayLike
) -> jax.Array | np.ndarray:
  r"""McAllester-style bound: Maurer's bound relaxed with Pinsker's inequality.

  .. math::
    R(Q) \le \hat R_S(Q) + \sqrt{\frac{\mathrm{KL}(Q\|P) + \ln(2\sqrt{n}/\delta)}{2n}}.

  Since kl(q || p) >= 2 (p - q)^2 this is never below :func:`maurer`.

  Args:
    emp_risk, kl, n, delta: as in :func:`maurer`.

  Returns:
    float64 bound (not clipped: values above 1 are vacuous).

  Raises:
    ValueError: naming the argument, for concrete out-of-range inputs.

  References:
    McAllester, "PAC-Bayesian model averaging", COLT 1999.
    Maurer, "A note on the PAC Bayesian theorem", 2004 (the ln(2 sqrt(n) / delta) term).
    Perez-Ortiz et al., "Tighter risk certificates for neural networks", JMLR 22, 2021, eq. (4).
  """
  emp_risk, kl, n, delta = _bound_args(emp_risk, kl, n, delta)
  return emp_risk + jnp.sqrt((kl + _log_confidence(n, delta)) / (2.0 * n))


@with_float64
def catoni(
  emp_risk: ArrayLike,
  kl: ArrayLike,
  n: ArrayLike,
  delta: ArrayLike,
  *,
  grid: Sequence[float] = DEFAULT_CATONI_GRID,
) -> jax.Array | np.ndarray:
  r"""Catoni's bound, minimised over a fixed grid of its parameter C with a union bound.

  For one fixed C > 0, with probability at least 1 - delta, for all Q (Catoni 2007, Theorem
  1.2.6, with C = lambda / n),

  .. math::
    R(Q) \le \frac{1 - \exp\left(-C \hat R_S(Q) - (\mathrm{KL}(Q\|P) + \ln(1/\delta))/n\right)}
    {1 - e^{-C}}.

  A union bound over the k grid values replaces ln(1/delta) by ln(k/delta); the minimum over
  the grid then holds with probability at least 1 - delta. The grid must be fixed before the
  data are seen.

  Args:
    emp_risk, kl, n, delta: as in :func:`maurer`.
    grid: the k values of C (> 0, finite) searched; default 2^(j/2), j = -8..8.

  Returns:
    float64 bound (not clipped at 1), broadcast over the inputs.

  Raises:
    ValueError: naming the argument, for concrete out-of-range inputs or a bad grid.

  Numerical caveats:
    1 - exp(-x) is computed as -expm1(-x), so small C keeps full relative accuracy.

  References:
    Catoni, "PAC-Bayesian supervised classification: the thermodynamics of statistical
    learning", IMS Lecture Notes 56, 2007, Theorem 1.2.6.
  """
  emp_risk, kl, n, delta = _bound_args(emp_risk, kl, n, delta)
  grid_arr = np.asarray(grid, dtype=np.float64).reshape(-1)
  if grid_arr.size == 0 or not np.all(np.isfinite(grid_arr) & (grid_arr > 0)):
    raise ValueError(f"grid must be a non-empty sequence of finite values > 0, got {grid!r}")
  k = grid_arr.size
  cs = jnp.asarray(grid_arr).reshape((k,) + (1,) * emp_risk.ndim)
  expo = cs * emp_risk[None] + ((kl + jnp.log(k) - jnp.log(delta)) / n)[None]
  return jnp.min(jnp.expm1(-expo) / jnp.expm1(-cs), axis=0)


@with_float64
def fquad(
  emp_risk: ArrayLike, kl: ArrayLike, n: ArrayLike, delta: ArrayLike
) -> jax.Array | np.ndarray:
  r"""PBB "f_quad" bound (Perez-Ortiz et al. 2021), with Maurer's confidence term.

  .. math::
    R(Q) \le \left(\sqrt{\hat R_S(Q) + b/2} + \sqrt{b/2}\right)^2,\qquad
    b = \frac{\mathrm{KL}(Q\|P) + \ln(2\sqrt{n}/\delta)}{n}.

  It follows from Maurer's bound and kl(q || p) >= (p - q)^2 / (2p) for p >= q, so it is never
  below :func:`maurer`, and it equals :func:`flamb` at :func:`flamb_optimal_lam`.

  Args:
    emp_risk, kl, n, delta: as in :func:`maurer`.

  Returns:
    float64 bound (not clipped at 1).

  Raises:
    ValueError: naming the argument, for concrete out-of-range inputs.

  References:
    Perez-Ortiz, Rivasplata, Shawe-Taylor & Szepesvari, "Tighter risk certificates for neural
    networks", JMLR 22(227), 2021, Section 3 (f_quad).
  """
  emp_risk, kl, n, delta = _bound_args(emp_risk, kl, n, delta)
  half_b = (kl + _log_confidence(n, delta)) / (2.0 * n)
  return (jnp.sqrt(emp_risk + half_b) + jnp.sqrt(half_b)) ** 2


@with_float64
def flamb(
  emp_risk: ArrayLike, kl: ArrayLike, n: ArrayLike, delta: ArrayLike, lam: ArrayLike
) -> jax.Array | np.ndarray:
  r"""PAC-Bayes-lambda bound (Thiemann et al. 2017; PBB "f_lambda").

  For all lam in (0, 2) simultaneously (it is a relaxation of Maurer's bound that holds
  deterministically for every lam),

  .. math::
    R(Q) \le \frac{\hat R_S(Q)}{1 - \lambda/2}
      + \frac{\mathrm{KL}(Q\|P) + \ln(2\sqrt{n}/\delta)}{n\,\lambda\,(1 - \lambda/2)}.

  Args:
    emp_risk, kl, n, delta: as in :func:`maurer`.
    lam: lambda(s) in (0, 2).

  Returns:
    float64 bound (not clipped at 1).

  Raises:
    ValueError: naming the argument, for concrete out-of-range inputs.

  References:
    Thiemann, Igel, Wintenberger & Seldin, "A strongly quasiconvex PAC-Bayesian bound", ALT 2017,
    Theorem 3.
    Perez-Ortiz et al., "Tighter risk certificates for neural networks", JMLR 22, 2021 (f_lambda).
  """
  emp_risk, kl, n, delta, lam = _bound_args(emp_risk, kl, n, delta, lam=lam)
  b = (kl + _log_confidence(n, delta)) / n
  return (emp_risk + b / lam) / (1.0 - 0.5 * lam)


@with_float64
def flamb_optimal_lam(
  emp_risk: ArrayLike, kl: ArrayLike, n: ArrayLike, delta: ArrayLike
) -> jax.Array | np.ndarray:
  r"""The lambda minimising :func:`flamb` in closed form (Thiemann et al. 2017).

  With r = emp_risk and b = (KL + ln(2 sqrt(n) / delta)) / n, setting the derivative of
  (r + b / lam) / (1 - lam / 2) to zero gives r lam^2 / 2 + b lam - b = 0, whose positive root is

  .. math::
    \lambda^\star = \frac{2}{\sqrt{1 + 2 r / b} + 1} \in (0, 1].

  Since b > 0 (ln(2 sqrt(n)/delta) > 0), this unconstrained optimum always lies inside the
  admissible range (0, 2), and with s = sqrt(1 + 2 r / b),
  flamb(lam*) = (b / 2) (1 + s)^2 = fquad exactly.

  Args:
    emp_risk, kl, n, delta: as in :func:`maurer`.

  Returns:
    float64 lambda in (0, 1].

  Raises:
    ValueError: naming the argument, for concrete out-of-range inputs.

  References:
    Thiemann, Igel, Wintenberger & Seldin, "A strongly quasiconvex PAC-Bayesian bound", ALT 2017.
  """
  emp_risk, kl, n, delta = _bound_args(emp_risk, kl, n, delta)
  b = (kl + _log_confidence(n, delta)) / n
  return 2.0 / (jnp.sqrt(1.0 + 2.0 * emp_risk / b) + 1.0)


@with_float64
def mc_sample_bound(
  mean: ArrayLike, num_samples: ArrayLike, delta: ArrayLike
) -> jax.Array | np.ndarray:
  r"""One-sided sample-convergence bound on E_Q[R_S] from a Monte-Carlo mean.

  For the mean of m independent [0, 1]-valued draws whose means average to mu, with
  probability at least 1 - delta,

  .. math::
    \mu \le \mathrm{kl}^{-1}_{+}\left(\hat\mu, \frac{\ln(1/\delta)}{m}\right).

  Only the upper side is needed (the certificate never uses a lower value of E_Q[R_S]), so
  the budget is ln(1/delta), not the two-sided ln(2/delta). Proof: with c = ln(1/delta)/m the
  bound fails iff mean < mu and kl(mean || mu) > c, i.e. iff mean < q* where q* < mu solves
  kl(q* || mu) = c (no q* means it cannot fail); the lower-tail Chernoff bound
  P(mean <= q*) <= exp(-m kl(q* || mu)) = delta holds for independent, not necessarily
  identically distributed, [0, 1] variables whose means average to mu (Hoeffding 1963,
  Theorem 1 applied to 1 - X).

  Args:
    mean: the Monte-Carlo mean(s) in [0, 1].
    num_samples: number m of independent draws, >= 1.
    delta: confidence parameter(s) in (0, 1).

  Returns:
    float64 upper bound on the expectation.

  Raises:
    ValueError: naming the argument, for concrete out-of-range inputs.

  References:
    Langford & Caruana, "(Not) bounding the true error", NeurIPS 2002 (sample convergence).
    Hoeffding, "Probability inequalities for sums of bounded random variables", JASA 1963,
    Theorem 1 (one-sided kl form).
    Perez-Ortiz et al., "Tighter risk certificates for neural networks", JMLR 22, 2021, eq. (7).
  """
  check_interval("mean", mean, 0.0, 1.0)
  check_at_least("num_samples", num_samples, 1.0)
  _check_delta(delta)
  mean, num_samples, delta = as_float64(mean, num_samples, delta)
  return kl_inv_upper(mean, -jnp.log(delta) / num_samples)


@with_float64
def mc_epsilon(mean: ArrayLike, num_samples: ArrayLike, delta: ArrayLike) -> jax.Array | np.ndarray:
  """The Monte-Carlo term of the certificate: ``mc_sample_bound(mean, m, delta) - mean``.

  ``epsilon = kl_inv_upper(mean, ln(1/delta)/m) - mean >= 0`` (docs/THEORY.md §1.6), in
  float64, same arguments and errors as :func:`mc_sample_bound`.
  """
  return mc_sample_bound(mean, num_samples, delta) - jnp.asarray(mean, jnp.float64)


@with_float64
def hoeffding_upper(
  total: ArrayLike, sum_sq_ranges: ArrayLike, delta: ArrayLike
) -> jax.Array | np.ndarray:
  r"""One-sided Hoeffding upper bound on E[Y] for Y a sum of independent bounded terms.

  If Y = sum_m Y_m with independent Y_m in [0, a_m], then P(E Y - Y >= t) <=
  exp(-2 t^2 / sum_m a_m^2), so with probability at least 1 - delta

  .. math::
    \mathbb{E}[Y] \le Y + \sqrt{\tfrac{1}{2} \ln(1/\delta) \textstyle\sum_m a_m^2}.

  Used for per-slice Monte-Carlo means under the chunk scheme, where draw m covers a_m of a
  slice's rows (`pacbayes.bounds.extrapolation`).

  Args:
    total: the observed sum Y.
    sum_sq_ranges: sum_m a_m^2, >= 0.
    delta: confidence parameter(s) in (0, 1).

  Returns:
    float64 upper bound (not clipped).

  Raises:
    ValueError: naming the argument, for concrete out-of-range inputs.

  References:
    Hoeffding, "Probability inequalities for sums of bounded random variables", JASA 1963,
    Theorem 2.
  """
  check_at_least("sum_sq_ranges", sum_sq_ranges, 0.0)
  _check_delta(delta)
  total, sum_sq_ranges, delta = as_float64(total, sum_sq_ranges, delta)
  return total + jnp.sqrt(0.5 * sum_sq_ranges * -jnp.log(delta))
