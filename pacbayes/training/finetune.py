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
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from typing import Any

import numpy as np

METHODS = {"sft": "ce", "dft": "dft"}
DEFAULT_TARGETS = {"llama": ("q_proj", "v_proj"), "qwen2": ("q_proj", "v_proj"),
                   "gpt2": ("c_attn",)}
REPORT = "finetune.json"
CHECKPOINTS = "checkpoints"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json",
                   "chat_template.jinja", "generation_config.json")
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # transformers' default max_shard_size ("5GB")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
  """Settings of one fine-tuning run (the flags of `pacbayes finetune`).

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
    warmup_ratio: warmup steps as a fraction of the steps.
    end_lr_ratio: final learning rate as a fraction of the peak.
    weight_decay: AdamW decoupled weight decay on matrices.
    grad_clip: global-norm clipping threshold (0 disables).
    b1, b2, eps: Adam settings (torch's AdamW defaults).
    checkpoint_every: steps between checkpoints.
    progress: show a progress bar (tokens/s and loss).
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
  learning_rate: float = 1e-4
  batch_size: int = 8
  grad_accum: int = 1
  max_length: int | None = None
  dtype: str | None = None
  mesh: str | None = None
  seed: int = 0
  remat: bool = False
  merge: bool = False
  warmup_ratio: float = 0.03
  end_lr_ratio: float = 0.0
  weight_decay: float = 0.0
  grad_clip: float = 1.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  checkpoint_every: int = 100
  progress: bool = True

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
    if self.epochs is not None and not (self.epochs > 0 and math.isfinite(self.epochs)):
      raise ValueError(f"--epochs: expected a positive number, got {self.epochs!r}")
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


@dataclasses.dataclass(frozen=True)
class FinetuneResult:
  """What `finetune` wrote and measured.

  Attributes:
    out: the output folder.
    kind: "full" or "lora".
    steps: optimiser steps of the run.
    losses: [steps] float64 training loss per step (nats per target token).
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


def parse_mesh(text: str) -> dict[str, int]:
  """"data=2,fsdp=4" -> {"data": 2, "fsdp": 4} (--mesh); a missing axis is left to make_mesh."""
  out: dict[str, int] = {}
  for part in str(text).split(","):
    name, sep, value = part.strip().partition("=")
    if not sep or name not in ("data", "fsdp") or name in out:
      raise ValueError(f"--mesh {text!r}: expected 'data=D,fsdp=F' (each axis at most once)")
    try:
      out[name] = int(value)
    except ValueError:
      raise ValueError(f"--mesh {text!r}: {name} must be an integer, got {value!r}") from None
    if out[name] < 1:
      raise ValueError(f"--mesh {text!r}: {name} must be >= 1")
  return out


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _check_paths(cfg: FinetuneConfig) -> None:
  if not os.path.isdir(cfg.model):
    raise ValueError(f"--model {cfg.model}: no such folder")
  if not os.path.isfile(cfg.train):
    raise ValueError(f"--train {cfg.train}: no such file")
  out = os.path.realpath(cfg.out)
  for flag, path in (("--model", cfg.model), ("--train", cfg.train)):
    real = os.path.realpath(path)
    if out == real or os.path.commonpath([out, real]) == out or (
        os.path.isdir(real) and os.path.commonpath([out, real]) == real):
      raise ValueError(f"--out {cfg.out}: overlaps the input {flag} {path}; refusing to write")
  parent = os.path.dirname(out)
  if not os.path.isdir(parent):
    raise ValueError(f"--out {cfg.out}: the folder {parent} does not exist")
  if os.path.exists(out):
    if not os.path.isdir(out):
      raise ValueError(f"--out {cfg.out}: exists and is not a folder")
    if os.path.exists(os.path.join(out, REPORT)):
      raise ValueError(f"--out {cfg.out}: already holds a finished fine-tune; choose another")
    # With checkpoints the folder is an interrupted run of this command (the fingerprint
    # check decides whether it is the same run); its partial outputs are replaced.
    extra = [n for n in os.listdir(out) if n != CHECKPOINTS]
    if extra and not os.path.isdir(os.path.join(out, CHECKPOINTS)):
      raise ValueError(f"--out {cfg.out}: folder is not empty ({extra[0]!r}) and holds no "
                       "checkpoint of this command; choose another")
  if not os.access(parent, os.W_OK):
    raise ValueError(f"--out {cfg.out}: the folder {parent} is not writable")


