"""Domain-classifier TV: a small JAX classifier's estimate, HPLB lower bound and density ratio."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pacbayes.bounds.concentration import clopper_pearson_lower
from pacbayes.bounds.kinds import KIND_CERTIFIED, KIND_DIAGNOSTIC, KIND_ESTIMATE, KIND_LOWER

# The KIND_* words and clopper_pearson_lower are pacbayes.bounds names, importable from here too.
__all__ = ["KIND_CERTIFIED", "KIND_DIAGNOSTIC", "KIND_ESTIMATE", "KIND_LOWER", "ClassifierOptions",
           "ClassifierTVResult", "ShiftError", "check_delta", "clopper_pearson_lower",
           "tv_classifier", "tv_lower_from_heldout"]


class ShiftError(ValueError):
  """Bad input to a shift estimator; the message names the argument or file."""


def check_delta(delta: float, name: str = "delta") -> float:
  """Returns `delta` as a float; raises ShiftError (naming `name`) unless it is in (0, 1)."""
  delta = float(delta)
  if not 0.0 < delta < 1.0:
    raise ShiftError(f"{name} must lie in (0, 1), got {delta}")
  return delta


def tv_lower_from_heldout(
    correct_test: Any, num_test: Any, correct_train: Any, num_train: Any, delta: float
) -> np.ndarray:
  """HPLB-style lower bound on TV from a fixed classifier's held-out accuracies.

  For a classifier fixed before the held-out split is seen, predicting "test" on a set A,
  `TV >= P_test(A) - P_train(A) = tpr + tnr - 1`. Each class accuracy gets a one-sided
  Clopper-Pearson lower bound at level delta/2; a union bound gives probability >= 1 - delta.

  Args:
    correct_test: held-out test rows classified "test" (k1), any shape.
    num_test: held-out test rows (n1).
    correct_train: held-out train rows classified "train" (k0).
    num_train: held-out train rows (n0).
    delta: failure probability.

  Returns:
    `max(0, tpr_lo + tnr_lo - 1)`, float64, broadcast over the inputs.

  References:
    Michel, Näf & Meinshausen (2020), "High-probability lower bounds for the total
    variation distance", arXiv:2005.06006. Kim, Ramdas, Singh & Wasserman (2021),
    "Classification accuracy as a proxy for two-sample testing", Ann. Statist. 49(1).
  """
  delta = check_delta(delta)
  tpr_lo = clopper_pearson_lower(correct_test, num_test, delta / 2)
  tnr_lo = clopper_pearson_lower(correct_train, num_train, delta / 2)
  return np.maximum(0.0, tpr_lo + tnr_lo - 1.0)


def _check_features(x: Any, name: str) -> np.ndarray:
  x = np.asarray(x)
  if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
    raise ShiftError(f"{name} must be a numeric array, got dtype {x.dtype}")
  if x.ndim == 1:
    x = x[:, None]
  if x.ndim != 2:
    raise ShiftError(f"{name} must have shape [num_rows, num_features], got {x.shape}")
  if x.shape[0] == 0:
    raise ShiftError(f"{name} is empty; need at least 2 rows per side")
  if x.shape[1] == 0:
    raise ShiftError(f"{name} has no feature columns (shape {x.shape})")
  if np.issubdtype(x.dtype, np.floating):
    bad = ~np.isfinite(x)
    if bad.any():
      row, col = np.argwhere(bad)[0]
      raise ShiftError(
          f"{name} holds {int(bad.sum())} NaN or infinite entries (first at row {row}, "
          f"column {col}); features must be finite"
      )
  return x


def _init_mlp(key: jax.Array, dim: int, hidden: int) -> dict[str, jax.Array]:
  k1, k2 = jax.random.split(key)
  return {
      "w1": jax.random.normal(k1, (dim, hidden), jnp.float32) / np.sqrt(dim),  # [D, H]
      "b1": jnp.zeros((hidden,), jnp.float32),  # [H]
      "w2": jax.random.normal(k2, (hidden,), jnp.float32) / np.sqrt(hidden),  # [H]
      "b2": jnp.zeros((), jnp.float32),
  }


def _logits(params: dict[str, jax.Array], x_NxD: jax.Array) -> jax.Array:
  """Domain-classifier logits [N]; > 0 means "test"."""
  if "w1" in params:
    h_NxH = jax.nn.gelu(x_NxD @ params["w1"] + params["b1"][None, :])
    return h_NxH @ params["w2"] + params["b2"]
  return x_NxD @ params["w"] + params["b"]


def _weight_penalty(params: dict[str, jax.Array]) -> jax.Array:
  return sum(jnp.sum(jnp.square(v)) for k, v in params.items() if k.startswith("w"))


@functools.partial(jax.jit, static_argnames=("steps",))
def _fit_logistic(x_NxD, y_N, wt_N, l2, tol, steps: int):
  """Class-balanced L2 logistic regression by full-batch L-BFGS.

  Runs at most `steps` iterations and stops early once the gradient norm is below `tol`
  (a deterministic rule: same data and settings, same iterations). Returns the parameters
  and the number of iterations run.
  """
  params = {"w": jnp.zeros((x_NxD.shape[1],), jnp.float32), "b": jnp.zeros((), jnp.float32)}

  def objective(p):
    ce_N = optax.sigmoid_binary_cross_entropy(_logits(p, x_NxD), y_N)
    return jnp.sum(wt_N * ce_N) + 0.5 * l2 * _weight_penalty(p)

  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(objective)

  def step(carry):
    p, state, _, _, value, i = carry
    new_value, grad = value_and_grad(p, state=state)
    updates, state = opt.update(grad, state, p, value=new_value, grad=grad,
                                value_fn=objective)
    return optax.apply_updates(p, updates), state, optax.tree.norm(grad), value, new_value, i + 1

  def keep_going(carry):
    _, _, grad_norm, prev_value, value, i = carry
    # Also stop when an iteration no longer lowers the loss: in float32 the gradient of an
    # ill-conditioned problem can stall above `tol`, and then each line search is wasted.
    return (i < steps) & (grad_norm > tol) & ((i < 2) | (value < prev_value))

  inf = jnp.asarray(jnp.inf, jnp.float32)
  init = (params, opt.init(params), inf, inf, inf, jnp.asarray(0, jnp.int32))
  params, _, _, _, _, iters = jax.lax.while_loop(keep_going, step, init)
  return params, iters


@functools.partial(jax.jit, static_argnames=("steps", "batch_size", "hidden"))
def _fit_mlp(key, x0_NxD, x1_MxD, l2, learning_rate, steps: int, batch_size: int, hidden: int):
  """One-hidden-layer GELU MLP by Adam on class-balanced minibatches (half from each side)."""
  k_init, k_data = jax.random.split(key)
  params = _init_mlp(k_init, x0_NxD.shape[1], hidden)
  opt = optax.adam(learning_rate)
  half = batch_size // 2
  y_B = jnp.concatenate([jnp.zeros((half,), jnp.float32), jnp.ones((half,), jnp.float32)])

  def objective(p, xb_BxD):
    ce_B = optax.sigmoid_binary_cross_entropy(_logits(p, xb_BxD), y_B)
    return jnp.mean(ce_B) + 0.5 * l2 * _weight_penalty(p)

  def step(carry, k):
    p, state = carry
    k0, k1 = jax.random.split(k)
    # int32 indices whatever the x64 flag: randint draws other rows for int64.
    i0 = jax.random.randint(k0, (half,), 0, x0_NxD.shape[0], jnp.int32)
    i1 = jax.random.randint(k1, (half,), 0, x1_MxD.shape[0], jnp.int32)
    xb_BxD = jnp.concatenate([x0_NxD[i0], x1_MxD[i1]])
    value, grad = jax.value_and_grad(objective)(p, xb_BxD)
    updates, state = opt.update(grad, state, p)
    return (optax.apply_updates(p, updates), state), value

  keys = jax.random.split(k_data, steps)
  (params, _), values = jax.lax.scan(step, (params, opt.init(params)), keys)
  return params, values


@jax.jit
def _standardised_logits(params, mean_D, scale_D, x_NxD):
  z_NxD = (x_NxD.astype(jnp.float32) - mean_D[None, :]) / scale_D[None, :]
  return _logits(params, z_NxD)


def _fit_platt(logits: np.ndarray, labels: np.ndarray, iters: int = 100) -> tuple[float, float]:
  """Class-balanced Platt scaling `a * f + b`: damped Newton in float64 on 2 parameters."""
  y = labels.astype(np.float64)
  w = np.where(y > 0, 0.5 / max(1, int(y.sum())), 0.5 / max(1, int((1 - y).sum())))
  f = logits.astype(np.float64)
  f_scale = float(np.std(f)) or 1.0  # Work on f / f_scale so that the start a = 1 is sane.
  feats = np.stack([f / f_scale, np.ones_like(f)], axis=1)
  ridge = 1e-8

  def objective(theta):
    z = feats @ theta
    return float(np.sum(w * (np.logaddexp(0.0, z) - y * z)) + 0.5 * ridge * theta @ theta)

  theta = np.array([1.0, 0.0])
  value = objective(theta)
  for _ in range(iters):
    z = feats @ theta
    p = np.exp(-np.logaddexp(0.0, -z))  # Stable sigmoid.
    grad = feats.T @ (w * (p - y)) + ridge * theta
    hess = (feats * (w * p * (1 - p))[:, None]).T @ feats + ridge * np.eye(2)
    step = np.linalg.solve(hess, grad)
    t = 1.0
    while t > 1e-10:  # Backtracking keeps Newton from overshooting on saturated logits.
      new_value = objective(theta - t * step)
      if new_value <= value:
        break
      t *= 0.5
    else:
      break
    theta, decrease, value = theta - t * step, value - new_value, new_value
    if decrease < 1e-14:
      break
  return float(theta[0] / f_scale), float(theta[1])


@dataclasses.dataclass(frozen=True)
class ClassifierTVResult:
  """A domain classifier's TV estimate, lower bound, and density ratio r = dD_test/dD_train.

  Attributes:
    estimate: `max(0, 2 * BA - 1)` on the held-out split (kind "estimate").
    lower: HPLB-style finite-sample lower bound on TV, holds with prob. >= 1 - delta.
    upper: always None: no finite sample upper-bounds TV without an assumption.
    kind: "estimate".
    plugin_tv: `1/2 E|r - 1|` over held-out train rows; a diagnostic, never a bound. It
      equals TV only when D_test has a density w.r.t. D_train: test mass where the train
      density vanishes is missed (two fully separated sets read 0.5, not 1).
    balanced_accuracy, tpr, tnr: held-out accuracies (tpr on test rows, tnr on train rows).
    num_fit_train, num_fit_test, num_heldout_train, num_heldout_test: split sizes.
    delta, seed, model: the call's settings.
    calibration: (a, b) of the Platt map applied to the raw logit for the density ratio.
    params, mean, scale: the fitted classifier and the standardisation of its inputs.
    heldout_train, heldout_test: row indices of the held-out split of each side (rows the
      classifier never saw: evaluate `density_ratio` there for `importance_weighted_gap`).
  """

  estimate: float
  lower: float
  upper: None
  kind: str
  plugin_tv: float
  balanced_accuracy: float
  tpr: float
  tnr: float
  num_fit_train: int
  num_fit_test: int
  num_heldout_train: int
  num_heldout_test: int
  delta: float
  seed: int
  model: str
  calibration: tuple[float, float]
  params: dict[str, Any] = dataclasses.field(repr=False)
  mean: np.ndarray = dataclasses.field(repr=False)
  scale: np.ndarray = dataclasses.field(repr=False)
  heldout_train: np.ndarray = dataclasses.field(repr=False)
  heldout_test: np.ndarray = dataclasses.field(repr=False)

  def raw_logits(self, x: Any) -> np.ndarray:
    """Uncalibrated classifier logits [N] (> 0 predicts "test") on raw features x [N, D]."""
    x = _check_features(x, "x")
    if x.shape[1] != self.mean.shape[0]:
      raise ShiftError(f"x has {x.shape[1]} features, the classifier was fit on "
                       f"{self.mean.shape[0]}")
    return np.asarray(_standardised_logits(self.params, self.mean, self.scale, x),
                      dtype=np.float64)

  def log_density_ratio(self, x: Any) -> np.ndarray:
    """Calibrated `log r(x) = log dD_test/dD_train (x)`, float64 [N]."""
    a, b = self.calibration
    return a * self.raw_logits(x) + b

  def density_ratio(self, x: Any) -> np.ndarray:
    """Calibrated `r(x) = (n_train / n_test) * eta(x) / (1 - eta(x))`, float64 [N].

    The classifier is fit with class-balanced weights, so its odds are already the ratio
    of the two densities; with the empirical prior `eta(x) = P(test | x)` (see `prob_test`)
    the same r reads `(n_train / n_test) * eta / (1 - eta)`.
    """
    return np.exp(self.log_density_ratio(x))

  def prob_test(self, x: Any) -> np.ndarray:
    """`eta(x) = P(test | x)` under the empirical class prior n_test / (n_train + n_test)."""
    n_tr = self.num_fit_train + self.num_heldout_train
    n_te = self.num_fit_test + self.num_heldout_test
    z = self.log_density_ratio(x) + math.log(n_te / n_tr)
    return np.exp(-np.logaddexp(0.0, -z))

  def to_dict(self) -> dict[str, Any]:
    return {
        "estimate": self.estimate, "lower": self.lower, "upper": self.upper,
        "kind": self.kind, "plugin_tv": self.plugin_tv, "plugin_tv_kind": KIND_DIAGNOSTIC,
        "lower_kind": KIND_LOWER, "balanced_accuracy": self.balanced_accuracy,
        "tpr": self.tpr, "tnr": self.tnr, "num_fit_train": self.num_fit_train,
        "num_fit_test": self.num_fit_test, "num_heldout_train": self.num_heldout_train,
        "num_heldout_test": self.num_heldout_test, "delta": self.delta, "seed": self.seed,
        "model": self.model, "calibration": list(self.calibration),
    }


@dataclasses.dataclass(frozen=True)
class ClassifierOptions:
  """How `tv_classifier` splits the rows and fits its domain classifier.

  Attributes:
    model: "logistic" (L2 logistic regression, full-batch L-BFGS) or "mlp" (one hidden
      GELU layer, Adam on balanced minibatches).
    test_fraction: held-out share of each side, in (0, 1).
    steps: optimiser steps (None: 100 for logistic, 500 for mlp); for logistic the most
      L-BFGS iterations, stopping earlier once the gradient norm falls below `tol`.
    l2: L2 penalty on the weights (features are standardised, loss is a mean); None: 1e-4
      for logistic, 1e-2 for mlp.
    hidden: MLP width.
    batch_size: MLP minibatch size (half from each side).
    learning_rate: MLP Adam learning rate.
    calibrate: fit Platt scaling for the density ratio on the held-out split.
    tol: gradient-norm tolerance of the logistic fit.

  Raises:
    ShiftError: a setting out of range, naming it.
  """

  model: str = "logistic"
  test_fraction: float = 0.5
  steps: int | None = None
  l2: float | None = None
  hidden: int = 64
  batch_size: int = 1024
  learning_rate: float = 1e-2
  calibrate: bool = True
  tol: float = 1e-5

  def __post_init__(self):
    if self.model not in ("logistic", "mlp"):
      raise ShiftError(f"model must be 'logistic' or 'mlp', got {self.model!r}")
    if not 0.0 < self.test_fraction < 1.0:
      raise ShiftError(f"test_fraction must lie in (0, 1), got {self.test_fraction}")
    if self.fit_steps < 1:
      raise ShiftError(f"steps must be >= 1, got {self.steps}")
    if self.penalty < 0:
      raise ShiftError(f"l2 must be >= 0, got {self.l2}")
    if self.model == "mlp" and (self.batch_size < 2 or self.hidden < 1):
      raise ShiftError(f"batch_size must be >= 2 and hidden >= 1, got {self.batch_size}, "
                       f"{self.hidden}")

  @property
  def fit_steps(self) -> int:
    """`steps`, or the model's default."""
    return int(self.steps if self.steps is not None else
               100 if self.model == "logistic" else 500)

  @property
  def penalty(self) -> float:
    """`l2`, or the model's default."""
    return self.l2 if self.l2 is not None else 1e-4 if self.model == "logistic" else 1e-2


