"""The difficulty x size study: pretrain two bases, fine-tune every cell, evaluate, certify.

Every cell (arm, base, method, bucket, n, seed) stores its per-test-item answer correctness,
teacher-forced sequence error and posterior sequence error (base64, `pacbayes.study.stats`), so the
verdicts (`pacbayes.study.theory`) can pair contrasts over the same items and combine seed
variance. Results are written as schema ``pacbayes.lab/3`` (`pacbayes.study.view`); per-cell
results and checkpoints are cached under ``out/cache`` keyed by a hash of everything they
depend on. Main cells are evaluated only (accuracy, sequence error, per-slice gains and
forgetting against their own base replica); the certified arm also pays for certificates.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from pacbayes.models import ModelConfig, build_model
from pacbayes.posterior.draws import sq_distance
from pacbayes.study import cache, power, studydata
from pacbayes.study import evaluate as ev
from pacbayes.study.cellcert import cell_plan, certify_cell
from pacbayes.study.config import PRESETS, StudyConfig
from pacbayes.study.grid import BASES, Cell, bases_needed, certified_cells, grid_cells
from pacbayes.study.records import (
  against_base,
  certified_arm,
  combine_replicas,
  fmt_slices,
  summary_table,
)
from pacbayes.study.stats import decode_u8, encode_u8
from pacbayes.study.view import SCHEMA, study_view
from pacbayes.study.workers import run_tasks
from pacbayes.training import trainer as tr

__all__ = ["PRESETS", "SCHEMA", "StudyConfig", "run_study", "summary_table"]

METHODS = {"sft": "ce", "dft": "dft"}
# Bumped whenever a change alters cached numbers, so stale cache entries are never reused.
# 5: one certificate route (sigma_p chosen on the full grid; schema-3 certificates with null
# saturated terms), fixed epochs, two test mixtures, per-slice gains against the base replica.
# 6: early stopping on a validation part of S (the base a candidate), lr 3e-3, 6 epochs.
CACHE_VERSION = 6
# What valid cache entries look like (`cache.read_json` treats anything else as stale).
BASE_ENTRY = {"pretrain_ops": list, "steps": int, "accuracy": float, "accuracy_by_slice": dict,
              "test_seq_error": float, "seq_error_by_slice": dict,
              "items": {"correct": str, "seq_error": str}}
TRAIN_ENTRY = {"time_s": float, "final_loss": float, "stopped_at": int, "val_curve": list}
CELL_ENTRY = {"v": int, "accuracy": float, "accuracy_by_slice": dict, "train_seq_error": float,
              "sq_distance": float, "items": {"correct": str, "seq_error": str}}


def model_config(config: StudyConfig) -> ModelConfig:
  """The Llama architecture of the study (tiny; the synthetic vocabulary)."""
  from pacbayes.data import synthetic

  return ModelConfig(
    model_type="llama", vocab_size=synthetic.VOCAB_SIZE, hidden_size=config.hidden_size,
    intermediate_size=config.intermediate_size, num_hidden_layers=config.num_layers,
    num_attention_heads=config.num_heads, max_position_embeddings=synthetic.MODEL_MAX_LENGTH,
    dtype="float32", bos_token_id=synthetic.BOS_ID, eos_token_id=synthetic.EOS_ID,
    pad_token_id=synthetic.PAD_ID)


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
    self.needed = bases_needed(grid_cells(config) + certified_cells(config))
    self.num_params = int(sum(np.size(x) for x in jax.tree.leaves(self.init_params)))
    self.apply = tr.model_apply(self.graphdef, self.rest)
    self.seq_fn = ev.sequence_error_fn(self.apply)
    self.nll_fn = ev.token_nll_fn(self.apply)
    self.data = studydata.build_data(config)
    self.bases: dict[str, list[Any]] = {}  # name -> params of each replica
    self.base_info: dict[str, Any] = {}
    self.base_items: dict[str, list[dict[str, np.ndarray]]] = {}  # name -> per replica items

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
      "accuracy_by_mixture": {name: float(sum(p * acc[k] for k, p in mix.items()))
                              for name, mix in c.test_mixtures().items()},
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

  def init_for(self, replica: int) -> Any:
    """Initial weights of base replica r (r = 0: the model built from the master seed)."""
    if replica == 0:
      return self.init_params
    seed = int(studydata.seed_seq(self.config, 4, replica).generate_state(1)[0])
    return nnx.split(build_model(self.mcfg, rngs=nnx.Rngs(seed)), nnx.Param, ...)[1]

  def base_fields(self, which: str, replica: int = 0) -> dict[str, Any]:
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
    if replica:
      fields["replica"] = replica  # absent for r = 0: the same cache key as one-base studies
    if which == "strong" and c.strong_from_base:
      fields["init"] = self.base_fields("base", replica)
    return fields

  def pretrain(self, which: str) -> None:
    """Pretrains (or reads back) every replica of base `which`; a base no cell needs is
    recorded as unused and not trained."""
    if which not in self.needed:
      self.bases[which], self.base_items[which] = [], []
      self.base_info[which] = {"unused": True}
      return
    infos, params, items = [], [], []
    for r in range(self.config.num_bases):
      p, info, it = self.pretrain_replica(which, r)
      params.append(p)
      infos.append(info)
      items.append(it)
    self.bases[which], self.base_items[which] = params, items
    self.base_info[which] = combine_replicas(infos)

  def pretrain_replica(self, which: str, replica: int) -> tuple[Any, dict[str, Any], dict]:
    """(params, info, per-item arrays) of one base replica, trained or read from the cache."""
    c = self.config
    fields = self.base_fields(which, replica)
    tag = f"{which}-{cache.config_hash(fields)}"
    ckpt, info_path = self.path("bases", tag + ".npz"), self.path("bases", tag + ".json")
    init = self.bases["base"][replica] if "init" in fields else self.init_for(replica)
    params = cache.load_params(ckpt, self.init_params)
    info = cache.read_json(info_path, BASE_ENTRY)
    pre_time = None  # None: trained by an earlier run whose summary was lost
    if params is None:
      ds = studydata.pretrain_corpus(c, which, self.data.test_keys, replica=replica)
      tcfg = tr.TrainConfig(steps=fields["steps"], batch_size=c.pretrain_batch_size,
                            learning_rate=c.pretrain_lr, warmup_steps=c.pretrain_warmup,
                            weight_decay=0.01, method="ce")
      key = self.fkey(10, BASES.index(which), *([replica] if replica else []))
      res = tr.train(self.apply, init, studydata.arrays(ds), tcfg, key=key,
                     progress=self.progress and f"pretrain {which} r{replica}")
      params = res.params
      cache.save_params(ckpt, params)
      info = None
      pre_time = res.time_s
      self.log(f"pretrained {which} r{replica}: {fields['steps']} steps in {res.time_s:.1f}s")
    if info is None:
      ev_ = self.evaluate(params)
      total = fields["steps"] + (fields["init"]["steps"] if "init" in fields else 0)
      info = {"pretrain_ops": fields["ops"], "steps": total, "replica": replica,
              "init": "base" if "init" in fields else "scratch",
              "accuracy": ev_["accuracy"], "accuracy_by_mixture": ev_["accuracy_by_mixture"],
              "accuracy_by_slice": ev_["accuracy_by_slice"],
              "test_seq_error": ev_["test_seq_error"],
              "seq_error_by_slice": ev_["seq_error_by_slice"], "train_time_s": pre_time,
              "items": ev_["items"]}
      cache.write_json(info_path, info)
    n_items = sum(len(self.data.test.slices[k]) for k in self.data.test.ops)
    items = {f: decode_u8(info["items"][f], n_items) for f in ("correct", "seq_error")}
    return params, info, items

  # ------------------------------------------------------------------------------ cells

  def cell_fields(self, cell: Cell) -> dict[str, Any]:
    c = self.config
    certify = cell.certified or c.certify_main
    return self.train_fields(cell) | {
      "cert": ([c.delta, list(c.sigma_grid), c.mc_chunk_size, c.sigma_subset, c.test_draws]
               if certify else None),
      "test_weight_power": c.test_weight_power, "hard_test_power": c.hard_test_power,
    }

  def cell_data(self, cell: Cell) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """S of a cell (the first n rows of its pool) as arrays, and its rows' op counts."""
    pool = self.data.pools[(cell.arm, cell.bucket, cell.seed)]
    difficulty = self.data.difficulty[(cell.arm, cell.bucket, cell.seed)][:cell.n]
    return studydata.arrays(pool.subset(np.arange(cell.n))), difficulty

  def train_val_rows(self, cell: Cell) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """S of a cell split into the rows it trains on (the first n_train) and its validation
    part (the rest; empty without early stopping)."""
    data, _ = self.cell_data(cell)
    k = self.config.n_train(cell.n)
    return {f: v[:k] for f, v in data.items()}, {f: v[k:] for f, v in data.items()}

  def train_cell(self, cell: Cell) -> tuple[Any, dict[str, Any]]:
    """The fine-tuned weights of a cell (cached) and its training record: {"time_s",
    "final_loss", "stopped_at", "val_curve"}.

    With a validation part (`StudyConfig.ft_val_fraction`), the cell trains on the first
    n_train rows of S and keeps the snapshot with the lowest held-out token cross-entropy
    among step 0 (its base), the end of each epoch and the budget (`StudyConfig.check_steps`);
    ties go to the earlier snapshot. `val_curve` lists [step, score] pairs; without a
    validation part it is empty and `stopped_at` is the budget.
    """
    c = self.config
    # a certified-arm cell at the main budget reuses the main cell's checkpoint (the weights
    # do not depend on whether they are certified: `train_fields` has no such field)
    plain = dataclasses.replace(cell, certified=False)
    tag = f"{plain.tag}-{cache.config_hash(self.train_fields(cell))}"
    ckpt, info_path = self.path("cells", tag + ".npz"), self.path("cells", tag + ".train.json")
    prior = self.prior(cell)
    params = cache.load_params(ckpt, prior)
    info = cache.read_json(info_path, TRAIN_ENTRY)
    if params is not None and info is not None:
      return params, info
    train_rows, val_rows = self.train_val_rows(cell)
    checks = c.check_steps(cell.n, cell.steps)
    best = {"step": 0, "params": prior, "score": float("inf")}
    curve: list[list[float]] = []

    def score(step: int, params: Any) -> None:
      value = ev.mean_token_nll(self.nll_fn, params, val_rows, batch_size=c.eval_batch_size)
      curve.append([step, value])
      if value < best["score"]:
        best.update(step=step, params=params, score=value)

    if checks:
      score(0, prior)
    tcfg = tr.TrainConfig(steps=cell.steps, batch_size=c.ft_batch_size, learning_rate=c.ft_lr,
                          warmup_steps=min(c.ft_warmup, cell.steps - 1),
                          weight_decay=c.ft_weight_decay, method=METHODS[cell.method])
    res = tr.train(self.apply, prior, train_rows, tcfg, key=self.fkey(20, *cell.ids(c)),
                   progress=self.progress and cell.tag,
                   monitor=tr.Monitor(checks, score) if checks else None)
    chosen = best["params"] if checks else res.params
    info = {"time_s": res.time_s, "final_loss": float(np.mean(res.losses[-10:])),
            "stopped_at": best["step"] if checks else cell.steps, "val_curve": curve}
    cache.save_params(ckpt, chosen)
    cache.write_json(info_path, info)
    return chosen, info

  def train_fields(self, cell: Cell) -> dict[str, Any]:
    """What a cell's fine-tuned weights depend on (the cache key of its checkpoint)."""
    c = self.config
    return {
      "v": CACHE_VERSION, "base": self.base_fields(cell.base, c.base_replica(cell.seed)),
      "method": cell.method,
      "arm": cell.arm, "mixture": c.mixture(cell.arm, cell.bucket), "n": cell.n,
      "seed": cell.seed, "steps": cell.steps, "ids": list(cell.ids(c)),
      "ft": [c.ft_batch_size, c.ft_lr, c.ft_warmup, c.ft_weight_decay, c.ft_val_fraction],
      "test": [c.test_per_slice, list(c.test_ops)],
    }

  def prior(self, cell: Cell) -> Any:
    """The base replica a cell starts from (and its certificate's prior mean)."""
    return self.bases[cell.base][self.config.base_replica(cell.seed)]

  def run_cell(self, cell: Cell) -> dict[str, Any]:
    """Trains (or reads back) a cell, evaluates it, and certifies it if it is certified."""
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
    prior = self.prior(cell)
    t = time.perf_counter()
    cert = None
    if cell.certified or c.certify_main:
      test_mix = {k: p for k, p in c.test_mixture().items() if p > 0}
      plan = cell_plan(difficulty, train_mixture=c.mixture(cell.arm, cell.bucket),
                       test_mixture=test_mix, delta=c.delta, sigma_grid=c.sigma_grid,
                       chunk_size=c.mc_chunk_size, subset_size=c.sigma_subset,
                       batch_size=c.eval_batch_size)
      cert = certify_cell(self.seq_fn, prior, params, data, plan, key=self.fkey(30, *ids))
    # sigma_q is null when the certificate route skipped the search (no sigma certifies below
    # 0.99): there is no posterior to measure E_Q[R_test] under
    sigma_q = None if cert is None else cert["sigma_choice"]["sigma_q"]
    evaluation = self.evaluate(params, key=self.fkey(40, *ids), sigma=sigma_q)
    # on the rows it trained on (the rest chose its step)
    train_seq = ev.row_losses(self.seq_fn, params, self.train_val_rows(cell)[0],
                              batch_size=c.eval_batch_size)
    mix = c.mixture(cell.arm, cell.bucket)
    by = evaluation["seq_error_by_slice"]
    replica = c.base_replica(cell.seed)
    result = {
      "v": CACHE_VERSION, "arm": cell.arm, "base": cell.base, "method": cell.method,
      "bucket": cell.bucket, "n": cell.n, "seed": cell.seed, "ft_steps": cell.steps,
      "epochs": cell.steps * c.ft_batch_size / c.n_train(cell.n),
      "stopped_at": train_info["stopped_at"],
      "stopped_epochs": train_info["stopped_at"] * c.ft_batch_size / c.n_train(cell.n),
      "val_curve": train_info["val_curve"], "n_val": c.n_val(cell.n), "base_replica": replica,
      "certified_arm": cell.certified,
      **{k: v for k, v in evaluation.items()},
      **against_base(evaluation["items"]["correct"], self.base_items[cell.base][replica],
                     self.data.test.ops, [len(self.data.test.slices[k])
                                          for k in self.data.test.ops]),
      "in_bucket_seq_error": float(sum(p * by[str(k)] for k, p in mix.items())),
      "train_seq_error": float(train_seq.mean()),
      "sq_distance": (cert["sq_distance"] if cert is not None
                      else float(sq_distance(params, prior))),
      "train_time_s": train_info["time_s"],
      "final_train_loss": train_info["final_loss"],
      "eval_time_s": time.perf_counter() - t,
    }
    if cert is not None:
      result["certificate"] = cert
    cache.write_json(result_path, result)
    return result


