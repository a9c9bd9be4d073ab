"""Bounded per-example losses in [0, 1]: token error, sequence error, smoothed NLL.

Every loss takes next-token logits and the `pacbayes.data.Dataset` masks: ``logits[:, t - 1]``
predicts ``input_ids[:, t]``, and position ``t`` counts iff ``loss_mask[:, t] == 1``. A row
with no target (only the all-zero padding rows of `pacbayes.data.iterate_batches`) gets loss
0; datasets refuse real rows without targets, so weight such rows out with ``batch["weight"]``.
PAC-Bayes bounds of the Maurer / Langford-Seeger kind need losses in [0, 1], which is why the
log-likelihood is smoothed and rescaled rather than used raw.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from pacbayes.models.stages import StatsReduce, TokenStats, token_stats

# The public losses check arguments eagerly, then run one jitted program per shape (eager
# op-by-op dispatch is slow); inside a caller's jit the inner jit is simply inlined.


def _check_shapes(logits: jax.Array, input_ids: jax.Array, loss_mask: jax.Array) -> None:
  if logits.ndim != 3:
    raise ValueError(f"logits: expected shape [B, L, V], got {logits.shape}")
  if input_ids.shape != logits.shape[:2] or loss_mask.shape != logits.shape[:2]:
    raise ValueError(
      f"input_ids {input_ids.shape} and loss_mask {loss_mask.shape} must both have shape "
      f"{logits.shape[:2]} (the [B, L] of logits)"
    )


def _checked(logits, input_ids, loss_mask):
  logits = jnp.asarray(logits)
  input_ids, loss_mask = jnp.asarray(input_ids), jnp.asarray(loss_mask)
  _check_shapes(logits, input_ids, loss_mask)
  return logits, input_ids, loss_mask


def next_token_shift(
  logits_BxLxV: jax.Array, input_ids_BxL: jax.Array, loss_mask_BxL: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The project's one next-token alignment: ``logits[:, t - 1]`` predicts ``input_ids[:, t]``.

  Args:
    logits_BxLxV: [B, L, V] logits.
    input_ids_BxL: [B, L] token ids.
    loss_mask_BxL: [B, L] 1 where ``input_ids`` is a target (position 0 never is).

  Returns:
    ``(logits_BxTxV, targets_BxT, mask_BxT)`` with T = L - 1; the mask as float32.
  """
  return (logits_BxLxV[:, :-1], input_ids_BxL[:, 1:],
          loss_mask_BxL[:, 1:].astype(jnp.float32))


def _masked_mean(per_token_BxT: jax.Array, mask_BxT: jax.Array) -> jax.Array:
  count_B = mask_BxT.sum(axis=-1)
  return (per_token_BxT * mask_BxT).sum(axis=-1) / jnp.maximum(count_B, 1.0)


def token_error(logits: ArrayLike, input_ids: ArrayLike, loss_mask: ArrayLike) -> jax.Array:
  """Per-example next-token error rate: the 0-1 loss of the argmax, averaged over targets.

  ``loss[b] = mean over targets t of 1[argmax_v logits[b, t - 1, v] != input_ids[b, t]]``.
  Ties in the argmax go to the lowest id (a flat prediction counts as predicting id 0). The
  value lies in [0, 1]: the 0-1 loss of PAC-Bayes certificates (Dziugaite & Roy), per token.

  Args:
    logits: [B, L, V] next-token logits (any float dtype).
    input_ids: [B, L] int token ids.
    loss_mask: [B, L] 1 where ``input_ids`` is a target.

  Returns:
    [B] float32 errors in [0, 1] (0 for rows without targets).

  References:
    Dziugaite & Roy, "Computing Nonvacuous Generalization Bounds for Deep (Stochastic) Neural
    Networks with Many More Parameters than Training Data", UAI 2017.
  """
  return _token_error(*_checked(logits, input_ids, loss_mask))


@jax.jit
def _token_error(logits_BxLxV: jax.Array, input_ids_BxL: jax.Array,
                 loss_mask_BxL: jax.Array) -> jax.Array:
  logits_BxTxV, targets_BxT, mask_BxT = next_token_shift(logits_BxLxV, input_ids_BxL,
                                                         loss_mask_BxL)
  return token_error_of_stats(token_stats(logits_BxTxV, targets_BxT), targets_BxT, mask_BxT)


def token_error_of_stats(stats: TokenStats, targets_BxT: jax.Array,
                         mask_BxT: jax.Array) -> jax.Array:
  """`token_error` from the logits' `TokenStats` [B, T], targets [B, T] and mask [B, T]."""
  wrong_BxT = (stats.argmax != targets_BxT).astype(jnp.float32)
  return _masked_mean(wrong_BxT, mask_BxT)


