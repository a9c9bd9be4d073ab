"""``pacbayes finetune``: SFT or DFT of a Hugging Face checkpoint (full or LoRA)."""

from __future__ import annotations

import argparse

import jax

from pacbayes.cli.common import (
  DefaultsHelpFormatter,
  bounded_float,
  positive_float,
  positive_int,
  seed,
)


def _targets(text):
  names = [t.strip() for t in text.split(",") if t.strip()]
  if not names:
    raise argparse.ArgumentTypeError(f"--lora-targets expects names like q_proj,v_proj, "
                                     f"got {text!r}")
  return tuple(names)


def add_parser(sub) -> None:
  from pacbayes.training.finetune import MAX_EPOCHS, MAX_STEPS, FinetuneConfig

  d = {f: getattr(FinetuneConfig, f) for f in (
    "learning_rate", "warmup_ratio", "weight_decay", "grad_clip", "batch_size", "grad_accum",
    "checkpoint_every", "seed", "method", "end_lr_ratio", "b1", "b2")}
  f = sub.add_parser(
    "finetune", help="fine-tune a checkpoint (SFT or DFT, full or LoRA)",
    formatter_class=DefaultsHelpFormatter,
    description="Fine-tunes a Hugging Face checkpoint on a JSONL file (loss on the completion "
    "tokens only) and writes a Hugging Face folder (full) or a PEFT adapter folder (LoRA). "
    "Rerunning the same command after an interruption resumes from OUT/checkpoints. The loss "
    "shown is the token cross-entropy for SFT and DFT alike (DFT's objective beside it). "
    f"Adam: b1 {d['b1']}, b2 {d['b2']}; cosine decay to {d['end_lr_ratio']} of --lr.")
  f.add_argument("--model", required=True, help="base Hugging Face folder")
  f.add_argument("--train", required=True, help="training JSONL")
  f.add_argument("--out", required=True, help="output folder (new, or an interrupted run's)")
  f.add_argument("--method", choices=("sft", "dft"), default=d["method"],
                 help="SFT (cross-entropy) or DFT (tokens weighted by their probability)")
  f.add_argument("--lora-rank", type=positive_int("--lora-rank", 2**16), default=None,
                 help="LoRA rank r (omit for a full fine-tune)")
  f.add_argument("--lora-alpha", type=bounded_float("--lora-alpha", 0, 1e6), default=None,
                 help="LoRA alpha (default 2 r)")
  f.add_argument("--lora-targets", type=_targets, default=None,
                 help="comma-separated module names (default q_proj,v_proj; GPT-2 c_attn)")
  group = f.add_mutually_exclusive_group()
  group.add_argument("--steps", type=positive_int("--steps", MAX_STEPS), default=None,
                     help="optimiser steps (default: one epoch)")
  group.add_argument("--epochs", type=bounded_float("--epochs", 0, MAX_EPOCHS), default=None,
                     help="passes over the data (default 1)")
  f.add_argument("--lr", type=positive_float("--lr"), default=d["learning_rate"],
                 help="peak learning rate")
  f.add_argument("--warmup-ratio", type=bounded_float("--warmup-ratio", 0, 1, closed=(True,
                 False)), default=d["warmup_ratio"], help="warmup steps / steps")
  f.add_argument("--weight-decay", type=bounded_float("--weight-decay", 0, 1e6, closed=(
                 True, True)), default=d["weight_decay"], help="AdamW decay on matrices")
  f.add_argument("--grad-clip", type=bounded_float("--grad-clip", 0, 1e12, closed=(True,
                 True)), default=d["grad_clip"], help="global-norm clip (0: off)")
  f.add_argument("--batch-size", type=positive_int("--batch-size", 2**16),
                 default=d["batch_size"], help="rows per optimiser step")
  f.add_argument("--grad-accum", type=positive_int("--grad-accum", 2**16),
                 default=d["grad_accum"], help="micro-batches per step")
  f.add_argument("--max-length", type=positive_int("--max-length"), default=None,
                 help="truncate rows to this many tokens (default: the longest row)")
  f.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                 help="model dtype (default: the checkpoint's)")
  f.add_argument("--mesh", default=None,
                 help="device mesh, e.g. data=4,fsdp=2 (default: all devices on 'data')")
  f.add_argument("--seed", type=seed("--seed"), default=d["seed"],
                 help="batch order, LoRA initialisation and --holdout rows")
  f.add_argument("--chat-template", action="store_true",
                 help="render each `prompt` with the base tokenizer's chat template "
                 "(recorded in OUT/finetune.json)")
  f.add_argument("--holdout", type=bounded_float("--holdout", 0, 1, closed=(False, False)),
                 default=None,
                 help="keep this fraction of the rows (seeded) out of training; their line "
                 "numbers and the file's sha256 go to OUT/holdout.json")
  f.add_argument("--remat", action="store_true", help="rematerialise activations (memory)")
  f.add_argument("--merge", action="store_true", help="LoRA: also write OUT/merged")
  f.add_argument("--checkpoint-every", type=positive_int("--checkpoint-every", MAX_STEPS),
                 default=d["checkpoint_every"], help="steps between checkpoints")
  f.add_argument("--no-progress", action="store_true", help="no progress bar")
  f.set_defaults(func=run)


def run(args) -> int:
  from pacbayes.training.finetune import FinetuneConfig, finetune

  cfg = FinetuneConfig(
    model=args.model, train=args.train, out=args.out, method=args.method,
    lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, lora_targets=args.lora_targets,
    steps=args.steps, epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch_size,
    grad_accum=args.grad_accum, max_length=args.max_length, dtype=args.dtype, mesh=args.mesh,
    seed=args.seed, remat=args.remat, merge=args.merge, warmup_ratio=args.warmup_ratio,
    weight_decay=args.weight_decay, grad_clip=args.grad_clip,
    checkpoint_every=args.checkpoint_every, progress=not args.no_progress,
    chat_template=args.chat_template, holdout=args.holdout or 0.0)
  result = finetune(cfg)
  if jax.process_index() != 0:  # a multi-host job: process 0 wrote the output
    return 0
  what = "adapter" if result.kind == "lora" else "model"
  dft = ""
  if args.method == "dft" and result.objective is not None:
    dft = f"; DFT objective {result.objective[0]:.4f} -> {result.objective[-1]:.4f}"
  held = f"; {result.held_out} rows held out (holdout.json)" if result.held_out else ""
  print(f"wrote {what} to {result.out} ({result.steps} steps, cross-entropy "
        f"{result.losses[0]:.4f} -> {result.losses[-1]:.4f}{dft}, "
        f"{result.tokens_per_s:.0f} tokens/s{held}"
        + (f"; merged: {result.merged}" if result.merged else "") + ")")
  return 0
