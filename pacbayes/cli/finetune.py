"""``pacbayes finetune``: SFT or DFT of a Hugging Face checkpoint (full or LoRA)."""

from __future__ import annotations

import argparse

from pacbayes.cli.common import finite_float, positive_float, positive_int, seed


def _targets(text):
  names = [t.strip() for t in text.split(",") if t.strip()]
  if not names:
    raise argparse.ArgumentTypeError(f"--lora-targets expects names like q_proj,v_proj, "
                                     f"got {text!r}")
  return tuple(names)


def add_parser(sub) -> None:
  f = sub.add_parser(
    "finetune", help="fine-tune a checkpoint (SFT or DFT, full or LoRA)",
    description="Fine-tunes a Hugging Face checkpoint on a JSONL file (loss on the completion "
    "tokens only) and writes a Hugging Face folder (full) or a PEFT adapter folder (LoRA). "
    "Rerunning the same command after an interruption resumes from OUT/checkpoints.")
  f.add_argument("--model", required=True, help="base Hugging Face folder")
  f.add_argument("--train", required=True, help="training JSONL")
  f.add_argument("--out", required=True, help="output folder (new, or an interrupted run's)")
  f.add_argument("--method", choices=("sft", "dft"), default="sft")
  f.add_argument("--lora-rank", type=positive_int("--lora-rank"), default=None,
                 help="LoRA rank r (omit for a full fine-tune)")
  f.add_argument("--lora-alpha", type=positive_float("--lora-alpha"), default=None,
                 help="LoRA alpha (default 2 r)")
  f.add_argument("--lora-targets", type=_targets, default=None,
                 help="comma-separated module names (default q_proj,v_proj; GPT-2 c_attn)")
  group = f.add_mutually_exclusive_group()
  group.add_argument("--steps", type=positive_int("--steps"), default=None)
  group.add_argument("--epochs", type=positive_float("--epochs"), default=None,
                     help="passes over the data (default 1)")
  f.add_argument("--lr", type=positive_float("--lr"), default=1e-4, help="peak learning rate")
  f.add_argument("--warmup-ratio", type=finite_float("--warmup-ratio"), default=0.03)
  f.add_argument("--weight-decay", type=finite_float("--weight-decay"), default=0.0)
  f.add_argument("--grad-clip", type=finite_float("--grad-clip"), default=1.0,
                 help="global-norm clip (0: off)")
  f.add_argument("--batch-size", type=positive_int("--batch-size"), default=8)
  f.add_argument("--grad-accum", type=positive_int("--grad-accum"), default=1)
  f.add_argument("--max-length", type=positive_int("--max-length"), default=None)
  f.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
  f.add_argument("--mesh", default=None, help="device mesh, e.g. data=4,fsdp=2")
  f.add_argument("--seed", type=seed("--seed"), default=0)
  f.add_argument("--remat", action="store_true", help="rematerialise activations (memory)")
  f.add_argument("--merge", action="store_true", help="LoRA: also write OUT/merged")
  f.add_argument("--checkpoint-every", type=positive_int("--checkpoint-every"), default=100)
  f.add_argument("--no-progress", action="store_true")
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
    checkpoint_every=args.checkpoint_every, progress=not args.no_progress)
  result = finetune(cfg)
  what = "adapter" if result.kind == "lora" else "model"
  print(f"wrote {what} to {result.out} ({result.steps} steps, loss {result.losses[0]:.4f} -> "
        f"{result.losses[-1]:.4f}, {result.tokens_per_s:.0f} tokens/s"
        + (f"; merged: {result.merged}" if result.merged else "") + ")")
  return 0
