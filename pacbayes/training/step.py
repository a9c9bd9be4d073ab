"""The compiled training step, model-apply closures, and the finiteness check of a pytree."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pacbayes.core.memory import release_free_memory
from pacbayes.losses import objective_sums, target_mask
from pacbayes.training.config import TrainConfig, make_optimizer

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


def _constrain(tree: Any, mesh: Any) -> Any:
  """Keeps parameters and optimiser state on their fsdp shardings inside the step."""
  if mesh is None:
    return tree
  from jax.sharding import NamedSharding

  from pacbayes.core.sharding import param_spec

  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(
    x, NamedSharding(mesh, param_spec(np.shape(x), mesh))), tree)


@jax.jit
def all_finite(tree: Any) -> jax.Array:
  """True when every leaf of a pytree of float arrays is finite (one fused pass)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


_COMPILED: set[tuple[int, tuple]] = set()  # (id(step), argument shapes) compiled by `compile_step`
COMPILE_AHEAD_BYTES = 2**26  # smaller arguments (the study's small decoders): not worth a trace


def compile_step(step: Callable, *args: Any, min_bytes: int = COMPILE_AHEAD_BYTES) -> bool:
  """Compiles `step` for `args` ahead of its first call, then `release_free_memory`
  (`pacbayes.core.memory`).

  The compiler's freed scratch is handed back before the step's buffers are allocated, so it
  does not add to the run's peak memory. The call that follows reuses the compiled program
  (JAX's compilation cache; the function is traced once more). Done once per step and shape,
  and only when the arguments (weights, frozen base, optimiser state, batch) hold at least
  `min_bytes`; a step that is not a `jax.jit` function (a test's wrapper) is left alone.

  Returns:
    True when it compiled here.
  """
  lower = getattr(step, "lower", None)
  leaves = jax.tree.leaves(args)
  shapes = tuple((np.shape(x), str(getattr(x, "dtype", type(x).__name__))) for x in leaves)
  key = (id(step), shapes)
  if (lower is None or key in _COMPILED
      or sum(getattr(x, "nbytes", 8) for x in leaves) < min_bytes):
    return False
  lower(*args).compile()
  _COMPILED.add(key)
  release_free_memory()
  return True


@functools.lru_cache(maxsize=64)
def make_train_step(apply_fn: ApplyFn, method: str, b1: float, b2: float, weight_decay: float,
                    grad_clip: float, *, grad_accum: int = 1, eps: float = 1e-8,
                    with_frozen: bool = False, mesh: Any = None) -> Callable:
  """A jitted step (params, opt_state, batch, lr[, frozen]) -> (params, opt_state, stats_3).

  `stats_3` = [objective, cross-entropy, global gradient norm] (float32): the step's mean
  training objective and mean token cross-entropy (equal for "ce"), both over the batch's
  target tokens, and the norm of the gradient before clipping (for the divergence check).
  Cached on its arguments, so runs that share an apply function and optimiser settings reuse
  one compiled program per batch shape (the learning rate is an argument, not a constant).

  Args:
    apply_fn: apply(params, ids, mask) -> logits, or apply(params, ids, mask, frozen) when
      `with_frozen` (frozen arrays, e.g. a LoRA base, enter as an argument: not trained, and
      not baked into the program as constants).
    method, b1, b2, weight_decay, grad_clip, eps: see `TrainConfig`.
    grad_accum: 1: batch arrays are [B, L]; A > 1: [A, B/A, L], scanned, gradients summed,
      each micro-batch's sums divided by the whole batch's target count.
    mesh: a `jax.sharding.Mesh` whose 'fsdp' sharding the outputs keep (None: no constraint).
  """
  optimizer = make_optimizer(
    TrainConfig(steps=1, batch_size=1, learning_rate=1.0, b1=b1, b2=b2,
                weight_decay=weight_decay, grad_clip=grad_clip, method=method, eps=eps))

  def scaled_sums(params, frozen, batch, count):
    args = (params, batch["input_ids"], batch["attention_mask"])
    logits_BxLxV = apply_fn(*args, frozen) if with_frozen else apply_fn(*args)
    objective, ce, _ = objective_sums(logits_BxLxV, batch["input_ids"], batch["loss_mask"],
                                      method=method, row_weight_B=batch.get("weight"))
    return objective / count, ce / count

  grad_fn = jax.value_and_grad(scaled_sums, has_aux=True)

  def loss_and_grads(params, frozen, batch):
    if grad_accum == 1:
      count = jnp.maximum(jnp.sum(target_mask(batch["loss_mask"], batch.get("weight"))), 1.0)
      return grad_fn(params, frozen, batch, count)
    count = jnp.maximum(jnp.sum(jax.vmap(target_mask)(batch["loss_mask"],
                                                      batch.get("weight"))), 1.0)

    def body(carry, micro):
      (obj_acc, ce_acc), grad_acc = carry
      (obj, ce), grads = grad_fn(params, frozen, micro, count)
      return ((obj_acc + obj, ce_acc + ce), jax.tree.map(jnp.add, grad_acc, grads)), None

    zero = jnp.zeros((), jnp.float32)
    zeros = jax.tree.map(jnp.zeros_like, params)
    (sums, grads), _ = jax.lax.scan(body, ((zero, zero), zeros), batch)
    return sums, grads

  def step(params, opt_state, batch, lr, frozen=None):
    (objective, ce), grads = loss_and_grads(params, frozen, batch)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    updates = jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)
    params = optax.apply_updates(params, updates)
    stats_3 = jnp.stack([objective, ce, grad_norm]).astype(jnp.float32)
    return _constrain(params, mesh), _constrain(opt_state, mesh), stats_3

  return jax.jit(step)
