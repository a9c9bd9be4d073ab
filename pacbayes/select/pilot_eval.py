"""The model side of an online `pacbayes select`: per-item risk of a pilot on the target rows.

A pilot's risk is measured on the unperturbed fine-tuned weights (no posterior, nothing
certified): the per-item bounded loss of `pacbayes.losses` (``seq_error``: 1 when some
teacher-forced argmax on the completion is wrong, docs/THEORY.md §3.3; or ``token_error``:
the fraction of wrong completion tokens), one number per target item, so that the bootstrap
of `pacbayes.select.predict` can resample items. One compiled evaluation serves the base and
every pilot (the weights are an argument, the target rows one padded shape).

The G_gen proxy of a pilot is ``||w - w_base||^2`` over all parameters (for LoRA the merged
``W + s B A`` against the base), in float32 squares summed in float64: a measure, not a term
of any bound here (docs/THEORY.md §9).

`compilation_cache` scopes JAX's persistent compilation cache to a folder: the pilots of one
bucket train one program shape, so every pilot after the first loads it instead of compiling
(on a CPU the compile is most of a small pilot's time).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

RISKS = {"seq_error": "teacher-forced sequence error of the completion (0/1 per item)",
         "token_error": "fraction of wrong teacher-forced completion tokens per item"}
LOSS_NAMES = {"seq_error": "sequence_error", "token_error": "token_error"}  # in LOSSES


@dataclasses.dataclass(frozen=True, eq=False)
class Target:
  """The target items, tokenised for the base.

  Attributes:
    arrays: "input_ids", "attention_mask", "loss_mask": [I, L] int32.
    weights_I: [I] item weights (sum 1): 1/I for a test file; p(d) / (items of d) for a
      mixture over held-out pool rows.
    strata_I: [I] stratum of each item (its difficulty's index; 0 without difficulty).
    difficulty_I: [I] float64 or None.
    source: where the items come from (file, held-out lines).
    num_truncated: items cut at --max-length.
  """

  arrays: dict[str, np.ndarray]
  weights_I: np.ndarray
  strata_I: np.ndarray
  difficulty_I: np.ndarray | None
  source: str
  num_truncated: int


def tokenise(rows: Sequence[dict[str, Any]], lines: Sequence[int], *, source: str,
             base_dir: str, config: Any, max_length: int | None):
  """A `pacbayes.data.dataset.Dataset` of rows for the base (its tokenizer and vocabulary)."""
  from pacbayes.data.dataset import Dataset
  from pacbayes.data.rows import EncodeOptions

  pad_id = config.pad_token_id if isinstance(config.pad_token_id, int) else 0
  return Dataset.from_rows(list(rows), source=source, line_numbers=list(lines),
                           tokenizer_dir=base_dir, vocab_size=config.vocab_size,
                           options=EncodeOptions(max_length=max_length, pad_id=pad_id))


def make_target(data: Any, weights_I: np.ndarray) -> Target:
  """A `Target` from a tokenised dataset and its item weights; strata = difficulty values."""
  d = data.difficulty
  strata = (np.zeros(len(data), np.int64) if d is None
            else np.unique(d, return_inverse=True)[1].astype(np.int64))
  return Target({"input_ids": data.input_ids, "attention_mask": data.attention_mask,
                 "loss_mask": data.loss_mask}, np.asarray(weights_I, np.float64), strata, d,
                data.source, int(data.num_truncated))


class Evaluator:
  """The base model, loaded once; per-item losses of any weights of its architecture.

  Args:
    base_dir: the base Hugging Face folder.
    dtype: evaluation dtype ("float32", "bfloat16" or None: the checkpoint's).
    loss: a key of RISKS.
    batch_size: items per evaluation batch (the last batch is padded with empty rows).
  """

  def __init__(self, base_dir: str, *, dtype: str | None, loss: str, batch_size: int = 32):
    import jax
    from flax import nnx

    from pacbayes.losses import get_loss
    from pacbayes.models import load_pretrained

    if loss not in RISKS:
      raise ValueError(f"--risk: expected one of {sorted(RISKS)}, got {loss!r}")
    self.base_dir, self.dtype, self.batch_size = base_dir, dtype, int(batch_size)
    model, self.config = load_pretrained(base_dir, dtype=dtype)
    self.graphdef, self.base_params, self.rest = nnx.split(model, nnx.Param, ...)
    self.num_params = int(sum(np.size(x) for x in jax.tree.leaves(self.base_params)))
    fn, graphdef, rest = get_loss(LOSS_NAMES[loss]), self.graphdef, self.rest

    def per_item(params, ids_BxL, att_BxL, lm_BxL):
      logits_BxLxV = nnx.merge(graphdef, params, rest)(ids_BxL, att_BxL)
      return fn(logits_BxLxV, ids_BxL, lm_BxL)

    def sq_distance(params, base):
      import jax.numpy as jnp

      parts = [jnp.sum(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)))
               for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(base), strict=True)]
      return jnp.stack(parts)

    self._per_item = jax.jit(per_item)
    self._sq = jax.jit(sq_distance)
    self._mergers: dict[Any, Any] = {}

  def losses(self, params: Any, target: Target) -> np.ndarray:
    """[I] float64 per-item losses in [0, 1] of `params` on the target items."""
    ids, att, lm = (target.arrays[k] for k in ("input_ids", "attention_mask", "loss_mask"))
    n, b = ids.shape[0], self.batch_size
    out = np.empty(n, np.float64)
    for lo in range(0, n, b):
      hi = min(lo + b, n)
      pad = b - (hi - lo)
      batch = [np.concatenate([x[lo:hi], np.zeros((pad, x.shape[1]), np.int32)])
               if pad else x[lo:hi] for x in (ids, att, lm)]
      out[lo:hi] = np.asarray(self._per_item(params, *batch), np.float64)[:hi - lo]
    return out

  def sq_distance(self, params: Any) -> float:
    """||w - w_base||^2 over every parameter (float32 differences, float64 sum)."""
    return float(np.sum(np.asarray(self._sq(params, self.base_params), np.float64)))

  def pilot_params(self, run_dir: str, lora: bool) -> Any:
    """The weights of a finished `pacbayes finetune` folder: the base with the adapter merged
    (LoRA), or the saved full model."""
    import jax
    from flax import nnx

    if lora:
      from pacbayes.lora.adapter import merge_params, read_adapter

      adapter = read_adapter(run_dir, self.config, self.base_dir)
      layout = adapter.layout
      key = (tuple(layout.hf_weight_names), layout.rank, float(layout.scaling))
      if key not in self._mergers:
        self._mergers[key] = jax.jit(lambda p, lo: merge_params(p, layout, lo))
      return self._mergers[key](self.base_params, adapter.lora)
    from pacbayes.models import load_pretrained

    model, _ = load_pretrained(run_dir, dtype=self.dtype or self.config.dtype)
    return nnx.split(model, nnx.Param, ...)[1]


@contextlib.contextmanager
def compilation_cache(folder: str | None) -> Iterator[None]:
  """JAX's persistent compilation cache in `folder` for the duration (every program cached,
  however short its compile); the previous settings are restored after. A cache the user
  configured already (``JAX_COMPILATION_CACHE_DIR``) is kept as it is."""
  import jax
  from jax.experimental.compilation_cache import compilation_cache as cc

  if folder is None or jax.config.jax_compilation_cache_dir:
    yield
    return
  old_min = jax.config.jax_persistent_cache_min_compile_time_secs
  os.makedirs(folder, exist_ok=True)
  cc.reset_cache()
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  try:
    yield
  finally:
    cc.reset_cache()
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old_min)
