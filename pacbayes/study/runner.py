"""The difficulty x size study: pretrain two bases, fine-tune every cell, evaluate, certify.

Every cell (arm, base, method, bucket, n, seed) stores its per-test-item answer correctness,
teacher-forced sequence error and posterior sequence error (base64, `pacbayes.study.stats`), so the
verdicts (`pacbayes.study.theory`) can pair contrasts over the same items and combine seed
variance. Results are written as schema ``pacbayes.study/2``; per-cell results and checkpoints
are cached under ``out/cache`` keyed by a hash of everything they depend on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from pacbayes.models import ModelConfig, build_model
from pacbayes.study import cache, studydata
from pacbayes.study import evaluate as ev
from pacbayes.study.cellcert import certify_cell
from pacbayes.study.config import PRESETS, StudyConfig
from pacbayes.study.grid import Cell, certified_cells, grid_cells
from pacbayes.study.stats import encode_u8
from pacbayes.study.view import SCHEMA
from pacbayes.study.workers import run_tasks
from pacbayes.training import trainer as tr

__all__ = ["PRESETS", "SCHEMA", "StudyConfig", "run_study", "summary_table"]

BASES = ("base", "strong")
METHODS = {"sft": "ce", "dft": "dft"}
# Bumped whenever a change alters cached numbers, so stale cache entries are never reused.
CACHE_VERSION = 3
# What valid cache entries look like (`cache.read_json` treats anything else as stale).
BASE_ENTRY = {"pretrain_ops": list, "steps": int, "accuracy": float, "accuracy_by_slice": dict,
              "test_seq_error": float, "seq_error_by_slice": dict}
TRAIN_ENTRY = {"time_s": float, "final_loss": float}
CELL_ENTRY = {"v": int, "accuracy": float, "accuracy_by_slice": dict, "q_test_risk": float,
              "train_seq_error": float, "sq_distance": float, "certificate": dict,
              "items": {"correct": str, "seq_error": str, "q_seq_error": str, "q_draws": int}}


def model_config(config: StudyConfig) -> ModelConfig:
  """The Llama architecture of the study (tiny; the synthetic vocabulary)."""
  from pacbayes.data import synthetic

  return ModelConfig(
    model_type="llama", vocab_size=synthetic.VOCAB_SIZE, hidden_size=config.hidden_size,
    intermediate_size=config.intermediate_size, num_hidden_layers=config.num_layers,
    num_attention_heads=config.num_heads, max_position_embeddings=synthetic.MODEL_MAX_LENGTH,
    dtype="float32", bos_token_id=synthetic.BOS_ID, eos_token_id=synthetic.EOS_ID,
    pad_token_id=synthetic.PAD_ID)


def fmt_slices(by_slice: Mapping[str, float]) -> str:
  return "[" + " ".join(f"{k}:{v:.2f}" for k, v in sorted(by_slice.items(),
                                                          key=lambda kv: int(kv[0]))) + "]"


class Study:
  """State of one run: config, data, caches, split model, compiled losses and the bases."""

  def __init__(self, config: StudyConfig, out_dir: str, progress: bool):
    self.config = config
    self.out_dir = out_dir
    self.progress = progress
    self.key = jax.random.key(config.seed)
    self.mcfg = model_config(config)
    model = build_model(self.mcfg, rngs=nnx.Rngs(config.seed))
    self.graphdef, self.init_params, self.rest = nnx.split(model, nnx.Param, ...)
    self.num_params = int(sum(np.size(x) for x in jax.tree.leaves(self.init_params)))
    self.apply = tr.model_apply(self.graphdef, self.rest)
    self.seq_fn = ev.sequence_error_fn(self.apply)
    self.data = studydata.build_data(config)
    self.bases: dict[str, Any] = {}
    self.base_info: dict[str, Any] = {}

  def log(self, msg: str) -> None:
    if self.progress:
      from tqdm.auto import tqdm

      tqdm.write(f"[lab] {msg}")

  def fkey(self, *parts: int) -> jax.Array:
    key = self.key
    for p in parts:
      key = jax.random.fold_in(key, p)
    return key

  def path(self, *parts: str) -> str:
    return os.path.join(self.out_dir, "cache", *parts)

  def model(self, params) -> nnx.Module:
    return nnx.merge(self.graphdef, params, self.rest)

  # ------------------------------------------------------------------------- evaluation

  def evaluate(self, params, *, key: jax.Array | None = None,
               sigma: float | None = None) -> dict[str, Any]:
    """Per-item correctness and sequence errors on the test set, and their summaries."""
    c, test = self.config, self.data.test
    correct = ev.slice_correct(self.model(params), test, batch_size=c.generate_batch_size)
    seq, qseq = {}, {}
    for k in test.ops:
      arrs = studydata.arrays(test.slices[k])
      seq[k] = ev.row_losses(self.seq_fn, params, arrs, batch_size=c.eval_batch_size)
      if sigma is not None:
        qseq[k] = ev.posterior_row_losses(self.seq_fn, params, arrs, key=jax.random.fold_in(key, k),
                                          sigma=sigma, num_draws=c.test_draws,
                                          batch_size=c.eval_batch_size).sum(axis=0)
    acc = {k: float(v.mean()) for k, v in correct.items()}
    out = {
      "accuracy": test.weighted(acc),
      "accuracy_by_slice": {str(k): acc[k] for k in test.ops},
      "test_seq_error": test.weighted({k: float(v.mean()) for k, v in seq.items()}),
      "seq_error_by_slice": {str(k): float(seq[k].mean()) for k in test.ops},
      "items": {"correct": encode_u8(np.concatenate([correct[k] for k in test.ops])),
                "seq_error": encode_u8(np.concatenate([seq[k] for k in test.ops]))},
    }
    if sigma is not None:
      out["q_test_risk"] = test.weighted({k: float(v.mean()) / c.test_draws
                                          for k, v in qseq.items()})
      out["q_risk_by_slice"] = {str(k): float(qseq[k].mean()) / c.test_draws for k in test.ops}
      out["items"]["q_seq_error"] = encode_u8(np.concatenate([qseq[k] for k in test.ops]))
      out["items"]["q_draws"] = c.test_draws
    return out

  # ------------------------------------------------------------------------------ bases

  def base_fields(self, which: str) -> dict[str, Any]:
    c = self.config
    ops, steps = ((c.pretrain_ops, c.pretrain_steps) if which == "base"
                  else (c.strong_pretrain_ops, c.strong_pretrain_steps))
    fields = {
      "v": CACHE_VERSION, "which": which, "seed": c.seed, "modulus": c.modulus,
      "model": self.mcfg.to_hf_config(), "ops": list(ops), "steps": steps,
      "examples": c.pretrain_examples, "batch": c.pretrain_batch_size, "lr": c.pretrain_lr,
      "warmup": c.pretrain_warmup, "test_ops": list(c.test_ops),
      "test_per_slice": c.test_per_slice,
    }
    if which == "strong" and c.strong_from_base:
      fields["init"] = self.base_fields("base")
    return fields

  def pretrain(self, which: str) -> None:
    c = self.config
    fields = self.base_fields(which)
    tag = f"{which}-{cache.config_hash(fields)}"
    ckpt, info_path = self.path("bases", tag + ".npz"), self.path("bases", tag + ".json")
    init = self.bases["base"] if "init" in fields else self.init_params
    params = cache.load_params(ckpt, self.init_params)
    info = cache.read_json(info_path, BASE_ENTRY)
    pre_time = None  # None: trained by an earlier run whose summary was lost
    if params is None:
      ds = studydata.pretrain_corpus(c, which, self.data.test_keys)
      tcfg = tr.TrainConfig(steps=fields["steps"], batch_size=c.pretrain_batch_size,
                            learning_rate=c.pretrain_lr, warmup_steps=c.pretrain_warmup,
                            weight_decay=0.01, method="ce")
      res = tr.train(self.apply, init, studydata.arrays(ds), tcfg,
                     key=self.fkey(10, BASES.index(which)), progress=self.progress,
                     desc=f"pretrain {which}")
      params = res.params
      cache.save_params(ckpt, params)
      info = None
      pre_time = res.time_s
      self.log(f"pretrained {which}: {fields['steps']} steps in {res.time_s:.1f}s")
    if info is None:
      ev_ = self.evaluate(params)
      total = fields["steps"] + (fields["init"]["steps"] if "init" in fields else 0)
      info = {"pretrain_ops": fields["ops"], "steps": total,
              "init": "base" if "init" in fields else "scratch",
              "accuracy": ev_["accuracy"], "accuracy_by_slice": ev_["accuracy_by_slice"],
              "test_seq_error": ev_["test_seq_error"],
              "seq_error_by_slice": ev_["seq_error_by_slice"], "train_time_s": pre_time}
      cache.write_json(info_path, info)
    self.bases[which], self.base_info[which] = params, info

  # ------------------------------------------------------------------------------ cells

  def cell_fields(self, cell: Cell) -> dict[str, Any]:
    c = self.config
    return self.train_fields(cell) | {
      "cert": [c.delta, list(c.sigma_grid), c.mc_chunk_size, c.sigma_subset, c.test_draws],
      "test_weight_power": c.test_weight_power,
    }

  def cell_data(self, cell: Cell) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """S of a cell (the first n rows of its pool) as arrays, and its rows' op counts."""
    pool = self.data.pools[(cell.arm, cell.bucket, cell.seed)]
    difficulty = self.data.difficulty[(cell.arm, cell.bucket, cell.seed)][:cell.n]
    return studydata.arrays(pool.subset(np.arange(cell.n))), difficulty

  def train_cell(self, cell: Cell) -> tuple[Any, dict[str, Any]]:
    """The fine-tuned weights of a cell (cached) and {"time_s", "final_loss"} of its training."""
    c = self.config
    tag = f"{cell.tag}-{cache.config_hash(self.train_fields(cell))}"
    ckpt, info_path = self.path("cells", tag + ".npz"), self.path("cells", tag + ".train.json")
    prior = self.bases[cell.base]
    params = cache.load_params(ckpt, prior)
    info = cache.read_json(info_path, TRAIN_ENTRY)
    if params is not None and info is not None:
      return params, info
    data, _ = self.cell_data(cell)
    tcfg = tr.TrainConfig(steps=cell.steps, batch_size=c.ft_batch_size, learning_rate=c.ft_lr,
                          warmup_steps=min(c.ft_warmup, cell.steps - 1),
                          weight_decay=c.ft_weight_decay, method=METHODS[cell.method])
    res = tr.train(self.apply, prior, data, tcfg, key=self.fkey(20, *cell.ids(c)),
                   progress=self.progress, desc=cell.tag)
    info = {"time_s": res.time_s, "final_loss": float(np.mean(res.losses[-10:]))}
    cache.save_params(ckpt, res.params)
    cache.write_json(info_path, info)
    return res.params, info

  def train_fields(self, cell: Cell) -> dict[str, Any]:
    """What a cell's fine-tuned weights depend on (the cache key of its checkpoint)."""
    c = self.config
    return {
      "v": CACHE_VERSION, "base": self.base_fields(cell.base), "method": cell.method,
      "arm": cell.arm, "mixture": c.mixture(cell.arm, cell.bucket), "n": cell.n,
      "seed": cell.seed, "steps": cell.steps, "ids": list(cell.ids(c)),
      "ft": [c.ft_batch_size, c.ft_lr, c.ft_warmup, c.ft_weight_decay],
      "test": [c.test_per_slice, list(c.test_ops)],
    }

  def run_cell(self, cell: Cell) -> dict[str, Any]:
    c = self.config
    fields = self.cell_fields(cell)
    tag = f"{cell.tag}-{cache.config_hash(fields)}"
    result_path = self.path("cells", tag + ".json")
    cached = cache.read_json(result_path, CELL_ENTRY)
    if cached is not None and cached["v"] == CACHE_VERSION:
      return cached
    params, train_info = self.train_cell(cell)
    data, difficulty = self.cell_data(cell)
    ids = cell.ids(c)
    prior = self.bases[cell.base]
    t = time.perf_counter()
    cert = certify_cell(self.seq_fn, prior, params, data, difficulty,
                        train_mixture=c.mixture(cell.arm, cell.bucket),
                        test_mixture=c.test_mixture(), key=self.fkey(30, *ids), delta=c.delta,
                        sigma_grid=c.sigma_grid, chunk_size=c.mc_chunk_size,
                        subset_size=c.sigma_subset, batch_size=c.eval_batch_size)
    evaluation = self.evaluate(params, key=self.fkey(40, *ids),
                               sigma=cert["sigma_choice"]["sigma_q"])
    train_seq = ev.row_losses(self.seq_fn, params, data, batch_size=c.eval_batch_size)
    mix = c.mixture(cell.arm, cell.bucket)
    by = evaluation["seq_error_by_slice"]
    result = {
      "v": CACHE_VERSION, "arm": cell.arm, "base": cell.base, "method": cell.method,
      "bucket": cell.bucket, "n": cell.n, "seed": cell.seed, "ft_steps": cell.steps,
      "certified_arm": cell.certified,
      **{k: v for k, v in evaluation.items()},
      "in_bucket_seq_error": float(sum(p * by[str(k)] for k, p in mix.items())),
      "train_seq_error": float(train_seq.mean()),
      "sq_distance": cert["sq_distance"],
      "certificate": cert,
      "train_time_s": train_info["time_s"],
      "final_train_loss": train_info["final_loss"],
      "eval_time_s": time.perf_counter() - t,
    }
    cache.write_json(result_path, result)
    return result


