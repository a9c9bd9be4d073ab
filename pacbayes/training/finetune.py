"""`pacbayes finetune`: SFT or DFT of a Hugging Face checkpoint, full or LoRA, on a device mesh.

The optimisation is the project's one trainer (`pacbayes.training.trainer.train`): loss on the
completion tokens only (the dataset's loss mask), cross-entropy ("sft") or DFT (Wu et al. 2025,
arXiv 2508.05629: each token's -log p scaled by stop_gradient(p)), AdamW with linear warmup and
cosine decay, global-norm clipping, gradient accumulation, optional rematerialisation.

Outputs (all in `out`):
- full fine-tune: a Hugging Face folder (`config.json`, safetensors weights sharded like the
  input, in the training dtype) plus the base's tokenizer files;
- LoRA: a PEFT adapter folder (`adapter_config.json`, `adapter_model.safetensors`) plus the
  recorded initialisation (`pacbayes_lora.json`, `pacbayes_lora_init.safetensors`), and with
  `merge` a merged Hugging Face folder in `out/merged`;
- `finetune.json`: the settings, the loss curve summary, timings and tokens/s.

Periodic checkpoints go to `out/checkpoints` (orbax; atomic); running the same command again
after an interruption resumes from the latest one and reaches the same final weights. The
final files are written to a temporary folder inside `out` and moved into place, and the
checkpoints are removed only after that.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from typing import Any

import numpy as np

from pacbayes.training.config import TrainConfig, default
from pacbayes.training.ftio import (
  CHECKPOINTS,
  REPORT,
  check_paths,
  copy_tokenizer,
  make_mesh,
  max_shard_bytes,
  parse_mesh,
  sha256_file,
  to_host_tree,
)

METHODS = {"sft": "ce", "dft": "dft"}
DEFAULT_TARGETS = {"llama": ("q_proj", "v_proj"), "qwen2": ("q_proj", "v_proj"),
                   "gpt2": ("c_attn",)}
HOLDOUT = "holdout.json"
MAX_STEPS = 2**20  # the ceiling of --steps; --epochs may not imply more
MAX_EPOCHS = 1e6


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
  """Settings of one fine-tuning run (the flags of `pacbayes finetune`).

  The optimiser settings and their defaults are those of the project's one
  `pacbayes.training.config.TrainConfig` (`train_config` builds it); this class adds the
  paths, the data options, the LoRA settings and the run's bookkeeping.

  Attributes:
    model: base Hugging Face folder (--model).
    train: training JSONL (--train; `prompt`/`completion` rows train on the completion).
    out: output folder (--out).
    method: "sft" (cross-entropy) or "dft" (--method).
    lora_rank: None for a full fine-tune, else the LoRA rank r (--lora-rank).
    lora_alpha: LoRA alpha (--lora-alpha; default 2 r).
    lora_targets: module names to adapt (--lora-targets; default q/v projections).
    steps: optimiser steps (--steps), or None to use `epochs`.
    epochs: passes over the data (--epochs; default 1 when `steps` is None).
    learning_rate: peak learning rate (--lr).
    batch_size: rows per optimiser step (--batch-size).
    grad_accum: micro-batches per step (--grad-accum).
    max_length: truncate rows to this many tokens (--max-length).
    dtype: "float32" or "bfloat16" for the model (--dtype; default: the checkpoint's).
    mesh: "data=D,fsdp=F" (--mesh); None: all devices on 'data' when there are several.
    seed: seed of the batch order and the LoRA initialisation (--seed).
    remat: rematerialise activations in the backward pass (--remat).
    merge: also write the merged model of a LoRA run (--merge).
    warmup_ratio: warmup steps as a fraction of the steps (--warmup-ratio).
    end_lr_ratio, weight_decay, grad_clip, b1, b2, eps: see `TrainConfig` (same defaults).
    checkpoint_every: steps between checkpoints.
    progress: show a progress bar (finished steps, cross-entropy, tokens/s).
    chat_template: render each `prompt` with the base tokenizer's chat template
      (--chat-template); recorded in the output.
    holdout: fraction of the training rows kept out of training, drawn with `seed`
      (--holdout); their line numbers and the file's sha256 go to `holdout.json`.
  """

  model: str
  train: str
  out: str
  method: str = "sft"
  lora_rank: int | None = None
  lora_alpha: float | None = None
  lora_targets: tuple[str, ...] | None = None
  steps: int | None = None
  epochs: float | None = None
  learning_rate: float = default("learning_rate")
  batch_size: int = default("batch_size")
  grad_accum: int = default("grad_accum")
  max_length: int | None = None
  dtype: str | None = None
  mesh: str | None = None
  seed: int = 0
  remat: bool = False
  merge: bool = False
  warmup_ratio: float = 0.03
  end_lr_ratio: float = default("end_lr_ratio")
  weight_decay: float = default("weight_decay")
  grad_clip: float = default("grad_clip")
  b1: float = default("b1")
  b2: float = default("b2")
  eps: float = default("eps")
  checkpoint_every: int = 100
  progress: bool = True
  chat_template: bool = False
  holdout: float = 0.0

  def __post_init__(self):
    def positive_int(name, value, flag):
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{flag}: expected a positive integer, got {value!r}")

    if self.method not in METHODS:
      raise ValueError(f"--method: expected one of {sorted(METHODS)}, got {self.method!r}")
    if self.steps is not None and self.epochs is not None:
      raise ValueError("--steps and --epochs: give one of them, not both")
    if self.steps is not None:
      positive_int("steps", self.steps, "--steps")
    if self.epochs is not None and not (0 < self.epochs <= MAX_EPOCHS):
      raise ValueError(f"--epochs: expected a number in (0, {MAX_EPOCHS:g}], got "
                       f"{self.epochs!r}")
    if self.steps is not None and self.steps > MAX_STEPS:
      raise ValueError(f"--steps: at most {MAX_STEPS}, got {self.steps}")
    if not (isinstance(self.holdout, int | float) and 0 <= self.holdout < 1):
      raise ValueError(f"--holdout: expected a fraction in [0, 1), got {self.holdout!r}")
    if self.lora_rank is not None:
      positive_int("lora_rank", self.lora_rank, "--lora-rank")
    elif self.lora_alpha is not None or self.lora_targets is not None or self.merge:
      raise ValueError("--lora-alpha, --lora-targets and --merge need --lora-rank")
    if self.lora_alpha is not None and not (self.lora_alpha > 0 and
                                            math.isfinite(self.lora_alpha)):
      raise ValueError(f"--lora-alpha: expected a positive number, got {self.lora_alpha!r}")
    positive_int("batch_size", self.batch_size, "--batch-size")
    positive_int("grad_accum", self.grad_accum, "--grad-accum")
    if self.batch_size % self.grad_accum:
      raise ValueError(f"--grad-accum {self.grad_accum} must divide --batch-size "
                       f"{self.batch_size}")
    if self.max_length is not None:
      positive_int("max_length", self.max_length, "--max-length")
      if self.max_length < 2:
        raise ValueError("--max-length: need at least 2 tokens (one input, one target)")
    if self.dtype not in (None, "float32", "bfloat16"):
      raise ValueError(f"--dtype: expected float32 or bfloat16, got {self.dtype!r}")
    if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
      raise ValueError(f"--lr: expected a positive number, got {self.learning_rate!r}")
    if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
      raise ValueError(f"--seed: expected a non-negative integer, got {self.seed!r}")
    positive_int("checkpoint_every", self.checkpoint_every, "--checkpoint-every")
    if not 0 <= self.warmup_ratio < 1:
      raise ValueError(f"--warmup-ratio: expected a value in [0, 1), got {self.warmup_ratio}")
    if not 0 <= self.end_lr_ratio <= 1:
      raise ValueError(f"end_lr_ratio: expected a value in [0, 1], got {self.end_lr_ratio}")
    if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
      raise ValueError(f"--weight-decay: expected a number >= 0, got {self.weight_decay}")
    if not (self.grad_clip >= 0 and math.isfinite(self.grad_clip)):
      raise ValueError(f"--grad-clip: expected a number >= 0 (0: off), got {self.grad_clip}")
    if self.mesh is not None:
      parse_mesh(self.mesh)

  @property
  def lora(self) -> bool:
    return self.lora_rank is not None

  def train_config(self, steps: int) -> TrainConfig:
    """The `TrainConfig` of a run of `steps` steps with these settings."""
    return TrainConfig(
      steps=steps, batch_size=self.batch_size, learning_rate=self.learning_rate,
      warmup_steps=int(math.ceil(self.warmup_ratio * steps)), end_lr_ratio=self.end_lr_ratio,
      weight_decay=self.weight_decay, grad_clip=self.grad_clip, b1=self.b1, b2=self.b2,
      method=METHODS[self.method], grad_accum=self.grad_accum, eps=self.eps)


@dataclasses.dataclass(frozen=True)
class FinetuneResult:
  """What `finetune` wrote and measured.

  Attributes:
    out: the output folder.
    kind: "full" or "lora".
    steps: optimiser steps of the run.
    losses: [steps] float64 token cross-entropy per step (nats per target token), for SFT
      and DFT alike (comparable across methods).
    objective: [steps] float64 training objective per step (= `losses` for SFT; the
      p-weighted DFT loss for DFT).
    time_s: seconds in the training loop of this call (compilation included).
    tokens_per_s: real tokens per second of this call's loop.
    resumed_from: the step this call resumed from (0: a fresh run).
    merged: the merged folder (LoRA with merge), else None.
  """

  out: str
  kind: str
  steps: int
  losses: np.ndarray
  time_s: float
  tokens_per_s: float
  resumed_from: int
  merged: str | None = None
  objective: np.ndarray | None = None
  held_out: int = 0


def _load_data(cfg: FinetuneConfig, config: Any) -> tuple[Any, dict[str, Any] | None]:
  """The training `Dataset` (chat template applied, held-out rows removed) and the holdout."""
  from pacbayes.data import tokenize
  from pacbayes.data.dataset import Dataset
  from pacbayes.data.jsonl import DataError, read_jsonl_with_lines
  from pacbayes.data.rows import EncodeOptions

  rows, lines = read_jsonl_with_lines(cfg.train)
  tokenizer = None
  if cfg.chat_template:
    tokenizer = tokenize.load_tokenizer(cfg.model)
    rows = tokenize.apply_chat_template_rows(rows, tokenizer, source=cfg.train,
                                             line_numbers=lines, tokenizer_dir=cfg.model)
  holdout = None
  if cfg.holdout > 0:
    k = int(round(cfg.holdout * len(rows)))
    if not 1 <= k < len(rows):
      raise DataError(f"--holdout {cfg.holdout}: keeps {k} of the {len(rows)} rows of "
                      f"{cfg.train} out; need at least 1 held out and 1 to train on")
    # Seeded by --seed, independent of the batch order's key: numpy's PCG64 on [seed, "HOLD"].
    rng = np.random.default_rng([cfg.seed, 0x484F4C44])
    held = np.sort(rng.permutation(len(rows))[:k])
    keep = np.setdiff1d(np.arange(len(rows)), held)
    holdout = {"train": os.path.realpath(cfg.train), "train_sha256": sha256_file(cfg.train),
               "fraction": cfg.holdout, "seed": cfg.seed, "rows": len(rows),
               "held_out": int(k), "held_out_lines": [int(lines[j]) for j in held],
               "rule": "numpy.random.default_rng([seed, 0x484F4C44]).permutation(rows)[:k], "
                       "k = round(fraction * rows); line numbers are 1-based file lines"}
    rows, lines = [rows[j] for j in keep], [lines[j] for j in keep]
  pad_id = config.pad_token_id if isinstance(config.pad_token_id, int) else 0
  data = Dataset.from_rows(rows, source=cfg.train, line_numbers=lines, tokenizer=tokenizer,
                           tokenizer_dir=cfg.model, vocab_size=config.vocab_size,
                           options=EncodeOptions(max_length=cfg.max_length, pad_id=pad_id))
  return data, holdout


def _steps(cfg: FinetuneConfig, rows: int) -> int:
  if cfg.steps is not None:
    return cfg.steps
  steps = math.ceil((cfg.epochs or 1.0) * rows / cfg.batch_size)
  if steps > MAX_STEPS:
    raise ValueError(f"--epochs {cfg.epochs:g}: gives {steps} steps over {rows} rows, more "
                     f"than the {MAX_STEPS} allowed")
  return max(1, steps)


def _check_finite(tree: Any, what: str) -> None:
  from pacbayes.training.step import all_finite

  if not bool(all_finite(tree)):
    raise ValueError(f"{what}: the trained weights are not finite; nothing written "
                     "(lower --lr or set --grad-clip)")


def _diverged_message(cfg: FinetuneConfig, e: Any, steps: int) -> str:
  from pacbayes.training.config import TrainingDiverged

  assert isinstance(e, TrainingDiverged)
  what = (f"the loss is {e.loss:.4g} and the gradient norm {e.grad_norm:.4g}"
          if e.what == "loss" else "the weights after it are not finite")
  hint = f"lower --lr (now {cfg.learning_rate:g})" + (
    "" if cfg.grad_clip > 0 else " or set --grad-clip (now 0: off)")
  kept = (f"; the last good checkpoint (step {e.checkpoint}) is kept in "
          f"{os.path.join(cfg.out, CHECKPOINTS)}" if e.checkpoint else "; nothing written")
  return f"--lr {cfg.learning_rate:g}: training diverged at step {e.step} of {steps} " \
         f"({what}); {hint}{kept}"


def finetune(cfg: FinetuneConfig) -> FinetuneResult:
  """Fine-tunes `cfg.model` on `cfg.train` and writes the result to `cfg.out`.

  Every input is checked before anything is written; an interrupted run is resumed from
  `out/checkpoints` when the same settings are given again. On failure nothing of this call
  stays behind: an `out` folder this call created is removed; an interrupted run's
  checkpoints are kept (and said so when training diverged).

  Args:
    cfg: the settings.

  Returns:
    A `FinetuneResult`.

  Raises:
    ValueError: one line naming the flag or the file: bad settings, unreadable model or data,
      LoRA targets that are not in the model, a mesh that does not fit, an output folder that
      overlaps an input or already holds other files, checkpoints of another run, a training
      run that diverged (non-finite loss, gradient norm or weights: the step and the flags).
  """
  from pacbayes.training.config import TrainingDiverged

  check_paths(cfg)
  created = not os.path.exists(cfg.out)
  ckpt_dir = os.path.join(cfg.out, CHECKPOINTS)
  had_checkpoints = os.path.isdir(ckpt_dir)
  steps = [0]
  try:
    return _finetune(cfg, steps)
  except BaseException as e:
    kept = os.path.isdir(os.path.join(ckpt_dir, "steps")) and any(
      n.isdigit() for n in os.listdir(os.path.join(ckpt_dir, "steps")))
    if not kept and not isinstance(e, KeyboardInterrupt):
      if created:
        shutil.rmtree(cfg.out, ignore_errors=True)
      elif not had_checkpoints:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    if isinstance(e, TrainingDiverged):
      raise ValueError(_diverged_message(cfg, e, steps[0])) from None
    raise


def _finetune(cfg: FinetuneConfig, steps_out: list[int]) -> FinetuneResult:
  import jax
  from flax import nnx

  from pacbayes.core import sharding as shd
  from pacbayes.lora import adapter as lr
  from pacbayes.models import load_config, load_pretrained, save_pretrained
  from pacbayes.models.checkpoint import folder_fingerprint
  from pacbayes.training import trainer as tr

  shd.maybe_initialize_distributed()
  config = load_config(cfg.model, dtype=cfg.dtype)
  layout = targets = None
  if cfg.lora:
    targets = list(cfg.lora_targets or DEFAULT_TARGETS[config.model_type])
    alpha = float(cfg.lora_alpha if cfg.lora_alpha is not None else 2 * cfg.lora_rank)
    layout = lr.make_layout(config, targets, cfg.lora_rank, alpha, rank_where="--lora-rank")
  mesh = make_mesh(cfg, cfg.batch_size // cfg.grad_accum)
  data, holdout = _load_data(cfg, config)
  if config.model_type == "gpt2" and data.max_length > config.max_position_embeddings:
    raise ValueError(f"--train {cfg.train}: rows of {data.max_length} tokens exceed the "
                     f"model's {config.max_position_embeddings} positions; use --max-length")
  steps = steps_out[0] = _steps(cfg, len(data))
  tcfg = cfg.train_config(steps)

  base_fingerprint = folder_fingerprint(cfg.model)
  model, config = load_pretrained(cfg.model, dtype=cfg.dtype)
  graphdef, base, rest = nnx.split(model, nnx.Param, ...)
  key_init, key_order = jax.random.split(jax.random.key(cfg.seed))
  fingerprint = {  # what a resumed run must share (the base by content, not by path)
    "base_fingerprint": base_fingerprint, "train_sha256": sha256_file(cfg.train),
    "rows": len(data), "length": data.max_length,
    "settings": {k: v for k, v in dataclasses.asdict(cfg).items()
                 if k not in ("out", "progress", "merge", "model", "train", "mesh",
                              "checkpoint_every")},
    "steps": steps, "dtype": config.dtype}
  os.makedirs(cfg.out, exist_ok=True)
  for name in os.listdir(cfg.out):
    if name.startswith(".partial-"):
      shutil.rmtree(os.path.join(cfg.out, name), ignore_errors=True)
  ckpt = tr.Checkpointer(os.path.join(cfg.out, CHECKPOINTS), cfg.checkpoint_every, fingerprint)
  arrays = {"input_ids": data.input_ids, "attention_mask": data.attention_mask,
            "loss_mask": data.loss_mask}
  desc = f"finetune {cfg.method}" + (" lora" if cfg.lora else "")
  init = None
  try:
    if cfg.lora:
      lora_apply = lr.lora_apply(graphdef, rest, layout)

      def apply(params, ids, mask, frozen):
        return lora_apply({"lora": params, "base": frozen}, ids, mask)

      apply = tr.rematerialise(apply) if cfg.remat else apply
      init = lr.init_lora(layout, key=key_init)
      result = tr.train(apply, init, arrays, tcfg, key=key_order, progress=cfg.progress and desc,
                        frozen=base, mesh=mesh, checkpointer=ckpt)
    else:
      apply = tr.model_apply(graphdef, rest, remat=cfg.remat)
      result = tr.train(apply, base, arrays, tcfg, key=key_order, progress=cfg.progress and desc,
                        mesh=mesh, checkpointer=ckpt)
  finally:
    ckpt.close()
  _check_finite(result.params, f"--out {cfg.out}")
  # Every process takes part: a weight split across hosts is gathered by a collective.
  trained = to_host_tree(result.params)

  merged_dir = None
  report = None
  if jax.process_index() == 0:
    staging = tempfile.mkdtemp(prefix=".partial-", dir=cfg.out)
    try:
      if cfg.lora:
        lr.write_adapter(staging, layout, targets, trained, model_type=config.model_type,
                         base_name=os.path.realpath(cfg.model), init=to_host_tree(init),
                         init_info={"seed": cfg.seed, "init": "A ~ U(-1/sqrt(in), "
                                    "1/sqrt(in)) from jax.random (key split of seed), B = 0",
                                    "jax_version": jax.__version__,
                                    lr.BASE_FINGERPRINT: base_fingerprint})
        if cfg.merge:
          merged = lr.merge_params(to_host_tree(base), layout, trained)
          _check_finite(merged, f"--merge {os.path.join(cfg.out, 'merged')}")
          nnx.update(model, merged)
          os.makedirs(os.path.join(staging, "merged"))
          save_pretrained(model, config, os.path.join(staging, "merged"),
                          max_shard_bytes=max_shard_bytes(cfg.model))
          copy_tokenizer(cfg.model, os.path.join(staging, "merged"))
      else:
        nnx.update(model, trained)
        save_pretrained(model, config, staging, max_shard_bytes=max_shard_bytes(cfg.model))
      copy_tokenizer(cfg.model, staging)
      report = _report(cfg, data, result, config, mesh, steps, layout, targets, holdout,
                       base_fingerprint)
      if holdout is not None:
        with open(os.path.join(staging, HOLDOUT), "w") as f:
          f.write(json.dumps(holdout, indent=2) + "\n")
      with open(os.path.join(staging, REPORT), "w") as f:
        f.write(json.dumps(report, indent=2) + "\n")
      # Move everything into place; the report last, so its presence means "finished".
      names = sorted(os.listdir(staging), key=lambda n: n == REPORT)
      for name in names:
        target = os.path.join(cfg.out, name)
        if os.path.isdir(target):  # left by an interrupted earlier attempt at this step
          shutil.rmtree(target)
        os.replace(os.path.join(staging, name), target)
    finally:
      shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(os.path.join(cfg.out, CHECKPOINTS), ignore_errors=True)
    if cfg.lora and cfg.merge:
      merged_dir = os.path.join(cfg.out, "merged")
  return FinetuneResult(out=cfg.out, kind="lora" if cfg.lora else "full", steps=steps,
                        losses=result.ce_losses, time_s=result.time_s,
                        tokens_per_s=result.tokens / max(result.time_s, 1e-9),
                        resumed_from=result.resumed_from, merged=merged_dir,
                        objective=result.losses,
                        held_out=0 if holdout is None else holdout["held_out"])


def _report(cfg: FinetuneConfig, data: Any, result: Any, config: Any, mesh: Any, steps: int,
            layout: Any, targets: Any, holdout: Any, base_fingerprint: str) -> dict[str, Any]:
  """The content of `finetune.json`."""
  import jax

  ce = result.ce_losses
  report = {
    "kind": "lora" if cfg.lora else "full",
    "settings": {k: v for k, v in dataclasses.asdict(cfg).items()
                 if k not in ("out", "progress", "model", "train")},
    "model": cfg.model, "base_fingerprint": base_fingerprint, "train": cfg.train,
    "row_format": "chat_template" if cfg.chat_template else "plain",
    "rows": len(data), "num_truncated": int(data.num_truncated),
    "padded_length": data.max_length, "steps": steps, "dtype": config.dtype,
    "devices": jax.device_count(), "mesh": None if mesh is None else dict(mesh.shape),
    "resumed_from": result.resumed_from,
    "loss": "token cross-entropy (nats per target token)",
    "loss_first": float(ce[0]), "loss_last": float(ce[-1]),
    "loss_last10_mean": float(np.mean(ce[-10:])), "losses": [float(x) for x in ce],
    "time_s": result.time_s, "tokens": result.tokens,
    "tokens_per_s": result.tokens / max(result.time_s, 1e-9),
    "trainable_params": int(sum(np.size(x) for x in jax.tree.leaves(result.params))),
    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
  if cfg.method == "dft":
    report["dft_objective"] = [float(x) for x in result.losses]
  if holdout is not None:
    report["holdout"] = {k: holdout[k] for k in ("fraction", "held_out", "train_sha256")} | {
      "file": HOLDOUT}
  if cfg.lora:
    report["lora"] = {"rank": layout.rank, "alpha": layout.alpha, "targets": targets,
                      "adapted": layout.hf_weight_names}
  return report
