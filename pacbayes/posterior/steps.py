"""Compiled steps of the Monte-Carlo risk: plain, perturbed copy, noise in the forward pass.

Three ways to score a batch under posterior draw m (key `fold_in(key, m)`, one key per leaf
from `pacbayes.posterior.draws.leaf_keys` in `jax.tree.leaves` order), all with the same
numbers:

* `perturbed_copy` + `plain_step`: the draw's perturbed copy is made once, one leaf at a
  time, then every batch runs the unperturbed program on it (a whole copy is live);
* `draw_step`: G draws vmapped in one program that perturbs every leaf, then runs the loss
  (G whole copies live inside the program);
* `forward_draw_step`: G draws vmapped over the model's staged forward pass
  (`pacbayes.models.transformer.Decoder`, reached through `pacbayes.losses.ModelLoss.
  with_runner`): each stage (embedding, block, final norm, head) is its own compiled program
  that perturbs that stage's parameters and runs it (`StageNoise`). No perturbed copy of the
  whole model exists: one stage's perturbed parameters per draw (the embedding lookup draws
  only the looked-up rows of a large table; the head draws the whole table), at the price of
  making the noise again in every forward pass (a draw scored in several batches makes it
  once per batch).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pacbayes.posterior.draws import (
  LossFn,
  leaf_keys,
  leaf_paths,
  perturb_leaf,
  perturb_leaves,
  perturb_rows,
  row_keyed,
)


def _hashable(x: Any) -> bool:
  try:
    hash(x)
    return True
  except TypeError:
    return False


# ------------------------------------------------------------------- whole perturbed copies


def _draw_step_impl(loss_fn: LossFn, treedef: Any, mask: tuple[bool, ...], shared_batch: bool):
  def one_draw(leaves, sigmas, key, index, batch):
    draw_key = jax.random.fold_in(key, index)
    theta = jax.tree.unflatten(treedef, perturb_leaves(draw_key, leaves, sigmas, mask))
    losses = loss_fn(theta, batch)
    return jnp.reshape(losses, (batch["weight"].shape[0],))

  in_axes = (None, None, None, 0, None if shared_batch else 0)
  return jax.jit(jax.vmap(one_draw, in_axes=in_axes))


_draw_step_cached = functools.lru_cache(maxsize=64)(_draw_step_impl)


def draw_step(loss_fn: LossFn, treedef: Any, mask: tuple[bool, ...], shared_batch: bool):
  """Compiled `(leaves, sigmas, key, draw_indices [G], batch) -> losses [G, B]`.

  `jax.jit(jax.vmap(...))` over G draws of: perturb the masked leaves with the key
  `fold_in(key, index)`, then `loss_fn`. With `shared_batch` every draw sees the same batch
  [B, ...]; otherwise batch arrays are [G, B, ...]. Cached on (loss_fn, treedef, mask,
  shared_batch) when they are hashable, so repeated calls reuse the compiled program.
  """
  if _hashable(loss_fn) and _hashable(treedef):
    return _draw_step_cached(loss_fn, treedef, mask, shared_batch)
  return _draw_step_impl(loss_fn, treedef, mask, shared_batch)


@functools.lru_cache(maxsize=64)
def _plain_step(loss_fn: LossFn):
  return jax.jit(lambda params, batch: jnp.reshape(
      loss_fn(params, batch), (batch["weight"].shape[0],)))


def plain_step(loss_fn: LossFn):
  """Compiled `(params, batch) -> losses [B]` without perturbation (cached when hashable)."""
  return _plain_step(loss_fn) if _hashable(loss_fn) else _plain_step.__wrapped__(loss_fn)


_perturb_leaf_jit = jax.jit(perturb_leaf)


def perturbed_copy(key: jax.Array, index: int, leaves: list, sigmas: list,
                   mask: tuple[bool, ...]) -> list:
  """Leaves of draw `index` (key fold_in(key, index)), made one leaf at a time.

  The same numbers as the draw made inside `draw_step`; only one leaf's noise exists at a
  time beside the finished copy, and each leaf shape compiles once.
  """
  keys = leaf_keys(jax.random.fold_in(key, index), leaves)
  return [_perturb_leaf_jit(k, x, s) if m else x
          for x, s, k, m in zip(leaves, sigmas, keys, mask, strict=True)]


# ------------------------------------------------------------ noise inside the forward pass


def forward_noise_supported(loss_fn: Any) -> bool:
  """Whether `loss_fn` can take its noise inside the forward pass (`forward_draw_step`).

  True for a `pacbayes.losses.ModelLoss` (from `pacbayes.losses.model_loss_fn`) of a model
  whose forward pass takes a stage runner (`pacbayes.models.Decoder`); False for any other
  loss function, which then gets whole perturbed copies.
  """
  return (callable(getattr(loss_fn, "with_runner", None))
          and bool(getattr(loss_fn, "accepts_runner", False)))


@functools.lru_cache(maxsize=256)
def _plain_stage(apply: Callable) -> Callable:
  return jax.jit(apply)


@functools.lru_cache(maxsize=256)
def _rows_stage(apply: Callable, by_rows: tuple[bool, ...]) -> Callable:
  """Compiled `(params, sigmas, keys, *inputs) -> apply(params2, *inputs)`: params2 is params
  with each leaf j of `by_rows` handed over as ``rows(ids) -> perturb_leaf(keys[j], leaf,
  sigmas[j])[ids]`` (`perturb_rows`: only the rows that apply reads are drawn)."""

  def stage(params, sigmas, keys, *inputs):
    leaves, treedef = jax.tree.flatten(params)
    out = [functools.partial(perturb_rows, k, x, s) if r else x
           for x, s, k, r in zip(leaves, sigmas, keys, by_rows, strict=True)]
    return apply(jax.tree.unflatten(treedef, out), *inputs)

  return jax.jit(stage)


class StageNoise:
  """A `pacbayes.models.transformer.StageRunner` that perturbs each stage as it runs.

  For each stage, the masked leaves are perturbed first, one compiled program per leaf shape
  (`perturb_leaf` with k_i the key of `leaf_keys(fold_in(key, index), leaves)` of the whole
  pytree: the programs of `perturbed_copy`, so the noise is that of a whole perturbed copy
  made with the same keys), then the stage runs as its own compiled program (one per kind of
  stage: every block shares one). So only one stage's perturbed parameters exist at a time,
  in an order fixed by the programs rather than by how XLA schedules one large one. A
  `row_keyed` leaf that a stage reads only through rows, declared in its `row_leaves` (the
  embedding lookup, and a tied head that streams the vocabulary), is handed over as
  ``rows(ids)`` (`perturb_rows`) and drawn inside the stage's program, only at the rows read:
  no perturbed table exists. A tied embedding is perturbed at both of its uses with the same
  key, so with the same noise. (Two designs were measured on CPU and dropped: one program
  holding every stage's noise, where XLA kept ~6 MiB of compiled code per normal draw, 1.5
  GiB for the 272 leaves of SmolLM2-135M, and scheduled all the noise first despite
  `jax.lax.optimization_barrier`; and each stage's noise inside the stage's program, whose
  compilation peaked ~0.1 GiB higher than the per-leaf programs.)

  Attributes:
    seen: indices of the leaves perturbed so far.
  """

  def __init__(self, key: jax.Array, index: jax.Array, sigmas: Sequence[jax.Array],
               mask: Sequence[bool], names: Sequence[str]):
    """`key`, draw `index` (a scalar, batched under `jax.vmap`), one sigma, mask bit and
    `leaf_paths` name per leaf of the whole parameter pytree."""
    self.key, self.index, self.sigmas, self.mask = key, index, sigmas, tuple(mask)
    self.names = tuple(names)
    self.where = {name: i for i, name in enumerate(self.names)}
    self.seen: set[int] = set()
    self.keys: list[jax.Array] | None = None

  def __call__(self, prefix: str, params: Any, apply: Callable, *inputs: Any) -> Any:
    where = []
    for rel in leaf_paths(params):
      name = f"{prefix}/{rel}" if prefix and rel else (prefix or rel)
      if name not in self.where:
        raise ValueError(f"stage {prefix!r}: parameter {name!r} is not a leaf of the "
                         "parameters being perturbed")
      where.append(self.where[name])
    mask = tuple(self.mask[i] for i in where)
    if not any(mask):
      return _plain_stage(apply)(params, *inputs)
    self.seen.update(i for i, m in zip(where, mask, strict=True) if m)
    if self.keys is None:  # this draw's key per leaf
      self.keys = leaf_keys(jax.random.fold_in(self.key, self.index), self.names)
    row_leaves = set(getattr(apply, "row_leaves", ()))
    leaves, treedef = jax.tree.flatten(params)
    by_rows, out = [], []
    for rel, x, m, i in zip(leaf_paths(params), leaves, mask, where, strict=True):
      by_rows.append(bool(m and rel in row_leaves and row_keyed(np.shape(x))))
      out.append(_perturb_leaf_jit(self.keys[i], x, self.sigmas[i])
                 if m and not by_rows[-1] else x)
    return _rows_stage(apply, tuple(by_rows))(
        jax.tree.unflatten(treedef, out), [self.sigmas[i] for i in where],
        [self.keys[i] for i in where], *inputs)

  def check_all_seen(self) -> None:
    """ValueError naming the masked leaves that no stage handed over."""
    missed = [self.names[i] for i, m in enumerate(self.mask) if m and i not in self.seen]
    if missed:
      raise ValueError(f"loss_fn: the forward pass never handed over {missed[:3]} (of "
                       f"{len(missed)} perturbed leaves); perturb them with noise='copy'")


def forward_draw_step(loss_fn: Any, treedef: Any, names: tuple[str, ...],
                      mask: tuple[bool, ...], shared_batch: bool):
  """`(leaves, sigmas, key, draw_indices [G], batch) -> losses [G, B]`, noise in the forward
  pass.

  The same call and the same numbers as `draw_step` (to float round-off: the programs
  differ), for a loss with `forward_noise_supported`: draw `index` perturbs each masked leaf
  with its key from ``leaf_keys(fold_in(key, index), leaves)``, but stage by stage inside the
  model's forward pass (`StageNoise`), never as a whole copy. The G draws are one
  `jax.vmap` over the staged pass (G = 1: the pass itself, unbatched), whose stages are
  compiled programs; the pass itself is driven from Python, one program per stage.

  Args:
    loss_fn: a `pacbayes.losses.ModelLoss` (``with_runner(params, batch, runner)``).
    treedef: the parameter pytree's structure.
    names: `leaf_paths` of the parameter pytree (one per leaf).
    mask: one bool per leaf.
    shared_batch: every draw sees the same batch [B, ...]; otherwise batch arrays are
      [G, B, ...].

  Raises:
    ValueError: (when called) a masked leaf that the forward pass never hands over.
  """

  def step(leaves, sigmas, key, draw_indices, batch):
    params = jax.tree.unflatten(treedef, leaves)

    def one_draw(index, one_batch):
      runner = StageNoise(key, index, sigmas, mask, names)
      losses = loss_fn.with_runner(params, one_batch, runner)
      runner.check_all_seen()
      return jnp.reshape(losses, (one_batch["weight"].shape[0],))

    draw_indices = jnp.asarray(draw_indices)
    if draw_indices.shape[0] == 1:  # one draw: unbatched stage programs (~10% faster on CPU)
      one = batch if shared_batch else jax.tree.map(lambda a: a[0], batch)
      return one_draw(draw_indices[0], one)[None]
    return jax.vmap(one_draw, in_axes=(0, None if shared_batch else 0))(draw_indices, batch)

  return step
