"""Regenerates tests/golden/: tiny random HF checkpoints with logits and greedy outputs from torch.

Usage: python scripts/make_golden.py [--out tests/golden]

Needs torch and transformers. Each case folder holds `checkpoint/` (config.json + safetensors,
as transformers writes them) and `reference.safetensors` with `input_ids` [B, L] int32,
`logits` [B, L, V] float32 (torch forward in float32), `prompt_lengths` [B] int32 and
`generated` [B, N] int32 (transformers greedy `generate` of the right-trimmed prompts).
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import numpy as np

NUM_NEW_TOKENS = 8


def _cases():
  import transformers as tf

  small = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               max_position_embeddings=64)
  return {
    # name: (config, dtype, max_shard_size)
    "llama_gqa": (tf.LlamaConfig(num_attention_heads=4, num_key_value_heads=2, **small),
                  "float32", None),
    "llama_bf16_tied": (tf.LlamaConfig(num_attention_heads=4, num_key_value_heads=4,
                                       tie_word_embeddings=True, **small), "bfloat16", None),
    "qwen2_sharded": (tf.Qwen2Config(num_attention_heads=4, num_key_value_heads=1,
                                     tie_word_embeddings=False, **small), "float32", "20KB"),
    "gpt2": (tf.GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                           bos_token_id=0, eos_token_id=1), "float32", None),
  }


def make_case(name: str, config, dtype: str, max_shard_size: str | None, out: Path) -> None:
  import torch
  import transformers as tf
  from safetensors.numpy import save_file

  torch.manual_seed(sum(map(ord, name)))
  model = tf.AutoModelForCausalLM.from_config(config).eval()
  with torch.no_grad():
    # HF initialises norms to one and biases to zero; perturb everything so that every
    # parameter, including those, affects the logits.
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  if dtype == "bfloat16":
    model = model.to(torch.bfloat16)
  folder = out / name
  shutil.rmtree(folder, ignore_errors=True)
  ckpt = folder / "checkpoint"
  kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
  model.save_pretrained(ckpt, **kwargs)
  for extra in ("generation_config.json",):
    if (ckpt / extra).exists():
      os.remove(ckpt / extra)
  # Reference in float32 from the saved files (bf16 weights upcast exactly, and fresh float32
  # rotary buffers), so that loading with dtype="float32" can be compared tightly.
  model = tf.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
  rng = np.random.default_rng(sum(map(ord, name)))
  input_ids = rng.integers(2, config.vocab_size, size=(3, 10)).astype(np.int32)
  prompt_lengths = np.array([10, 6, 3], np.int32)
  with torch.no_grad():
    logits = model(torch.from_numpy(input_ids).long()).logits.float().numpy()
    generated = []
    for b in range(input_ids.shape[0]):
      prompt = torch.from_numpy(input_ids[b:b + 1, :prompt_lengths[b]]).long()
      seq = model.generate(prompt, max_new_tokens=NUM_NEW_TOKENS, do_sample=False,
                           min_new_tokens=NUM_NEW_TOKENS, eos_token_id=None, pad_token_id=0)
      generated.append(seq[0, prompt_lengths[b]:].numpy())
  save_file({"input_ids": input_ids, "logits": logits.astype(np.float32),
             "prompt_lengths": prompt_lengths,
             "generated": np.stack(generated).astype(np.int32)},
            str(folder / "reference.safetensors"))
  size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
  print(f"{name}: {size / 1024:.0f} KiB")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=str(Path(__file__).parents[1] / "tests" / "golden"))
  args = parser.parse_args()
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  for name, (config, dtype, shard) in _cases().items():
    make_case(name, config, dtype, shard, out)


if __name__ == "__main__":
  main()
