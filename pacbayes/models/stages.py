"""The stages of `pacbayes.models.transformer.Decoder`'s staged forward pass.

`Decoder.__call__(..., runner=runner)` runs each stage as ``runner(prefix, params, apply,
*inputs)``; the ``apply`` objects are these pure, hashable functions (frozen dataclasses, equal
for stages of one kind), so that a runner can compile each kind of stage once. The plain pass
uses `embed_tokens` and `head_logits` too, so both passes compute the same operations.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

# Runs one stage of a staged forward pass: `runner(prefix, params, apply, *inputs)` returns
# `apply(params2, *inputs)` for parameters params2 like params, of its choice (the plain pass:
# params itself); see `pacbayes.models.transformer.Decoder`.
StageRunner = Callable[..., Any]


def embed_tokens(tables: dict[str, jax.Array], input_ids_BxT: jax.Array,
                 positions_BxT: jax.Array) -> jax.Array:
  """Token embeddings [B, T, D], plus the learned position embeddings when tables has them;
  tables["embed"] is the [V, D] table or ``rows(ids) -> table[ids]``."""
  embed = tables["embed"]
  x_BxTxD = embed(input_ids_BxT) if callable(embed) else jnp.take(embed, input_ids_BxT, axis=0)
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
  """Stage apply: (tables, input_ids [B, T], positions [B, T]) -> x [B, T, D].

  It reads tables["embed"] only at the looked-up rows, which `row_leaves` declares: a runner
  may hand it ``rows(ids) -> embed[ids]`` instead of the table (the Monte-Carlo risk then
  draws the noise of those rows only: `pacbayes.posterior.draws.perturb_rows`).
  """

  row_leaves: tuple[str, ...] = ("embed",)

  def __call__(self, tables, input_ids_BxT, positions_BxT):
    return embed_tokens(tables, input_ids_BxT, positions_BxT)


class TokenStats(NamedTuple):
  """What the bounded losses read of next-token logits [B, T, V] at each position [B, T]:
  `argmax` (int, ties to the lowest id), `lse` (logsumexp, float32), `target_logit` (float32,
  the logit of the position's target id) and the vocabulary size V."""

  argmax: jax.Array
  lse: jax.Array
  target_logit: jax.Array
  vocab_size: int


def token_stats(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> TokenStats:
  """`TokenStats` of whole logits [B, T, V] against targets [B, T] (the one definition)."""
  logits_BxTxV = logits_BxTxV.astype(jnp.float32)  # exact for lower precisions
  target_BxT = jnp.take_along_axis(
      logits_BxTxV, targets_BxT[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return TokenStats(jnp.argmax(logits_BxTxV, axis=-1), jax.nn.logsumexp(logits_BxTxV, axis=-1),
                    target_BxT, logits_BxTxV.shape[-1])


# Vocabulary block of `streamed_token_stats`: at most this many table entries, and this many
# logits per position times B*T (float32: 4 MiB and 8 MiB).
STATS_TABLE_BLOCK = 1 << 20
STATS_LOGITS_BLOCK = 1 << 21


def streamed_token_stats(rows: Callable[[jax.Array], jax.Array], vocab_size: int,
                         hidden_BxTxD: jax.Array, targets_BxT: jax.Array) -> TokenStats:
  """`token_stats` of the logits ``hidden @ table.T`` without making them: the vocabulary is
  read in blocks of r rows, ``rows(ids [r]) -> table[ids] [r, D]``, and the max, the first
  argmax and the sum of exponentials are carried across blocks (the online logsumexp of
  Milakov & Gimelshein, "Online normalizer calculation for softmax", 2018). Block i covers
  ids [start_i, start_i + r), start_i = min(i r, V - r); ids below i r (the overlap of the
  last block) are masked out. The target logit is ``<hidden, rows(targets)>``. Memory: one
  block's [r, D] rows and [B, T, r] logits. Equal to `token_stats` of the whole logits to
  float32 round-off (the argmax exactly, unless two logits tie to round-off).
  """
  b, t, d = hidden_BxTxD.shape
  v = vocab_size
  r = int(max(1, min(v, STATS_TABLE_BLOCK // d, STATS_LOGITS_BLOCK // max(1, b * t))))

  def logits_of(w_RxD):
    return jnp.einsum("btd,vd->btv", hidden_BxTxD.astype(w_RxD.dtype), w_RxD,
                      preferred_element_type=jnp.float32)

  def block(i, carry):
    max_BxT, sum_BxT, arg_BxT, nan_BxT = carry
    start = jnp.minimum(i * r, v - r).astype(jnp.int32)
    ids_R = start + jnp.arange(r, dtype=jnp.int32)
    logits_BxTxR = jnp.where(ids_R >= i * r, logits_of(rows(ids_R)), -jnp.inf)
    bmax_BxT = logits_BxTxR.max(axis=-1)
    barg_BxT = ids_R[jnp.argmax(logits_BxTxR, axis=-1)].astype(jnp.int32)
    new_BxT = jnp.maximum(max_BxT, bmax_BxT)
    # Non-finite logits as in `token_stats`: an infinite max is shifted by 0 (so -inf stays
    # -inf and +inf gives +inf, never inf - inf), and the argmax is the first NaN if any.
    shift_BxT = jnp.where(jnp.isfinite(new_BxT), new_BxT, 0.0)
    sum_BxT = (sum_BxT * jnp.exp(max_BxT - shift_BxT)
               + jnp.exp(logits_BxTxR - shift_BxT[..., None]).sum(axis=-1))
    bnan_BxT = jnp.isnan(bmax_BxT)
    arg_BxT = jnp.where(nan_BxT, arg_BxT, jnp.where(
        bnan_BxT | (bmax_BxT > max_BxT), barg_BxT, arg_BxT))
    return new_BxT, sum_BxT, arg_BxT, nan_BxT | bnan_BxT

  init = (jnp.full((b, t), -jnp.inf, jnp.float32), jnp.zeros((b, t), jnp.float32),
          jnp.zeros((b, t), jnp.int32), jnp.zeros((b, t), bool))
  max_BxT, sum_BxT, arg_BxT, _ = jax.lax.fori_loop(0, -(-v // r), block, init)
  w_BxTxD = rows(targets_BxT.astype(jnp.int32))
  target_BxT = jnp.einsum("btd,btd->bt", hidden_BxTxD.astype(w_BxTxD.dtype), w_BxTxD,
                          preferred_element_type=jnp.float32)
  lse_BxT = jnp.where(jnp.isfinite(max_BxT), max_BxT, 0.0) + jnp.log(sum_BxT)
  return TokenStats(arg_BxT, lse_BxT, target_BxT, v)


@dataclasses.dataclass(frozen=True)
class StatsReduce:
  """A `reduce` of `pacbayes.models.Decoder` that reads `TokenStats`: ``fn(stats [B, L - 1],
  targets [B, L - 1], *rest) -> [B]`` with ``reduce_args = (targets, *rest)``; the stats are
  those of logits[:, :-1] against targets, streamed over the vocabulary
  (`streamed_token_stats`), so no position's [V] logits exist whole."""

  fn: Callable


def head_rows(table: dict[str, jax.Array], hidden_BxTxD: jax.Array, reduce: Callable,
              reduce_args: tuple[jax.Array, ...]) -> jax.Array:
  """``reduce(logits [1, T, V], *(a[b:b+1] for a in reduce_args)) -> [1, ...]`` for each row b,
  stacked [B, ...]: each row's logits (`head_logits`) are made and reduced in turn
  (`jax.lax.map`), so the [B, T, V] logits never exist at once, only one row's [T, V]."""

  def row(xs):
    hidden_TxD, *args = xs
    out = reduce(head_logits(table, hidden_TxD[None]), *(a[None] for a in args))
    return out[0]

  return jax.lax.map(row, (hidden_BxTxD, *reduce_args))


def head_stats(table: dict[str, Any], vocab_size: int, hidden_BxTxD: jax.Array,
               reduce: StatsReduce, reduce_args: tuple[jax.Array, ...]) -> jax.Array:
  """``reduce.fn(stats, *reduce_args)`` with the stats of the head's logits at positions
  [:, :-1] against reduce_args[0]; table["embed"] may be the [V, D] array or ``rows(ids) ->
  embed[ids]`` (a stage runner's rows)."""
  if "embed" in table:
    embed = table["embed"]
    rows = embed if callable(embed) else functools.partial(jnp.take, embed, axis=0)
  else:
    head_DxV = table["lm_head"]
    rows = lambda ids: jnp.moveaxis(jnp.take(head_DxV, ids, axis=1), 0, -1)  # noqa: E731
  stats = streamed_token_stats(rows, vocab_size, hidden_BxTxD[:, :-1], reduce_args[0])
  return reduce.fn(stats, *reduce_args)


@dataclasses.dataclass(frozen=True)
class HeadStage:
  """Stage apply: (table, normed x [B, T, D], reduce_args) -> logits [B, T, V] float32, or with
  `reduce` its rows' reductions [B, ...] (`head_rows`), or with a `StatsReduce` the reduction
  of streamed `TokenStats` (`head_stats`); table is {"embed": [V, D]} (tied) or {"lm_head":
  [D, V]}. With a `StatsReduce` a tied table is read only through rows (`row_leaves`)."""

  reduce: Callable | None = None
  vocab_size: int = 0

  @property
  def row_leaves(self) -> tuple[str, ...]:
    return ("embed",) if isinstance(self.reduce, StatsReduce) else ()

  def __call__(self, table, hidden_BxTxD, reduce_args):
    if isinstance(self.reduce, StatsReduce):
      return head_stats(table, self.vocab_size, hidden_BxTxD, self.reduce, tuple(reduce_args))
    if self.reduce is None:
      return head_logits(table, hidden_BxTxD)
    return head_rows(table, hidden_BxTxD, self.reduce, tuple(reduce_args))


@dataclasses.dataclass(frozen=True)
class ModuleStage:
  """Stage apply of a sub-module: (params, rest, *inputs) -> its output (a block's hidden
  [B, T, D] without its keys/values when `first`)."""

  graphdef: Any
  first: bool

  def __call__(self, params, rest, *inputs):
    out = nnx.merge(self.graphdef, params, rest)(*inputs)
    return out[0] if self.first else out
