"""Bounded per-example losses in [0, 1] for language models: token error, smoothed NLL, answers.

Every loss takes next-token logits and the `pacbayes.data.Dataset` masks: ``logits[:, t - 1]``
predicts ``input_ids[:, t]``, and position ``t`` counts iff ``loss_mask[:, t] == 1``. A row
with no target (only the all-zero padding rows of `pacbayes.data.iterate_batches`) gets loss
0; datasets refuse real rows without targets, so weight such rows out with ``batch["weight"]``.
PAC-Bayes bounds of the Maurer / Langford-Seeger kind need losses in [0, 1], which is why the
log-likelihood is smoothed and rescaled rather than used raw.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

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


def _shifted(logits, input_ids, loss_mask):
  # logits[:, t - 1] predicts input_ids[:, t]; position 0 is never a target.
  return logits[:, :-1], input_ids[:, 1:], loss_mask[:, 1:].astype(jnp.float32)


def _masked_mean(per_token: jax.Array, mask: jax.Array) -> jax.Array:
  count = mask.sum(axis=-1)
  return (per_token * mask).sum(axis=-1) / jnp.maximum(count, 1.0)


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
def _token_error(logits: jax.Array, input_ids: jax.Array, loss_mask: jax.Array) -> jax.Array:
  logits, targets, mask = _shifted(logits, input_ids, loss_mask)
  predicted = jnp.argmax(logits, axis=-1)  # [B, L-1]; exact in any float dtype.
  wrong = (predicted != targets).astype(jnp.float32)
  return _masked_mean(wrong, mask)


def sequence_error(logits: ArrayLike, input_ids: ArrayLike, loss_mask: ArrayLike) -> jax.Array:
  """Per-example 0-1 error of the whole completion under teacher forcing.

  ``loss[b] = 1`` if for some target t, ``argmax_v logits[b, t - 1, v] != input_ids[b, t]``,
  else 0 (ties in the argmax go to the lowest id, as in `token_error`). Rows without targets
  get 0. Always ``sequence_error >= token_error`` row by row.

  Why it bounds the greedy answer error of the same weights (DESIGN.md section 1): if every
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
def _sequence_error(logits: jax.Array, input_ids: jax.Array, loss_mask: jax.Array) -> jax.Array:
  logits, targets, mask = _shifted(logits, input_ids, loss_mask)
  wrong = (jnp.argmax(logits, axis=-1) != targets) & (mask > 0)  # [B, L-1]
  return jnp.any(wrong, axis=-1).astype(jnp.float32)


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
def _smoothed_nll(logits, input_ids, loss_mask, alpha) -> jax.Array:
  logits, targets, mask = _shifted(logits, input_ids, loss_mask)
  vocab_size = logits.shape[-1]
  logits = logits.astype(jnp.float32)  # bf16 logits lose too much in logsumexp.
  lse = jax.nn.logsumexp(logits, axis=-1)  # [B, L-1]
  target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)
  log_p = jnp.minimum(target_logit[..., 0] - lse, 0.0)  # [B, L-1]
  alpha = jnp.asarray(alpha, jnp.float32)
  log_uniform = jnp.log(alpha) - math.log(vocab_size)
  log_p_smooth = jnp.logaddexp(jnp.log1p(-alpha) + log_p, log_uniform)
  log_top = jnp.logaddexp(jnp.log1p(-alpha), log_uniform)  # log(1 - a + a/V)
  width = jnp.log1p((1.0 - alpha) * vocab_size / alpha)
  per_token = jnp.clip((log_top - log_p_smooth) / width, 0.0, 1.0)
  return _masked_mean(per_token, mask)


LOSSES: dict[str, Callable[..., jax.Array]] = {
  "token_error": token_error,
  "smoothed_nll": smoothed_nll,
  "sequence_error": sequence_error,
}


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


def model_loss_fn(
  graphdef: Any, *state: Any, loss: str | Callable[..., jax.Array] = "token_error", **options
) -> Callable[[Any, dict[str, jax.Array]], jax.Array]:
  """Binds a split NNX model to a loss: ``loss_fn(params, batch) -> [B]`` for `pacbayes.posterior.perturb`.

  Args:
    graphdef: from ``graphdef, params, *state = nnx.split(model, nnx.Param, ...)``.
    *state: the non-parameter state from the same split (may be empty).
    loss: a `LOSSES` name or a function ``(logits, input_ids, loss_mask) -> [B]``.
    **options: options for a named loss.

  Returns:
    A pure function of ``(params, batch)``, jit- and vmap-able, where ``batch`` has
    ``input_ids``, ``attention_mask`` and ``loss_mask``.
  """
  fn = get_loss(loss, **options) if isinstance(loss, str) else loss

  def loss_fn(params: Any, batch: dict[str, jax.Array]) -> jax.Array:
    from flax import nnx

    model = nnx.merge(graphdef, params, *state)
    logits = model(batch["input_ids"], batch["attention_mask"])
    return fn(logits, batch["input_ids"], batch["loss_mask"])

  return loss_fn


# ---------------------------------------------------------------------------------------------
# Answer accuracy (host-side: strings).

_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def normalize_answer(text: str) -> str:
  """Canonical form for exact-match comparison.

  Strips whitespace, surrounding ``$``, a trailing period, thousands separators in numbers
  and case; numbers compare by value (``"3.0" == "3"``, ``"1,000" == "1000"``).
  """
  s = " ".join(str(text).split()).strip()
  s = s.strip("$").strip().rstrip(".").strip().lower()
  s = re.sub(r"(?<=\d),(?=\d{3}(\D|$))", "", s)
  if _NUMBER.match(s):
    value = float(s)
    if math.isfinite(value):
      return str(int(value)) if value == int(value) and abs(value) < 2**53 else repr(value)
  return s


