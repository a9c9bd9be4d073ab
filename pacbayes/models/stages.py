"""The stages of `pacbayes.models.transformer.Decoder`'s staged forward pass.

`Decoder.__call__(..., runner=runner)` runs each stage as ``runner(prefix, params, apply,
*inputs)``; the ``apply`` objects are these pure, hashable functions (frozen dataclasses, equal
for stages of one kind), so that a runner can compile each kind of stage once. The plain pass
uses `embed_tokens` and `head_logits` too, so both passes compute the same operations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

# Runs one stage of a staged forward pass: `runner(prefix, params, apply, *inputs)` returns
# `apply(params2, *inputs)` for parameters params2 like params, of its choice (the plain pass:
# params itself); see `pacbayes.models.transformer.Decoder`.
StageRunner = Callable[..., Any]


def embed_tokens(tables: dict[str, jax.Array], input_ids_BxT: jax.Array,
                 positions_BxT: jax.Array) -> jax.Array:
  """Token embeddings [B, T, D], plus the learned position embeddings when tables has them."""
  x_BxTxD = jnp.take(tables["embed"], input_ids_BxT, axis=0)
  if "pos_embed" in tables:
    pos_PxD = tables["pos_embed"]
    clipped_BxT = jnp.clip(positions_BxT, 0, pos_PxD.shape[0] - 1)
    x_BxTxD = x_BxTxD + jnp.take(pos_PxD, clipped_BxT, axis=0)
  return x_BxTxD


def head_logits(table: dict[str, jax.Array], hidden_BxTxD: jax.Array) -> jax.Array:
  """Float32 logits [B, T, V] from the tied embedding [V, D] or the head [D, V]."""
  if "embed" in table:
    embed_VxD = table["embed"]
    return jnp.einsum("btd,vd->btv", hidden_BxTxD.astype(embed_VxD.dtype), embed_VxD,
                      preferred_element_type=jnp.float32)
  head_DxV = table["lm_head"]
  return jnp.einsum("btd,dv->btv", hidden_BxTxD.astype(head_DxV.dtype), head_DxV,
                    preferred_element_type=jnp.float32)


@dataclasses.dataclass(frozen=True)
class EmbedStage:
  """Stage apply: (tables, input_ids [B, T], positions [B, T]) -> x [B, T, D], or with
  `with_table` (x, tables["embed"] [V, D]) for a tied head."""

  with_table: bool

  def __call__(self, tables, input_ids_BxT, positions_BxT):
    x_BxTxD = embed_tokens(tables, input_ids_BxT, positions_BxT)
    return (x_BxTxD, tables["embed"]) if self.with_table else x_BxTxD


@dataclasses.dataclass(frozen=True)
class HeadStage:
  """Stage apply: (table, normed x [B, T, D]) -> logits [B, T, V] float32; a tied head gets
  ({}, x, embed [V, D])."""

  def __call__(self, table, hidden_BxTxD, *tied_embed):
    return head_logits({"embed": tied_embed[0]} if tied_embed else table, hidden_BxTxD)


@dataclasses.dataclass(frozen=True)
class ModuleStage:
  """Stage apply of a sub-module: (params, rest, *inputs) -> its output (a block's hidden
  [B, T, D] without its keys/values when `first`)."""

  graphdef: Any
  first: bool

  def __call__(self, params, rest, *inputs):
    out = nnx.merge(self.graphdef, params, rest)(*inputs)
    return out[0] if self.first else out
