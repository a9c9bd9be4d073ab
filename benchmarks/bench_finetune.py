"""Fine-tuning throughput (tokens/s): pacbayes' trainer vs transformers + torch, same model/batch.

Usage: python benchmarks/bench_finetune.py [--hidden 256 --layers 4 --vocab 4096 --batch 8
                                            --length 128 --steps 10 --lora-rank 8]

Both sides train the same random Llama-type checkpoint (written once by transformers) on the
same fixed batch with AdamW + global-norm clipping, loss on the completion half of each row;
steady-state steps are timed after warm-up (compilation excluded for JAX, first steps for
torch), in one process. Reported: tokens/s of each side and their ratio (goal >= 1.0), for a
full fine-tune and for LoRA (q/v projections) when peft is installed; with a GPU, also the
model FLOP utilisation MFU = 6 * N_params * tokens/s / peak FLOP/s (Kaplan et al. 2020
approximation of training FLOPs per token, attention omitted; for LoRA the frozen weights
still cost the forward and input-gradient matmuls, about 4 * N per token).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0}  # dense bf16


def make_checkpoint(folder, args):
  import torch
  import transformers as tf

  torch.manual_seed(0)
  config = tf.LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden,
                          intermediate_size=int(args.hidden * 8 / 3) // 16 * 16,
                          num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                          num_key_value_heads=max(1, args.hidden // 128),
                          max_position_embeddings=max(512, args.length))
  tf.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
  return sum(p.numel() for p in tf.AutoModelForCausalLM.from_config(config).parameters())


def make_batch(args):
  rng = np.random.default_rng(0)
  ids = rng.integers(0, args.vocab, size=(args.batch, args.length)).astype(np.int32)
  att = np.ones_like(ids)
  loss = np.zeros_like(ids)
  loss[:, args.length // 2:] = 1
  return {"input_ids": ids, "attention_mask": att, "loss_mask": loss}


def bench_ours(folder, batch, args, lora_rank):
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from pacbayes.lora import adapter as lora
  from pacbayes.models import load_pretrained
  from pacbayes.training import trainer as tr

  model, config = load_pretrained(folder, dtype=args.dtype)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  cfg = tr.TrainConfig(steps=1, batch_size=args.batch, learning_rate=1e-4, b2=0.999)
  frozen = None
  if lora_rank:
    layout = lora.make_layout(config, ["q_proj", "v_proj"], lora_rank, 2.0 * lora_rank)
    inner = lora.lora_apply(graphdef, rest, layout)

    def apply(p, ids, mask, base):
      return inner({"lora": p, "base": base}, ids, mask)

    frozen, params = params, lora.init_lora(layout, key=jax.random.key(0))
  else:
    apply = tr.model_apply(graphdef, rest)
  step = tr.make_train_step(apply, "ce", cfg.b1, cfg.b2, 0.0, 1.0, with_frozen=frozen is not None)
  opt_state = tr.make_optimizer(cfg).init(params)
  dev = {k: jnp.asarray(v) for k, v in batch.items()}
  extra = () if frozen is None else (frozen,)
  lr = np.float32(1e-4)
  for _ in range(2):  # compile + warm-up
    params, opt_state, loss = step(params, opt_state, dev, lr, *extra)
  jax.block_until_ready(loss)
  start = time.perf_counter()
  for _ in range(args.steps):
    params, opt_state, loss = step(params, opt_state, dev, lr, *extra)
  jax.block_until_ready(params)
  return args.steps * batch["attention_mask"].sum() / (time.perf_counter() - start)


def bench_torch(folder, batch, args, lora_rank):
  import torch
  import transformers as tf

  dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
  device = "cuda" if torch.cuda.is_available() else "cpu"
  model = tf.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).train()
  if lora_rank:
    import peft

    model = peft.get_peft_model(model, peft.LoraConfig(
      r=lora_rank, lora_alpha=2 * lora_rank, target_modules=["q_proj", "v_proj"],
      lora_dropout=0.0))
  params = [p for p in model.parameters() if p.requires_grad]
  opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=0.0)
  ids = torch.as_tensor(batch["input_ids"], dtype=torch.long, device=device)
  att = torch.as_tensor(batch["attention_mask"], device=device)
  mask = torch.as_tensor(batch["loss_mask"][:, 1:], dtype=torch.float32, device=device)

  def step():
    logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
    loss = -(logp * mask).sum() / mask.sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return loss

  for _ in range(2):
    step()
  if device == "cuda":
    torch.cuda.synchronize()
  start = time.perf_counter()
  for _ in range(args.steps):
    step()
  if device == "cuda":
    torch.cuda.synchronize()
  return args.steps * batch["attention_mask"].sum() / (time.perf_counter() - start)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--hidden", type=int, default=256)
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--vocab", type=int, default=4096)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--length", type=int, default=128)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--lora-rank", type=int, default=8)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--peak-tflops", type=float, default=None, help="accelerator peak (MFU)")
  p.add_argument("--json", default=None, help="also write the numbers to this file")
  args = p.parse_args(argv)
  import jax

  results = {"settings": vars(args), "jax_backend": jax.default_backend(),
             "devices": [str(d) for d in jax.devices()]}
  peak = args.peak_tflops
  if peak is None and jax.default_backend() == "gpu":
    kind = jax.devices()[0].device_kind
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in kind), None)
  with tempfile.TemporaryDirectory() as tmp:
    n_params = make_checkpoint(tmp, args)
    results["num_params"] = int(n_params)
    batch = make_batch(args)
    runs = [("full", 0)]
    try:
      import peft  # noqa: F401

      runs.append(("lora", args.lora_rank))
    except ImportError:
      print("peft not installed: LoRA comparison skipped")
    for name, rank in runs:
      ours = float(bench_ours(tmp, batch, args, rank))
      theirs = float(bench_torch(tmp, batch, args, rank))
      row = {"ours_tokens_per_s": ours, "torch_tokens_per_s": theirs, "ratio": ours / theirs}
      if peak:
        flops_per_token = (6 if name == "full" else 4) * n_params
        row["mfu"] = ours * flops_per_token / (peak * 1e12)
        row["mfu_torch"] = theirs * flops_per_token / (peak * 1e12)
      results[name] = row
      print(f"{name:>4}: pacbayes {ours:10.0f} tok/s   transformers+torch {theirs:10.0f} tok/s"
            f"   ratio {ours / theirs:5.2f}" + (f"   MFU {row['mfu']:.3f}" if peak else ""))
  print(f"model: {n_params / 1e6:.2f}M params, batch {args.batch} x {args.length} tokens, "
        f"{args.dtype}, backend {results['jax_backend']}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)
  return results


if __name__ == "__main__":
  main()
