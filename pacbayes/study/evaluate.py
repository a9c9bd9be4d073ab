"""Evaluation by test slice: greedy-decoded answer accuracy and teacher-forced token error."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from pacbayes import losses
from pacbayes.data import synthetic
from pacbayes.data.dataset import Dataset
from pacbayes.data.rows import EncodeOptions
from pacbayes.models.generate import greedy_generate
from pacbayes.posterior import perturb

# Extra tokens granted to the decoder beyond the reference completion length, so that a
# slightly longer (still valid) chain of thought can still reach its answer.
DECODE_SLACK = 8


@dataclasses.dataclass(frozen=True)
class SliceSet:
  """A test set cut into slices by operation count, with the mixture that weights them.

  Every slice is a `Dataset` padded to one common length, so that teacher-forced passes
  over any slice share one compiled program.

  Attributes:
    slices: op count -> the slice's rows (prompt/completion split, completion-only loss).
    mixture: op count -> probability of the slice under the test distribution (sums to 1).
  """

  slices: Mapping[int, Dataset]
  mixture: Mapping[int, float]

  def __post_init__(self):
    if not self.slices:
      raise ValueError("SliceSet.slices: expected at least one slice")
    if set(self.slices) != set(self.mixture):
      raise ValueError(
        f"SliceSet.mixture: keys {sorted(self.mixture)} differ from the slices "
        f"{sorted(self.slices)}"
      )
    total = sum(self.mixture.values())
    if abs(total - 1.0) > 1e-9 or min(self.mixture.values()) < 0:
      raise ValueError(f"SliceSet.mixture: expected probabilities summing to 1, got {total}")
    for k, ds in self.slices.items():
      if ds.answers is None:
        raise ValueError(f"SliceSet.slices[{k}]: the dataset has no answers")

  @property
  def ops(self) -> list[int]:
    return sorted(self.slices)

  def weighted(self, by_slice: Mapping[int, float]) -> float:
    """Mixture-weighted average of per-slice values (the value under the test distribution)."""
    return float(sum(self.mixture[k] * by_slice[k] for k in self.ops))


def make_slice_set(rows: Sequence[Mapping[str, Any]], mixture: Mapping[int, float], *,
                   pad_length: int | None = None) -> SliceSet:
  """Builds a `SliceSet` from synthetic rows (with a ``difficulty`` op count each).

  Args:
    rows: rows from `pacbayes.data.synthetic.generate_dataset` (``"ids"`` format).
    mixture: op count -> test probability, one entry per slice present in `rows`.
    pad_length: common padded length (default: the longest row).

  Returns:
    The `SliceSet`.
  """
  if pad_length is None:
    pad_length = max(len(r["prompt_ids"]) + len(r["completion_ids"]) for r in rows)
  by_ops: dict[int, list[Mapping[str, Any]]] = {}
  for r in rows:
    by_ops.setdefault(int(r["difficulty"]), []).append(r)
  slices = {
    k: Dataset.from_rows(rs, options=EncodeOptions(pad_length=pad_length),
                         source=f"<test slice ops={k}>")
    for k, rs in sorted(by_ops.items())
  }
  return SliceSet(slices=slices, mixture={int(k): float(p) for k, p in mixture.items()})


def answer_correct(generated_ids: np.ndarray, answers: Sequence[str], *,
                   tokenizer: synthetic.SyntheticTokenizer | None = None) -> np.ndarray:
  """Grades decoded completions with the synthetic task's answer extractor.

  Args:
    generated_ids: [B, T] generated token ids (after the prompt).
    answers: B reference answers (digit strings).
    tokenizer: the synthetic tokenizer (a new one by default).

  Returns:
    [B] bool, True where the stated answer equals the reference.
  """
  tokenizer = tokenizer or synthetic.SyntheticTokenizer()
  out = np.zeros(len(answers), dtype=bool)
  for i, (ids, ref) in enumerate(zip(np.asarray(generated_ids), answers, strict=True)):
    stated = synthetic.extract_answer(tokenizer.decode(ids))
    out[i] = stated is not None and stated == str(ref)
  return out


def slice_correct(model: nnx.Module, test: SliceSet, *, batch_size: int = 256,
                  slack: int = DECODE_SLACK) -> dict[int, np.ndarray]:
  """Greedy-decoded answer correctness of every test item, slice by slice.

  Prompts of one slice share one length (the task fixes it by the op count), and each slice
  decodes its reference completion length plus `slack` tokens, stopping rows at EOS.

  Args:
    model: the decoder.
    test: the sliced test set.
    batch_size: prompts per generation call (the last batch of a slice is padded).
    slack: extra decoding budget beyond the reference completion length.

  Returns:
    op count -> [n_k] bool, True where the stated answer equals the reference (row order of
    the slice).
  """
  tokenizer = synthetic.SyntheticTokenizer()
  result = {}
  for k in test.ops:
    ds = test.slices[k]
    n = len(ds)
    max_new = int(ds.num_targets.max()) + slack
    p_len = int(ds.prompt_lengths.max())
    correct = np.zeros(n, dtype=bool)
    b = min(batch_size, n)
    for start in range(0, n, b):
      idx = np.arange(start, start + b)
      idx[idx >= n] = idx[0]  # pad the last batch with repeats; they are dropped below
      prompts = ds.input_ids[idx, :p_len]
      gen = np.asarray(
        greedy_generate(model, prompts, ds.prompt_lengths[idx], max_new,
                        eos_id=synthetic.EOS_ID, pad_id=synthetic.PAD_ID)
      )
      real = min(b, n - start)
      answers = [ds.answers[i] for i in idx[:real]]
      correct[start:start + real] = answer_correct(gen[:real], answers, tokenizer=tokenizer)
    result[k] = correct
  return result


def slice_accuracy(model: nnx.Module, test: SliceSet, *, batch_size: int = 256,
                   slack: int = DECODE_SLACK) -> dict[int, float]:
  """Greedy-decoded answer accuracy on every slice: op count -> mean of `slice_correct`."""
  return {k: float(v.mean()) for k, v in
          slice_correct(model, test, batch_size=batch_size, slack=slack).items()}


def row_losses(loss_fn: Callable, params: Any, data: Mapping[str, np.ndarray], *,
               batch_size: int = 128) -> np.ndarray:
  """[N] float64 per-row loss of `params` (no perturbation), in fixed-shape batches.

  Args:
    loss_fn: `loss_fn(params, batch) -> [B]` (e.g. `sequence_error_fn(apply)`).
    params: the parameters.
    data: [N, L] arrays "input_ids", "attention_mask", "loss_mask".
    batch_size: rows per forward pass (the last batch is padded with row 0, then dropped).
  """
  fn = _jitted(loss_fn)
  n = int(np.shape(data["input_ids"])[0])
  out = np.zeros(n, dtype=np.float64)
  b = min(batch_size, n)
  for start in range(0, n, b):
    idx = np.arange(start, start + b)
    idx[idx >= n] = 0
    batch = {k: np.asarray(data[k])[idx] for k in ("input_ids", "attention_mask", "loss_mask")}
    real = min(b, n - start)
    out[start:start + real] = np.asarray(fn(params, batch), dtype=np.float64)[:real]
  return out


def posterior_row_losses(loss_fn: Callable, params: Any, data: Mapping[str, np.ndarray], *,
                         key: jax.Array, sigma: float, num_draws: int,
                         batch_size: int = 128) -> np.ndarray:
  """[num_draws, N] per-row loss under `num_draws` draws of Q = N(params, sigma^2 I).

  Draw d uses `perturb.sample_posterior(fold_in(key, d), ...)` for every row (one full pass per
  draw), so the mean over rows and draws estimates E_Q[R] without bias.
  """
  out = []
  for d in range(num_draws):
    theta = perturb.sample_posterior(jax.random.fold_in(key, d), params, sigma)
    out.append(row_losses(loss_fn, theta, data, batch_size=batch_size))
  return np.stack(out)


@functools.lru_cache(maxsize=64)
def _jitted(loss_fn: Callable) -> Callable:
  """One compiled program per loss function (and batch shape)."""
  return jax.jit(loss_fn)


def sequence_error_fn(apply_fn: Callable) -> Callable:
  """loss(params, batch) -> [B] sequence error (`pacbayes.losses.sequence_error`) of `apply_fn`.

  1 where some teacher-forced argmax on the completion differs from the target: an upper bound
  on the greedy answer error of the same weights (see `pacbayes.losses.sequence_error`).
  """

  def loss_fn(params, batch):
    logits_BxLxV = apply_fn(params, batch["input_ids"], batch["attention_mask"])
    return losses.sequence_error(logits_BxLxV, batch["input_ids"], batch["loss_mask"])

  return loss_fn


def token_nll_fn(apply_fn: Callable) -> Callable:
  """loss(params, batch) -> [B] summed cross-entropy (nats) of each row's target tokens.

  The early-stopping score of the study's cells is the sum over the validation rows of this,
  divided by their target-token count (`mean_token_nll`): the SFT objective, held out.
  """

  def loss_fn(params, batch):
    logits_BxLxV = apply_fn(params, batch["input_ids"], batch["attention_mask"])
    logp_BxT = losses.target_log_probs(logits_BxLxV, batch["input_ids"])
    return -(logp_BxT * losses.target_mask(batch["loss_mask"])).sum(axis=-1)

  return loss_fn


def mean_token_nll(nll_fn: Callable, params: Any, data: Mapping[str, np.ndarray], *,
                   batch_size: int = 128) -> float:
  """Mean cross-entropy per target token (nats) of `params` on `data` ([N, L] arrays), with
  `nll_fn = token_nll_fn(apply)`: sum over rows of the summed NLL over the target-token count."""
  total = row_losses(nll_fn, params, data, batch_size=batch_size).sum()
  count = float(np.asarray(data["loss_mask"])[:, 1:].sum())
  return float(total / max(count, 1.0))


def error_loss_fn(apply_fn: Callable) -> Callable:
  """loss(params, batch) -> [B] token error on the target tokens, for `pacbayes.posterior.perturb`.

  Args:
    apply_fn: apply(params, input_ids, attention_mask) -> logits.
  """

  def loss_fn(params, batch):
    logits_BxLxV = apply_fn(params, batch["input_ids"], batch["attention_mask"])
    return losses.token_error(logits_BxLxV, batch["input_ids"], batch["loss_mask"])

  return loss_fn


def _arrays(ds: Dataset) -> dict[str, np.ndarray]:
  return {"input_ids": ds.input_ids, "attention_mask": ds.attention_mask,
          "loss_mask": ds.loss_mask}


def slice_risk(loss_fn: Callable, params: Any, test: SliceSet, *,
               batch_size: int = 64) -> dict[int, float]:
  """Teacher-forced risk of `params` (no perturbation) on every slice.

  Args:
    loss_fn: `loss_fn(params, batch) -> [B]` bounded losses (e.g. token error).
    params: the parameters.
    test: the sliced test set.
    batch_size: rows per forward pass.

  Returns:
    op count -> mean loss.
  """
  return {k: perturb.empirical_risk(loss_fn, params, _arrays(test.slices[k]),
                                    batch_size=batch_size) for k in test.ops}


def posterior_slice_risk(loss_fn: Callable, params: Any, test: SliceSet, *, key: jax.Array,
                         sigma: Any, num_draws: int, batch_size: int = 64) -> dict[int, float]:
  """E_Q of the teacher-forced risk on every slice, Q = N(params, sigma^2 I).

  Every slice is scored under the same `num_draws` posterior draws (one key for all), each
  draw a full pass over the slice, so the mixture-weighted sum is the Monte-Carlo estimate of
  E_Q[R_test] under the same posterior a certificate describes.

  Args:
    loss_fn: `loss_fn(params, batch) -> [B]` bounded losses.
    params: the posterior mean.
    test: the sliced test set.
    key: PRNG key of the draws.
    sigma: posterior standard deviation (scalar or pytree like params).
    num_draws: posterior draws.
    batch_size: rows per forward pass.

  Returns:
    op count -> Monte-Carlo mean of the loss under Q.
  """
  return {
    k: perturb.mc_risk(loss_fn, params, _arrays(test.slices[k]), key=key, sigma=sigma,
                       scheme="passes", num_draws=num_draws, batch_size=batch_size).mean
    for k in test.ops
  }


def evaluate_model(model: nnx.Module, loss_fn: Callable, test: SliceSet, *,
                   batch_size: int = 64, generate_batch_size: int = 256) -> dict[str, Any]:
  """Accuracy and point test risk of one model, by slice and mixture-weighted.

  Args:
    model: the decoder (its parameters are read with `nnx.split`).
    loss_fn: `loss_fn(params, batch) -> [B]` built for this model's graph.
    test: the sliced test set.
    batch_size: rows per teacher-forced pass.
    generate_batch_size: prompts per greedy decoding call.

  Returns:
    {"accuracy", "accuracy_by_slice" (str keys), "test_risk_point", "risk_by_slice"}.
  """
  _, params, _ = nnx.split(model, nnx.Param, ...)
  acc = slice_accuracy(model, test, batch_size=generate_batch_size)
  risk = slice_risk(loss_fn, params, test, batch_size=batch_size)
  return {
    "accuracy": test.weighted(acc),
    "accuracy_by_slice": {str(k): acc[k] for k in test.ops},
    "test_risk_point": test.weighted(risk),
    "risk_by_slice": {str(k): risk[k] for k in test.ops},
  }