def run_study(config: StudyConfig, out_dir: str | os.PathLike, *, progress: bool = True,
              workers: int = 0) -> dict[str, Any]:
  """Runs (or resumes) the whole study and writes ``out_dir/results.json`` (schema study/3).

  Steps: build the test slices and the bucket pools; pretrain `num_bases` replicas of the base
  (and of the stronger base if a cell needs it); fine-tune every cell of `grid_cells`
  (full-parameter AdamW, SFT or DFT, a fixed number of epochs); evaluate greedy answer
  correctness and sequence error item by item, and per-slice gains and forgetting against the
  cell's base replica; then the certified arm (`certified_cells`): the same cells at their
  main budget and shorter ones, each certified (prior: its base; loss: sequence error; B_train,
  TV, mixture-shift, weighted and per-slice kinds) with E_Q[R_test] measured under the
  certified posterior, the budget chosen by the subset bound.

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
    if info.get("unused"):
      return
    study.log(f"{which}: accuracy {info['accuracy']:.3f} {fmt_slices(info['accuracy_by_slice'])}")

  def on_cell(i: int, result: dict[str, Any]) -> None:
    done[i] = result
    cert = result.get("certificate")
    line = (f"[{len(done)}/{len(todo)}] {todo[i].tag}: acc {result['accuracy']:.3f} "
            f"{fmt_slices(result['accuracy_by_slice'])} ({result['train_time_s']:.0f}s)")
    if cert is not None:
      q = result.get("q_test_risk")
      line += (f" E_Q seq {'-' if q is None else f'{q:.3f}'} B_train {cert['b_train']:.3f} bound "
               f"{cert['bound']:.3f} ({cert['g_ext_name']})")
    study.log(line)
    bar.update(1)

  try:
    if workers == 0:
      for which in BASES:
        study.pretrain(which)
        on_base(which, study.base_info[which])
      for i, cell in enumerate(todo):
        on_cell(i, study.run_cell(cell))
    else:
      strong = (f"the stronger base ({config.strong_pretrain_steps} more), "
                if "strong" in study.needed else "")
      study.log(f"{workers} worker process(es): the base ({config.pretrain_steps} steps), "
                f"{strong}then {len(todo)} cells (cached ones are read back)")
      run_tasks(Study, config, out_dir, todo, workers=workers, on_base=on_base, on_cell=on_cell)
  finally:
    bar.close()
  cells = [done[i] for i in range(len(todo))]
  study.base_info = {which: study.base_info[which] for which in BASES
                     if not study.base_info[which].get("unused")}
  test = study.data.test
  results = {
    "schema": SCHEMA,
    "preset": config.name,
    "config": config.to_dict(),
    "tuned": config.tuned,
    "protocol": config.protocol(),
    "runtime_s": time.perf_counter() - start,
    # Seconds of each stage when it was computed (a resumed run keeps the cached stages' times).
    "timings_s": {"pretrain_s": sum(b["train_time_s"] or 0.0 for b in study.base_info.values()),
                  "fine_tune_s": sum(c["train_time_s"] for c in cells),
                  "evaluate_certify_s": sum(c["eval_time_s"] for c in cells)},
    "test_mixture": {str(k): p for k, p in test.mixture.items()},
    "test_mixtures": {name: {str(k): p for k, p in mix.items()}
                      for name, mix in config.test_mixtures().items()},
    "test_items": {"ops": test.ops, "counts": [len(test.slices[k]) for k in test.ops]},
    "arms": {arm: {"order": [b for b, _ in buckets],
                   "mixtures": {b: {str(k): p for k, p in config.mixture(arm, b).items()}
                                for b, _ in buckets}}
             for arm, buckets in config.arms},
    "sizes": list(config.sizes),
    "num_params": study.num_params,
    "fine_tune_space": "every weight (full-parameter AdamW)",
    "loss": "sequence_error (certificates); greedy answer correctness (accuracy)",
    "num_bases": config.num_bases,
    "bases": study.base_info,
    "cells": [c for c in cells if not c["certified_arm"]],
    "certified": certified_arm(cells),
  }
  results["power"] = _power(config, results, study)
  cache.write_json(os.path.join(out_dir, "results.json"), results)
  return results


def _power(config: StudyConfig, results: dict[str, Any], study: Study) -> dict[str, Any]:
  """The "power" block of results.json (`pacbayes.study.power.power_block` on this run's main
  arm, `config.power_reps` simulated studies; 0 skips it)."""
  if config.power_reps < 1:
    return {"skipped": "power_reps = 0"}
  t = time.perf_counter()
  block = power.power_block(study_view(results, arm=config.arms[0][0]), config.name,
                            power.PowerOptions(reps=config.power_reps, seed=config.seed))
  study.log(f"power block: {config.power_reps} simulated studies in "
            f"{time.perf_counter() - t:.0f}s")
  return block


def _progress_bar(total: int, enabled: bool):
  from tqdm.auto import tqdm

  return tqdm(total=total, desc="cells", unit="cell", disable=not enabled, dynamic_ncols=True)
