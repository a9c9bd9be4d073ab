"""Pretraining and supervised fine-tuning (cross-entropy and DFT) of small decoders in JAX."""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

METHODS = ("ce", "dft")
BATCH_KEYS = ("input_ids", "attention_mask", "loss_mask")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimisation settings for one training run.

  Attributes:
    steps: number of optimiser steps.
    batch_size: rows per step (every batch has this fixed shape).
    learning_rate: peak learning rate of the warmup + cosine schedule.
    warmup_steps: linear warmup length (clipped to `steps`).
    end_lr_ratio: final learning rate as a fraction of the peak.
    weight_decay: decoupled AdamW weight decay (applied to matrices only).
    grad_clip: global-norm gradient clipping threshold (0 disables it).
    b1: Adam first-moment decay.
    b2: Adam second-moment decay.
    method: "ce" (token cross-entropy) or "dft" (dynamic fine-tuning, Wu et al. 2025).
  """

  steps: int
  batch_size: int
  learning_rate: float
  warmup_steps: int = 0
  end_lr_ratio: float = 0.1
  weight_decay: float = 0.0
  grad_clip: float = 1.0
  b1: float = 0.9
  b2: float = 0.98
  method: str = "ce"

  def __post_init__(self):
    if self.steps < 1:
      raise ValueError(f"TrainConfig.steps must be >= 1, got {self.steps}")
    if self.batch_size < 1:
      raise ValueError(f"TrainConfig.batch_size must be >= 1, got {self.batch_size}")
    if not self.learning_rate > 0:
      raise ValueError(f"TrainConfig.learning_rate must be > 0, got {self.learning_rate}")
    if self.warmup_steps < 0:
      raise ValueError(f"TrainConfig.warmup_steps must be >= 0, got {self.warmup_steps}")
    if not 0.0 <= self.end_lr_ratio <= 1.0:
      raise ValueError(f"TrainConfig.end_lr_ratio must be in [0, 1], got {self.end_lr_ratio}")
    if self.weight_decay < 0 or self.grad_clip < 0:
      raise ValueError("TrainConfig.weight_decay and TrainConfig.grad_clip must be >= 0")
    if self.method not in METHODS:
      raise ValueError(f"TrainConfig.method must be one of {METHODS}, got {self.method!r}")


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """Outcome of `train`: the trained parameters and the loss curve.

  Attributes:
    params: trained `nnx.State` of parameters (same structure as the input).
    losses: [steps] float64 training loss per step (mean over target tokens).
    time_s: wall-clock seconds spent in the loop (compilation included).
  """

  params: Any
  losses: np.ndarray
  time_s: float


def target_log_probs(logits_BxLxV: jax.Array, input_ids_BxL: jax.Array) -> jax.Array:
  """Log-probability of each next token: out[b, t] = log p(input_ids[b, t + 1] | prefix).

  Args:
    logits_BxLxV: model logits; logits[:, t] predicts input_ids[:, t + 1].
    input_ids_BxL: token ids.

  Returns:
    [B, L-1] float32 log-probabilities of the targets input_ids[:, 1:].
  """
  logits_BxTxV = logits_BxLxV[:, :-1].astype(jnp.float32)
  targets_BxT = input_ids_BxL[:, 1:]
  logz_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
  picked_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  return picked_BxT - logz_BxT


def dft_token_weights(logits_BxLxV: jax.Array, input_ids_BxL: jax.Array) -> jax.Array:
  """DFT token weights stop_gradient(p(target)), shape [B, L-1] (Wu et al. 2025)."""
  return jax.lax.stop_gradient(jnp.exp(target_log_probs(logits_BxLxV, input_ids_BxL)))


def token_loss(
  logits_BxLxV: jax.Array,
  input_ids_BxL: jax.Array,
  loss_mask_BxL: jax.Array,
  *,
  method: str = "ce",
  row_weight_B: jax.Array | None = None,
) -> jax.Array:
  """Mean per-token training loss over the target tokens of a batch.

  "ce" is the usual next-token cross-entropy -log p. "dft" is dynamic fine-tuning
  (Wu et al. 2025, "On the Generalization of SFT: a reinforcement learning perspective with
  reward rectification"): each token's -log p is scaled by stop_gradient(p), so the gradient
  is p * grad(-log p) = -grad p, which de-emphasises tokens the model finds unlikely.

  Args:
    logits_BxLxV: logits; logits[:, t - 1] predicts input_ids[:, t].
    input_ids_BxL: token ids.
    loss_mask_BxL: 1 where input_ids[b, t] is a prediction target (loss_mask[:, 0] unused).
    method: "ce" or "dft".
    row_weight_B: optional per-row weights (0 for padding rows of a fixed-shape batch).

  Returns:
    Scalar float32 loss (sum of token losses / number of target tokens).

  References:
    Wu et al. 2025, arXiv 2508.05629 (DFT).
  """
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  logp_BxT = target_log_probs(logits_BxLxV, input_ids_BxL)
  mask_BxT = loss_mask_BxL[:, 1:].astype(jnp.float32)
  if row_weight_B is not None:
    mask_BxT = mask_BxT * row_weight_B.astype(jnp.float32)[:, None]
  nll_BxT = -logp_BxT
  if method == "dft":
    nll_BxT = jax.lax.stop_gradient(jnp.exp(logp_BxT)) * nll_BxT
  return jnp.sum(nll_BxT * mask_BxT) / jnp.maximum(jnp.sum(mask_BxT), 1.0)


def learning_rates(config: TrainConfig) -> np.ndarray:
  """[steps] float32 learning rate per step: linear warmup, then cosine decay to the end ratio."""
  steps = np.arange(config.steps, dtype=np.float64)
  warmup = min(config.warmup_steps, max(config.steps - 1, 0))
  peak, end = config.learning_rate, config.learning_rate * config.end_lr_ratio
  decay_len = max(config.steps - warmup, 1)
  frac = np.clip((steps - warmup) / decay_len, 0.0, 1.0)
  lr = end + (peak - end) * 0.5 * (1.0 + np.cos(np.pi * frac))
  if warmup > 0:
    lr = np.where(steps < warmup, peak * (steps + 1) / (warmup + 1), lr)
  return lr.astype(np.float32)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  """AdamW direction without the learning rate: clipping, Adam scaling, decay on matrices.

  The learning rate is applied by the step (it is an argument), so one compiled step serves
  every schedule and every run with the same shapes.
  """
  parts = []
  if config.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(config.grad_clip))
  parts.append(optax.scale_by_adam(b1=config.b1, b2=config.b2))
  if config.weight_decay > 0:
    parts.append(
      optax.add_decayed_weights(
        config.weight_decay, mask=lambda tree: jax.tree.map(lambda x: jnp.ndim(x) >= 2, tree)
      )
    )
  return optax.chain(*parts)


ApplyFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


def model_apply(graphdef: Any, rest: Any) -> ApplyFn:
  """apply(params, input_ids, attention_mask) -> logits for a model split into graphdef/rest.

  Build it once per model structure and reuse it: compiled steps are cached on its identity.
  """

  def apply(params, input_ids_BxL, attention_mask_BxL):
    model = nnx.merge(graphdef, params, rest)
    return model(input_ids_BxL, attention_mask=attention_mask_BxL)

  return apply


def make_loss_fn(apply_fn: ApplyFn, method: str) -> Callable[[Any, Mapping], jax.Array]:
  """Returns loss(params, batch) -> scalar training loss (see `token_loss`)."""

  def loss_fn(params, batch):
    logits_BxLxV = apply_fn(params, batch["input_ids"], batch["attention_mask"])
    return token_loss(
      logits_BxLxV,
      batch["input_ids"],
      batch["loss_mask"],
      method=method,
      row_weight_B=batch.get("weight"),
    )

  return loss_fn


@functools.lru_cache(maxsize=64)
def make_train_step(apply_fn: ApplyFn, method: str, b1: float, b2: float, weight_decay: float,
                    grad_clip: float) -> Callable:
  """A jitted step (params, opt_state, batch, lr) -> (params, opt_state, loss).

  Cached on its arguments, so runs that share an apply function and optimiser settings reuse
  one compiled program per batch shape (the learning rate is an argument, not a constant).
  """
  loss_fn = make_loss_fn(apply_fn, method)
  optimizer = make_optimizer(
    TrainConfig(steps=1, batch_size=1, learning_rate=1.0, b1=b1, b2=b2,
                weight_decay=weight_decay, grad_clip=grad_clip, method=method)
  )

  @jax.jit
  def step(params, opt_state, batch, lr):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    updates = jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def batch_indices(num_rows: int, batch_size: int, steps: int, *, key: jax.Array) -> np.ndarray:
  """Row indices [steps, batch_size]: concatenated random permutations (epoch order).

  Every batch has the same shape; when num_rows < batch_size a batch spans several epochs.
  """
  if num_rows < 1:
    raise ValueError("batch_indices: the training set is empty")
  total = steps * batch_size
  epochs = math.ceil(total / num_rows)
  keys = jax.random.split(key, epochs)
  perms = [np.asarray(jax.random.permutation(k, num_rows)) for k in keys]
  return np.concatenate(perms)[:total].reshape(steps, batch_size)


def check_arrays(data: Mapping[str, np.ndarray]) -> int:
  """Validates a dict of [N, L] training arrays and returns N."""
  for name in BATCH_KEYS:
    if name not in data:
      raise ValueError(f"training data lacks the key {name!r} (expected {BATCH_KEYS})")
  shape = np.shape(data["input_ids"])
  if len(shape) != 2:
    raise ValueError(f"training data 'input_ids' must be [N, L], got shape {shape}")
  for name in BATCH_KEYS[1:]:
    if np.shape(data[name]) != shape:
      raise ValueError(f"training data {name!r} has shape {np.shape(data[name])}, expected {shape}")
  return shape[0]


def train(
  apply_fn: ApplyFn,
  params: Any,
  data: Mapping[str, np.ndarray],
  config: TrainConfig,
  *,
  key: jax.Array,
  progress: bool = True,
  desc: str = "train",
) -> TrainResult:
  """Trains `params` on `data` with AdamW (see `TrainConfig`) and returns the new params.

  Pretraining passes a loss mask covering the whole sequence; fine-tuning passes one covering
  the completion only. The loop is a plain `jax.jit` step over the parameter pytree with
  fixed-shape batches, so it compiles once per shape.

  Args:
    apply_fn: apply(params, input_ids, attention_mask) -> logits, e.g. from `model_apply`
      (weight space) or `pacbayes.lab.subspace.subspace_apply` (a random subspace).
    params: the parameter pytree to start from.
    data: dict with "input_ids", "attention_mask", "loss_mask" arrays of shape [N, L].
    config: optimisation settings.
    key: PRNG key for the batch order.
    progress: show a tqdm bar with rate, ETA and the running loss.
    desc: label of the progress bar.

  Returns:
    A `TrainResult` with the trained parameters and the per-step losses.
  """
  num_rows = check_arrays(data)
  arrays = {k: np.asarray(data[k], dtype=np.int32) for k in BATCH_KEYS}
  optimizer = make_optimizer(config)
  step = make_train_step(apply_fn, config.method, config.b1, config.b2, config.weight_decay,
                         config.grad_clip)
  opt_state = optimizer.init(params)
  lrs = learning_rates(config)
  order = batch_indices(num_rows, config.batch_size, config.steps, key=key)
  losses = np.zeros(config.steps, dtype=np.float64)
  bar = _progress(config.steps, desc, progress)
  start = time.perf_counter()
  pending = []
  for i in range(config.steps):
    idx = order[i]
    batch = {k: jnp.asarray(v[idx]) for k, v in arrays.items()}
    params, opt_state, loss = step(params, opt_state, batch, lrs[i])
    pending.append((i, loss))
    # Reading the loss back every few steps keeps dispatch asynchronous.
    if len(pending) >= 10 or i == config.steps - 1:
      for j, value in pending:
        losses[j] = float(value)
      pending = []
      if bar is not None:
        bar.set_postfix(loss=f"{losses[i]:.4f}", refresh=False)
    if bar is not None:
      bar.update(1)
  jax.block_until_ready(params)
  if bar is not None:
    bar.close()
  return TrainResult(params=params, losses=losses, time_s=time.perf_counter() - start)


def train_model(model: nnx.Module, data: Mapping[str, np.ndarray], config: TrainConfig, *,
                key: jax.Array, progress: bool = True, desc: str = "train") -> TrainResult:
  """Convenience wrapper: splits `model`, trains all its parameters, writes them back."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  result = train(model_apply(graphdef, rest), params, data, config, key=key,
                 progress=progress, desc=desc)
  nnx.update(model, result.params)
  return result


def _progress(total: int, desc: str, enabled: bool):
  if not enabled:
    return None
  from tqdm.auto import tqdm

  return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, leave=False)
