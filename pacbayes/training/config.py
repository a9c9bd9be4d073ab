"""The one optimiser/training configuration, its schedule and optimiser, and the run's outcome.

Used by the study (small decoders, random subspaces) and by `pacbayes finetune` (which adds
only paths, data and LoRA settings; `pacbayes.training.finetune.FinetuneConfig`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

# The objectives of `pacbayes.losses.objectives` (OBJECTIVES; a test checks they agree). Named
# here so that this module imports neither JAX nor Optax: the command line reads the defaults
# for its --help without starting JAX.
METHODS = ("ce", "dft")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimisation settings of one training run: the project's one set of defaults.

  AdamW (decoupled weight decay on matrices only) with a linear warmup and a cosine decay to
  `end_lr_ratio` of the peak, global-norm clipping and gradient accumulation.

  Attributes:
    steps: number of optimiser steps.
    batch_size: rows per step (every batch has this fixed shape). Default 8.
    learning_rate: peak learning rate of the warmup + cosine schedule. Default 1e-4.
    warmup_steps: linear warmup length (clipped to `steps`). Default 0.
    end_lr_ratio: final learning rate as a fraction of the peak. Default 0.1.
    weight_decay: decoupled AdamW weight decay (applied to matrices only). Default 0.
    grad_clip: global-norm gradient clipping threshold (0 disables it). Default 1.
    b1: Adam first-moment decay. Default 0.9.
    b2: Adam second-moment decay. Default 0.98 (torch's AdamW uses 0.999; 0.98 is the usual
      choice for transformers and the study's setting).
    method: "ce" (token cross-entropy) or "dft" (dynamic fine-tuning, Wu et al. 2025).
    grad_accum: micro-batches per step; the step's loss is still the mean over all target
      tokens of the batch (micro-batch sums divided by the batch's token count). Default 1.
    eps: Adam epsilon (added to sqrt(v_hat)). Default 1e-8.
  """

  steps: int
  batch_size: int = 8
  learning_rate: float = 1e-4
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
    def count(name, value, least):
      if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
        raise ValueError(f"TrainConfig.{name} must be an integer >= {least}, got {value!r}")

    count("steps", self.steps, 1)
    count("batch_size", self.batch_size, 1)
    count("warmup_steps", self.warmup_steps, 0)
    count("grad_accum", self.grad_accum, 1)
    if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
      raise ValueError(f"TrainConfig.learning_rate must be > 0, got {self.learning_rate}")
    if not 0.0 <= self.end_lr_ratio <= 1.0:
      raise ValueError(f"TrainConfig.end_lr_ratio must be in [0, 1], got {self.end_lr_ratio}")
    if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)) or not (
        self.grad_clip >= 0 and math.isfinite(self.grad_clip)):
      raise ValueError("TrainConfig.weight_decay and TrainConfig.grad_clip must be finite "
                       "and >= 0")
    if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
      raise ValueError(f"TrainConfig.b1, b2 must be in [0, 1), got {self.b1}, {self.b2}")
    if self.method not in METHODS:
      raise ValueError(f"TrainConfig.method must be one of {METHODS}, got {self.method!r}")
    if self.batch_size % self.grad_accum:
      raise ValueError(f"TrainConfig.grad_accum must divide batch_size={self.batch_size}, got "
                       f"{self.grad_accum}")
    if not self.eps > 0:
      raise ValueError(f"TrainConfig.eps must be > 0, got {self.eps}")


def default(name: str) -> Any:
  """The default of a `TrainConfig` field (one place for every command's defaults)."""
  return {f.name: f.default for f in dataclasses.fields(TrainConfig)}[name]


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """Outcome of `train`: the trained parameters and the loss curve.

  Attributes:
    params: trained `nnx.State` of parameters (same structure as the input).
    losses: [steps] float64 training objective per step (mean over target tokens).
    time_s: wall-clock seconds spent in the loop (compilation included).
    tokens: real (attention-mask) tokens processed by this call.
    resumed_from: the step this call started at (0 unless resumed from a checkpoint).
    ce_losses: [steps] float64 token cross-entropy per step (nats per target token): equal
      to `losses` for "ce", the comparable loss for "dft" (whose objective is p-weighted).
  """

  params: Any
  losses: np.ndarray
  time_s: float
  tokens: int = 0
  resumed_from: int = 0
  ce_losses: np.ndarray | None = None


class TrainingDiverged(ValueError):
  """A non-finite loss, gradient norm or parameter: training stopped, nothing was written.

  Attributes:
    step: the 1-based step whose loss or gradient was not finite.
    loss: that step's loss.
    grad_norm: that step's global gradient norm (before clipping).
    checkpoint: the step of the last (finite) checkpoint kept, or None.
    what: what was found non-finite: "loss" (loss or gradient norm) or "parameters".
  """

  def __init__(self, step: int, loss: float, grad_norm: float, checkpoint: int | None = None,
               what: str = "loss"):
    self.step, self.loss, self.grad_norm, self.checkpoint = step, loss, grad_norm, checkpoint
    self.what = what
    detail = (f"loss {loss:.4g}, gradient norm {grad_norm:.4g}" if what == "loss" else
              "the parameters after it are not finite")
    super().__init__(f"training diverged at step {step}: {detail}")


def learning_rates(config: TrainConfig) -> np.ndarray:
  """[steps] float32 learning rate per step: linear warmup, then cosine decay to the end ratio.

  lr(t) = peak (t + 1) / (w + 1) for t < w; then end + (peak - end) (1 + cos(pi f)) / 2 with
  f = (t - w) / (steps - w) (Loshchilov & Hutter 2017, SGDR, without restarts).
  """
  steps = np.arange(config.steps, dtype=np.float64)
  warmup = min(config.warmup_steps, max(config.steps - 1, 0))
  peak, end = config.learning_rate, config.learning_rate * config.end_lr_ratio
  decay_len = max(config.steps - warmup, 1)
  frac = np.clip((steps - warmup) / decay_len, 0.0, 1.0)
  lr = end + (peak - end) * 0.5 * (1.0 + np.cos(np.pi * frac))
  if warmup > 0:
    lr = np.where(steps < warmup, peak * (steps + 1) / (warmup + 1), lr)
  return lr.astype(np.float32)


def make_optimizer(config: TrainConfig) -> Any:
  """AdamW direction without the learning rate: clipping, Adam scaling, decay on matrices.

  The learning rate is applied by the step (it is an argument), so one compiled step serves
  every schedule and every run with the same shapes.

  Returns:
    An `optax.GradientTransformation`.
  """
  import jax
  import jax.numpy as jnp
  import optax

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
