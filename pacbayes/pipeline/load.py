"""Loading for `pacbayes bound`: the checkpoint pair (with dtype notes) and the training set.

Dtypes are never changed silently: `load_pair` states in its notes when either checkpoint is
stored in a 16-bit dtype (with the measured share of parameters that differ only by
rounding, `pacbayes.models.weights.storage_report`) and when a checkpoint is cast to another
dtype for evaluation (the KL then describes the cast weights).

Lengths: without `max_length`, a row longer than the model's context
(`max_position_embeddings`) is refused with its file and line; with `max_length` (at most the
context), longer rows are truncated on the right and counted.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from typing import Any

import jax

from pacbayes.data.jsonl import DataError

__all__ = ["LoadedPair", "check_same_architecture", "load_lora_pair", "load_lora_space",
           "load_pair", "load_training_set", "loss_options", "model_loss", "stored_dtypes"]

# Config fields that do not change the function a checkpoint computes.
_IGNORED_CONFIG_FIELDS = ("dtype", "initializer_range", "bos_token_id", "eos_token_id",
                          "pad_token_id")


def _architecture(config: Any) -> dict[str, Any]:
  fields = dataclasses.asdict(config)
  return {k: v for k, v in fields.items() if k not in _IGNORED_CONFIG_FIELDS}


def check_same_architecture(cfg_p: Any, cfg_q: Any, prior_dir: str, posterior_dir: str) -> None:
  """Refuses two configs that compute different functions (dtype and token ids aside)."""
  a, b = _architecture(cfg_p), _architecture(cfg_q)
  diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
  if diff:
    k = diff[0]
    raise ValueError(
        f"prior {prior_dir} and posterior {posterior_dir} have different architectures: "
        f"{k} = {a.get(k)!r} vs {b.get(k)!r} (all differing fields: {diff})")


def stored_dtypes(counts: dict[str, int]) -> str:
  """"float32" or "bfloat16 (90%), float32 (10%)" from {dtype: number of parameters}."""
  total = sum(counts.values()) or 1
  if len(counts) == 1:
    return next(iter(counts))
  return ", ".join(f"{d} ({100 * c / total:.0f}%)" for d, c in
                   sorted(counts.items(), key=lambda kv: -kv[1]))


@dataclasses.dataclass
class LoadedPair:
  """Both checkpoints, split for the perturbation engine.

  Attributes:
    graphdef, rest: from `nnx.split(model_q, nnx.Param, ...)`.
    params_q, params_p: the posterior's and the prior's `nnx.Param` state (params_p: a
      `ParameterReader` when loaded with `stream_prior`).
    config: the posterior's config (dtype = the evaluation dtype).
    notes: one-line notes on stored dtypes and casts, for the report and table.
    storage: JSON-ready stored-dtype details.
    mask: the default perturbed set (a LoRA adapter's adapted matrices), or None (all).
  """

  graphdef: Any
  rest: Any
  params_q: Any
  params_p: Any
  config: Any
  notes: list[str]
  storage: dict[str, Any]
  mask: Any = None


def load_pair(prior_dir: str, posterior_dir: str, *, dtype: str | None,
              say=lambda text: None, stream_prior: bool = False) -> LoadedPair:
  """Loads the prior and posterior folders in one evaluation dtype and states every cast.

  Args:
    prior_dir, posterior_dir: Hugging Face checkpoint folders.
    dtype: "float32", "bfloat16", or None (the posterior config's dtype).
    say: a callback for progress lines.
    stream_prior: `params_p` is a `pacbayes.models.checkpoint.ParameterReader` of the prior
      (its leaves read one at a time, as loaded, when the certificate route asks) instead of
      the loaded parameters: only the posterior is ever held whole (`pacbayes bound`).

  Returns:
    A `LoadedPair`.

  Raises:
    ValueError: unreadable or mismatched checkpoints (naming the folder, file and tensor).
  """
  from flax import nnx

  from pacbayes.models import load_pretrained
  from pacbayes.models.checkpoint import load_config
  from pacbayes.models.weights import storage_report

  cfg_q0 = load_config(posterior_dir)
  cfg_p0 = load_config(prior_dir)
  check_same_architecture(cfg_p0, cfg_q0, prior_dir, posterior_dir)
  say("reading stored dtypes ...")
  storage = storage_report(prior_dir, posterior_dir)
  eval_dtype = dtype or cfg_q0.dtype
  notes = []
  note = storage.note()
  if note:
    notes.append(note)
  for side, folder, counts in (("prior", prior_dir, storage.prior_dtypes),
                               ("posterior", posterior_dir, storage.posterior_dtypes)):
    notes += _cast_notes(side, folder, counts, eval_dtype)
  say(f"loading posterior {posterior_dir} ({eval_dtype}) ...")
  model_q, cfg_q = load_pretrained(posterior_dir, dtype=eval_dtype)
  graphdef, params_q, rest = nnx.split(model_q, nnx.Param, ...)
  if stream_prior:
    from pacbayes.models.checkpoint import ParameterReader

    say(f"opening prior {prior_dir} ({eval_dtype}; read one tensor at a time) ...")
    params_p = ParameterReader(prior_dir, dtype=eval_dtype)
  else:
    say(f"loading prior {prior_dir} ({eval_dtype}) ...")
    model_p, _ = load_pretrained(prior_dir, dtype=eval_dtype)
    _, params_p, _ = nnx.split(model_p, nnx.Param, ...)
  details = {"prior": storage.prior_dtypes, "posterior": storage.posterior_dtypes,
             "evaluation_dtype": eval_dtype, "sixteen_bit": storage.sixteen_bit,
             "moved_share": storage.moved_share, "rounding_share": storage.rounding_share}
  return LoadedPair(graphdef, rest, params_q, params_p, cfg_q, notes, details)


def _cast_notes(side: str, folder: str, counts: dict[str, int], eval_dtype: str) -> list[str]:
  if any(d != eval_dtype for d in counts):
    return [f"{side} {folder} is stored in {stored_dtypes(counts)} and is cast to {eval_dtype} "
            "for evaluation; the risk and the KL are those of the cast weights"]
  return []


def load_prior_params(prior_dir: str, *, dtype: str) -> Any:
  """The prior folder's `nnx.Param` state in the evaluation `dtype`, as `load_pair` and
  `load_lora_pair` read it (read again by `pacbayes bound` for the base's test risk, after
  the certificate has released the first copy)."""
  from flax import nnx

  from pacbayes.models import load_pretrained

  model, _ = load_pretrained(prior_dir, dtype=dtype)
  return nnx.split(model, nnx.Param, ...)[1]


def load_lora_pair(base_dir: str, adapter_dir: str, *, dtype: str | None,
                   say=lambda text: None, accept_base: bool = False) -> LoadedPair:
  """The base checkpoint (prior mean) and a PEFT LoRA adapter merged into it (posterior mean).

  Weight space (`pacbayes.lora.adapter.load_lora`): the posterior mean is W + s B A on the adapted
  matrices (merged in float32, rounded once to the evaluation dtype) and the base elsewhere;
  the default perturbed set is the adapted matrices (`LoadedPair.mask`), every other
  parameter being equal in both by construction.

  Raises:
    ValueError: see `pacbayes.lora.adapter.read_adapter` and `pacbayes.models.load_pretrained`.
  """
  from pacbayes.lora import adapter as lora
  from pacbayes.models.weights import storage_dtypes

  say(f"loading base {base_dir} and merging the LoRA adapter {adapter_dir} ...")
  ck = lora.load_lora(base_dir, adapter_dir, dtype=dtype, accept_base=accept_base)
  eval_dtype = ck.config.dtype
  counts: dict[str, int] = {}
  for d in storage_dtypes(base_dir).values():  # by tensor
    counts[d] = counts.get(d, 0) + 1
  layout = ck.adapter.layout
  notes = [f"posterior: PEFT LoRA adapter {adapter_dir} (rank {layout.rank}, alpha "
           f"{layout.alpha:g}) merged into the base {base_dir} in float32 and rounded to "
           f"{eval_dtype} (weight space); {len(ck.adapted_hf_names)} adapted matrices"]
  notes += _cast_notes("base", base_dir, counts, eval_dtype)
  details = {"prior": counts, "posterior": "LoRA adapter (merged)", "evaluation_dtype":
             eval_dtype, "lora": {"adapter": adapter_dir, "rank": layout.rank,
                                  "alpha": layout.alpha, "adapted": list(ck.adapted_hf_names),
                                  "base_check": ck.adapter.base_check}}
  return LoadedPair(ck.graphdef, ck.rest, ck.merged_params, ck.base_params, ck.config, notes,
                    details, ck.adapted_mask)


def load_lora_space(base_dir: str, adapter_dir: str, *, dtype: str | None, loss: str,
                    options: dict[str, Any], say=lambda text: None,
                    accept_base: bool = False) -> tuple[LoadedPair, Any]:
  """The posterior in LoRA parameter space (SubLoRA-style) and its loss function.

  The prior mean is the adapter's recorded data-independent initialisation (A0, B0 = 0;
  written by `pacbayes finetune`), the posterior mean its trained (A, B); only the LoRA
  parameters are perturbed and the base is the same in both (`pacbayes.lora.adapter.lora_space`).
  Both this and the weight-space view (`load_lora_pair`) are valid certificates; the report
  names the space.

  Returns:
    (pair, loss_fn): `pair.graphdef` and `pair.rest` are None (the loss closes over the
    model), `pair.mask` marks the LoRA leaves; loss_fn(params, batch) -> [B] in [0, 1].

  Raises:
    ValueError: the adapter does not record its initialisation, and the errors of
      `pacbayes.lora.adapter.load_lora`.
  """
  from pacbayes.lora import adapter as lora

  say(f"loading base {base_dir} and the LoRA adapter {adapter_dir} (LoRA space) ...")
  ck = lora.load_lora(base_dir, adapter_dir, dtype=dtype, accept_base=accept_base)
  space = lora.lora_space(ck)
  layout = space.layout
  notes = [f"posterior in LoRA parameter space: prior mean = the adapter's recorded "
           f"initialisation, posterior mean = its trained A and B (rank {layout.rank}, alpha "
           f"{layout.alpha:g}); {space.num_params} LoRA parameters perturbed, the base "
           f"{base_dir} fixed"]
  details = {"space": "lora", "evaluation_dtype": ck.config.dtype,
             "lora": {"adapter": adapter_dir, "rank": layout.rank, "alpha": layout.alpha,
                      "adapted": list(ck.adapted_hf_names), "num_params": space.num_params,
                      "base_check": ck.adapter.base_check}}
  pair = LoadedPair(None, None, space.posterior, space.prior, ck.config, notes, details,
                    space.perturbed_mask)
  return pair, space.loss_fn(loss, **options)


def load_training_set(path: str, *, tokenizer_dir: str, config: Any, max_length: int | None,
                      chat_template: bool) -> Any:
  """The training JSONL as a `pacbayes.data.dataset.Dataset`, with the model's limits.

  Args:
    path: the JSONL file.
    tokenizer_dir: the folder with the tokenizer files (for string rows).
    config: the model config (vocabulary size, context length).
    max_length: truncate rows to this many tokens (at most the context), or None to refuse
      rows longer than the context.
    chat_template: render each `prompt` with the tokenizer's chat template
      (`pacbayes.data.tokenize.apply_chat_template_rows`).

  Raises:
    DataError: naming the file and line (see `pacbayes.data.dataset.load_dataset`), a
      `max_length` beyond the context, or a missing chat template.
  """
  from pacbayes.data import tokenize
  from pacbayes.data.dataset import Dataset
  from pacbayes.data.jsonl import read_jsonl_with_lines
  from pacbayes.data.rows import EncodeOptions

  context = int(config.max_position_embeddings)
  if max_length is not None and max_length > context:
    raise DataError(f"max_length: {max_length} exceeds the model's context "
                    f"(max_position_embeddings = {context})")
  path = os.fspath(path)
  rows, lines = read_jsonl_with_lines(path)
  tokenizer = None
  if chat_template:
    tokenizer = tokenize.load_tokenizer(tokenizer_dir)
    rows = tokenize.apply_chat_template_rows(rows, tokenizer, source=path, line_numbers=lines,
                                             tokenizer_dir=tokenizer_dir)
  limit = context if max_length is None else max_length
  try:
    return Dataset.from_rows(
        rows, tokenizer=tokenizer, tokenizer_dir=tokenizer_dir, vocab_size=config.vocab_size,
        options=EncodeOptions(max_length=limit, on_overflow="error" if max_length is None
                              else "truncate"),
        source=path, line_numbers=lines)
  except DataError as e:
    text = str(e)
    if max_length is None and f"max_length={limit}" in text:
      head = text.split(";")[0].replace(f"max_length={limit}", f"the model's context "
                                        f"(max_position_embeddings = {context})")
      raise DataError(f"{head}; give max_length N to truncate longer rows") from None
    raise


@functools.lru_cache(maxsize=8)
def _model_loss(graphdef: Any, loss: str, options: tuple) -> Any:
  """`losses.model_loss_fn` for a model without non-parameter state, cached by (graphdef,
  loss, options) so that repeated certificates in one process reuse the compiled step."""
  from pacbayes import losses

  return losses.model_loss_fn(graphdef, loss=loss, **dict(options))


def loss_options(loss: str, alpha: float | None) -> dict[str, Any]:
  """The loss's options as used (defaults filled in), for the loss and the report.

  Raises:
    ValueError: an unknown loss, `alpha` for a loss without that option, a bad value.
  """
  from pacbayes import losses

  if loss not in losses.LOSSES:
    raise ValueError(f"loss: unknown name {loss!r}; expected one of {sorted(losses.LOSSES)}")
  params = inspect.signature(losses.LOSSES[loss]).parameters
  if alpha is not None and "alpha" not in params:
    raise ValueError(f"alpha: applies to loss 'smoothed_nll' only, not {loss!r}")
  out = {k: p.default for k, p in params.items()
         if k not in ("logits", "input_ids", "loss_mask") and p.default is not p.empty}
  if alpha is not None:
    out["alpha"] = alpha
  losses.get_loss(loss, **out)  # Checks the values (e.g. alpha in (0, 1)).
  return out


def model_loss(graphdef: Any, rest: Any, loss: str, options: dict[str, Any]) -> Any:
  """`(params, batch) -> [B]` losses of the split model (`pacbayes.losses.model_loss_fn`)."""
  from pacbayes import losses

  if jax.tree.leaves(rest):
    return losses.model_loss_fn(graphdef, rest, loss=loss, **options)
  return _model_loss(graphdef, loss, tuple(sorted(options.items())))
