"""Benchmark: tv_classifier vs scikit-learn LogisticRegression on a synthetic Gaussian shift.

Usage: python benchmarks/bench_shift.py [--rows 100000] [--dim 384] [--shift 1.0]

Both fit on the same fit split (features standardised on it) and are scored on the same
held-out split: time and held-out balanced accuracy, beside the Bayes classifier's.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from scipy import stats

import pacbayes  # noqa: F401  (float64 defaults, as in the library)
from pacbayes.shift.report import tv_classifier


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", type=int, default=100_000, help="rows in all (half a side)")
  parser.add_argument("--dim", type=int, default=384)
  parser.add_argument("--shift", type=float, default=1.0, help="Mahalanobis mean shift")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  rng = np.random.default_rng(args.seed)
  n = args.rows // 2
  mu = rng.standard_normal(args.dim)
  mu *= args.shift / np.linalg.norm(mu)
  x_train = rng.standard_normal((n, args.dim), dtype=np.float32)
  x_test = rng.standard_normal((n, args.dim), dtype=np.float32) + mu[None, :].astype(np.float32)
  true_tv = 2 * stats.norm.cdf(args.shift / 2) - 1

  rows = []
  for label in ("tv_classifier logistic (cold: compile)", "tv_classifier logistic (warm)"):
    t0 = time.perf_counter()
    res = tv_classifier(x_train, x_test, 0.05, args.seed)
    rows.append((label, time.perf_counter() - t0, res.balanced_accuracy,
                 f"est {res.estimate:.4f} lower {res.lower:.4f} plugin {res.plugin_tv:.4f}"))

  fit0 = np.setdiff1d(np.arange(n), res.heldout_train)
  fit1 = np.setdiff1d(np.arange(n), res.heldout_test)
  h0, h1 = x_train[res.heldout_train], x_test[res.heldout_test]

  w = mu / np.dot(mu, mu)  # Bayes rule: project on mu, threshold at the midpoint 1/2.
  bayes_ba = 0.5 * (np.mean(h1 @ w > 0.5) + np.mean(h0 @ w <= 0.5))
  rows.append(("Bayes classifier (same held-out)", float("nan"), bayes_ba, ""))

  try:
    from sklearn.linear_model import LogisticRegression
  except ImportError:
    LogisticRegression = None
  if LogisticRegression is not None:
    xf = np.concatenate([x_train[fit0], x_test[fit1]])
    yf = np.concatenate([np.zeros(len(fit0)), np.ones(len(fit1))])
    t0 = time.perf_counter()
    mean, std = xf.mean(axis=0), xf.std(axis=0)
    # C matched to l2 = 1e-4 on a class-balanced mean loss: C = 1 / (l2 * n_fit).
    clf = LogisticRegression(C=1.0 / (1e-4 * len(yf)), class_weight="balanced", max_iter=1000)
    clf.fit((xf - mean) / std, yf)
    elapsed = time.perf_counter() - t0
    p0 = clf.predict((h0 - mean) / std)
    p1 = clf.predict((h1 - mean) / std)
    ba = 0.5 * (np.mean(p1 == 1) + np.mean(p0 == 0))
    rows.append(("sklearn LogisticRegression (lbfgs)", elapsed, ba, f"est {2 * ba - 1:.4f}"))

  print(f"Gaussian mean shift: {2 * n} rows x {args.dim} features, Mahalanobis shift "
        f"{args.shift}, true TV {true_tv:.4f}, Bayes BA {(1 + true_tv) / 2:.4f}")
  print(f"{'method':<42} {'seconds':>8} {'held-out BA':>12}  notes")
  for label, secs, ba, note in rows:
    shown = "-" if math.isnan(secs) else f"{secs:.2f}"
    print(f"{label:<42} {shown:>8} {ba:>12.4f}  {note}")


if __name__ == "__main__":
  main()
