"""Online `pacbayes select`: fine-tune pilots per difficulty bucket, then predict at N.

For every candidate bucket (`pacbayes.select.pool`), pilot size n (default N/16, N/8, N/4)
and seed, a pilot fine-tunes the base (`pacbayes.training.finetune.finetune`; LoRA by default
when the base has more than `AUTO_LORA_PARAMS` parameters, full otherwise) on n rows of the
bucket under a fixed-epochs protocol (the study's, `pacbayes.study.config`):

  steps(n) = max(min_steps, ceil(epochs * n / batch_size)),

the same rule for every bucket, size and seed, so pilots differ only in their data. Each
pilot's risk is measured on the target items (`pacbayes.select.pilot_eval`): the rows of a
test file (weight 1/I each), or, with a test mixture p over difficulty, held-out pool rows
of each difficulty that no pilot trains on (item weight p(d) / items of d: the plug-in
mixture sum_d p(d) R_d of per-slice risks). The per-item losses form `Pilots`, and
`pacbayes.select.predict.select_bucket` fits each bucket's curve and predicts at N.

Also reported, none certified (docs/THEORY.md §9): the base's risk on the target; per pilot
``||w - w_base||^2`` (the G_gen proxy) and per bucket the TV between its difficulty
distribution and the target's (the G_ext measure), labelled "measure (uncertified)"; the
cost in training tokens of the pilots against one run per bucket at N (estimated from the
pilots' tokens per processed row). Pilots live in a work folder (``work``: kept, and a rerun
with the same settings reuses every finished pilot; else a temporary folder, removed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from pacbayes.select import pool as pl
from pacbayes.select.online_report import cost_block, measures_block, source_block
from pacbayes.select.pilot_eval import RISKS, Evaluator, compilation_cache, make_target, tokenise
from pacbayes.select.predict import DEFAULT_OPTIONS, NUMBERS, Pilots, SelectOptions, select_bucket

AUTO_LORA_PARAMS = 10_000_000  # above this many parameters the default pilot is a LoRA
AUTO_LORA_RANK = 8
RECORD = "pilot.json"
RECORD_VERSION = "pacbayes.select.pilot/1"


@dataclasses.dataclass(frozen=True)
class PilotProtocol:
  """How every pilot is fine-tuned: a fixed number of epochs per run.

  Attributes:
    epochs: passes over the pilot's rows (steps(n) = max(min_steps, ceil(epochs n / batch))).
    min_steps: the fewest optimiser steps of a pilot (small n would otherwise barely move).
    batch_size: rows per optimiser step.
    learning_rate: peak learning rate (AdamW, warmup and cosine decay of `pacbayes finetune`).
    method: "sft" or "dft".
    lora_rank: LoRA rank; None: LoRA of rank AUTO_LORA_RANK when the base is large (more than
      AUTO_LORA_PARAMS parameters) or LoRA settings are given, else full, unless `full`.
    full: fine-tune every weight whatever the base's size.
    lora_alpha, lora_targets: as `pacbayes finetune` (defaults 2 r; q and v projections).
    max_length: truncate training and target rows to this many tokens.
    dtype: model dtype ("float32", "bfloat16"; None: the checkpoint's).
    mesh: "data=D,fsdp=F" for the pilots' fine-tunes (None: `pacbayes finetune`'s default).
  """

  epochs: float = 3.0
  min_steps: int = 20
  batch_size: int = 32
  learning_rate: float = 1e-3
  method: str = "sft"
  lora_rank: int | None = None
  full: bool = False
  lora_alpha: float | None = None
  lora_targets: tuple[str, ...] | None = None
  max_length: int | None = None
  dtype: str | None = None
  mesh: str | None = None

  def __post_init__(self):
    if not (0 < self.epochs < math.inf) or self.min_steps < 1:
      raise ValueError(f"--epochs must be > 0 and --min-steps >= 1, got {self.epochs}, "
                       f"{self.min_steps}")
    if self.full and self.lora_rank is not None:
      raise ValueError("--full and --lora-rank: give one of them")

  def steps(self, n: int) -> int:
    """Optimiser steps of a pilot of n rows."""
    return max(self.min_steps, math.ceil(self.epochs * n / self.batch_size - 1e-9))

  def rank(self, num_params: int) -> int | None:
    """The LoRA rank of the pilots (None: full fine-tunes) for a base of `num_params`."""
    if self.full:
      return None
    if self.lora_rank is not None:
      return self.lora_rank
    if self.lora_alpha is not None or self.lora_targets is not None:
      return AUTO_LORA_RANK  # LoRA settings without a rank ask for LoRA pilots
    return AUTO_LORA_RANK if num_params > AUTO_LORA_PARAMS else None


@dataclasses.dataclass(frozen=True)
class OnlineQuery:
  """What to select and from which pilots.

  Attributes:
    model: base Hugging Face folder.
    train: the pool (JSONL; every row with a `difficulty`).
    budget: N, rows of the final run.
    test: a test JSONL (the target), or None with `test_mixture`.
    test_mixture: difficulty -> probability over the pool's difficulties (estimated on
      held-out pool rows), or None with `test`.
    buckets: difficulty ranges ("LO-HI"), or None: the thirds of the pool.
    pilot_fractions: pilot sizes as fractions of N (used when `pilot_sizes` is None).
    pilot_sizes: pilot sizes in rows.
    seeds: pilots per (bucket, size); seed labels 0..seeds-1.
    heldout_rows: held-out pool rows per difficulty with mass (test mixture only).
    risk: a key of `pacbayes.select.pilot_eval.RISKS`.
    sample_seed: seed of the held-out rows and the pilots' samples.
    work: folder of the pilots (kept; finished pilots reused), or None (temporary).
    eval_batch_size: target items per evaluation batch.
    progress: show one progress bar over all pilot runs.
  """

  model: str
  train: str
  budget: int
  test: str | None = None
  test_mixture: Mapping[float, float] | None = None
  buckets: tuple[str, ...] | None = None
  pilot_fractions: tuple[float, ...] = (1 / 16, 1 / 8, 1 / 4)
  pilot_sizes: tuple[int, ...] | None = None
  seeds: int = 2
  heldout_rows: int = 64
  risk: str = "seq_error"
  sample_seed: int = 0
  work: str | None = None
  eval_batch_size: int = 32
  progress: bool = True

  def __post_init__(self):
    if (self.test is None) == (self.test_mixture is None):
      raise ValueError("give one target: --test FILE or --test-mixture D:P,...")
    if self.risk not in RISKS:
      raise ValueError(f"--risk: the online mode measures one of {sorted(RISKS)}, got "
                       f"{self.risk!r}")
    if self.seeds < 1 or self.heldout_rows < 1:
      raise ValueError("--seeds and --heldout-rows must be >= 1")


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
  """Everything decided before any model is touched (all refusals happen here).

  Attributes:
    pool: the pool. buckets: [K]. sizes: [P] pilot sizes, ascending.
    samples: (bucket index, seed) -> [max(sizes)] pool row indices (`pool.pilot_samples`).
    mixture: the checked test mixture, or None. heldout: difficulty -> pool row indices.
    test_rows, test_lines: the test file's rows, or None.
  """

  pool: pl.Pool
  buckets: list[pl.Bucket]
  sizes: tuple[int, ...]
  samples: dict[tuple[int, int], np.ndarray]
  mixture: dict[float, float] | None
  heldout: dict[float, np.ndarray]
  test_rows: list[dict[str, Any]] | None
  test_lines: list[int] | None


def plan_online(query: OnlineQuery, protocol: PilotProtocol) -> Plan:
  """Reads and checks the pool, the target, the buckets and the pilot sizes; writes nothing.

  Raises:
    ValueError (DataError): one line naming the flag, file or row: a pool row without
      difficulty, a bucket without rows or with too few for max(sizes) x seeds, a budget not
      above the pilots, a test mixture with mass outside the pool's difficulties, too few
      rows to hold out, a malformed test file, bad fine-tuning flags.
  """
  from pacbayes.data.jsonl import read_jsonl_with_lines
  from pacbayes.training.finetune import FinetuneConfig

  # Bad fine-tuning flags are refused by the fine-tune's own checks, naming the flag.
  rank = None if protocol.full else (protocol.lora_rank or AUTO_LORA_RANK)
  FinetuneConfig(model=query.model, train=query.train, out="-", method=protocol.method,
                 lora_rank=rank, lora_alpha=protocol.lora_alpha,
                 lora_targets=protocol.lora_targets, batch_size=protocol.batch_size,
                 learning_rate=protocol.learning_rate, max_length=protocol.max_length,
                 dtype=protocol.dtype, mesh=protocol.mesh, steps=1, progress=False)
  sizes = pl.pilot_sizes(query.budget, query.pilot_fractions, query.pilot_sizes)
  pool = pl.read_pool(query.train)
  buckets = (pl.parse_buckets(query.buckets) if query.buckets is not None
             else pl.default_buckets(pool))
  for b in buckets:
    if not b.contains(pool.difficulty_R).any():
      raise ValueError(f"--buckets {b.name}: no row of --train {pool.path} has a difficulty in "
                       f"[{b.lo:g}, {b.hi:g}] (pool: {pool.values})")
  mixture, heldout, test_rows, test_lines = None, {}, None, None
  if query.test_mixture is not None:
    mixture = pl.check_mixture(pool, query.test_mixture)
    heldout = pl.heldout_rows(pool, mixture, query.heldout_rows, query.sample_seed)
  else:
    test_rows, test_lines = read_jsonl_with_lines(query.test)
  excluded = (np.concatenate(list(heldout.values())) if heldout
              else np.zeros(0, np.int64))
  samples = pl.pilot_samples(pool, buckets, sizes, query.seeds, excluded, query.sample_seed)
  return Plan(pool, buckets, sizes, samples, mixture, heldout, test_rows, test_lines)


def _target(query: OnlineQuery, plan: Plan, evaluator: Evaluator, max_length: int | None):
  if plan.test_rows is not None:
    data = tokenise(plan.test_rows, plan.test_lines, source=query.test,
                    base_dir=query.model, config=evaluator.config, max_length=max_length)
    return make_target(data, np.full(len(data), 1.0 / len(data)))
  idx = np.concatenate([plan.heldout[d] for d in sorted(plan.heldout)])
  data = tokenise([plan.pool.rows[i] for i in idx], [plan.pool.lines[i] for i in idx],
                  source=plan.pool.path, base_dir=query.model, config=evaluator.config,
                  max_length=max_length)
  d = plan.pool.difficulty_R[idx]
  counts = {v: int((d == v).sum()) for v in plan.mixture}
  return make_target(data, np.array([plan.mixture[v] / counts[v] for v in d]))


def _digest(*parts: Any) -> str:
  h = hashlib.sha256()
  for part in parts:
    h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True).encode())
    h.update(b"\0")
  return "sha256:" + h.hexdigest()


@dataclasses.dataclass
class _Context:
  query: OnlineQuery
  protocol: PilotProtocol
  plan: Plan
  evaluator: Evaluator
  target: Any
  rank: int | None
  work: str
  identity: str  # digest of everything every pilot shares (base, pool, target, protocol)


def _pilot_dir(ctx: _Context, k: int, n: int, s: int) -> str:
  name = re.sub(r"[^A-Za-z0-9._-]", "_", ctx.plan.buckets[k].name)
  return os.path.join(ctx.work, "pilots", f"{k}-{name}", f"n{n}-s{s}")


def run_pilot(ctx: _Context, k: int, n: int, s: int) -> tuple[dict[str, Any], np.ndarray]:
  """Fine-tunes (or reuses) one pilot and measures it; returns its record and [I] losses."""
  from pacbayes.core.atomic import write_text
  from pacbayes.training.finetune import FinetuneConfig, finetune

  rows = ctx.plan.samples[(k, s)][:n]
  pool, p = ctx.plan.pool, ctx.protocol
  folder = _pilot_dir(ctx, k, n, s)
  lines = [int(pool.lines[i]) for i in rows]
  key = _digest(RECORD_VERSION, ctx.identity, ctx.plan.buckets[k].name, n, s, lines)
  record_file = os.path.join(folder, RECORD)
  if os.path.isfile(record_file):
    with open(record_file) as f:
      old = json.load(f)
    if old.get("key") == key:
      return {**old["record"], "reused": True}, np.asarray(old["losses"], np.float64)
  shutil.rmtree(folder, ignore_errors=True)  # another configuration's pilot, or unfinished
  os.makedirs(folder)
  train = os.path.join(folder, "train.jsonl")
  write_text(train, "".join(json.dumps(pool.rows[i]) + "\n" for i in rows))
  run = os.path.join(folder, "run")
  steps = p.steps(n)
  cfg = FinetuneConfig(model=ctx.query.model, train=train, out=run, method=p.method,
                       lora_rank=ctx.rank, lora_alpha=p.lora_alpha if ctx.rank else None,
                       lora_targets=p.lora_targets if ctx.rank else None, steps=steps,
                       learning_rate=p.learning_rate, batch_size=p.batch_size,
                       max_length=p.max_length, dtype=p.dtype, mesh=p.mesh, seed=s,
                       progress=False)
  result = finetune(cfg)
  with open(os.path.join(run, "finetune.json")) as f:
    report = json.load(f)
  t = time.perf_counter()
  params = ctx.evaluator.pilot_params(run, lora=ctx.rank is not None)
  losses = ctx.evaluator.losses(params, ctx.target)
  g_gen = ctx.evaluator.sq_distance(params)
  eval_s = time.perf_counter() - t
  if ctx.rank is None:  # a full pilot's weights are not needed again: keep its report only
    for name in os.listdir(run):
      if name.endswith(".safetensors") or name.endswith(".safetensors.index.json"):
        os.remove(os.path.join(run, name))
  record = {"bucket": ctx.plan.buckets[k].name, "n": int(n), "seed": int(s),
            "pool_lines_sha256": _digest(lines), "steps": int(steps),
            "processed_rows": int(steps * p.batch_size), "tokens": int(report["tokens"]),
            "train_time_s": float(result.time_s), "eval_time_s": eval_s,
            "loss_first": float(report["loss_first"]), "loss_last": float(report["loss_last"]),
            "risk": float(losses @ ctx.target.weights_I),
            "g_gen_weight_sq_distance": g_gen, "truncated_rows": int(report["num_truncated"])}
  write_text(record_file, json.dumps({"key": key, "record": record,
                                      "losses": losses.tolist()}) + "\n")
  return {**record, "reused": False}, losses


def select_online(query: OnlineQuery, protocol: PilotProtocol,
                  options: SelectOptions = DEFAULT_OPTIONS, *, plan: Plan | None = None,
                  say: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs the pilots and the selection; returns the JSON-ready selection (see
  `select_bucket`) with "source", "pilot_runs", "base_risk", "cost", "measures", "timings".

  Raises:
    ValueError: as `plan_online`, or from the fine-tunes (naming the flag or file).
  """
  from pacbayes.models.checkpoint import folder_fingerprint
  from pacbayes.training.ftio import sha256_file

  start = time.perf_counter()
  plan = plan or plan_online(query, protocol)
  say(f"loading the base {query.model} ...")
  evaluator = Evaluator(query.model, dtype=protocol.dtype, loss=query.risk,
                        batch_size=query.eval_batch_size)
  rank = protocol.rank(evaluator.num_params)
  target = _target(query, plan, evaluator, protocol.max_length)
  identity = _digest(RECORD_VERSION, folder_fingerprint(query.model), sha256_file(query.train),
                     dataclasses.asdict(protocol), rank, query.risk,
                     target.arrays["input_ids"].tobytes(), target.arrays["loss_mask"].tobytes(),
                     target.weights_I.tobytes())
  if plan.test_rows is not None:
    shared = _shared_rows(plan)
    if shared:
      say(f"note: {shared} rows of --test {query.test} also occur in --train {query.train}; a "
          "pilot that trains on them is measured on rows it has seen")
  temporary = query.work is None
  work = tempfile.mkdtemp(prefix="pacbayes-select-") if temporary else query.work
  os.makedirs(work, exist_ok=True)
  ctx = _Context(query, protocol, plan, evaluator, target, rank, work, identity)
  k_, p_, s_ = len(plan.buckets), len(plan.sizes), query.seeds
  loss = np.full((k_, p_, s_, len(target.weights_I)), np.nan)
  records = []
  say(f"{k_ * p_ * s_} pilots ({k_} buckets x {p_} sizes {list(plan.sizes)} x {s_} seeds), "
      f"{'LoRA rank ' + str(rank) if rank else 'full'} fine-tunes of {protocol.epochs:g} "
      f"epochs (at least {protocol.min_steps} steps); target: {target.source} "
      f"({len(target.weights_I)} items)")
  try:
    with compilation_cache(os.path.join(work, "jax-cache")):
      base_losses = evaluator.losses(evaluator.base_params, target)
      bar = _bar(k_ * p_ * s_, query.progress)
      try:
        for k in range(k_):
          for p, n in enumerate(plan.sizes):
            for s in range(s_):
              bar.set_postfix_str(f"{plan.buckets[k].name} n={n} seed={s}")
              record, loss[k, p, s] = run_pilot(ctx, k, n, s)
              records.append(record)
              bar.update(1)
      finally:
        bar.close()
  finally:
    if temporary:
      shutil.rmtree(work, ignore_errors=True)
  pilots = Pilots(buckets=tuple(b.name for b in plan.buckets), sizes=plan.sizes,
                  loss_KxPxSxI=loss, item_weights_I=target.weights_I,
                  item_strata_I=target.strata_I, seeds=tuple(range(s_)))
  out = select_bucket(pilots, query.budget, options)
  out["source"] = source_block(query, protocol, plan, target, rank, evaluator.num_params)
  out["source"]["protocol"]["kind_rule"] = (
      f"LoRA of rank {AUTO_LORA_RANK} when the base has more than {AUTO_LORA_PARAMS:,} "
      "parameters, else full, unless --lora-rank or --full")
  out["pilot_runs"] = records
  out["base_risk"] = float(base_losses @ target.weights_I)
  out["cost"] = cost_block(records, plan, protocol, query.budget)
  out["measures"] = measures_block(records, plan, target)
  out["timings"] = {"total_s": time.perf_counter() - start,
                    "pilot_train_s": float(sum(r["train_time_s"] for r in records
                                               if not r["reused"])),
                    "pilot_eval_s": float(sum(r["eval_time_s"] for r in records
                                              if not r["reused"])),
                    "reused_pilots": int(sum(r["reused"] for r in records))}
  out["numbers"] = {**NUMBERS, "measured": NUMBERS["measured"] + "; base_risk, pilot_runs "
                    "(risk, losses, tokens, times) and measures: measured on the rows named",
                    "measures": "measures.*: uncertified measures of the two gaps (no "
                    "probability statement)",
                    "cost": "cost.pilot_*: measured; cost.every_bucket_at_budget_tokens: "
                    "estimated (steps at N x batch x the pilots' tokens per processed row)"}
  return out


def _shared_rows(plan: Plan) -> int:
  """How many test rows are byte-identical (as sorted JSON) to a pool row."""
  pool = {json.dumps(r, sort_keys=True) for r in plan.pool.rows}
  return sum(json.dumps(r, sort_keys=True) in pool for r in plan.test_rows or ())


def _bar(total: int, enabled: bool):
  from tqdm.auto import tqdm

  return tqdm(total=total, desc="pilots", unit="run", disable=not enabled, dynamic_ncols=True)
