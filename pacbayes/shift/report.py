"""The shift report over two JSONL files (TV certified over difficulty, or a classifier estimate)
and the importance-weighted risk gap.

The certified TV over a discrete feature is `pacbayes.shift.discrete` and the domain classifier
`pacbayes.shift.classifier`; `tv_discrete`, `weissman_epsilon`, `log_two_pow_k_minus_two`,
`tv_classifier` and `ShiftError` stay importable from here (older paths).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pacbayes.bounds.kinds import KIND_CERTIFIED, KIND_DIAGNOSTIC, KIND_ESTIMATE, KIND_LOWER
from pacbayes.data.rows import collect_difficulty
from pacbayes.shift.classifier import ClassifierOptions, ShiftError, check_delta, tv_classifier
from pacbayes.shift.discrete import log_two_pow_k_minus_two as log_two_pow_k_minus_two
from pacbayes.shift.discrete import tv_discrete
from pacbayes.shift.discrete import weissman_epsilon as weissman_epsilon
from pacbayes.shift.features import FeatureOptions, checkpoint_embeddings, hashed_ngrams, read_rows

__all__ = ["FEATURES", "GapEstimate", "format_shift_table", "importance_weighted_gap",
           "shift_report"]

# Importance-weighted risk gap.


@dataclasses.dataclass(frozen=True)
class GapEstimate:
  """`E_train[(r - 1) * loss]`, an estimate of R_test - R_train, and its standard error."""

  estimate: float
  stderr: float
  num: int
  kind: str = KIND_ESTIMATE


def importance_weighted_gap(ratio_train: Any, losses_train: Any) -> GapEstimate:
  """Estimates the train-to-test risk gap `E_train[(r(x) - 1) loss(x)]`.

  With `r = dD_test/dD_train`, `E_train[r loss] = E_test[loss]`, so the mean of
  `(r - 1) * loss` over training rows estimates `R_test - R_train`. The standard error is
  the sample standard deviation over sqrt(n); heavy-tailed ratios make it unreliable, so
  treat it as an estimate only. Use ratios from rows the classifier was not fit on.

  Args:
    ratio_train: density ratios r(x_i) on training rows, [n], finite and >= 0.
    losses_train: per-example losses on the same rows, [n], finite.

  Returns:
    A `GapEstimate`.

  Raises:
    ShiftError: empty, mismatched lengths, non-finite values or negative ratios.
  """
  r = np.asarray(ratio_train, dtype=np.float64).reshape(-1)
  loss = np.asarray(losses_train, dtype=np.float64).reshape(-1)
  if r.size == 0:
    raise ShiftError("ratio_train is empty")
  if r.shape != loss.shape:
    raise ShiftError(f"ratio_train has {r.size} values but losses_train has {loss.size}")
  if not np.all(np.isfinite(r)) or np.any(r < 0):
    raise ShiftError("ratio_train must be finite and >= 0")
  if not np.all(np.isfinite(loss)):
    raise ShiftError("losses_train must be finite")
  terms = (r - 1.0) * loss
  stderr = float(np.std(terms, ddof=1) / math.sqrt(r.size)) if r.size > 1 else math.inf
  return GapEstimate(estimate=float(np.mean(terms)), stderr=stderr, num=int(r.size))


# Report over two JSONL files.


def _entry(value: float | None, kind: str) -> dict[str, Any]:
  return {"value": value, "kind": kind}


FEATURES = ("difficulty", "ngram", "embedding")


def _classifier_part(x_train: np.ndarray, x_test: np.ndarray, what: str, *, train_path: str,
                     test_path: str, delta: float, seed: int,
                     classifier: ClassifierOptions | None) -> dict[str, Any]:
  """The report entries of a domain-classifier estimate over feature vectors."""
  try:
    res = tv_classifier(x_train, x_test, delta, seed, options=classifier)
  except ShiftError as e:
    raise ShiftError(f"{train_path} vs {test_path} ({what}): {e}") from None
  return {
      "tv": {
          "estimate": _entry(res.estimate, KIND_ESTIMATE),
          "upper": _entry(None, "none: no upper value without an assumption"),
          "lower": _entry(res.lower, KIND_LOWER),
          "plugin_tv": _entry(res.plugin_tv, KIND_DIAGNOSTIC),
      },
      "g_ext": res.estimate,
      "g_ext_kind": KIND_ESTIMATE,
      "assumption": ("none: a domain-classifier estimate of TV (general shift); no finite "
                     "sample upper-bounds TV without an assumption"),
      "seed": int(seed),
      "details": res.to_dict(),
  }


def shift_report(
    train_path: str,
    test_path: str,
    *,
    feature: str = "difficulty",
    delta: float = 0.05,
    seed: int = 0,
    model_dir: str | None = None,
    support: Sequence[float] | None = None,
    classifier: ClassifierOptions | None = None,
    features: FeatureOptions | None = None,
) -> dict[str, Any]:
  """TV between a train and a test JSONL file, as a JSON-serialisable report.

  `feature="difficulty"` uses the rows' `difficulty` field with `tv_discrete`; `g_ext` is the
  upper value, certified under difficulty shift. `feature="ngram"` (hashed n-gram vectors)
  and `feature="embedding"` (each row's mean final hidden state under the checkpoint in
  `model_dir`) use `tv_classifier`; `g_ext` is the classifier estimate, and the report says
  so. Every number carries its kind: "certified under difficulty shift (TV)", "estimate",
  "lower bound" or "diagnostic".

  Args:
    train_path: training-set JSONL.
    test_path: test-set JSONL.
    feature: "difficulty", "ngram" or "embedding".
    delta: failure probability for the bound(s).
    seed: seed for the classifier's split and training.
    model_dir: checkpoint folder for "embedding" (required there, refused elsewhere); its
      tokenizer files tokenise `text` rows.
    support: for "difficulty", every value the difficulty can take, fixed before seeing the
      data (e.g. the bucket labels). Weissman et al.'s deviation bound is stated for a fixed
      alphabet; without `support` the cells are the values seen plus one cell for the rest,
      which depends on the sample, and the report says so.
    classifier: the domain classifier for "ngram" and "embedding" (`ClassifierOptions`;
      default logistic regression).
    features: the n-gram dimension and the embedding pass's truncation and batch size
      (`FeatureOptions`).

  Returns:
    A dict with `feature`, `train`, `test` (path, n), `tv` (estimate / upper / lower /
    diagnostics, each `{"value", "kind"}`), `g_ext`, `g_ext_kind`, `delta`, and details.

  Raises:
    ValueError: (DataError / ShiftError / CheckpointError) unreadable files or checkpoint;
      a `difficulty` that is not a finite number, or given on some rows only, in either file
      and for every feature (naming file and line); no `difficulty` for "difficulty"; a
      `support` or `model_dir` that the feature does not use; empty or constant features.
  """
  opts = FeatureOptions() if features is None else features
  if feature not in FEATURES:
    raise ShiftError(f"feature must be one of {', '.join(map(repr, FEATURES))}, got "
                     f"{feature!r}")
  if feature == "embedding" and model_dir is None:
    raise ShiftError("feature='embedding' needs model_dir: a checkpoint folder whose mean "
                     "final hidden state embeds each row (--model DIR on the command line)")
  if feature != "embedding" and model_dir is not None:
    raise ShiftError(f"model_dir is used only with feature='embedding', got feature={feature!r}")
  if feature != "difficulty" and support is not None:
    raise ShiftError(f"support is used only with feature='difficulty', got feature={feature!r}")
  delta = check_delta(delta)
  rows_train, lines_train = read_rows(train_path)
  rows_test, lines_test = read_rows(test_path)
  # A bad `difficulty` is refused whatever the feature (one parser: rows.collect_difficulty).
  diffs = [collect_difficulty(rows, [f"{path}:{line}" for line in lines]) for rows, lines, path
           in ((rows_train, lines_train, train_path), (rows_test, lines_test, test_path))]
  report: dict[str, Any] = {
      "feature": feature,
      "train": {"path": str(train_path), "n": len(rows_train)},
      "test": {"path": str(test_path), "n": len(rows_test)},
      "delta": delta,
  }
  common = dict(train_path=train_path, test_path=test_path, delta=delta, seed=seed,
                classifier=classifier)
  if feature == "difficulty":
    for d, path in zip(diffs, (train_path, test_path), strict=True):
      if d is None:
        raise ShiftError(f"{path}: no row has a 'difficulty' field, which feature='difficulty'"
                         f"{' (and its support)' if support is not None else ''} needs; use "
                         "feature 'ngram' or 'embedding' for rows without it")
    res = tv_discrete(diffs[0].tolist(), diffs[1].tolist(), delta, support=support)
    report["support"] = (sorted(float(v) for v in support) if support is not None else
                         "chosen from the data: the values seen, plus one cell for the rest")
    report["tv"] = {
        "estimate": _entry(res.estimate, KIND_ESTIMATE),
        "upper": _entry(res.upper, KIND_CERTIFIED),
        "lower": _entry(res.lower, KIND_LOWER),
    }
    report["g_ext"] = res.upper
    report["g_ext_kind"] = KIND_CERTIFIED
    report["assumption"] = ("train and test come from one pool and differ only in the mixture "
                            "over difficulty, so TV(D_test, D_train) = TV over difficulty")
    report["details"] = res.to_dict()
  elif feature == "ngram":
    x_train = hashed_ngrams(rows_train, dim=opts.ngram_dim, source=str(train_path),
                            lines=lines_train)
    x_test = hashed_ngrams(rows_test, dim=opts.ngram_dim, source=str(test_path),
                           lines=lines_test)
    report.update(_classifier_part(x_train, x_test, "n-gram features", **common))
  else:
    x_train, x_test = checkpoint_embeddings(
        model_dir, [train_path, test_path], max_length=opts.max_length,
        batch_size=opts.batch_size)
    report["model_dir"] = str(model_dir)
    report.update(_classifier_part(x_train, x_test, f"embeddings from {model_dir}", **common))
  return report


def format_shift_table(report: Mapping[str, Any]) -> str:
  """A plain-text table of a `shift_report` dict: quantity, value, kind."""
  lines = [
      f"TV(D_test, D_train) over feature '{report['feature']}'  (delta = {report['delta']})",
      f"  train: {report['train']['path']} (n = {report['train']['n']})",
      f"  test:  {report['test']['path']} (n = {report['test']['n']})",
  ]
  if report.get("model_dir") is not None:
    lines.append(f"  embeddings: mean final hidden state of {report['model_dir']}")
  rows = [(name, entry["value"], entry["kind"]) for name, entry in report["tv"].items()]
  rows.append(("g_ext", report["g_ext"], report["g_ext_kind"]))
  width = max(len(r[0]) for r in rows)
  lines.append(f"  {'quantity':<{width}}  {'value':>8}  kind")
  for name, value, kind in rows:
    shown = "n/a" if value is None else f"{value:.4f}"
    lines.append(f"  {name:<{width}}  {shown:>8}  {kind}")
  lines.append(f"  assumption: {report['assumption']}")
  return "\n".join(lines)

