"""Greedy decoding with a fixed-size key/value cache: one prefill, then a scanned decode loop."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pacbayes.models.transformer import Decoder

# Prompts are padded up to a multiple of this many positions so that batches of slightly
# different prompt lengths share one compiled program.
PROMPT_BUCKET = 16


def _eos_tuple(eos_id: int | Sequence[int] | None) -> tuple[int, ...]:
  if eos_id is None:
    return ()
  if isinstance(eos_id, (int, np.integer)):
    return (int(eos_id),)
  return tuple(int(e) for e in eos_id)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "eos_ids", "pad_id"))
def _generate(graphdef, state, prompt_ids_BxP, lengths_B, *, max_new_tokens: int,
              eos_ids: tuple[int, ...], pad_id: int) -> jax.Array:
  model = nnx.merge(graphdef, state)
  b, p = prompt_ids_BxP.shape
  s = p + max_new_tokens  # cache slots: every prompt position and every generated token
  mask_BxP = jnp.arange(p, dtype=jnp.int32)[None, :] < lengths_B[:, None]
  logits_BxPxV, kvs = model.prefill(prompt_ids_BxP, mask_BxP)
  caches = [tuple(jnp.pad(a_BxPxKxDh, ((0, 0), (0, s - p), (0, 0), (0, 0))) for a_BxPxKxDh in kv)
            for kv in kvs]
  last_logits_BxV = logits_BxPxV[jnp.arange(b), lengths_B - 1]
  first_B = jnp.argmax(last_logits_BxV, axis=-1).astype(jnp.int32)

  def is_eos(token_B):
    hit_B = jnp.zeros(token_B.shape, bool)
    for e in eos_ids:
      hit_B = hit_B | (token_B == e)
    return hit_B

  def step(carry, _):
    caches, token_B, pos_B, done_B = carry
    # The token generated last is fed at its position; its key/value go to cache slot pos_B.
    logits_BxV, caches = nnx.merge(graphdef, state).decode_step(token_B, pos_B, caches)
    next_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    next_B = jnp.where(done_B, jnp.int32(pad_id), next_B)
    return (caches, next_B, pos_B + 1, done_B | is_eos(next_B)), next_B

  carry = (caches, first_B, lengths_B, is_eos(first_B))
  _, rest_TxB = jax.lax.scan(step, carry, None, length=max_new_tokens - 1)
  return jnp.concatenate([first_B[:, None], rest_TxB.T], axis=1)


def greedy_generate(model: Decoder, prompt_ids: jax.typing.ArrayLike,
                    prompt_lengths: jax.typing.ArrayLike, max_new_tokens: int, *,
                    eos_id: int | Sequence[int] | None = None,
                    pad_id: int | None = None) -> jax.Array:
  """Greedy (argmax) continuation of right-padded prompts, with a key/value cache.

  Each row continues from its own prompt length: the first new token is predicted from
  position `prompt_lengths[b] - 1` and new tokens take positions `prompt_lengths[b]`, ...,
  exactly as if the unpadded prompt had been fed alone (positions follow the implied
  attention mask, `pacbayes.models.positions_from_mask`). The layout is right padding by
  construction: left-padded prompts must be right-aligned first (`Decoder.__call__` accepts
  either side). Compiled once per (batch, bucketed prompt length, max_new_tokens, eos, pad).

  Args:
    model: the decoder.
    prompt_ids: [B, P] int token ids, right-padded (padding values are ignored).
    prompt_lengths: [B] ints in [1, P], the real length of each prompt.
    max_new_tokens: number of tokens to generate (>= 1).
    eos_id: end-of-sequence id or ids; after a row emits one, the row emits `pad_id`.
    pad_id: filler after eos; defaults to the (first) eos id.

  Returns:
    [B, max_new_tokens] int32 generated ids.

  Raises:
    ValueError: for bad shapes or lengths, naming the argument.
  """
  prompt_ids_BxP = np.asarray(prompt_ids)
  lengths_B = np.asarray(prompt_lengths)
  if prompt_ids_BxP.ndim != 2 or not np.issubdtype(prompt_ids_BxP.dtype, np.integer):
    raise ValueError(f"prompt_ids: expected a [B, P] integer array, got shape "
                     f"{prompt_ids_BxP.shape} dtype {prompt_ids_BxP.dtype}")
  b, p = prompt_ids_BxP.shape
  if lengths_B.shape != (b,) or not np.issubdtype(lengths_B.dtype, np.integer):
    raise ValueError(f"prompt_lengths: expected [{b}] integers, got shape {lengths_B.shape}")
  if b and (lengths_B.min() < 1 or lengths_B.max() > p):
    raise ValueError(f"prompt_lengths: expected values in [1, {p}], got "
                     f"[{lengths_B.min()}, {lengths_B.max()}]")
  if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens!r}: expected a positive integer")
  config = model.config
  vocab = config.vocab_size
  eos_ids = _eos_tuple(eos_id)
  if pad_id is None:
    pad_id = eos_ids[0] if eos_ids else 0
  for name, ids in (("eos_id", eos_ids), ("pad_id", (pad_id,))):
    if any(not 0 <= i < vocab for i in ids):
      raise ValueError(f"{name}={ids}: expected ids in [0, {vocab})")
  if b and (prompt_ids_BxP.min() < 0 or prompt_ids_BxP.max() >= vocab):
    mask = np.arange(p)[None, :] < lengths_B[:, None]
    real = prompt_ids_BxP[mask]
    if real.min() < 0 or real.max() >= vocab:
      raise ValueError(f"prompt_ids: token ids must lie in [0, {vocab})")
  prompt_ids_BxP = np.where(
    (prompt_ids_BxP >= 0) & (prompt_ids_BxP < vocab), prompt_ids_BxP, 0).astype(np.int32)
  bucketed = -(-p // PROMPT_BUCKET) * PROMPT_BUCKET
  if config.model_type == "gpt2":
    if int(lengths_B.max(initial=0)) + max_new_tokens > config.max_position_embeddings:
      raise ValueError(f"prompt length + max_new_tokens exceeds max_position_embeddings="
                       f"{config.max_position_embeddings}")
    bucketed = min(bucketed, config.max_position_embeddings)
  prompt_ids_BxP = np.pad(prompt_ids_BxP, ((0, 0), (0, bucketed - p)))
  graphdef, state = nnx.split(model)
  return _generate(graphdef, state, jnp.asarray(prompt_ids_BxP, jnp.int32),
                   jnp.asarray(lengths_B, jnp.int32), max_new_tokens=int(max_new_tokens),
                   eos_ids=eos_ids, pad_id=int(pad_id))