def sequence_error(logits: ArrayLike, input_ids: ArrayLike, loss_mask: ArrayLike) -> jax.Array:
  """Per-example 0-1 error of the whole completion under teacher forcing.

  ``loss[b] = 1`` if for some target t, ``argmax_v logits[b, t - 1, v] != input_ids[b, t]``,
  else 0 (ties in the argmax go to the lowest id, as in `token_error`). Rows without targets
  get 0. Always ``sequence_error >= token_error`` row by row.

  Why it bounds the greedy answer error of the same weights (docs/THEORY.md §3.3): if every
  teacher-forced argmax on the completion is right, greedy decoding from the prompt emits the
  first completion token, and then by induction each next one, since its context is exactly
  the teacher-forced context; so it reproduces the completion and the answer is right.
  Contrapositive: greedy answer wrong implies ``sequence_error = 1``, hence answer error <=
  sequence error pointwise and any bound on the latter bounds the former. (This needs the
  same argmax tie rule in decoding and a completion that contains the answer; with a
  stochastic posterior it holds draw by draw.)

  Args:
    logits: [B, L, V] next-token logits (any float dtype).
    input_ids: [B, L] int token ids.
    loss_mask: [B, L] 1 where ``input_ids`` is a target (the completion).

  Returns:
    [B] float32 errors in {0, 1}.

  Raises:
    ValueError: if the shapes disagree.
  """
  return _sequence_error(*_checked(logits, input_ids, loss_mask))


@jax.jit
def _sequence_error(logits_BxLxV: jax.Array, input_ids_BxL: jax.Array,
                    loss_mask_BxL: jax.Array) -> jax.Array:
  logits_BxTxV, targets_BxT, mask_BxT = next_token_shift(logits_BxLxV, input_ids_BxL,
                                                         loss_mask_BxL)
  return sequence_error_of_stats(token_stats(logits_BxTxV, targets_BxT), targets_BxT,
                                 mask_BxT)


def sequence_error_of_stats(stats: TokenStats, targets_BxT: jax.Array,
                            mask_BxT: jax.Array) -> jax.Array:
  """`sequence_error` from the logits' `TokenStats` [B, T], targets [B, T] and mask [B, T]."""
  wrong_BxT = (stats.argmax != targets_BxT) & (mask_BxT > 0)
  return jnp.any(wrong_BxT, axis=-1).astype(jnp.float32)


def smoothed_nll_range(alpha: float, vocab_size: int) -> tuple[float, float]:
  """The range ``[lo, hi]`` (nats) of the smoothed negative log-likelihood ``-log p'``.

  ``lo = -log(1 - alpha + alpha / V)`` (at p = 1) and ``hi = log(V / alpha)`` (at p = 0);
  ``hi - lo = log(1 + (1 - alpha) V / alpha)``. `smoothed_nll` maps this range affinely onto
  [0, 1], so ``nll' = lo + (hi - lo) * loss`` recovers nats from a loss or a bound on it.
  """
  _check_alpha(alpha)
  lo = -math.log1p(-alpha + alpha / vocab_size)
  hi = math.log(vocab_size) - math.log(alpha)
  return lo, hi


def _check_alpha(alpha: Any) -> None:
  try:
    value = float(alpha)
  except (TypeError, jax.errors.ConcretizationTypeError):
    return  # Traced inside jit: checked where it was concrete.
  if not 0.0 < value < 1.0:
    raise ValueError(f"alpha: expected a number in (0, 1), got {alpha!r}")


def smoothed_nll(
  logits: ArrayLike, input_ids: ArrayLike, loss_mask: ArrayLike, alpha: float = 0.01
) -> jax.Array:
  r"""Per-example bounded log-loss: smoothed NLL rescaled exactly onto [0, 1].

  With ``p = softmax(logits[b, t - 1])[input_ids[b, t]]`` and vocabulary size ``V``, the
  prediction is smoothed towards uniform, ``p' = (1 - a) p + a / V``, and

  ``loss_t = (log(1 - a + a/V) - log p') / log(1 + (1 - a) V / a)``,

  averaged over the target tokens of each row.

  Why it lies in [0, 1]: ``p' `` is increasing in ``p in [0, 1]``, so
  ``a/V <= p' <= 1 - a + a/V``, hence ``-log(1 - a + a/V) <= -log p' <= log(V/a)``. The
  width of that interval is ``log(V/a) + log(1 - a + a/V) = log((V/a)(1 - a) + 1)
  = log(1 + (1 - a) V / a)``, the normaliser. Subtracting the lower end and dividing by the
  width is an increasing affine map of ``-log p'`` onto [0, 1], with ``loss_t = 0`` iff
  ``p = 1`` and ``loss_t = 1`` iff ``p = 0``; a mean of values in [0, 1] stays in [0, 1].
  (Dividing ``-log p'`` by the width alone, without the shift, can exceed 1 by
  ``-log(1 - a + a/V) / width``.) Floating-point rounding at the ends is clipped.

  Args:
    logits: [B, L, V] next-token logits (any float dtype; computed in float32).
    input_ids: [B, L] int token ids.
    loss_mask: [B, L] 1 where ``input_ids`` is a target.
    alpha: smoothing weight ``a`` in (0, 1); larger ``a`` = tighter range, weaker loss.

  Returns:
    [B] float32 losses in [0, 1] (0 for rows without targets).

  References:
    Lotfi, Finzi, Kuang, Rudner, Goldblum, Wilson, "Non-Vacuous Generalization Bounds for
    Large Language Models", ICML 2024 (prediction smoothing, range log(1 + (1-a)V/a)).
    Pérez-Ortiz, Rivasplata, Shawe-Taylor, Szepesvári, "Tighter Risk Certificates for Neural
    Networks", JMLR 2021 (bounded cross-entropy for PAC-Bayes certificates).
  """
  _check_alpha(alpha)
  return _smoothed_nll(*_checked(logits, input_ids, loss_mask), alpha)


