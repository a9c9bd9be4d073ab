"""Flax NNX decoder-only transformers: Llama, Qwen2 (Llama + q/k/v bias) and GPT-2."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pacbayes.models.config import ModelConfig
from pacbayes.models.stages import (
  EmbedStage,
  HeadStage,
  ModuleStage,
  StageRunner,
  embed_tokens,
  head_logits,
)

# A finite "minus infinity": fully masked rows then give a uniform softmax, not NaN.
_MASK_VALUE = float(jnp.finfo(jnp.float32).min)

# Per-layer key/value cache: (keys [B, S, K, Dh], values [B, S, K, Dh]).
KVCache = tuple[jax.Array, jax.Array]


def _dtype(config: ModelConfig) -> jnp.dtype:
  return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


class Dense(nnx.Module):
  """y = x @ kernel + bias with kernel [in, out] (HF (out, in) weights are transposed on load)."""

  def __init__(self, in_features: int, out_features: int, *, use_bias: bool, dtype, stddev: float,
               rngs: nnx.Rngs):
    key = rngs.params()
    self.kernel = nnx.Param(
      (stddev * jax.random.normal(key, (in_features, out_features), jnp.float32)).astype(dtype))
    self.bias = nnx.Param(jnp.zeros((out_features,), dtype)) if use_bias else None

  def __call__(self, x_BxLxI: jax.Array) -> jax.Array:
    kernel_IxO = self.kernel[...]
    y_BxLxO = jnp.einsum("bli,io->blo", x_BxLxI.astype(kernel_IxO.dtype), kernel_IxO)
    if self.bias is not None:
      y_BxLxO = y_BxLxO + self.bias[...][None, None, :]
    return y_BxLxO


class RMSNorm(nnx.Module):
  """RMSNorm as in HF Llama: normalise in float32, cast back, then scale by the weight."""

  def __init__(self, dim: int, *, eps: float, dtype):
    self.weight = nnx.Param(jnp.ones((dim,), dtype))
    self.eps = eps

  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    x32_BxLxD = x_BxLxD.astype(jnp.float32)
    var_BxLx1 = jnp.mean(jnp.square(x32_BxLxD), axis=-1, keepdims=True)
    y_BxLxD = (x32_BxLxD * jax.lax.rsqrt(var_BxLx1 + self.eps)).astype(x_BxLxD.dtype)
    return self.weight[...][None, None, :] * y_BxLxD


class LayerNorm(nnx.Module):
  """LayerNorm with weight and bias, statistics in float32."""

  def __init__(self, dim: int, *, eps: float, dtype):
    self.weight = nnx.Param(jnp.ones((dim,), dtype))
    self.bias = nnx.Param(jnp.zeros((dim,), dtype))
    self.eps = eps

  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    x32_BxLxD = x_BxLxD.astype(jnp.float32)
    mean_BxLx1 = jnp.mean(x32_BxLxD, axis=-1, keepdims=True)
    var_BxLx1 = jnp.mean(jnp.square(x32_BxLxD - mean_BxLx1), axis=-1, keepdims=True)
    y_BxLxD = (x32_BxLxD - mean_BxLx1) * jax.lax.rsqrt(var_BxLx1 + self.eps)
    weight_D = self.weight[...].astype(jnp.float32)
    bias_D = self.bias[...].astype(jnp.float32)
    y_BxLxD = y_BxLxD * weight_D[None, None, :] + bias_D[None, None, :]
    return y_BxLxD.astype(x_BxLxD.dtype)


def positions_from_mask(attention_mask_BxL: jax.typing.ArrayLike) -> jax.Array:
  """Position ids that follow the attention mask: the number of real tokens before each one.

  ``cumsum(mask) - 1`` on real tokens (so a left-padded row's first real token gets
  position 0, as when the row runs alone) and 0 on padding, as transformers computes
  ``position_ids`` from an attention mask (e.g. in ``generate``).

  Args:
    attention_mask_BxL: [B, L], nonzero on real tokens.

  Returns:
    [B, L] int32 positions.
  """
  real_BxL = jnp.asarray(attention_mask_BxL) != 0
  positions_BxL = jnp.cumsum(real_BxL.astype(jnp.int32), axis=1, dtype=jnp.int32) - 1
  return jnp.where(real_BxL, positions_BxL, 0)


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
  """Rotary inverse frequencies [head_dim // 2] in float32, with Llama 3 scaling if configured.

  References:
    Su et al., RoFormer (2021); Llama 3 rope scaling as defined by Meta / transformers'
    rope_type "llama3" (low frequencies divided by `factor`, a smooth ramp in between).
  """
  dh = config.head_dim
  exponents = np.arange(0, dh, 2, dtype=np.float32) / np.float32(dh)
  inv_freq = (np.float32(1.0) / np.power(np.float32(config.rope_theta), exponents)).astype(
    np.float32)
  scaling = config.rope_scaling
  if scaling is None:
    return inv_freq
  wavelen = np.float32(2 * math.pi) / inv_freq
  old_len = np.float32(scaling.original_max_position_embeddings)
  low_wavelen = old_len / np.float32(scaling.low_freq_factor)
  high_wavelen = old_len / np.float32(scaling.high_freq_factor)
  scaled = np.where(wavelen > low_wavelen, inv_freq / np.float32(scaling.factor), inv_freq)
  smooth = (old_len / wavelen - np.float32(scaling.low_freq_factor)) / np.float32(
    scaling.high_freq_factor - scaling.low_freq_factor)
  smoothed = (1 - smooth) * scaled / np.float32(scaling.factor) + smooth * scaled
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_cos_sin(positions_BxL: jax.Array, inv_freq_F: np.ndarray) -> tuple[jax.Array, ...]:
  """Rotary tables in the HF layout (frequencies repeated, not interleaved), float32.

  Args:
    positions_BxL: integer positions.
    inv_freq_F: [head_dim // 2] inverse frequencies (see `rope_inv_freq`).

  Returns:
    cos and sin, each [B, L, head_dim].
  """
  inv_freq_F = jnp.asarray(inv_freq_F, jnp.float32)
  angles_BxLxF = positions_BxL.astype(jnp.float32)[:, :, None] * inv_freq_F[None, None, :]
  angles_BxLxDh = jnp.concatenate([angles_BxLxF, angles_BxLxF], axis=-1)
  return jnp.cos(angles_BxLxDh), jnp.sin(angles_BxLxDh)


def apply_rope(x_BxLxNxDh: jax.Array, cos_BxLxDh: jax.Array, sin_BxLxDh: jax.Array) -> jax.Array:
  """x * cos + rotate_half(x) * sin, with rotate_half(x) = [-x2, x1] (HF convention)."""
  half = x_BxLxNxDh.shape[-1] // 2
  x1, x2 = x_BxLxNxDh[..., :half], x_BxLxNxDh[..., half:]
  rotated_BxLxNxDh = jnp.concatenate([-x2, x1], axis=-1)
  cos = cos_BxLxDh.astype(x_BxLxNxDh.dtype)[:, :, None, :]
  sin = sin_BxLxDh.astype(x_BxLxNxDh.dtype)[:, :, None, :]
  return x_BxLxNxDh * cos + rotated_BxLxNxDh * sin


class Attention(nnx.Module):
  """Causal multi-head attention with grouped key/value heads and optional rotary embedding."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    d, h, k, dh = (config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                   config.head_dim)
    kw = dict(dtype=_dtype(config), stddev=config.initializer_range, rngs=rngs)
    self.q_proj = Dense(d, h * dh, use_bias=config.attention_bias, **kw)
    self.k_proj = Dense(d, k * dh, use_bias=config.attention_bias, **kw)
    self.v_proj = Dense(d, k * dh, use_bias=config.attention_bias, **kw)
    self.o_proj = Dense(h * dh, d, use_bias=config.attention_out_bias, **kw)
    self.num_heads, self.num_kv_heads, self.head_dim = h, k, dh
    self.use_rope = config.model_type != "gpt2"

  def __call__(self, x_BxTxD, rope, mask_BxTxS, cache: KVCache | None = None,
               write_pos_B: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
    """Attends from T new positions to S key positions.

    Args:
      x_BxTxD: inputs of the new positions.
      rope: (cos, sin) [B, T, Dh] for the new positions, or None (GPT-2).
      mask_BxTxS: bool, True where query t may attend to key s.
      cache: None (S == T: keys are the new positions) or a cache of S slots into which the
        single new position (T == 1) is written at `write_pos_B`.
      write_pos_B: per-row cache slot of the new position.

    Returns:
      Outputs [B, T, D] and the keys/values attended to ([B, S, K, Dh] each).
    """
    b, t, _ = x_BxTxD.shape
    h, k, dh = self.num_heads, self.num_kv_heads, self.head_dim
    q_BxTxHxDh = self.q_proj(x_BxTxD).reshape(b, t, h, dh)
    k_BxTxKxDh = self.k_proj(x_BxTxD).reshape(b, t, k, dh)
    v_BxTxKxDh = self.v_proj(x_BxTxD).reshape(b, t, k, dh)
    if self.use_rope:
      cos_BxTxDh, sin_BxTxDh = rope
      q_BxTxHxDh = apply_rope(q_BxTxHxDh, cos_BxTxDh, sin_BxTxDh)
      k_BxTxKxDh = apply_rope(k_BxTxKxDh, cos_BxTxDh, sin_BxTxDh)
    if cache is None:
      keys_BxSxKxDh, values_BxSxKxDh = k_BxTxKxDh, v_BxTxKxDh
    else:
      # Per-row slot: a scatter of T == 1 rows, which XLA updates in place inside the loop.
      write = jax.vmap(lambda c_SxKxDh, n_1xKxDh, pos: jax.lax.dynamic_update_slice(
        c_SxKxDh, n_1xKxDh.astype(c_SxKxDh.dtype), (pos, jnp.int32(0), jnp.int32(0))))
      keys_BxSxKxDh = write(cache[0], k_BxTxKxDh, write_pos_B)
      values_BxSxKxDh = write(cache[1], v_BxTxKxDh, write_pos_B)
    g = h // k
    q_BxTxKxGxDh = q_BxTxHxDh.reshape(b, t, k, g, dh)
    scores_BxKxGxTxS = jnp.einsum("btkgd,bskd->bkgts", q_BxTxKxGxDh, keys_BxSxKxDh,
                                  preferred_element_type=jnp.float32) / math.sqrt(dh)
    scores_BxKxGxTxS = jnp.where(mask_BxTxS[:, None, None, :, :], scores_BxKxGxTxS, _MASK_VALUE)
    probs_BxKxGxTxS = jax.nn.softmax(scores_BxKxGxTxS, axis=-1).astype(values_BxSxKxDh.dtype)
    out_BxTxKxGxDh = jnp.einsum("bkgts,bskd->btkgd", probs_BxKxGxTxS, values_BxSxKxDh)
    out_BxTxD = self.o_proj(out_BxTxKxGxDh.reshape(b, t, h * dh))
    return out_BxTxD, (keys_BxSxKxDh, values_BxSxKxDh)


class MLP(nnx.Module):
  """Gated SiLU MLP (llama/qwen2) or GELU MLP (gpt2)."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    d, f = config.hidden_size, config.intermediate_size
    kw = dict(use_bias=config.mlp_bias, dtype=_dtype(config), stddev=config.initializer_range,
              rngs=rngs)
    self.gated = config.model_type != "gpt2"
    self.gate_proj = Dense(d, f, **kw) if self.gated else None
    self.up_proj = Dense(d, f, **kw)
    self.down_proj = Dense(f, d, **kw)

  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    if self.gated:
      hidden_BxLxF = jax.nn.silu(self.gate_proj(x_BxLxD)) * self.up_proj(x_BxLxD)
    else:
      # gelu_new: the tanh approximation.
      hidden_BxLxF = jax.nn.gelu(self.up_proj(x_BxLxD), approximate=True)
    return self.down_proj(hidden_BxLxF)


class Block(nnx.Module):
  """Pre-norm decoder block: x + attn(norm(x)), then x + mlp(norm(x))."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    norm = LayerNorm if config.model_type == "gpt2" else RMSNorm
    self.input_norm = norm(config.hidden_size, eps=config.norm_eps, dtype=_dtype(config))
    self.attn = Attention(config, rngs=rngs)
    self.post_attn_norm = norm(config.hidden_size, eps=config.norm_eps, dtype=_dtype(config))
    self.mlp = MLP(config, rngs=rngs)

  def __call__(self, x_BxTxD, rope, mask_BxTxS, cache=None, write_pos_B=None):
    attn_BxTxD, kv = self.attn(self.input_norm(x_BxTxD), rope, mask_BxTxS, cache, write_pos_B)
    x_BxTxD = x_BxTxD + attn_BxTxD
    x_BxTxD = x_BxTxD + self.mlp(self.post_attn_norm(x_BxTxD))
    return x_BxTxD, kv


class Decoder(nnx.Module):
  """Decoder-only language model; `model(input_ids)` returns float32 logits.

  Parameters (all `nnx.Param`, dtype `config.dtype`; kernels are [in, out]):
    embed [V, D]; pos_embed [P, D] (gpt2 only, else None); lm_head [D, V] (None when tied);
    final_norm/{weight, bias (gpt2)} [D];
    layers/i/{input_norm, post_attn_norm}/{weight, bias (gpt2)} [D];
    layers/i/attn/{q_proj [D, H*Dh], k_proj [D, K*Dh], v_proj [D, K*Dh], o_proj [H*Dh, D]}
      /{kernel, bias (if configured)};
    layers/i/mlp/{gate_proj [D, F] (llama/qwen2), up_proj [D, F], down_proj [F, D]}
      /{kernel, bias (if configured)}.
  `pacbayes.models.params.param_table(config)` maps each to its Hugging Face name
  (`hf_name_of_path`, `select_parameters`).

  Staged pass (`model(input_ids, attention_mask, runner=runner)`, a `StageRunner`): the pass is
  cut into stages, each run as ``runner(prefix, params, apply, *inputs)``, which returns
  ``apply(params2, *inputs)`` for parameters ``params2`` like ``params`` (plain: ``params``):
    "" -- {"embed": [V, D], "pos_embed": [P, D] (gpt2)}: input_ids, positions [B, L] -> x;
    "layers/i" -- block i's `nnx.Param` state: x [B, L, D] -> x, for i = 0 .. n_layers - 1;
    "final_norm" -- the final norm's `nnx.Param` state: x -> normed x;
    "" -- {"lm_head": [D, V]}, or {"embed": [V, D]} when tied: normed x, reduce_args ->
      logits [B, L, V] (or, with `reduce`, their rows' reductions).
  A leaf's name, ``prefix + "/" + (its '/'-joined path in params)`` (no "/" after an empty
  prefix), is its `pacbayes.posterior.draws.leaf_paths` name in ``nnx.split(model, nnx.Param,
  ...)``. A tied embedding is handed over twice, to the first stage (which reads only the
  looked-up rows: `EmbedStage.row_leaves`) and to the head; a runner gives it the same
  numbers both times (the Monte-Carlo risk draws its noise from the same key). Each ``apply``
  is pure, hashable and equal
  for stages of one kind (all blocks share one), so a runner can compile each kind once
  (`jax.jit(apply)`) and run the stages one after another, as the Monte-Carlo risk does to
  make a posterior draw one stage at a time (`pacbayes.posterior.steps.forward_draw_step`).
  Under `jax.jit` the stages trace into one program. Without a runner: the plain pass.
  """

  # `__call__` takes `runner=`, `reduce=` and `reduce_args=` (see `pacbayes.losses.ModelLoss`).
  accepts_stage_runner = True

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    dtype = _dtype(config)
    std = config.initializer_range
    d, v = config.hidden_size, config.vocab_size
    self.embed = nnx.Param(
      (std * jax.random.normal(rngs.params(), (v, d), jnp.float32)).astype(dtype))  # [V, D]
    if config.model_type == "gpt2":
      self.pos_embed = nnx.Param((std * jax.random.normal(
        rngs.params(), (config.max_position_embeddings, d), jnp.float32)).astype(dtype))  # [P, D]
    else:
      self.pos_embed = None
    self.layers = nnx.List([Block(config, rngs=rngs) for _ in range(config.num_hidden_layers)])
    norm = LayerNorm if config.model_type == "gpt2" else RMSNorm
    self.final_norm = norm(d, eps=config.norm_eps, dtype=dtype)
    if config.tie_word_embeddings:
      self.lm_head = None
    else:
      self.lm_head = nnx.Param(
        (std * jax.random.normal(rngs.params(), (d, v), jnp.float32)).astype(dtype))  # [D, V]

  def _run(self, input_ids_BxT, positions_BxT, mask_BxTxS, caches=None, write_pos_B=None):
    """Runs the blocks; returns final normed hidden [B, T, D] and per-layer keys/values."""
    x_BxTxD = embed_tokens(self._tables(), input_ids_BxT, positions_BxT)
    rope = self._rope(positions_BxT)
    kvs = []
    for i, layer in enumerate(self.layers):
      cache = None if caches is None else caches[i]
      x_BxTxD, kv = layer(x_BxTxD, rope, mask_BxTxS, cache, write_pos_B)
      kvs.append(kv)
    return self.final_norm(x_BxTxD), kvs

  def _tables(self) -> dict[str, jax.Array]:
    """The input tables: {"embed": [V, D]} and, with learned positions, "pos_embed" [P, D]."""
    tables = {"embed": self.embed[...]}
    if self.pos_embed is not None:
      tables["pos_embed"] = self.pos_embed[...]
    return tables

  def _rope(self, positions_BxT: jax.Array):
    """(cos, sin) [B, T, Dh] for rotary models, None with learned positions (GPT-2)."""
    if self.pos_embed is not None:
      return None
    return rope_cos_sin(positions_BxT, rope_inv_freq(self.config))

  def _head(self) -> dict[str, jax.Array]:
    """The output table: {"embed": [V, D]} when tied, else {"lm_head": [D, V]}."""
    if self.lm_head is None:
      return {"embed": self.embed[...]}
    return {"lm_head": self.lm_head[...]}

  def _logits(self, hidden_BxTxD: jax.Array) -> jax.Array:
    return head_logits(self._head(), hidden_BxTxD)

  def _staged(self, input_ids, attention_mask, runner: StageRunner, reduce: Callable | None,
              reduce_args: tuple) -> jax.Array:
    """The full-sequence logits [B, L, V] (or their rows' reductions), one stage at a time
    through `runner`."""
    input_ids_BxL, positions_BxL, mask_BxLxL = self._prefill_inputs(input_ids, attention_mask)
    x_BxLxD = runner("", self._tables(), EmbedStage(), input_ids_BxL, positions_BxL)
    rope = self._rope(positions_BxL)
    for i, layer in enumerate(self.layers):
      graphdef, params, rest = nnx.split(layer, nnx.Param, ...)
      x_BxLxD = runner(f"layers/{i}", params, ModuleStage(graphdef, True), rest, x_BxLxD,
                       rope, mask_BxLxL)
    graphdef, params, rest = nnx.split(self.final_norm, nnx.Param, ...)
    x_BxLxD = runner("final_norm", params, ModuleStage(graphdef, False), rest, x_BxLxD)
    head = HeadStage(reduce, self.config.vocab_size)
    return runner("", self._head(), head, x_BxLxD, reduce_args)

  @staticmethod
  def _prefill_mask(input_ids_BxL, attention_mask_BxL):
    b, seq_len = input_ids_BxL.shape
    causal_LxL = jnp.tril(jnp.ones((seq_len, seq_len), dtype=bool))
    mask_BxLxL = jnp.broadcast_to(causal_LxL[None], (b, seq_len, seq_len))
    if attention_mask_BxL is not None:
      mask_BxLxL = mask_BxLxL & (jnp.asarray(attention_mask_BxL) != 0)[:, None, :]
    return mask_BxLxL

  def hidden_states(self, input_ids: jax.typing.ArrayLike,
                    attention_mask: jax.typing.ArrayLike | None = None) -> jax.Array:
    """Final normed hidden states.

    Args:
      input_ids: [B, L] int token ids (right-padded when `attention_mask` is given).
      attention_mask: optional [B, L], 1 for real tokens and 0 for padding (any side); padded
        keys are never attended to, and positions follow the mask (`positions_from_mask`), so
        each row gives the hidden states it gives alone. None: every token is real.

    Returns:
      [B, L, D] float32.
    """
    hidden_BxLxD, _ = self.prefill_hidden(input_ids, attention_mask)
    return hidden_BxLxD.astype(jnp.float32)

  def __call__(self, input_ids: jax.typing.ArrayLike,
               attention_mask: jax.typing.ArrayLike | None = None, *,
               runner: StageRunner | None = None, reduce: Callable | None = None,
               reduce_args: tuple = ()) -> jax.Array:
    """Next-token logits, or a reduction of each row's logits.

    Args:
      input_ids: [B, L] int token ids.
      attention_mask: optional [B, L], 1 for real tokens and 0 for padding (left or right);
        positions follow the mask (`positions_from_mask`), so a padded row gives the logits
        of the row alone on its real tokens (padding positions hold unspecified values).
      runner: optional `StageRunner` that runs each stage of the pass (see the class
        docstring); None is the plain pass.
      reduce: optional ``(logits [1, L, V], *rows of reduce_args) -> [1, ...]``, applied to
        one row's logits at a time (`pacbayes.models.stages.head_rows`): the [B, L, V] logits
        never exist whole, one row's [L, V] at a time (a loss of each row, for instance); or
        a `pacbayes.models.stages.StatsReduce`, which reads the logits' `TokenStats`
        streamed over the vocabulary (`head_stats`; no position's [V] logits exist whole).
      reduce_args: [B, ...] arrays whose row b goes to `reduce` with row b's logits (with a
        `StatsReduce`: the targets [B, L - 1] first).

    Returns:
      [B, L, V] float32 logits (logits[:, t] predicts input_ids[:, t + 1]), or with `reduce`
      its outputs stacked [B, ...].
    """
    reduce_args = tuple(jnp.asarray(a) for a in reduce_args)
    if runner is not None:
      return self._staged(input_ids, attention_mask, runner, reduce, reduce_args)
    hidden_BxLxD, _ = self.prefill_hidden(input_ids, attention_mask)
    if reduce is not None:
      return HeadStage(reduce, self.config.vocab_size)(self._head(), hidden_BxLxD, reduce_args)
    return self._logits(hidden_BxLxD)

  def prefill_hidden(self, input_ids, attention_mask=None):
    """Full-sequence pass: final normed hidden [B, L, D] (model dtype) and per-layer
    keys/values ([B, L, K, Dh] each). Positions follow `attention_mask` (`positions_from_mask`;
    0..L-1 without a mask)."""
    return self._run(*self._prefill_inputs(input_ids, attention_mask))

  def _prefill_inputs(self, input_ids, attention_mask):
    """Checked input ids [B, L] int32, their positions [B, L] and the causal mask [B, L, L]."""
    input_ids_BxL = jnp.asarray(input_ids, jnp.int32)
    if input_ids_BxL.ndim != 2:
      raise ValueError(f"input_ids: expected [batch, length], got shape {input_ids_BxL.shape}")
    b, seq_len = input_ids_BxL.shape
    if self.pos_embed is not None and seq_len > self.config.max_position_embeddings:
      raise ValueError(f"input_ids: length {seq_len} exceeds max_position_embeddings="
                       f"{self.config.max_position_embeddings} (learned positions)")
    if attention_mask is None:
      positions_BxL = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32)[None], (b, seq_len))
    else:
      mask_BxL = jnp.asarray(attention_mask)
      if mask_BxL.shape != (b, seq_len):
        raise ValueError(f"attention_mask: expected shape {(b, seq_len)} like input_ids, got "
                         f"{mask_BxL.shape}")
      positions_BxL = positions_from_mask(mask_BxL)
    return input_ids_BxL, positions_BxL, self._prefill_mask(input_ids_BxL, attention_mask)

  def prefill(self, input_ids_BxP: jax.Array, attention_mask_BxP: jax.Array):
    """Forward over a padded prompt; returns logits [B, P, V] and per-layer keys/values."""
    hidden_BxPxD, kvs = self.prefill_hidden(input_ids_BxP, attention_mask_BxP)
    return self._logits(hidden_BxPxD), kvs

  def decode_step(self, token_B: jax.Array, pos_B: jax.Array, caches: list[KVCache]):
    """One cached step: token_B at per-row position pos_B (also its cache slot).

    Returns:
      logits [B, V] float32 and the updated caches.
    """
    s = caches[0][0].shape[1]
    mask_Bx1xS = (jnp.arange(s, dtype=jnp.int32)[None, :] <= pos_B[:, None])[:, None, :]
    hidden_Bx1xD, kvs = self._run(token_B[:, None], pos_B[:, None], mask_Bx1xS, caches, pos_B)
    return self._logits(hidden_Bx1xD)[:, 0], kvs


def build_model(config: ModelConfig, *, rngs: nnx.Rngs) -> Decoder:
  """Builds a randomly initialised decoder (normal(initializer_range) weights, zero biases).

  Args:
    config: the architecture.
    rngs: NNX random streams; the `params` stream is used.

  Returns:
    The model.
  """
  if not isinstance(config, ModelConfig):
    raise ValueError(f"config: expected a ModelConfig, got {type(config).__name__}")
  return Decoder(config, rngs=rngs)
