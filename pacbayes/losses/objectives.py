"""Training objectives (unbounded, for optimisation): token cross-entropy and DFT.

The one loss-closure builder (`make_loss_fn`) and the sums the trainer's step uses
(`objective_sums`); the next-token alignment is `pacbayes.losses.bounded.next_token_shift`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from pacbayes.losses.bounded import next_token_shift

OBJECTIVES = ("ce", "dft")


def target_log_probs(logits_BxLxV: jax.Array, input_ids_BxL: jax.Array) -> jax.Array:
  """[B, L-1] float32 log-probability of each next token, log p(input_ids[b, t+1] | prefix)."""
  logits_BxTxV, targets_BxT, _ = next_token_shift(logits_BxLxV, input_ids_BxL, input_ids_BxL)
  logits_BxTxV = logits_BxTxV.astype(jnp.float32)
  logz_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
  picked_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  return picked_BxT - logz_BxT


def dft_token_weights(logits_BxLxV: jax.Array, input_ids_BxL: jax.Array) -> jax.Array:
  """DFT token weights stop_gradient(p(target)), shape [B, L-1] (Wu et al. 2025)."""
  return jax.lax.stop_gradient(jnp.exp(target_log_probs(logits_BxLxV, input_ids_BxL)))


def target_mask(loss_mask_BxL: jax.Array, row_weight_B: jax.Array | None = None) -> jax.Array:
  """[B, L-1] float32 weight of each next-token target (loss mask times row weight)."""
  mask_BxT = loss_mask_BxL[:, 1:].astype(jnp.float32)
  if row_weight_B is not None:
    mask_BxT = mask_BxT * row_weight_B.astype(jnp.float32)[:, None]
  return mask_BxT


def objective_sums(
  logits_BxLxV: jax.Array,
  input_ids_BxL: jax.Array,
  loss_mask_BxL: jax.Array,
  *,
  method: str = "ce",
  row_weight_B: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Sums of the training objective and of the cross-entropy over the targets, and their count.

  "ce": each target's -log p. "dft" (dynamic fine-tuning; Wu et al. 2025, arXiv 2508.05629,
  "On the Generalization of SFT"): -log p scaled by stop_gradient(p), whose gradient is
  p * grad(-log p) = -grad p. The cross-entropy sum is returned for both, so a DFT run can
  report a loss comparable with an SFT run.

  Returns:
    ``(objective_sum, ce_sum, count)``: float32 scalars; the mean objective is
    objective_sum / max(count, 1). Gradient accumulation divides each micro-batch's sum by
    the whole batch's count.
  """
  if method not in OBJECTIVES:
    raise ValueError(f"method must be one of {OBJECTIVES}, got {method!r}")
  logp_BxT = target_log_probs(logits_BxLxV, input_ids_BxL)
  mask_BxT = target_mask(loss_mask_BxL, row_weight_B)
  nll_BxT = -logp_BxT
  ce_sum = jnp.sum(nll_BxT * mask_BxT)
  if method == "dft":
    nll_BxT = jax.lax.stop_gradient(jnp.exp(logp_BxT)) * nll_BxT
  return jnp.sum(nll_BxT * mask_BxT), ce_sum, jnp.sum(mask_BxT)


def token_loss_sum(
  logits_BxLxV: jax.Array,
  input_ids_BxL: jax.Array,
  loss_mask_BxL: jax.Array,
  *,
  method: str = "ce",
  row_weight_B: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """``(objective_sum, count)`` of `objective_sums`."""
  total, _, count = objective_sums(logits_BxLxV, input_ids_BxL, loss_mask_BxL, method=method,
                                   row_weight_B=row_weight_B)
  return total, count


def token_loss(
  logits_BxLxV: jax.Array,
  input_ids_BxL: jax.Array,
  loss_mask_BxL: jax.Array,
  *,
  method: str = "ce",
  row_weight_B: jax.Array | None = None,
) -> jax.Array:
  """Scalar float32 mean training objective over the target tokens of a batch.

  See `objective_sums` for "ce" and "dft"; ``row_weight_B`` (0 for padding rows of a
  fixed-shape batch) weights whole rows.
  """
  total, count = token_loss_sum(logits_BxLxV, input_ids_BxL, loss_mask_BxL, method=method,
                                row_weight_B=row_weight_B)
  return total / jnp.maximum(count, 1.0)


def make_loss_fn(apply_fn: Callable[..., jax.Array],
                 method: str = "ce") -> Callable[[Any, dict], jax.Array]:
  """The one training-loss closure: ``loss(params, batch) -> scalar`` (see `token_loss`).

  Args:
    apply_fn: ``apply(params, input_ids, attention_mask) -> logits_BxLxV``.
    method: "ce" or "dft".
  """

  def loss_fn(params: Any, batch: dict) -> jax.Array:
    logits_BxLxV = apply_fn(params, batch["input_ids"], batch["attention_mask"])
    return token_loss(logits_BxLxV, batch["input_ids"], batch["loss_mask"], method=method,
                      row_weight_B=batch.get("weight"))

  return loss_fn