def _make_mesh(cfg: FinetuneConfig, batch_size: int):
  import jax

  from pacbayes.core import sharding as shd

  if cfg.mesh is None:
    n = jax.device_count()
    return shd.make_mesh() if n > 1 and batch_size % n == 0 else None
  axes = parse_mesh(cfg.mesh)
  try:
    mesh = shd.make_mesh(axes.get("data"), axes.get("fsdp", 1))
  except ValueError as e:
    raise ValueError(f"--mesh {cfg.mesh}: {e}") from None
  data = shd.axis_size(mesh, shd.DATA)
  if batch_size % data:
    raise ValueError(f"--mesh {cfg.mesh}: data={data} must divide the micro-batch "
                     f"(--batch-size / --grad-accum = {batch_size})")
  return mesh


def _max_shard_bytes(model_dir: str) -> int | None:
  from pacbayes.models import weight_files

  files = weight_files(model_dir)
  if len(files) > 1:
    return max(os.path.getsize(f) for f in files)
  return DEFAULT_MAX_SHARD_BYTES if os.path.getsize(files[0]) > DEFAULT_MAX_SHARD_BYTES else None


def _copy_tokenizer(src: str, dst: str) -> None:
  for name in TOKENIZER_FILES:
    if os.path.isfile(os.path.join(src, name)):
      shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))


def _host(tree: Any) -> Any:
  import jax

  from pacbayes.core.sharding import to_host

  return jax.tree.map(to_host, tree)


