"""Pilot of the fine-tuning protocol (issue 20): learning curves at a few corners, on seed 7.

Usage: python experiments/pilot_protocol.py [--out experiments/results/pilot] [--quick-check]

Master seed 7 (not a study seed): the base (ops 1-2, the study's pretraining), buckets
easiest (16,4,1), easy (4,2,1) and hard (1,2,4) over ops 1-3, n in {200, 3200} (easiest at
n = 200 only), fine-tuning seeds 0 and 1, AdamW at lr 1e-3 (a third of the pretraining lr).
Each cell trains once for the longest budget of its size (the trainer's own jitted step,
schedule and batch order: `pacbayes.training.trainer`), and at the snapshot epochs records the
sequence error on a held-out sample of its bucket (512 fresh rows: the early-stopping score),
on S, and greedy test accuracy by slice with per-item outcomes (test ops 1-4; slice 4 is held
out of every bucket, measured to decide whether it stays in the test mixture).

Writes OUT/pilot.json: the curves, the chosen protocol (the snapshot epoch with the lowest
held-out in-bucket error, per size), the timings (seconds per step and per evaluation, with
the load average at start and end) and, when `pacbayes.study.power` is importable, the power of
claim 1 for candidate quick designs at the pilot's effects and variances.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

SNAPSHOTS = {200: (2, 4, 8, 16), 3200: (1, 2, 3)}
CELLS = [("easiest", 200), ("easy", 200), ("hard", 200), ("easy", 3200), ("hard", 3200)]
SEEDS = (0, 1)
LR = 1e-3
ARM = ("tilted", (("easiest", (16.0, 4.0, 1.0, 0.0)), ("easy", (4.0, 2.0, 1.0, 0.0)),
                  ("hard", (1.0, 2.0, 4.0, 0.0))))


def pilot_config(quick_check: bool, **design):
  """The pilot's StudyConfig; `design` overrides (the headroom pilot: pretrain_ops,
  pretrain_steps, ft_lr, test_ops and arms over ops 1-3)."""
  from pacbayes.study.config import StudyConfig

  over = dict(seed=7, test_ops=(1, 4), arms=(ARM,), sizes=(200, 3200), seeds=SEEDS, seeds_at=(),
              strong_sizes=(), dft_sizes=(), certified_sizes=(), ft_lr=LR)
  over.update(design)
  if quick_check:  # a seconds-long run of the script's code path (tiny model and budgets)
    over.update(test_per_slice=8, pretrain_steps=3, pretrain_examples=64, hidden_size=16,
                intermediate_size=32, num_layers=1, num_heads=2, generate_batch_size=8)
  return StudyConfig.preset("quick", **over)


def run_cell(study, bucket: str, n: int, seed: int, snapshots, val) -> dict:
  """One cell's curve: train for max(snapshots) epochs, score at every snapshot epoch."""
  import jax
  import jax.numpy as jnp

  from pacbayes.study import evaluate as ev
  from pacbayes.study.grid import Cell
  from pacbayes.study.records import against_base
  from pacbayes.training import trainer as tr

  c = study.config
  steps_at = {e: int(np.ceil(e * n / c.ft_batch_size)) for e in snapshots}
  total = max(steps_at.values())
  tcfg = tr.TrainConfig(steps=total, batch_size=c.ft_batch_size, learning_rate=c.ft_lr,
                        warmup_steps=min(c.ft_warmup, total - 1), weight_decay=c.ft_weight_decay)
  cell = Cell("tilted", "base", "sft", bucket, n, seed, total)
  data, _ = study.cell_data(cell)
  arrays = {k: np.asarray(data[k], dtype=np.int32) for k in tr.BATCH_KEYS}
  step = tr.make_train_step(study.apply, "ce", tcfg.b1, tcfg.b2, tcfg.weight_decay,
                            tcfg.grad_clip, eps=tcfg.eps)
  params = study.prior(cell)
  opt_state = tr.make_optimizer(tcfg).init(params)
  lrs = tr.learning_rates(tcfg)
  order = tr.batch_indices(n, tcfg.batch_size, total, key=study.fkey(20, *cell.ids(c)))
  curve, train_s, eval_s, t0 = [], 0.0, 0.0, time.perf_counter()
  losses = []
  for i in range(total):
    batch = {k: jnp.asarray(v[order[i]]) for k, v in arrays.items()}
    params, opt_state, loss = step(params, opt_state, batch, lrs[i])
    losses.append(loss)
    for e, s in steps_at.items():
      if s == i + 1:
        jax.block_until_ready(params)
        train_s += time.perf_counter() - t0
        t1 = time.perf_counter()
        out = study.evaluate(params)
        point = {
          "epoch": e, "step": s,
          "val_seq_error": float(ev.row_losses(study.seq_fn, params, val).mean()),
          "train_seq_error": float(ev.row_losses(study.seq_fn, params, data).mean()),
          "train_loss_last10": float(np.mean([np.asarray(x)[0] for x in losses[-10:]])),
          "accuracy_by_slice": out["accuracy_by_slice"],
          "seq_error_by_slice": out["seq_error_by_slice"],
          "items": out["items"],
          "sq_distance": float(_sq(params, study.prior(cell))),
        }
        point.update(against_base(out["items"]["correct"], study.base_items["base"][0],
                                  study.data.test.ops,
                                  [len(study.data.test.slices[k]) for k in study.data.test.ops]))
        eval_s += time.perf_counter() - t1
        curve.append(point)
        t0 = time.perf_counter()
  return {"bucket": bucket, "n": n, "seed": seed, "steps": total, "lr": c.ft_lr,
          "train_s": train_s, "eval_s": eval_s, "s_per_step": train_s / total, "curve": curve}


