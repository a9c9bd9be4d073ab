"""`pacbayes bound --held-out`: the rows `finetune --holdout` kept out, and their certificate.

Before any weight is read, `split_rows` finds ``holdout.json`` in the posterior folder (the
record `pacbayes finetune --holdout` writes), checks that the training file is byte for byte
the one it hashed (`pacbayes.certificate.heldout.check_holdout_record`), and splits the
training rows into the rows the fine-tune saw (S for the PAC-Bayes part) and the held-out rows.
After the certificate, `heldout_block` scores the unperturbed fine-tuned weights on the
held-out rows and certifies them with the test-set bound
(`pacbayes.certificate.heldout.heldout_certificate`: exact binomial tail for a 0/1 loss,
Langford 2005 Theorem 3.3; kl-Chernoff for a [0, 1] loss; per slice and over a test mixture,
docs/THEORY.md §5).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

__all__ = ["HOLDOUT_FILE", "HeldOutSplit", "check_row_format", "heldout_block",
           "holdout_path", "split_rows"]

HOLDOUT_FILE = "holdout.json"
FINETUNE_FILE = "finetune.json"


def holdout_path(posterior: str) -> str:
  """``POSTERIOR/holdout.json``, or ValueError naming the folder and the flag when absent."""
  path = os.path.join(os.fspath(posterior), HOLDOUT_FILE)
  if not os.path.isfile(path):
    raise ValueError(f"{posterior}: has no {HOLDOUT_FILE}, so --held-out has no held-out rows "
                     "to certify on (fine-tune with `pacbayes finetune --holdout FRACTION`)")
  return path


@dataclasses.dataclass(frozen=True)
class HeldOutSplit:
  """The training file split by the holdout record.

  Attributes:
    train: the `Dataset` of the rows the fine-tune was trained on (S of the PAC-Bayes part).
    heldout: the `Dataset` of the held-out rows.
    record: the checked `pacbayes.certificate.heldout.HoldoutRecord`.
    all_difficulty: [n + m] float64 difficulties of every row of the file, or None.
  """

  train: Any
  heldout: Any
  record: Any
  all_difficulty: np.ndarray | None


def split_rows(posterior: str, train_path: str, data: Any) -> HeldOutSplit:
  """Checks the record against ``train_path`` and splits ``data`` (its rows, tokenised).

  Raises:
    ValueError: no ``holdout.json`` (naming the folder and --held-out), a training file whose
      sha256 differs from the recorded one (naming the file), a recorded line that is not a
      row of the file, or no training row left.
  """
  from pacbayes.certificate.heldout import check_holdout_record

  record = check_holdout_record(train_path, holdout_path(posterior))
  lines = np.asarray(data.line_numbers if data.line_numbers is not None
                     else np.arange(1, len(data) + 1), np.int64)
  position = {int(v): i for i, v in enumerate(lines.tolist())}
  missing = [v for v in record.heldout_lines if v not in position]
  if missing:
    raise ValueError(f"{record.path}: key 'heldout_lines': line {missing[0]} is not a row of "
                     f"{train_path}")
  held = np.sort(np.asarray([position[v] for v in record.heldout_lines], np.int64))
  keep = np.setdiff1d(np.arange(len(lines)), held)
  if keep.size == 0:
    raise ValueError(f"{record.path}: every row of {train_path} is held out; nothing is left "
                     "for the PAC-Bayes part")
  return HeldOutSplit(data.subset(keep), data.subset(held), record, data.difficulty)


def check_row_format(posterior: str, chat_template: bool) -> str | None:
  """A warning line when --chat-template disagrees with the fine-tune's recorded row format.

  Reads ``POSTERIOR/finetune.json`` (`row_format`: "chat_template" or "plain"); None when it
  agrees or the file (or key) is absent.
  """
  path = os.path.join(os.fspath(posterior), FINETUNE_FILE)
  try:
    with open(path) as f:
      recorded = json.load(f).get("row_format")
  except (OSError, ValueError, AttributeError):
    return None
  used = "chat_template" if chat_template else "plain"
  if recorded in ("chat_template", "plain") and recorded != used:
    flag = "without --chat-template" if chat_template else "with --chat-template"
    return (f"warning: {path} records row_format {recorded!r} but the rows are read as "
            f"{used!r}; the fine-tune was trained {flag}, so the risks below are measured "
            "on differently formatted rows")
  return None


def _held_out_mixture(config: Any, split: HeldOutSplit, test_difficulty: Any,
                      delta: float) -> tuple[Any, Any, str]:
  """(MixtureBounds or None, held-out difficulties or None, note) for the test mixture.

  The training side is the exact --train-mixture when one is given (with an exact
  --test-mixture: then no delta goes to the mixtures), else estimated from every row of the
  training file (all are i.i.d. from the training mixture); the test side is the exact
  --test-mixture, else the --test rows' difficulties. The support: --difficulty-support,
  else the exact test mixture's keys when they cover every training value; without one, no
  per-slice / mixture-shift value.
  """
  from pacbayes.bounds import mixture as mixtures
  from pacbayes.pipeline.shift_terms import exact_train_mixture

  diff = split.all_difficulty
  if diff is None or (config.test_mixture is None and test_difficulty is None):
    return None, None, ""
  exact = None
  if config.test_mixture is not None:
    if isinstance(config.test_mixture, str) and config.test_mixture == "uniform":
      values = config.difficulty_support or (None if test_difficulty is None else
                                             sorted({float(v) for v in test_difficulty}))
      exact = None if values is None else mixtures.uniform_mixture(list(values))
    elif isinstance(config.test_mixture, (str, os.PathLike)):
      exact = mixtures.load_mixture(os.fspath(config.test_mixture),
                                    support=config.difficulty_support)
    else:
      exact = mixtures.check_mixture(config.test_mixture, name="test_mixture")
  support = config.difficulty_support
  if support is None and exact is not None and {float(v) for v in diff} <= set(exact):
    support = tuple(sorted(exact))
  if support is None:
    return None, None, ("held-out: no per-slice or test-mixture value: the difficulty "
                        "support is not fixed in advance (--difficulty-support, or an exact "
                        "--test-mixture covering every training value)")
  if config.train_mixture is not None and exact is not None:
    train = exact_train_mixture(config, support, diff)
    mix = mixtures.mixture_bounds(test_mixture=exact, train_mixture=train,
                                  support=list(support))
    return mix, split.heldout.difficulty, ("held-out: training and test mixtures given "
                                           "exactly: no delta spent on the mixtures")
  mix = mixtures.mixture_bounds(
      test_mixture=exact, test_difficulty=None if exact is not None else test_difficulty,
      train_difficulty=diff, support=list(support), delta=delta)
  return mix, split.heldout.difficulty, ""


def heldout_block(config: Any, split: HeldOutSplit, losses: np.ndarray,
                  test_difficulty: Any) -> dict[str, Any]:
  """The held-out certificate of the unperturbed fine-tuned weights, as the report's block.

  Args:
    config: the `BoundConfig` (loss, delta, test_mixture, difficulty_support).
    split: from `split_rows`.
    losses: [m] per-row losses of the fine-tuned weights on the held-out rows.
    test_difficulty: [N_test] difficulties of the --test rows, or None.

  Returns:
    `HeldOutCertificate.to_dict()` plus ``delta_note``: its delta is its own (--delta), spent
    apart from the PAC-Bayes certificate's.
  """
  from pacbayes.certificate.heldout import heldout_certificate

  # With an estimated mixture, a third of delta to its estimates, the rest split evenly
  # between the training-mixture bound and the per-slice bounds (heldout_certificate); an
  # exact one spends nothing.
  mix, diff, note = _held_out_mixture(config, split, test_difficulty, config.delta / 3)
  notes = [note] if note else []
  cert = heldout_certificate(
      losses, delta=config.delta, difficulty=diff, mixture=mix,
      zero_one=config.loss == "sequence_error", loss=config.loss, record=split.record,
      notes=notes)
  out = cert.to_dict()
  out["delta_note"] = (f"the held-out certificate spends its own delta = {config.delta:g}, "
                       "apart from the PAC-Bayes certificate's; both hold together with "
                       f"probability >= 1 - {2 * config.delta:g}")
  return out