def tv_classifier(
    x_train: Any,
    x_test: Any,
    delta: float,
    seed: int,
    *,
    options: ClassifierOptions | None = None,
) -> ClassifierTVResult:
  """Estimates TV(D_test, D_train) with a domain classifier, and bounds it from below.

  Each side is split at random (stratified: `test_fraction` of each side is held out). A
  classifier (`options.model`) is fit on the fit split to tell test rows (label 1) from train
  rows (label 0), with class-balanced weights and features standardised on the fit split. On
  the held-out split, with tpr / tnr the accuracies on test / train rows,
  `estimate = max(0, tpr + tnr - 1)` = `2 * BA - 1`, and `lower` is the HPLB-style bound of
  `tv_lower_from_heldout` (valid for any classifier, however poor, because it is fixed before
  the held-out split is seen).

  The density ratio `r(x) = dD_test/dD_train (x)` comes from the classifier's odds; class
  balancing removes the prior (equivalently `r = (n_train/n_test) eta/(1 - eta)` with the
  empirical-prior posterior eta). With `calibrate`, a positive-or-negative scale and a
  shift of the logit (Platt scaling) are fit on the held-out split; this never changes the
  classifier used for `estimate` and `lower`.

  Args:
    x_train: features of training examples, [n_train, D] (or [n_train] for one feature).
    x_test: features of test examples, [n_test, D].
    delta: failure probability of `lower`, in (0, 1).
    seed: integer seed; the call is deterministic given it (jax.random.key(seed)).
    options: the split and the classifier (`ClassifierOptions`; default logistic regression).

  Returns:
    A `ClassifierTVResult` (`upper` is None, `kind` is "estimate").

  Raises:
    ShiftError: empty sides or too few rows, mismatched feature dimensions, NaN or infinite
      features, or features constant over both sides (`ClassifierOptions` checks the settings).

  References:
    Michel, Näf & Meinshausen (2020), arXiv:2005.06006 (HPLB). Sugiyama, Suzuki &
    Kanamori (2012), "Density ratio estimation in machine learning" (classifier odds).
  """
  delta = check_delta(delta)
  opts = ClassifierOptions() if options is None else options
  x0 = _check_features(x_train, "x_train")
  x1 = _check_features(x_test, "x_test")
  if x0.shape[1] != x1.shape[1]:
    raise ShiftError(f"x_train has {x0.shape[1]} features but x_test has {x1.shape[1]}; "
                     "both sides need the same feature dimension")
  for name, x in (("x_train", x0), ("x_test", x1)):
    if x.shape[0] < 2:
      raise ShiftError(f"{name} has {x.shape[0]} row(s); need at least 2 (one to fit, one "
                       "held out)")
  lo = np.minimum(x0.min(axis=0), x1.min(axis=0))
  hi = np.maximum(x0.max(axis=0), x1.max(axis=0))
  if np.all(lo == hi):
    raise ShiftError("x_train and x_test hold one constant feature vector: every column is "
                     "the same on both sides, so no classifier can separate them")

  key = jax.random.key(seed)
  k_split0, k_split1, k_fit = jax.random.split(key, 3)
  splits = []
  for k, x in ((k_split0, x0), (k_split1, x1)):
    n = x.shape[0]
    n_hold = min(n - 1, max(1, int(round(n * opts.test_fraction))))
    perm = np.asarray(jax.random.permutation(k, n))
    splits.append((np.sort(perm[n_hold:]), np.sort(perm[:n_hold])))
  (fit0, hold0), (fit1, hold1) = splits

  xf0 = x0[fit0].astype(np.float32)
  xf1 = x1[fit1].astype(np.float32)
  mean = (xf0.sum(axis=0, dtype=np.float64) + xf1.sum(axis=0, dtype=np.float64))
  mean /= len(fit0) + len(fit1)
  sq = (np.square(xf0 - mean[None, :].astype(np.float32)).sum(axis=0, dtype=np.float64)
        + np.square(xf1 - mean[None, :].astype(np.float32)).sum(axis=0, dtype=np.float64))
  std = np.sqrt(sq / (len(fit0) + len(fit1)))
  scale = np.where(std > 1e-12 * (1.0 + np.abs(mean)), std, 1.0).astype(np.float32)
  mean = mean.astype(np.float32)
  z0 = jnp.asarray((xf0 - mean[None, :]) / scale[None, :])
  z1 = jnp.asarray((xf1 - mean[None, :]) / scale[None, :])

  if opts.model == "logistic":
    z = jnp.concatenate([z0, z1])
    y = jnp.concatenate([jnp.zeros((len(fit0),), jnp.float32),
                         jnp.ones((len(fit1),), jnp.float32)])
    wt = jnp.concatenate([jnp.full((len(fit0),), 0.5 / len(fit0), jnp.float32),
                          jnp.full((len(fit1),), 0.5 / len(fit1), jnp.float32)])
    params, _ = _fit_logistic(z, y, wt, jnp.float32(opts.penalty), jnp.float32(opts.tol),
                              opts.fit_steps)
  else:
    params, _ = _fit_mlp(k_fit, z0, z1, jnp.float32(opts.penalty),
                         jnp.float32(opts.learning_rate), opts.fit_steps, int(opts.batch_size),
                         int(opts.hidden))
  params = jax.tree.map(np.asarray, params)

  f0 = np.asarray(_standardised_logits(params, mean, scale, x0[hold0]), dtype=np.float64)
  f1 = np.asarray(_standardised_logits(params, mean, scale, x1[hold1]), dtype=np.float64)
  correct0 = int(np.sum(f0 <= 0))
  correct1 = int(np.sum(f1 > 0))
  tnr = correct0 / len(hold0)
  tpr = correct1 / len(hold1)
  lower = float(tv_lower_from_heldout(correct1, len(hold1), correct0, len(hold0), delta))

  if opts.calibrate:
    labels = np.concatenate([np.zeros(len(f0)), np.ones(len(f1))])
    a, b = _fit_platt(np.concatenate([f0, f1]), labels)
  else:
    a, b = 1.0, 0.0
  r0 = np.exp(np.clip(a * f0 + b, -700.0, 700.0))
  plugin_tv = float(min(1.0, 0.5 * np.mean(np.abs(r0 - 1.0))))

  return ClassifierTVResult(
      estimate=max(0.0, tpr + tnr - 1.0),
      lower=lower,
      upper=None,
      kind=KIND_ESTIMATE,
      plugin_tv=plugin_tv,
      balanced_accuracy=0.5 * (tpr + tnr),
      tpr=tpr,
      tnr=tnr,
      num_fit_train=len(fit0),
      num_fit_test=len(fit1),
      num_heldout_train=len(hold0),
      num_heldout_test=len(hold1),
      delta=delta,
      seed=int(seed),
      model=opts.model,
      calibration=(a, b),
      params=params,
      mean=mean,
      scale=scale,
      heldout_train=hold0,
      heldout_test=hold1,
  )