@jax.jit
def _smoothed_nll(logits_BxLxV, input_ids_BxL, loss_mask_BxL, alpha) -> jax.Array:
  logits_BxTxV, targets_BxT, mask_BxT = next_token_shift(logits_BxLxV, input_ids_BxL,
                                                         loss_mask_BxL)
  # float32 stats: bf16 logits lose too much in logsumexp.
  return smoothed_nll_of_stats(token_stats(logits_BxTxV, targets_BxT), targets_BxT, mask_BxT,
                               alpha)


def smoothed_nll_of_stats(stats: TokenStats, targets_BxT: jax.Array, mask_BxT: jax.Array,
                          alpha: float = 0.01) -> jax.Array:
  """`smoothed_nll` from the logits' `TokenStats` [B, T], targets [B, T] and mask [B, T]."""
  del targets_BxT  # read through stats.target_logit
  vocab_size = stats.vocab_size
  log_p_BxT = jnp.minimum(stats.target_logit - stats.lse, 0.0)
  alpha = jnp.asarray(alpha, jnp.float32)
  log_uniform = jnp.log(alpha) - math.log(vocab_size)
  log_p_smooth_BxT = jnp.logaddexp(jnp.log1p(-alpha) + log_p_BxT, log_uniform)
  log_top = jnp.logaddexp(jnp.log1p(-alpha), log_uniform)  # log(1 - a + a/V)
  width = jnp.log1p((1.0 - alpha) * vocab_size / alpha)
  per_token_BxT = jnp.clip((log_top - log_p_smooth_BxT) / width, 0.0, 1.0)
  return _masked_mean(per_token_BxT, mask_BxT)


LOSSES: dict[str, Callable[..., jax.Array]] = {
  "token_error": token_error,
  "smoothed_nll": smoothed_nll,
  "sequence_error": sequence_error,
}
# Each `LOSSES` entry as a function of the logits' `TokenStats`: ``(stats, targets [B, T],
# mask [B, T], **options) -> [B]``, T = L - 1 after `next_token_shift`.
_OF_STATS = {token_error: token_error_of_stats, smoothed_nll: smoothed_nll_of_stats,
             sequence_error: sequence_error_of_stats}


def loss_of_stats(loss: Callable[..., jax.Array]) -> Callable[..., jax.Array] | None:
  """The form of `loss` that reads `TokenStats` (see `_OF_STATS`), with its bound options,
  for a `LOSSES` entry or `get_loss` result; None for any other function."""
  fn, options = loss, {}
  if isinstance(loss, functools.partial) and not loss.args:
    fn, options = loss.func, dict(loss.keywords)
  try:
    form = _OF_STATS.get(fn)
  except TypeError:  # unhashable
    return None
  if form is None:
    return None
  return functools.partial(form, **options) if options else form


def get_loss(name: str, **options: Any) -> Callable[..., jax.Array]:
  """Looks up a loss in `LOSSES` and binds its options.

  Args:
    name: a key of `LOSSES`.
    **options: keyword options of that loss (e.g. ``alpha`` for ``smoothed_nll``).

  Returns:
    ``fn(logits, input_ids, loss_mask) -> [B]``.
  """
  if name not in LOSSES:
    raise ValueError(f"loss: unknown name {name!r}; expected one of {sorted(LOSSES)}")
  fn = LOSSES[name]
  params = inspect.signature(fn).parameters
  for key in options:
    if key not in params or key in ("logits", "input_ids", "loss_mask"):
      raise ValueError(f"loss {name!r}: unknown option {key!r}")
  if name == "smoothed_nll" and "alpha" in options:
    _check_alpha(options["alpha"])
  return functools.partial(fn, **options) if options else fn


