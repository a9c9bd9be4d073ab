"""The blocks an online `pacbayes select` adds to a selection: source, cost and measures.

None of these numbers is certified (docs/THEORY.md §9). The cost compares the pilots'
training tokens (measured: real tokens of every processed row, prompt included) with one run
per bucket at the budget N under the same protocol, estimated as

  tokens_at_N(k) = steps(N) x batch_size x (tokens per processed row of bucket k's pilots).

The measures are the two gaps' uncertified proxies: G_gen as ``||w - w_base||^2`` per pilot
(mean over seeds), G_ext as TV(difficulty of the bucket's training rows, difficulty of the
target) = 1/2 sum_d |p_bucket(d) - p_target(d)|.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pacbayes.pipeline.measures import MEASURE
from pacbayes.select import pool as pl
from pacbayes.select.pilot_eval import RISKS

BUCKET_RULES = {
  "thirds": "the thirds of the pool's difficulty by quantiles (pacbayes.data.difficulty."
            "bucket_by_quantiles; rows tied at a threshold go to the lower third), each "
            "bucket the closed range of its rows' difficulties",
  "ranges": "the closed difficulty ranges of --buckets",
}
SAMPLE_RULE = ("seed s of bucket k trains on the first n rows of block s (max(sizes) rows) of "
               "numpy.random.default_rng([sample_seed, 0x50494C54, k]).permutation(the "
               "bucket's pool rows, held-out rows excluded): disjoint across seeds, nested "
               "across sizes")


def bucket_rows(plan: Any, k: int) -> np.ndarray:
  """Pool row indices of bucket k that a pilot may train on (held-out rows excluded)."""
  held = (np.concatenate(list(plan.heldout.values())) if plan.heldout
          else np.zeros(0, np.int64))
  mask = plan.buckets[k].contains(plan.pool.difficulty_R)
  mask[held] = False
  return np.flatnonzero(mask)


def _keyed(dist: dict[float, float]) -> dict[str, float]:
  return {f"{d:g}": float(p) for d, p in sorted(dist.items())}


def target_distribution(plan: Any, target: Any) -> dict[float, float] | None:
  """The target's distribution over difficulty (the mixture, or the test rows' own), or None
  when the test rows carry no difficulty."""
  if plan.mixture is not None:
    return dict(plan.mixture)
  return None if target.difficulty_I is None else pl.histogram(target.difficulty_I)


def source_block(query: Any, protocol: Any, plan: Any, target: Any, rank: int | None,
                 num_params: int) -> dict[str, Any]:
  """What was selected from: the base, the pool, the buckets, the target and the protocol."""
  buckets = []
  for k, b in enumerate(plan.buckets):
    rows = bucket_rows(plan, k)
    buckets.append({"name": b.name, "difficulty": [b.lo, b.hi], "pool_rows": int(rows.size),
                    "difficulty_distribution": _keyed(pl.histogram(
                        plan.pool.difficulty_R[rows]))})
  protocol_block = {
    "rule": "steps(n) = max(min_steps, ceil(epochs * n / batch_size)): a fixed number of "
            "epochs per pilot, the same rule for every bucket, size and seed",
    "epochs": protocol.epochs, "min_steps": protocol.min_steps,
    "batch_size": protocol.batch_size, "learning_rate": protocol.learning_rate,
    "method": protocol.method, "kind": "full" if rank is None else "lora",
    "lora_rank": rank, "lora_alpha": protocol.lora_alpha if rank else None,
    "lora_targets": list(protocol.lora_targets) if rank and protocol.lora_targets else None,
    "max_length": protocol.max_length, "dtype": protocol.dtype,
    "steps": {str(n): protocol.steps(n) for n in plan.sizes},
    "steps_at_budget": protocol.steps(query.budget),
    "finetune_seed": "the pilot's seed index (batch order and LoRA initialisation)"}
  out = {"mode": "online", "model": query.model, "base_parameters": int(num_params),
         "train": query.train, "test": query.test,
         "test_mixture": None if plan.mixture is None else _keyed(plan.mixture),
         "target": {"source": target.source, "items": int(target.weights_I.size),
                    "truncated": target.num_truncated,
                    "weights": ("1/I per test row" if plan.mixture is None else
                                "p(d) / (held-out rows of d): the plug-in mixture of "
                                "per-slice risks"),
                    "difficulty_distribution": (None if target_distribution(plan, target)
                                                is None else _keyed(target_distribution(
                                                    plan, target)))},
         "buckets": buckets, "bucket_rule": BUCKET_RULES["ranges" if query.buckets else
                                                         "thirds"],
         "pilot_sizes": list(plan.sizes),
         "pilot_fractions": None if query.pilot_sizes else list(query.pilot_fractions),
         "seeds": query.seeds, "sample_seed": query.sample_seed, "sample_rule": SAMPLE_RULE,
         "risk": RISKS[query.risk], "protocol": protocol_block}
  if plan.mixture is not None:
    out["heldout"] = {"rows_per_difficulty": query.heldout_rows, "lines": {
        f"{d:g}": [int(plan.pool.lines[i]) for i in idx] for d, idx in plan.heldout.items()}}
  return out


def cost_block(records: Sequence[dict[str, Any]], plan: Any, protocol: Any, budget: int
               ) -> dict[str, Any]:
  """Training tokens and rows of the pilots against one run per bucket at the budget."""
  names = [b.name for b in plan.buckets]
  steps_n = protocol.steps(budget)
  per_bucket = {}
  for name in names:
    mine = [r for r in records if r["bucket"] == name]
    per_row = sum(r["tokens"] for r in mine) / max(sum(r["processed_rows"] for r in mine), 1)
    per_bucket[name] = {"pilot_tokens": int(sum(r["tokens"] for r in mine)),
                        "tokens_per_processed_row": per_row,
                        "at_budget_tokens_estimated": int(round(
                            steps_n * protocol.batch_size * per_row))}
  pilot_tokens = int(sum(r["tokens"] for r in records))
  every = int(sum(v["at_budget_tokens_estimated"] for v in per_bucket.values()))
  pilot_rows = int(sum(r["n"] for r in records))
  out = {"definitions": {
           "tokens": "real tokens of every processed row (prompt included), summed over "
                     "optimiser steps; pilots: measured by the fine-tunes",
           "every_bucket_at_budget": "one run (one seed) per bucket at N under the same "
                                     "protocol; its tokens estimated from the pilots' tokens "
                                     "per processed row"},
         "pilot_runs": len(records), "pilot_rows": pilot_rows, "pilot_tokens": pilot_tokens,
         "pilot_train_s": float(sum(r["train_time_s"] for r in records)),
         "every_bucket_at_budget_runs": len(names),
         "every_bucket_at_budget_rows": int(len(names) * budget),
         "every_bucket_at_budget_steps": int(steps_n),
         "every_bucket_at_budget_tokens_estimated": every,
         "tokens_ratio": pilot_tokens / max(every, 1),
         "rows_ratio": pilot_rows / (len(names) * budget), "by_bucket": per_bucket}
  text = (f"the pilots ({len(records)} runs; {pilot_rows} rows, {pilot_tokens} training "
          f"tokens) cost {out['tokens_ratio']:.2f}x the training tokens (estimated) and "
          f"{out['rows_ratio']:.2f}x the rows of training each of the {len(names)} buckets "
          f"once at N={budget} ({every} tokens, {steps_n} steps each)")
  if out["tokens_ratio"] >= 1:
    text += "; they save no compute here"
  out["statement"] = text
  return out


def measures_block(records: Sequence[dict[str, Any]], plan: Any, target: Any
                   ) -> dict[str, Any]:
  """The uncertified G_gen and G_ext measures of every bucket."""
  dist = target_distribution(plan, target)
  g_gen, g_ext = {}, {}
  for k, b in enumerate(plan.buckets):
    g_gen[b.name] = {str(n): float(np.mean([r["g_gen_weight_sq_distance"] for r in records
                                            if r["bucket"] == b.name and r["n"] == n]))
                     for n in plan.sizes}
    own = pl.histogram(plan.pool.difficulty_R[bucket_rows(plan, k)])
    g_ext[b.name] = None if dist is None else pl.tv_difficulty(own, dist)
  return {"kind": MEASURE,
          "g_gen_weight_sq_distance": {
            "definition": "||w - w_base||^2 over every parameter of a pilot (LoRA: the merged "
                          "weights), mean over seeds; a proxy of G_gen's KL at a fixed prior "
                          "scale, not a bound", "by_bucket": g_gen},
          "g_ext_tv_difficulty": {
            "definition": "TV(difficulty of the bucket's pool rows, difficulty of the "
                          "target) = 1/2 sum_d |p_bucket(d) - p_target(d)|; None when the "
                          "test rows carry no difficulty", "by_bucket": g_ext}}
