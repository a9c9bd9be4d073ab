"""The project's one trainer: pretraining and fine-tuning (cross-entropy and DFT) in JAX.

Used by the study (`pacbayes.study.runner`, small decoders, random subspaces) and by
`pacbayes finetune` (`pacbayes.training.finetune`: real checkpoints, full or LoRA, on a device
mesh): AdamW with linear warmup and cosine decay, global-norm clipping, gradient
accumulation, optional rematerialisation, fixed-shape batches in a seeded order, periodic
atomic checkpoints (orbax) from which an interrupted run resumes to the same final weights.
A non-finite loss, gradient norm or final parameter stops the run (`TrainingDiverged`).

The settings are `pacbayes.training.config.TrainConfig`, the step
`pacbayes.training.step.make_train_step`, the objectives `pacbayes.losses.objectives`; their
names stay importable from here.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pacbayes.losses import (
  dft_token_weights,
  make_loss_fn,
  target_log_probs,
  target_mask,
  token_loss,
  token_loss_sum,
)
from pacbayes.training.checkpoints import Checkpointer
from pacbayes.training.config import (
  METHODS,
  TrainConfig,
  TrainingDiverged,
  TrainResult,
  learning_rates,
  make_optimizer,
)
from pacbayes.training.step import (
  ApplyFn,
  all_finite,
  compile_step,
  make_train_step,
  model_apply,
  rematerialise,
)

__all__ = [
  "BATCH_KEYS", "METHODS", "ApplyFn", "Checkpointer", "Monitor", "TrainConfig", "TrainResult",
  "TrainingDiverged", "all_finite", "batch_indices", "check_arrays", "dft_token_weights",
  "learning_rates", "make_loss_fn", "make_optimizer", "make_train_step", "model_apply",
  "rematerialise", "target_log_probs", "target_mask", "token_loss", "token_loss_sum", "train",
  "train_model",
]

BATCH_KEYS = ("input_ids", "attention_mask", "loss_mask")
# Read the losses back (a sync) about this often, and at most this many steps apart: the bar
# then counts finished steps, and dispatch stays asynchronous between syncs.
SYNC_SECONDS = 1.0
MAX_SYNC_STEPS = 10


@dataclasses.dataclass(frozen=True)
class Monitor:
  """Looks at the parameters during training: `fn(step, params)` after each step count in
  `at` (steps done, 1..config.steps), e.g. to score snapshots for early stopping.

  `fn` runs synchronously between steps; it may keep `params` (arrays are immutable).
  """

  at: Collection[int]
  fn: Callable[[int, Any], None]


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


def _host_batch(arrays: Mapping[str, np.ndarray], idx: np.ndarray, grad_accum: int) -> dict:
  batch = {k: v[idx] for k, v in arrays.items()}
  if grad_accum > 1:
    batch = {k: v.reshape((grad_accum, v.shape[0] // grad_accum) + v.shape[1:])
             for k, v in batch.items()}
  return batch


class _Syncs:
  """Reads the pending steps' statistics back, checks them, and moves the bar."""

  def __init__(self, config: TrainConfig, losses: np.ndarray, ce: np.ndarray, bar: Any,
               checkpointer: Checkpointer | None):
    self.config, self.losses, self.ce, self.bar = config, losses, ce, bar
    self.checkpointer, self.saved = checkpointer, None
    self.pending: list[tuple[int, Any]] = []
    self.last = time.perf_counter()
    self.window = 1  # steps between syncs, adapted to the step time

  def due(self) -> bool:
    return len(self.pending) >= self.window

  def sync(self, tokens: int, start: float) -> None:
    for j, stats in self.pending:
      loss, ce, grad_norm = (float(x) for x in np.asarray(stats))
      if not (math.isfinite(loss) and math.isfinite(ce) and math.isfinite(grad_norm)):
        raise TrainingDiverged(j + 1, loss, grad_norm, self.saved)
      self.losses[j], self.ce[j] = loss, ce
    now = time.perf_counter()
    done = len(self.pending)
    per_step = (now - self.last) / max(done, 1)
    self.window = int(min(MAX_SYNC_STEPS, max(1, SYNC_SECONDS // max(per_step, 1e-9))))
    self.last = now
    if self.bar is not None and done:
      j = self.pending[-1][0]
      post = {"loss": f"{self.ce[j]:.4f}"}
      if self.config.method == "dft":
        post["dft_obj"] = f"{self.losses[j]:.4f}"
      post["tok/s"] = f"{tokens / max(now - start, 1e-9):.0f}"
      self.bar.set_postfix(post, refresh=False)
      self.bar.update(done)
    self.pending = []


def train(
  apply_fn: ApplyFn,
  params: Any,
  data: Mapping[str, np.ndarray],
  config: TrainConfig,
  *,
  key: jax.Array,
  progress: bool | str = True,
  frozen: Any = None,
  mesh: Any = None,
  checkpointer: Checkpointer | None = None,
  monitor: Monitor | None = None,
) -> TrainResult:
  """Trains `params` on `data` with AdamW (see `TrainConfig`) and returns the new params.

  Pretraining passes a loss mask covering the whole sequence; fine-tuning passes one covering
  the completion only. The loop is a plain `jax.jit` step over the parameter pytree with
  fixed-shape batches, so it compiles once per shape. The batch order depends only on `key`
  and the number of rows, so a run is deterministic for a seed, and a run resumed from a
  checkpoint replays exactly the remaining steps. The statistics are read back at syncs
  (about every `SYNC_SECONDS`, at most `MAX_SYNC_STEPS` steps apart, and before every
  checkpoint); the progress bar counts the steps finished at the last sync and shows the
  token cross-entropy (and the DFT objective beside it), and tokens/s. The step is compiled
  before its first call and the compiler's freed scratch handed back to the OS
  (`pacbayes.training.step.compile_step`), so that it does not add to the run's peak memory.

  Args:
    apply_fn: apply(params, input_ids, attention_mask) -> logits, e.g. from `model_apply`
      (weight space) or `pacbayes.study.subspace.subspace_apply` (a random subspace); with
      `frozen`, apply(params, input_ids, attention_mask, frozen).
    params: the parameter pytree to start from.
    data: dict with "input_ids", "attention_mask", "loss_mask" arrays of shape [N, L].
    config: optimisation settings.
    key: PRNG key for the batch order.
    progress: show a tqdm bar (labelled "train"); a string: show one with that label.
    frozen: arrays the model needs but that are not trained (e.g. the base of a LoRA).
    mesh: a `jax.sharding.Mesh` with axes ('data', 'fsdp') (`pacbayes.core.sharding.make_mesh`):
      params, frozen arrays and optimiser state are split along 'fsdp', batches along 'data'.
      None: default device placement.
    checkpointer: resume from its newest intact checkpoint and save every
      `checkpointer.every` steps (only finite states are saved).
    monitor: called with the parameters after the steps it lists (`Monitor`).

  Returns:
    A `TrainResult` with the trained parameters and the per-step losses.

  Raises:
    TrainingDiverged: a step's loss or gradient norm, or the final parameters, are not
      finite (a checkpoint already saved is kept; its step is in the exception).
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
  if mesh is not None:  # placed as the step returns it, so the step compiles once
    opt_state = shd.shard_params(opt_state, mesh)
  lrs = learning_rates(config)
  order = batch_indices(num_rows, config.batch_size, config.steps, key=key)
  losses = np.zeros(config.steps, dtype=np.float64)
  ce = np.zeros(config.steps, dtype=np.float64)
  start_step = 0
  if checkpointer is not None:
    restored = checkpointer.restore({"params": params, "opt_state": opt_state,
                                     "losses": losses, "ce_losses": ce})
    if restored is not None:
      start_step, state = restored
      params, opt_state = state["params"], state["opt_state"]
      losses = np.array(state["losses"], dtype=np.float64)
      ce = np.array(state["ce_losses"], dtype=np.float64)
  bar = _progress(config.steps, progress if isinstance(progress, str) else "train",
                  bool(progress))
  watch = frozenset(monitor.at) if monitor is not None else frozenset()
  if bar is not None and start_step:
    bar.update(start_step)
  syncs = _Syncs(config, losses, ce, bar, checkpointer)
  syncs.saved = start_step or None
  batch_axis = (1,) if config.grad_accum > 1 else (0,)
  extra = () if frozen is None else (frozen,)
  start = time.perf_counter()
  syncs.last = start
  tokens = 0
  try:
    for i in range(start_step, config.steps):
      host = _host_batch(arrays, order[i], config.grad_accum)
      tokens += int(host["attention_mask"].sum())
      batch = shd.shard_batch(host, mesh, batch_axis) if mesh is not None else {
        k: jnp.asarray(v) for k, v in host.items()}
      if i == start_step:  # compile first, then hand the compiler's scratch back to the OS
        compile_step(step, params, opt_state, batch, lrs[i], *extra)
      params, opt_state, stats = step(params, opt_state, batch, lrs[i], *extra)
      syncs.pending.append((i, stats))
      if i + 1 in watch:
        monitor.fn(i + 1, params)
      last = i == config.steps - 1
      save = checkpointer is not None and not last and (i + 1) % checkpointer.every == 0
      if syncs.due() or last or save:
        syncs.sync(tokens, start)
      if save:
        if not bool(all_finite(params)):
          raise TrainingDiverged(i + 1, float(losses[i]), float("nan"), syncs.saved,
                                 what="parameters")
        checkpointer.save(i + 1, {"params": params, "opt_state": opt_state, "losses": losses,
                                  "ce_losses": ce})
        syncs.saved = i + 1
    jax.block_until_ready(params)
    if not bool(all_finite(params)):
      raise TrainingDiverged(config.steps, float(losses[-1]), float("nan"), syncs.saved,
                             what="parameters")
  finally:
    if bar is not None:
      bar.close()
  return TrainResult(params=params, losses=losses, time_s=time.perf_counter() - start,
                     tokens=tokens, resumed_from=start_step, ce_losses=ce)


def train_model(model: nnx.Module, data: Mapping[str, np.ndarray], config: TrainConfig, *,
                key: jax.Array, progress: bool | str = True) -> TrainResult:
  """Convenience wrapper: splits `model`, trains all its parameters, writes them back."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  result = train(model_apply(graphdef, rest), params, data, config, key=key,
                 progress=progress)
  nnx.update(model, result.params)
  return result


def _progress(total: int, desc: str, enabled: bool):
  if not enabled:
    return None
  from tqdm.auto import tqdm

  return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, leave=False)
