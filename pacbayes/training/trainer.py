"""The project's one trainer: pretraining and fine-tuning (cross-entropy and DFT) in JAX.

Used by the study (`pacbayes.study.runner`, small decoders, random subspaces) and by
`pacbayes finetune` (`pacbayes.training.finetune`: real checkpoints, full or LoRA, on a device mesh):
AdamW with linear warmup and cosine decay, global-norm clipping, gradient accumulation,
optional rematerialisation, fixed-shape batches in a seeded order, periodic atomic
checkpoints (orbax) from which an interrupted run resumes to the same final weights.
"""

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
    grad_accum: micro-batches per step; the step's loss is still the mean over all target
      tokens of the batch (micro-batch sums divided by the batch's token count).
    eps: Adam epsilon (added to sqrt(v_hat)).
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
  grad_accum: int = 1
  eps: float = 1e-8

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
    if self.grad_accum < 1 or self.batch_size % self.grad_accum:
      raise ValueError(f"TrainConfig.grad_accum must be >= 1 and divide batch_size="
                       f"{self.batch_size}, got {self.grad_accum}")
    if not self.eps > 0:
      raise ValueError(f"TrainConfig.eps must be > 0, got {self.eps}")


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """Outcome of `train`: the trained parameters and the loss curve.

  Attributes:
    params: trained `nnx.State` of parameters (same structure as the input).
    losses: [steps] float64 training loss per step (mean over target tokens).
    time_s: wall-clock seconds spent in the loop (compilation included).
    tokens: real (attention-mask) tokens processed by this call.
    resumed_from: the step this call started at (0 unless resumed from a checkpoint).
  """

  params: Any
  losses: np.ndarray
  time_s: float
  tokens: int = 0
  resumed_from: int = 0


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
  total, count = token_loss_sum(logits_BxLxV, input_ids_BxL, loss_mask_BxL, method=method,
                                row_weight_B=row_weight_B)
  return total / jnp.maximum(count, 1.0)


def target_mask(loss_mask_BxL: jax.Array, row_weight_B: jax.Array | None = None) -> jax.Array:
  """[B, L-1] float32 weight of each next-token target (loss mask times row weight)."""
  mask_BxT = loss_mask_BxL[:, 1:].astype(jnp.float32)
  if row_weight_B is not None:
    mask_BxT = mask_BxT * row_weight_B.astype(jnp.float32)[:, None]
  return mask_BxT


def token_loss_sum(
  logits_BxLxV: jax.Array,
  input_ids_BxL: jax.Array,
  loss_mask_BxL: jax.Array,
  *,
  method: str = "ce",
  row_weight_B: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Sum of the per-token losses of `token_loss` and the number of target tokens.

  Returns:
    (sum, count): float32 scalars; `token_loss` is sum / max(count, 1). Gradient
    accumulation divides each micro-batch's sum by the whole batch's count.
  """
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  logp_BxT = target_log_probs(logits_BxLxV, input_ids_BxL)
  mask_BxT = target_mask(loss_mask_BxL, row_weight_B)
  nll_BxT = -logp_BxT
  if method == "dft":
    nll_BxT = jax.lax.stop_gradient(jnp.exp(logp_BxT)) * nll_BxT
  return jnp.sum(nll_BxT * mask_BxT), jnp.sum(mask_BxT)


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
  parts.append(optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps))
  if config.weight_decay > 0:
    parts.append(
      optax.add_decayed_weights(
        config.weight_decay, mask=lambda tree: jax.tree.map(lambda x: jnp.ndim(x) >= 2, tree)
      )
    )
  return optax.chain(*parts)


ApplyFn = Callable[..., jax.Array]


def model_apply(graphdef: Any, rest: Any, *, remat: bool = False) -> ApplyFn:
  """apply(params, input_ids, attention_mask) -> logits for a model split into graphdef/rest.

  Build it once per model structure and reuse it: compiled steps are cached on its identity.

  Args:
    graphdef, rest: from `nnx.split(model, nnx.Param, ...)`.
    remat: rematerialise in the backward pass (`jax.checkpoint` with the policy
      `dots_with_no_batch_dims_saveable`): only the outputs of the weight matmuls are kept;
      attention scores/probabilities ([B, H, L, L]) and elementwise intermediates are
      recomputed, which is what grows with sequence length. Same numbers, less memory.
  """

  def apply(params, input_ids_BxL, attention_mask_BxL):
    model = nnx.merge(graphdef, params, rest)
    return model(input_ids_BxL, attention_mask=attention_mask_BxL)

  return rematerialise(apply) if remat else apply


def rematerialise(apply_fn: ApplyFn) -> ApplyFn:
  """`apply_fn` under `jax.checkpoint` saving only matmuls without batch dimensions."""
  return jax.checkpoint(apply_fn, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)


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


def _constrain(tree: Any, mesh: Any) -> Any:
  """Keeps parameters and optimiser state on their fsdp shardings inside the step."""
  if mesh is None:
    return tree
  from jax.sharding import NamedSharding

  from pacbayes.core.sharding import param_spec

  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(
    x, NamedSharding(mesh, param_spec(np.shape(x), mesh))), tree)


@functools.lru_cache(maxsize=64)
def make_train_step(apply_fn: ApplyFn, method: str, b1: float, b2: float, weight_decay: float,
                    grad_clip: float, *, grad_accum: int = 1, eps: float = 1e-8,
                    with_frozen: bool = False, mesh: Any = None) -> Callable:
  """A jitted step (params, opt_state, batch, lr[, frozen]) -> (params, opt_state, loss).

  Cached on its arguments, so runs that share an apply function and optimiser settings reuse
  one compiled program per batch shape (the learning rate is an argument, not a constant).

  Args:
    apply_fn: apply(params, ids, mask) -> logits, or apply(params, ids, mask, frozen) when
      `with_frozen` (frozen arrays, e.g. a LoRA base, enter as an argument: not trained, and
      not baked into the program as constants).
    method, b1, b2, weight_decay, grad_clip, eps: see `TrainConfig`.
    grad_accum: 1: batch arrays are [B, L]; A > 1: [A, B/A, L], scanned, gradients summed,
      each micro-batch's token-loss sum divided by the whole batch's target count.
    mesh: a `jax.sharding.Mesh` whose 'fsdp' sharding the outputs keep (None: no constraint).
  """
  optimizer = make_optimizer(
    TrainConfig(steps=1, batch_size=1, learning_rate=1.0, b1=b1, b2=b2,
                weight_decay=weight_decay, grad_clip=grad_clip, method=method, eps=eps)
  )

  def logits_of(params, frozen, batch):
    args = (params, batch["input_ids"], batch["attention_mask"])
    return apply_fn(*args, frozen) if with_frozen else apply_fn(*args)

  def mean_loss(params, frozen, batch):
    return token_loss(logits_of(params, frozen, batch), batch["input_ids"], batch["loss_mask"],
                      method=method, row_weight_B=batch.get("weight"))

  def scaled_sum(params, frozen, batch, count):
    total, _ = token_loss_sum(logits_of(params, frozen, batch), batch["input_ids"],
                              batch["loss_mask"], method=method, row_weight_B=batch.get("weight"))
    return total / count

  def loss_and_grads(params, frozen, batch):
    if grad_accum == 1:
      return jax.value_and_grad(mean_loss)(params, frozen, batch)
    count = jnp.maximum(jnp.sum(jax.vmap(target_mask)(batch["loss_mask"],
                                                      batch.get("weight"))), 1.0)

    def body(carry, micro):
      loss_acc, grad_acc = carry
      loss, grads = jax.value_and_grad(scaled_sum)(params, frozen, micro, count)
      return (loss_acc + loss, jax.tree.map(jnp.add, grad_acc, grads)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (loss, grads), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros), batch)
    return loss, grads

  def step(params, opt_state, batch, lr, frozen=None):
    loss, grads = loss_and_grads(params, frozen, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    updates = jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)
    params = optax.apply_updates(params, updates)
    return _constrain(params, mesh), _constrain(opt_state, mesh), loss

  return jax.jit(step)


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


class Checkpointer:
  """Periodic atomic checkpoints of a training run (orbax-checkpoint), and resumption.

  Each checkpoint holds the parameters, the optimiser state and the losses so far under the
  step it was taken after; orbax writes it to a temporary folder and renames it when
  complete, so a killed run leaves either a whole checkpoint or none. `fingerprint` (a JSON
  object describing the run: model, data, settings, seed) is stored beside them; resuming
  with another fingerprint is refused, so a folder never mixes two runs.

  Args:
    directory: the checkpoint folder (created).
    every: save after every `every` steps (and never after the last one: the caller writes
      the final result itself).
    fingerprint: JSON-serialisable description of the run.
    keep: how many recent checkpoints to keep.
  """

  FINGERPRINT = "run.json"

  def __init__(self, directory: str, every: int, fingerprint: Mapping[str, Any], keep: int = 2):
    import json
    import os

    import orbax.checkpoint as ocp

    from pacbayes.core.atomic import write_text

    if every < 1:
      raise ValueError(f"checkpoint interval must be >= 1 step, got {every}")
    self.directory = os.path.abspath(directory)
    self.every = int(every)
    text = json.dumps(fingerprint, sort_keys=True, indent=2) + "\n"
    file = os.path.join(self.directory, self.FINGERPRINT)
    if os.path.isfile(file):
      with open(file) as f:
        old = f.read()
      if json.loads(old) != json.loads(text):
        raise ValueError(f"{self.directory}: holds checkpoints of another run (different "
                         "model, data or settings); remove it or choose another output")
    else:
      os.makedirs(self.directory, exist_ok=True)
      write_text(file, text)
    self._ocp = ocp
    self._manager = ocp.CheckpointManager(
      os.path.join(self.directory, "steps"),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def restore(self, template: Mapping[str, Any]) -> tuple[int, dict[str, Any]] | None:
    """(step, state) of the latest checkpoint, restored with `template`'s shardings, or None."""
    step = self._manager.latest_step()
    if step is None:
      return None
    return step, self._manager.restore(step, args=self._ocp.args.StandardRestore(template))

  def save(self, step: int, state: Mapping[str, Any]) -> None:
    self._manager.save(step, args=self._ocp.args.StandardSave(state))
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _host_batch(arrays: Mapping[str, np.ndarray], idx: np.ndarray, grad_accum: int) -> dict:
  batch = {k: v[idx] for k, v in arrays.items()}
  if grad_accum > 1:
    batch = {k: v.reshape((grad_accum, v.shape[0] // grad_accum) + v.shape[1:])
             for k, v in batch.items()}
  return batch


def train(
  apply_fn: ApplyFn,
  params: Any,
  data: Mapping[str, np.ndarray],
  config: TrainConfig,
  *,
  key: jax.Array,
  progress: bool = True,
  desc: str = "train",
  frozen: Any = None,
  mesh: Any = None,
  checkpointer: Checkpointer | None = None,
) -> TrainResult:
  """Trains `params` on `data` with AdamW (see `TrainConfig`) and returns the new params.

  Pretraining passes a loss mask covering the whole sequence; fine-tuning passes one covering
  the completion only. The loop is a plain `jax.jit` step over the parameter pytree with
  fixed-shape batches, so it compiles once per shape. The batch order depends only on `key`
  and the number of rows, so a run is deterministic for a seed, and a run resumed from a
  checkpoint replays exactly the remaining steps.

  Args:
    apply_fn: apply(params, input_ids, attention_mask) -> logits, e.g. from `model_apply`
      (weight space) or `pacbayes.study.subspace.subspace_apply` (a random subspace); with
      `frozen`, apply(params, input_ids, attention_mask, frozen).
    params: the parameter pytree to start from.
    data: dict with "input_ids", "attention_mask", "loss_mask" arrays of shape [N, L].
    config: optimisation settings.
    key: PRNG key for the batch order.
    progress: show a tqdm bar with rate, ETA, tokens/s and the running loss.
    desc: label of the progress bar.
    frozen: arrays the model needs but that are not trained (e.g. the base of a LoRA).
    mesh: a `jax.sharding.Mesh` with axes ('data', 'fsdp') (`pacbayes.core.sharding.make_mesh`):
      params, frozen arrays and optimiser state are split along 'fsdp', batches along 'data'.
      None: default device placement.
    checkpointer: resume from its latest checkpoint and save every `checkpointer.every` steps.

  Returns:
    A `TrainResult` with the trained parameters and the per-step losses.
  """
  from pacbayes.core import sharding as shd

  num_rows = check_arrays(data)
  arrays = {k: np.asarray(data[k], dtype=np.int32) for k in BATCH_KEYS}
  optimizer = make_optimizer(config)
  step = make_train_step(apply_fn, config.method, config.b1, config.b2, config.weight_decay,
                         config.grad_clip, grad_accum=config.grad_accum, eps=config.eps,
                         with_frozen=frozen is not None, mesh=mesh)
  if mesh is not None:
    params = shd.shard_params(params, mesh)
    frozen = shd.shard_params(frozen, mesh) if frozen is not None else None
  opt_state = optimizer.init(params)
  lrs = learning_rates(config)
  order = batch_indices(num_rows, config.batch_size, config.steps, key=key)
  losses = np.zeros(config.steps, dtype=np.float64)
  start_step = 0
  if checkpointer is not None:
    restored = checkpointer.restore({"params": params, "opt_state": opt_state,
                                     "losses": losses})
    if restored is not None:
      start_step, state = restored
      params, opt_state = state["params"], state["opt_state"]
      losses = np.array(state["losses"], dtype=np.float64)
  bar = _progress(config.steps, desc, progress)
  if bar is not None and start_step:
    bar.update(start_step)
  batch_axis = (1,) if config.grad_accum > 1 else (0,)
  extra = () if frozen is None else (frozen,)
  start = time.perf_counter()
  pending, tokens = [], 0
  for i in range(start_step, config.steps):
    host = _host_batch(arrays, order[i], config.grad_accum)
    tokens += int(host["attention_mask"].sum())
    batch = shd.shard_batch(host, mesh, batch_axis) if mesh is not None else {
      k: jnp.asarray(v) for k, v in host.items()}
    params, opt_state, loss = step(params, opt_state, batch, lrs[i], *extra)
    pending.append((i, loss))
    last = i == config.steps - 1
    save = checkpointer is not None and not last and (i + 1) % checkpointer.every == 0
    # Reading the loss back every few steps keeps dispatch asynchronous.
    if len(pending) >= 10 or last or save:
      for j, value in pending:
        losses[j] = float(value)
      pending = []
      if bar is not None:
        rate = tokens / max(time.perf_counter() - start, 1e-9)
        bar.set_postfix(loss=f"{losses[i]:.4f}", tok_s=f"{rate:.0f}", refresh=False)
    if save:
      checkpointer.save(i + 1, {"params": params, "opt_state": opt_state, "losses": losses})
    if bar is not None:
      bar.update(1)
  jax.block_until_ready(params)
  if bar is not None:
    bar.close()
  return TrainResult(params=params, losses=losses, time_s=time.perf_counter() - start,
                     tokens=tokens, resumed_from=start_step)


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