def _sq(a, b) -> float:
  from pacbayes.posterior import perturb

  return float(perturb.sq_distance(a, b))


def held_out(study, bucket: str, size: int):
  """512 fresh rows of a bucket's mixture (its own seed purpose: never a pool row)."""
  from pacbayes.data import synthetic
  from pacbayes.data.dataset import Dataset
  from pacbayes.data.rows import EncodeOptions
  from pacbayes.study import studydata
  from pacbayes.study.config import seq_length

  c = study.config
  b_idx = c.bucket_names.index(bucket)
  rows = synthetic.generate_dataset(size, c.mixture("tilted", bucket),
                                    seed=studydata.seed_seq(c, 9, b_idx), modulus=c.modulus)
  return studydata.arrays(Dataset.from_rows(rows, options=EncodeOptions(
    pad_length=seq_length(c.test_ops[1]))))


def choose(cells: list[dict]) -> dict[str, dict]:
  """Per size: the snapshot epoch with the lowest held-out in-bucket sequence error (mean over
  buckets and seeds)."""
  out = {}
  for n in sorted({c["n"] for c in cells}):
    group = [c for c in cells if c["n"] == n]
    epochs = [p["epoch"] for p in group[0]["curve"]]
    val = {e: float(np.mean([p["val_seq_error"] for c in group for p in c["curve"]
                             if p["epoch"] == e])) for e in epochs}
    best = min(epochs, key=lambda e: (val[e], e))
    out[str(n)] = {"epoch": best, "val_seq_error_by_epoch": {str(e): v for e, v in val.items()}}
  return out