def _last_boxed(text: str) -> str | None:
  start = text.rfind("\\boxed{")
  if start < 0:
    return None
  depth, i = 1, start + len("\\boxed{")
  for j in range(i, len(text)):
    if text[j] == "{":
      depth += 1
    elif text[j] == "}":
      depth -= 1
      if depth == 0:
        return text[i:j]
  return None


@dataclasses.dataclass(frozen=True)
class AnswerExtractor:
  r"""Pulls the final answer out of generated text.

  In order: the content of the last ``\boxed{...}`` (when ``boxed``); else the rest of the
  line after the last occurrence of any of ``markers`` (case-insensitive), without leading
  ``:``, ``=`` or ``is`` (the next non-empty line if that line is empty); else the last
  non-empty line. The result goes through `normalize_answer`.

  Attributes:
    markers: answer markers, e.g. ``"####"`` (GSM8K) and ``"answer"`` ("The answer is 7").
    boxed: look for LaTeX ``\boxed{}`` first.
  """

  markers: tuple[str, ...] = ("####", "answer")
  boxed: bool = True

  def __post_init__(self):
    if isinstance(self.markers, str) or not all(isinstance(m, str) and m for m in self.markers):
      raise ValueError(f"markers: expected a tuple of non-empty strings, got {self.markers!r}")

  def __call__(self, text: str) -> str:
    if self.boxed:
      boxed = _last_boxed(text)
      if boxed is not None:
        return normalize_answer(boxed)
    lower = text.lower()
    best = -1
    for marker in self.markers:
      pos = lower.rfind(marker.lower())
      if pos >= 0:
        best = max(best, pos + len(marker))
    if best >= 0:
      rest = text[best:].lstrip(" \t:=")
      rest = re.sub(r"^(is|was)\b", "", rest, flags=re.IGNORECASE).lstrip(" \t:=")
      lines = [ln for ln in rest.splitlines() if ln.strip()]
      return normalize_answer(lines[0] if lines else "")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return normalize_answer(lines[-1] if lines else "")


extract_answer = AnswerExtractor()


def answer_error(
  generated_ids: ArrayLike,
  answers: Sequence[str | None],
  decode_fn: Callable[[list[int]], str],
  *,
  eos_id: int | None = None,
  extract: Callable[[str], str] = extract_answer,
) -> np.ndarray:
  """Per-example 0-1 answer error: 0 iff the extracted answer matches the reference exactly.

  Args:
    generated_ids: [B, T] generated token ids (e.g. from ``greedy_generate``).
    answers: B reference answers (the dataset's ``answer`` field); None marks a padding row
      (loss 0).
    decode_fn: ids -> text, e.g. ``lambda ids: tok.decode(ids, skip_special_tokens=True)``.
    eos_id: generation is cut at the first ``eos_id``.
    extract: text -> normalised answer (an `AnswerExtractor`); references are compared
      after `normalize_answer`.

  Returns:
    [B] float32 errors in {0, 1}.
  """
  ids = np.asarray(generated_ids)
  if ids.ndim != 2 or len(answers) != ids.shape[0]:
    raise ValueError(
      f"generated_ids {ids.shape} must be [B, T] with B = len(answers) = {len(answers)}"
    )
  errors = np.zeros((ids.shape[0],), np.float32)
  for b, reference in enumerate(answers):
    if reference is None:
      continue
    row = ids[b].tolist()
    if eos_id is not None and eos_id in row:
      row = row[: row.index(eos_id)]
    errors[b] = float(extract(decode_fn(row)) != normalize_answer(reference))
  return errors


def model_answer_error(
  model: Any,
  input_ids: ArrayLike,
  prompt_lengths: ArrayLike,
  answers: Sequence[str | None],
  decode_fn: Callable[[list[int]], str],
  *,
  max_new_tokens: int,
  eos_id: int | None = None,
  pad_id: int = 0,
  extract: Callable[[str], str] = extract_answer,
) -> np.ndarray:
  """Greedy-decodes from each row's prompt and scores it with `answer_error`.

  Args:
    model: a `pacbayes.models` decoder.
    input_ids: [B, L] rows (only the first ``prompt_lengths[b]`` tokens are used).
    prompt_lengths: [B] prompt lengths (a `Dataset`'s ``prompt_lengths``); padding rows
      (answer None) may have length 0.
    answers: B reference answers, None for padding rows.
    decode_fn: ids -> text.
    max_new_tokens: generation budget.
    eos_id: stop token.
    pad_id: id written after each prompt.
    extract: the answer extractor.

  Returns:
    [B] float32 errors in {0, 1}.
  """
  from pacbayes.models.generate import greedy_generate

  ids = np.asarray(input_ids)
  lengths = np.asarray(prompt_lengths, np.int32)
  if ids.ndim != 2 or lengths.shape != (ids.shape[0],):
    raise ValueError(f"input_ids {ids.shape} and prompt_lengths {lengths.shape} disagree")
  lengths = np.maximum(lengths, 1)  # Padding rows: decode from one pad token; scored 0.
  width = int(lengths.max())
  prompts = np.where(np.arange(width)[None, :] < lengths[:, None], ids[:, :width], pad_id)
  generated = greedy_generate(
    model, jnp.asarray(prompts, jnp.int32), jnp.asarray(lengths), max_new_tokens, eos_id=eos_id
  )
  return answer_error(generated, answers, decode_fn, eos_id=eos_id, extract=extract)