def finetune(cfg: FinetuneConfig) -> FinetuneResult:
  """Fine-tunes `cfg.model` on `cfg.train` and writes the result to `cfg.out`.

  Every input is checked before anything is written; an interrupted run is resumed from
  `out/checkpoints` when the same settings are given again.

  Args:
    cfg: the settings.

  Returns:
    A `FinetuneResult`.

  Raises:
    ValueError: one line naming the flag or the file: bad settings, unreadable model or data,
      LoRA targets that are not in the model, a mesh that does not fit, an output folder that
      overlaps an input or already holds other files, checkpoints of another run.
  """
  import jax
  from flax import nnx

  from pacbayes.core import sharding as shd
  from pacbayes.data.dataset import load_dataset
  from pacbayes.lora import adapter as lr
  from pacbayes.models import load_config, load_pretrained, save_pretrained
  from pacbayes.training import trainer as tr

  shd.maybe_initialize_distributed()
  _check_paths(cfg)
  config = load_config(cfg.model, dtype=cfg.dtype)
  layout = targets = None
  if cfg.lora:
    targets = list(cfg.lora_targets or DEFAULT_TARGETS[config.model_type])
    alpha = float(cfg.lora_alpha if cfg.lora_alpha is not None else 2 * cfg.lora_rank)
    layout = lr.make_layout(config, targets, cfg.lora_rank, alpha)
  pad_id = config.pad_token_id if isinstance(config.pad_token_id, int) else 0
  data = load_dataset(cfg.train, tokenizer_dir=cfg.model, vocab_size=config.vocab_size,
                      max_length=cfg.max_length, pad_id=pad_id)
  if config.model_type == "gpt2" and data.max_length > config.max_position_embeddings:
    raise ValueError(f"--train {cfg.train}: rows of {data.max_length} tokens exceed the "
                     f"model's {config.max_position_embeddings} positions; use --max-length")
  steps = cfg.steps if cfg.steps is not None else max(
    1, math.ceil((cfg.epochs or 1.0) * len(data) / cfg.batch_size))
  mesh = _make_mesh(cfg, cfg.batch_size // cfg.grad_accum)
  tcfg = tr.TrainConfig(
    steps=steps, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
    warmup_steps=int(math.ceil(cfg.warmup_ratio * steps)), end_lr_ratio=cfg.end_lr_ratio,
    weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip, b1=cfg.b1, b2=cfg.b2,
    method=METHODS[cfg.method], grad_accum=cfg.grad_accum, eps=cfg.eps)

  model, config = load_pretrained(cfg.model, dtype=cfg.dtype)
  graphdef, base, rest = nnx.split(model, nnx.Param, ...)
  key_init, key_order = jax.random.split(jax.random.key(cfg.seed))
  fingerprint = {
    "model": os.path.realpath(cfg.model), "model_config_sha256": _sha256(
      os.path.join(cfg.model, "config.json")), "train": os.path.realpath(cfg.train),
    "train_sha256": _sha256(cfg.train), "rows": len(data), "length": data.max_length,
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
  if cfg.lora:
    lora_apply = lr.lora_apply(graphdef, rest, layout)

    def apply(params, ids, mask, frozen):
      return lora_apply({"lora": params, "base": frozen}, ids, mask)

    apply = tr.rematerialise(apply) if cfg.remat else apply
    init = lr.init_lora(layout, key=key_init)
    result = tr.train(apply, init, arrays, tcfg, key=key_order, progress=cfg.progress,
                      desc=desc, frozen=base, mesh=mesh, checkpointer=ckpt)
  else:
    apply = tr.model_apply(graphdef, rest, remat=cfg.remat)
    result = tr.train(apply, base, arrays, tcfg, key=key_order, progress=cfg.progress,
                      desc=desc, mesh=mesh, checkpointer=ckpt)
  ckpt.close()

  merged_dir = None
  if jax.process_index() == 0:
    staging = tempfile.mkdtemp(prefix=".partial-", dir=cfg.out)
    try:
      if cfg.lora:
        trained = _host(result.params)
        lr.write_adapter(staging, layout, targets, trained, model_type=config.model_type,
                         base_name=os.path.realpath(cfg.model), init=_host(init),
                         init_info={"seed": cfg.seed, "init": "A ~ U(-1/sqrt(in), "
                                    "1/sqrt(in)) from jax.random (key split of seed), B = 0",
                                    "jax_version": jax.__version__})
        if cfg.merge:
          merged = lr.merge_params(_host(base), layout, trained)
          nnx.update(model, merged)
          os.makedirs(os.path.join(staging, "merged"))
          save_pretrained(model, config, os.path.join(staging, "merged"),
                          max_shard_bytes=_max_shard_bytes(cfg.model))
          _copy_tokenizer(cfg.model, os.path.join(staging, "merged"))
      else:
        nnx.update(model, _host(result.params))
        save_pretrained(model, config, staging, max_shard_bytes=_max_shard_bytes(cfg.model))
      _copy_tokenizer(cfg.model, staging)
      tokens_per_s = result.tokens / max(result.time_s, 1e-9)
      report = {
        "kind": "lora" if cfg.lora else "full", "settings": fingerprint["settings"],
        "model": cfg.model, "train": cfg.train, "rows": len(data),
        "num_truncated": int(data.num_truncated), "padded_length": data.max_length,
        "steps": steps, "dtype": config.dtype, "devices": jax.device_count(),
        "mesh": None if mesh is None else dict(mesh.shape), "resumed_from": result.resumed_from,
        "loss_first": float(result.losses[0]), "loss_last": float(result.losses[-1]),
        "loss_last10_mean": float(np.mean(result.losses[-10:])),
        "losses": [float(x) for x in result.losses], "time_s": result.time_s,
        "tokens": result.tokens, "tokens_per_s": tokens_per_s,
        "trainable_params": int(sum(np.size(x) for x in jax.tree.leaves(result.params))),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
      if cfg.lora:
        report["lora"] = {"rank": layout.rank, "alpha": layout.alpha, "targets": targets,
                          "adapted": layout.hf_weight_names}
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
                        losses=result.losses, time_s=result.time_s,
                        tokens_per_s=result.tokens / max(result.time_s, 1e-9),
                        resumed_from=result.resumed_from, merged=merged_dir)