def pilot_results(study, cells: list[dict], chosen: dict) -> dict:
  """The pilot's cells at the chosen epochs as a study results dict (schema 3), test mixture
  uniform over ops 1-3 (slice 4 weight 0), for `pacbayes.study.view` and power."""
  from pacbayes.study.view import SCHEMA

  c = study.config
  ops = study.data.test.ops
  rows = []
  for cell in cells:
    e = chosen[str(cell["n"])]["epoch"]
    p = next(p for p in cell["curve"] if p["epoch"] == e)
    rows.append({"arm": "tilted", "base": "base", "method": "sft", "bucket": cell["bucket"],
                 "n": cell["n"], "seed": cell["seed"], "ft_steps": p["step"],
                 "certified_arm": False, "train_seq_error": p["train_seq_error"],
                 "sq_distance": p["sq_distance"], "items": p["items"],
                 "accuracy_by_slice": p["accuracy_by_slice"]})
  uniform = {str(k): (1.0 / 3 if k <= 3 else 0.0) for k in ops}
  sq = [float(k * k) if k <= 3 else 0.0 for k in ops]
  hard = {str(k): w / sum(sq) for k, w in zip(ops, sq, strict=True)}
  base = study.base_info["base"]
  return {"schema": SCHEMA, "preset": "pilot", "config": c.to_dict(),
          "test_mixture": uniform, "test_mixtures": {"uniform": uniform, "hard": hard},
          "test_items": {"ops": ops, "counts": [len(study.data.test.slices[k]) for k in ops]},
          "arms": {"tilted": {"order": c.bucket_names, "mixtures": {
            b: {str(k): v for k, v in c.mixture("tilted", b).items()} for b in c.bucket_names}}},
          "bases": {"base": base}, "cells": rows}


def power_block(results: dict) -> dict:
  """Power of claim 1 for candidate quick designs (pacbayes.study.power, if present)."""
  try:
    from pacbayes.study import power, view
  except ImportError as e:
    return {"error": f"pacbayes.study.power not importable: {e}"}
  out = {}
  try:
    v = view.study_view(results)
    sub = v  # the pilot's easy/hard corners (easiest has only n = 200)
    assume = power.assume_from_view(sub, "experiments/results/pilot/pilot.json")
    out["assumptions"] = {"keys": [list(k) for k in assume.keys],
                          "acc_CxK": assume.acc_CxK.round(4).tolist(),
                          "flip_CxK": assume.flip_CxK.round(5).tolist(),
                          "seed_sd_C": assume.seed_sd_C.round(4).tolist()}
    for seeds, items in ((2, 256), (3, 256), (3, 1024), (4, 1024), (6, 1024)):
      design = power.Design(name=f"easy/hard x 200/3200, {seeds} seeds, {items} items",
                            buckets=("easy", "hard"), sizes=(200, 3200), seeds=seeds,
                            items_per_slice=items, extra_cells=False)
      res = power.power(assume, design, power.PowerOptions(reps=400, seed=0))
      out[design.name] = {k: v for k, v in res.items() if "moves harder" in k} or res
  except Exception as e:  # noqa: BLE001 - the statistics are being rebuilt: record, go on
    out["error"] = f"{type(e).__name__}: {e}"
  return out


