"""Hand-made lab results (schema pacbayes.lab/1) with known verdicts, for plot/theory tests."""

import copy

BUCKETS = {"easy": [1, 3], "medium": [4, 6], "hard": [7, 9]}
SIZES = [100, 400, 1600]


def make_results(acc, *, g_gen=None, g_ext=(0.6, 0.4, 0.2), strong_acc=None, dft_acc=None,
                 test_risk=0.3, bound=None):
  """acc[i][j]: SFT accuracy at SIZES[i], bucket j (easy->hard)."""
  names = list(BUCKETS)
  g_gen = g_gen or [[0.1 * (j + 1) / (i + 1) for j in range(3)] for i in range(3)]
  cells = []

  def cell(base, method, j, i, a):
    gg, ge = g_gen[i][j], g_ext[j]
    b = bound if bound is not None else 0.2 + gg + ge
    return {
        "base": base, "method": method, "bucket": names[j],
        "difficulty": sum(BUCKETS[names[j]]) / 2, "n": SIZES[i], "seed": 0,
        "accuracy": a, "accuracy_by_slice": {str(k): a for k in range(1, 10)},
        "test_risk": test_risk, "test_risk_point": test_risk,
        "certificate": {"emp_risk": 0.1, "epsilon": 0.1, "g_gen": gg, "g_ext": ge,
                        "g_ext_kind": "certified under difficulty shift", "bound": b,
                        "kl": 100.0 * (j + 1), "n": SIZES[i], "sigma_q": 0.01,
                        "sigma_p": 0.01},
        "train_time_s": 1.0,
    }

  for i in range(3):
    for j in range(3):
      cells.append(cell("base", "sft", j, i, acc[i][j]))
      if strong_acc is not None and strong_acc[i] is not None:
        cells.append(cell("strong", "sft", j, i, strong_acc[i][j]))
  if dft_acc is not None:
    for i, a in dft_acc.items():
      cells.append(cell("base", "dft", 2, i, a))
  slices = {str(k): 0.5 for k in range(1, 10)}
  return copy.deepcopy({
      "schema": "pacbayes.lab/1", "preset": "test", "config": {}, "runtime_s": 1.0,
      "test_mixture": {str(k): 1 / 9 for k in range(1, 10)}, "buckets": BUCKETS,
      "sizes": SIZES,
      "bases": {"base": {"pretrain_ops": [1, 4], "steps": 10, "accuracy": 0.5,
                         "accuracy_by_slice": slices, "test_risk": 0.4},
                "strong": {"pretrain_ops": [1, 6], "steps": 20, "accuracy": 0.6,
                           "accuracy_by_slice": slices, "test_risk": 0.3}},
      "cells": cells,
  })


# A study where every claim of the paper holds.
GOOD = dict(
    acc=[[0.50, 0.45, 0.30], [0.55, 0.60, 0.50], [0.58, 0.66, 0.68]],
    strong_acc=[None, [0.50, 0.60, 0.65], None],
    dft_acc={0: 0.40, 2: 0.60},
)