def run_study(config: StudyConfig, out_dir: str | os.PathLike, *, progress: bool = True,
              workers: int = 0) -> dict[str, Any]:
  """Runs (or resumes) the whole study and writes ``out_dir/results.json`` (schema lab/2).

  Steps: build the test slices and the bucket pools; pretrain the base and the stronger base;
  fine-tune every cell of `grid_cells` (full-parameter AdamW, SFT or DFT); evaluate greedy
  answer correctness and sequence error item by item; certify each cell (prior: its base;
  loss: sequence error; B_train, TV, mixture-shift, weighted and per-slice kinds) and measure
  E_Q[R_test] under the certified posterior; then the certified arm (`certified_cells`):
  shorter step budgets of the same cells, the budget chosen by the subset bound.

  Args:
    config: the study's settings; out_dir: where results.json and the cache go.
    progress: show a progress bar (cells done, rate) and one line per finished cell.
    workers: 0 computes in this process; N >= 1 in N spawned single-threaded processes
      (`pacbayes.study.workers`), whose results do not depend on N.

  Returns:
    The results dict as written (``runtime_s`` is the only field that varies between two runs
    of the same config on the same machine and lock).
  """
  start = time.perf_counter()
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  study = Study(config, out_dir, progress)
  todo = grid_cells(config) + certified_cells(config)
  done: dict[int, dict[str, Any]] = {}
  bar = _progress_bar(len(todo), progress)

  def on_base(which: str, info: dict[str, Any]) -> None:
    study.base_info[which] = info
    study.log(f"{which}: accuracy {info['accuracy']:.3f} {fmt_slices(info['accuracy_by_slice'])}")

  def on_cell(i: int, result: dict[str, Any]) -> None:
    done[i] = result
    cert = result["certificate"]
    study.log(f"[{len(done)}/{len(todo)}] {todo[i].tag}: acc {result['accuracy']:.3f} "
              f"{fmt_slices(result['accuracy_by_slice'])} E_Q seq {result['q_test_risk']:.3f} "
              f"B_train {cert['b_train']:.3f} bound {cert['bound']:.3f} ({cert['g_ext_name']})")
    bar.update(1)

  try:
    if workers == 0:
      for which in BASES:
        study.pretrain(which)
        on_base(which, study.base_info[which])
      for i, cell in enumerate(todo):
        on_cell(i, study.run_cell(cell))
    else:
      study.log(f"{workers} worker process(es): the base ({config.pretrain_steps} steps), the "
                f"stronger base ({config.strong_pretrain_steps} more), then {len(todo)} cells "
                f"(cached ones are read back)")
      run_tasks(Study, config, out_dir, todo, workers=workers, on_base=on_base, on_cell=on_cell)
  finally:
    bar.close()
  cells = [done[i] for i in range(len(todo))]
  study.base_info = {which: study.base_info[which] for which in BASES}
  test = study.data.test
  results = {
    "schema": SCHEMA,
    "preset": config.name,
    "config": config.to_dict(),
    "tuned": config.tuned,
    "runtime_s": time.perf_counter() - start,
    # Seconds of each stage when it was computed (a resumed run keeps the cached stages' times).
    "timings_s": {"pretrain_s": sum(b["train_time_s"] or 0.0 for b in study.base_info.values()),
                  "fine_tune_s": sum(c["train_time_s"] for c in cells),
                  "evaluate_certify_s": sum(c["eval_time_s"] for c in cells)},
    "test_mixture": {str(k): p for k, p in test.mixture.items()},
    "test_items": {"ops": test.ops, "counts": [len(test.slices[k]) for k in test.ops]},
    "arms": {arm: {"order": [b for b, _ in buckets],
                   "mixtures": {b: {str(k): p for k, p in config.mixture(arm, b).items()}
                                for b, _ in buckets}}
             for arm, buckets in config.arms},
    "sizes": list(config.sizes),
    "num_params": study.num_params,
    "fine_tune_space": "every weight (full-parameter AdamW)",
    "loss": "sequence_error (certificates); greedy answer correctness (accuracy)",
    "bases": study.base_info,
    "cells": [c for c in cells if not c["certified_arm"]],
    "certified": certified_arm(cells),
  }
  cache.write_json(os.path.join(out_dir, "results.json"), results)
  return results