def main(argv=None) -> int:
  global CELLS, SNAPSHOTS, SEEDS
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="experiments/results/pilot")
  parser.add_argument("--quick-check", action="store_true")
  parser.add_argument("--headroom", choices=("op1", "weak"),
                      help="the headroom pilot: test ops 1-3, buckets easy/hard, a base that "
                           "knows op 1 only ('op1': pretraining on ops 1-1) or ops 1-2 weakly "
                           "('weak': 300 pretraining steps); snapshots include epoch 0 (the "
                           "base itself)")
  parser.add_argument("--seeds", type=int, default=len(SEEDS))
  parser.add_argument("--lr", type=float, default=LR, help="fine-tuning learning rate")
  parser.add_argument("--base-ops", default=None,
                      help="with --headroom: pretraining op range 'lo,hi' (overrides its base)")
  args = parser.parse_args(argv)
  design = {"ft_lr": args.lr}
  SEEDS = tuple(range(args.seeds))
  if args.headroom:
    design = dict(test_ops=(1, 3), seeds=SEEDS, arms=(("tilted", (
      ("easy", (4.0, 2.0, 1.0)), ("hard", (1.0, 2.0, 4.0)))),))
    design.update({"op1": dict(pretrain_ops=(1, 1)),
                   "weak": dict(pretrain_steps=300)}[args.headroom])
    if args.base_ops:
      design["pretrain_ops"] = tuple(int(x) for x in args.base_ops.split(","))
    CELLS = [("easy", 200), ("hard", 200), ("easy", 3200), ("hard", 3200)]
    SNAPSHOTS = {200: (1, 2, 4, 8, 16), 3200: (1, 2, 3, 6)}
  from pacbayes.core.precision import enable_x64_globally

  enable_x64_globally()
  from pacbayes.core.atomic import write_text
  from pacbayes.study.runner import Study

  start, load0 = time.perf_counter(), os.getloadavg()
  study = Study(pilot_config(args.quick_check, **design), args.out, progress=False)
  t = time.perf_counter()
  study.pretrain("base")
  base_s = time.perf_counter() - t
  print(f"base: {study.base_info['base']['accuracy_by_slice']} ({base_s:.0f}s)", flush=True)
  vals = {b: held_out(study, b, 16 if args.quick_check else 512) for b in
          study.config.bucket_names}
  from pacbayes.study import evaluate as ev
  from pacbayes.study.grid import Cell

  base_params = study.prior(Cell("tilted", "base", "sft", study.config.bucket_names[0], 1, 0, 1))
  base_val = {b: float(ev.row_losses(study.seq_fn, base_params, v).mean())
              for b, v in vals.items()}
  print(f"base held-out in-bucket sequence error (epoch 0): {base_val}", flush=True)
  cells = []
  for seed in SEEDS:
    for bucket, n in CELLS:
      n_run = min(n, 32) if args.quick_check else n
      snaps = (1, 2) if args.quick_check else SNAPSHOTS[n]
      cell = run_cell(study, bucket, n_run, seed, snaps, vals[bucket])
      cells.append(cell)
      last = cell["curve"][-1]
      print(f"{bucket} n={n_run} s{seed}: {cell['steps']} steps {cell['s_per_step']:.3f}s/step; "
            + "; ".join(f"ep{p['epoch']}: val {p['val_seq_error']:.3f} acc "
                        + " ".join(f"{v:.2f}" for v in p["accuracy_by_slice"].values())
                        for p in cell["curve"]) + f" (load {os.getloadavg()[0]:.1f})",
            flush=True)
      del last
  chosen = choose(cells)
  results = pilot_results(study, cells, chosen)
  out = {
    "what": __doc__.splitlines()[0], "master_seed": study.config.seed, "seeds": list(SEEDS),
    "lr": args.lr, "headroom": args.headroom,
    "snapshots": {str(k): list(v) for k, v in SNAPSHOTS.items()},
    "base": {k: v for k, v in study.base_info["base"].items()},
    "base_pretrain_s": base_s, "base_val_seq_error": base_val, "chosen": chosen,
    "cells": [{**c, "curve": [{k: v for k, v in p.items() if k != "items"} for p in c["curve"]]}
              for c in cells],
    "power": power_block(results),
    "timing": {"load_average_start": list(load0), "load_average_end": list(os.getloadavg()),
               "cpus": os.cpu_count(), "wall_s": time.perf_counter() - start,
               "s_per_step_median": float(np.median([c["s_per_step"] for c in cells])),
               "eval_s_per_snapshot_median": float(np.median(
                 [c["eval_s"] / len(c["curve"]) for c in cells]))},
  }
  os.makedirs(args.out, exist_ok=True)
  write_text(os.path.join(args.out, "pilot.json"), json.dumps(out, indent=1) + "\n")
  write_text(os.path.join(args.out, "pilot_results.json"), json.dumps(results) + "\n")
  print(json.dumps({"chosen": chosen, "power": out["power"], "timing": out["timing"]}, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