class ModelLoss:
  """``loss_fn(params, batch) -> [B]`` of a split NNX model, with a hook into its forward pass.

  ``loss_fn(params, batch)`` merges ``(graphdef, params, *state)`` and applies the loss to
  ``model(batch["input_ids"], batch["attention_mask"])``; ``batch`` also holds ``loss_mask``
  (all [B, L]). `with_runner` gives the same loss of the staged pass, whose stages run through
  a `pacbayes.models.transformer.StageRunner` (`pacbayes.models.Decoder`): the Monte-Carlo
  risk uses it to make each posterior draw one stage at a time, inside the forward pass
  (`pacbayes.posterior.steps.forward_draw_step`). For a `pacbayes.models.Decoder` both passes
  apply the loss to one row's logits at a time (``reduce=``), so a batch's [B, L, V] logits
  never exist whole; the loss must be per example (row b's loss reads row b only), as every
  `LOSSES` entry is. Hashed by identity, so compiled steps are cached per loss.

  Attributes:
    graphdef: the model's graph definition.
    state: the non-parameter state (a tuple, may be empty).
    loss: ``(logits [B, L, V], input_ids [B, L], loss_mask [B, L]) -> [B]``.
  """

  def __init__(self, graphdef: Any, state: tuple, loss: Callable[..., jax.Array]):
    self.graphdef, self.state, self.loss = graphdef, tuple(state), loss
    # The loss read from streamed `TokenStats` when it has that form; one object per loss,
    # so that compiled stages are cached across calls.
    of_stats = loss_of_stats(loss)
    self._stats_reduce = None if of_stats is None else StatsReduce(of_stats)

  def __call__(self, params: Any, batch: dict[str, jax.Array]) -> jax.Array:
    return self.with_runner(params, batch, None)

  @property
  def accepts_runner(self) -> bool:
    """Whether the model's forward pass takes a stage runner (``runner=``)."""
    nodes = getattr(self.graphdef, "nodes", None)
    model_type = getattr(nodes[0], "type", None) if nodes else None
    return bool(getattr(model_type, "accepts_stage_runner", False))

  def with_runner(self, params: Any, batch: dict[str, jax.Array],
                  runner: Callable[..., Any] | None) -> jax.Array:
    """Per-example losses [B] of the pass staged through ``runner`` (None: the plain pass).

    Raises:
      ValueError: a runner for a model whose forward pass does not take one.
    """
    from flax import nnx

    model = nnx.merge(self.graphdef, params, *self.state)
    if not self.accepts_runner:
      if runner is not None:
        raise ValueError(f"runner: {type(model).__name__} does not take a stage runner")
      logits = model(batch["input_ids"], batch["attention_mask"])
      return self.loss(logits, batch["input_ids"], batch["loss_mask"])
    ids, loss_mask = batch["input_ids"], batch["loss_mask"]
    if self._stats_reduce is not None:  # the logits' statistics, streamed over the vocabulary
      if jnp.ndim(ids) != 2:
        raise ValueError(f"input_ids: expected [batch, length], got shape {jnp.shape(ids)}")
      if jnp.shape(loss_mask) != jnp.shape(ids):
        raise ValueError(f"input_ids {jnp.shape(ids)} and loss_mask {jnp.shape(loss_mask)} "
                         "must both have shape [B, L]")
      targets_BxT = jnp.asarray(ids)[:, 1:]
      mask_BxT = jnp.asarray(loss_mask)[:, 1:].astype(jnp.float32)
      return model(ids, batch["attention_mask"], runner=runner,
                   reduce=self._stats_reduce, reduce_args=(targets_BxT, mask_BxT))
    # One row's logits at a time: the loss is per example, so row b's loss needs row b only.
    return model(ids, batch["attention_mask"], runner=runner, reduce=self.loss,
                 reduce_args=(ids, loss_mask))



def model_loss_fn(
  graphdef: Any, *state: Any, loss: str | Callable[..., jax.Array] = "token_error", **options
) -> ModelLoss:
  """Binds a split NNX model to a loss: ``loss_fn(params, batch) -> [B]`` (for perturbations).

  Args:
    graphdef: from ``graphdef, params, *state = nnx.split(model, nnx.Param, ...)``.
    *state: the non-parameter state from the same split (may be empty).
    loss: a `LOSSES` name or a function ``(logits, input_ids, loss_mask) -> [B]``.
    **options: options for a named loss.

  Returns:
    A `ModelLoss`: a pure function of ``(params, batch)``, jit- and vmap-able, where ``batch``
    has ``input_ids``, ``attention_mask`` and ``loss_mask``; its ``with_runner`` runs the
    staged forward pass.
  """
  fn = get_loss(loss, **options) if isinstance(loss, str) else loss
  return ModelLoss(graphdef, state, fn)