def _progress_bar(total: int, enabled: bool):
  from tqdm.auto import tqdm

  return tqdm(total=total, desc="cells", unit="cell", disable=not enabled, dynamic_ncols=True)


def certified_arm(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The certified arm: per (bucket, n, seed), every budget's certificate and accuracy, and the
  budget chosen by the subset bound of the sigma search (computed with its own key on a subset
  of S, so the final Monte-Carlo term is independent of the choice; the PAC-Bayes term holds
  for every posterior at once)."""
  groups: dict[tuple, list[dict[str, Any]]] = {}
  for c in cells:
    if c["base"] == "base" and c["method"] == "sft":
      groups.setdefault((c["arm"], c["bucket"], c["n"], c["seed"]), []).append(c)
  out = []
  for (arm, bucket, n, seed), group in groups.items():
    if not any(c["certified_arm"] for c in group):
      continue
    group = sorted(group, key=lambda c: c["ft_steps"])
    chosen = min(group, key=lambda c: c["certificate"]["sigma_choice"]["subset_bound"])
    out.append({
      "arm": arm, "bucket": bucket, "n": n, "seed": seed,
      "budgets": [{"steps": c["ft_steps"], "accuracy": c["accuracy"],
                   "q_test_risk": c["q_test_risk"], "b_train": c["certificate"]["b_train"],
                   "bound": c["certificate"]["bound"],
                   "subset_bound": c["certificate"]["sigma_choice"]["subset_bound"]}
                  for c in group],
      "chosen_steps": chosen["ft_steps"], "accuracy": chosen["accuracy"],
      "q_test_risk": chosen["q_test_risk"], "b_train": chosen["certificate"]["b_train"],
      "bound": chosen["certificate"]["bound"],
    })
  return out


def summary_table(results: Mapping[str, Any]) -> str:
  """Plain text: bases, then one line per cell (accuracy, risks, certificate terms)."""
  lines = [f"preset {results['preset']}: {len(results['cells'])} cells + "
           f"{len(results.get('certified', []))} certified-arm cells in "
           f"{results['runtime_s']:.0f}s; test mixture "
           + " ".join(f"{k}:{v:.3f}" for k, v in results["test_mixture"].items())]
  for name, b in results["bases"].items():
    lines.append(f"{name:>6} (pretrain ops {b['pretrain_ops'][0]}-{b['pretrain_ops'][1]}, "
                 f"{b['steps']} steps): acc {b['accuracy']:.3f} "
                 f"{fmt_slices(b['accuracy_by_slice'])} seq error {b['test_seq_error']:.3f}")
  lines.append(f"{'arm':>12} {'base':>6} {'meth':>4} {'bucket':>7} {'n':>5} {'s':>2} {'step':>4} "
               f"{'acc':>6} {'seqErr':>6} {'EQ_seq':>6} {'R_S':>6} {'B_trn':>6} {'bound':>6} "
               f"{'kind':>13} {'kl':>9}  accuracy by slice")
  for c in results["cells"]:
    cert = c["certificate"]
    lines.append(
      f"{c['arm']:>12} {c['base']:>6} {c['method']:>4} {c['bucket']:>7} {c['n']:>5} "
      f"{c['seed']:>2} {c['ft_steps']:>4} {c['accuracy']:6.3f} {c['test_seq_error']:6.3f} "
      f"{c['q_test_risk']:6.3f} {c['train_seq_error']:6.3f} {cert['b_train']:6.3f} "
      f"{cert['bound']:6.3f} {cert['g_ext_name']:>13} {cert['kl']:9.1f}  "
      f"{fmt_slices(c['accuracy_by_slice'])}")
  for c in results.get("certified", []):
    lines.append(f"certified arm {c['bucket']:>7} n={c['n']} seed {c['seed']}: chosen "
                 f"{c['chosen_steps']} steps, acc {c['accuracy']:.3f}, B_train {c['b_train']:.3f}, "
                 f"bound {c['bound']:.3f}; budgets "
                 + ", ".join(f"{b['steps']}: acc {b['accuracy']:.3f} bound {b['bound']:.3f}"
                             for b in c["budgets"]))
  return "\n".join(lines)
