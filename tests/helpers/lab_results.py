"""Hand-made lab results (schema pacbayes.lab/2) with per-item values, for plot/theory tests."""

import copy

import numpy as np

from pacbayes.study.stats import encode_u8

OPS = [1, 2, 3, 4]
PER_SLICE = 200
SIZES = [200, 800, 3200]
BUCKETS = ["easy", "medium", "hard"]
MIXTURES = {"easy": [8, 4, 2, 1], "medium": [1, 1, 1, 1], "hard": [1, 2, 4, 8]}


def _items(acc, rng, shared):
  """Per-item 0/1 with mean close to acc: items below acc on a shared scale are right."""
  n = len(OPS) * PER_SLICE
  v = np.where(rng.random(n) < 0.5, shared, rng.random(n))
  return (v < acc).astype(np.uint8)


def make_results(acc, *, strong_acc=None, dft_acc=None, seeds=(0, 1), bound=None,
                 sq_distance=None, gap=None, seed=0):
  """acc[i][j]: SFT accuracy at SIZES[i], bucket j (easy -> hard); items drawn to match.

  strong_acc: {i: [3 accuracies]}; dft_acc: {i: accuracy on the hard bucket};
  sq_distance / gap: f(bucket index, size index) -> value (defaults rise with difficulty,
  fall with n); bound: a fixed bound (default: measured risk + 0.2).
  """
  rng = np.random.default_rng(seed)
  shared = rng.random(len(OPS) * PER_SLICE)
  sq_distance = sq_distance or (lambda j, i: 10.0 * (2.0 ** j) / (i + 1))
  gap = gap or (lambda j, i: 0.05 * (j + 1) / (i + 1))
  cells = []

  def cell(base, method, j, i, a, s):
    correct = _items(a, rng, shared)
    seq = 1 - correct
    risk = float(seq.mean())
    b = risk + 0.2 if bound is None else bound
    return {
      "arm": "tilted", "base": base, "method": method, "bucket": BUCKETS[j], "n": SIZES[i],
      "seed": s, "ft_steps": 10, "certified_arm": False,
      "accuracy": float(correct.mean()),
      "accuracy_by_slice": {str(k): float(correct[t * PER_SLICE:(t + 1) * PER_SLICE].mean())
                            for t, k in enumerate(OPS)},
      "q_test_risk": risk,
      "q_risk_by_slice": {str(k): float(seq[t * PER_SLICE:(t + 1) * PER_SLICE].mean())
                          for t, k in enumerate(OPS)},
      "test_seq_error": risk, "train_seq_error": max(risk - gap(j, i), 0.0),
      "sq_distance": sq_distance(j, i) * float(np.exp(rng.normal(0, 0.05))),
      "items": {"correct": encode_u8(correct), "seq_error": encode_u8(seq),
                "q_seq_error": encode_u8(seq), "q_draws": 1},
      "certificate": {"bound": b, "b_train": b - 0.1, "kl": 1.0, "g_ext_name": "mixture_shift",
                      "slices": [{"difficulty": float(k), "bound": 0.9} for k in OPS]},
    }

  for s in seeds:
    for i in range(len(SIZES)):
      for j in range(3):
        cells.append(cell("base", "sft", j, i, acc[i][j], s))
        if strong_acc is not None and i in strong_acc:
          cells.append(cell("strong", "sft", j, i, strong_acc[i][j], s))
    for i, a in (dft_acc or {}).items():
      cells.append(cell("base", "dft", 2, i, a, s))
  slices = {str(k): 0.5 for k in OPS}
  return copy.deepcopy({
    "schema": "pacbayes.lab/2", "preset": "test",
    "config": {"headroom_min": 0.1, "arms": [["tilted", []]]}, "runtime_s": 1.0,
    "test_mixture": {str(k): 0.25 for k in OPS},
    "test_items": {"ops": OPS, "counts": [PER_SLICE] * len(OPS)},
    "arms": {"tilted": {"order": BUCKETS, "mixtures": {
      b: {str(k): w / sum(ws) for k, w in zip(OPS, ws, strict=True)}
      for b, ws in MIXTURES.items()}}},
    "sizes": SIZES,
    "bases": {"base": {"pretrain_ops": [1, 2], "steps": 10, "accuracy": 0.5,
                       "accuracy_by_slice": slices, "test_seq_error": 0.6},
              "strong": {"pretrain_ops": [1, 3], "steps": 20, "accuracy": 0.6,
                         "accuracy_by_slice": slices, "test_seq_error": 0.5}},
    "cells": cells, "certified": [],
  })


# A study where the paper's claims hold by wide margins.
GOOD = dict(
  acc=[[0.60, 0.70, 0.45], [0.60, 0.75, 0.62], [0.55, 0.72, 0.85]],
  strong_acc={1: [0.45, 0.75, 0.85]},
  dft_acc={0: 0.60, 2: 0.70},
)
