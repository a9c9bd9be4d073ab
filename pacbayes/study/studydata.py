"""Data of the study: the sliced test set, the fine-tuning pools and the pretraining corpora.

All draws are deterministic functions of the config's seed (NumPy SeedSequence of
[seed, purpose, ...]); the fine-tuning pool of (arm, bucket, seed) is an i.i.d. sample of the
bucket's mixture, and S of size n is its first n rows, so each seed has its own subset.
Pools are NOT deduplicated against the test set: the mixture-shift and TV terms certify only if
train and test draw from the same per-difficulty distribution D(z | k).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from pacbayes.data import synthetic
from pacbayes.data.dataset import Dataset
from pacbayes.data.rows import EncodeOptions
from pacbayes.study import evaluate as ev
from pacbayes.study.config import StudyConfig, seq_length


def seed_seq(config: StudyConfig, *parts: int) -> np.random.SeedSequence:
  """The SeedSequence of one purpose: [config.seed, *parts]."""
  return np.random.SeedSequence([config.seed, *parts])


def arrays(ds: Dataset) -> dict[str, np.ndarray]:
  """The [N, L] arrays the trainer and the Monte-Carlo engine read."""
  return {"input_ids": ds.input_ids, "attention_mask": ds.attention_mask,
          "loss_mask": ds.loss_mask}


@dataclasses.dataclass(frozen=True, eq=False)
class StudyData:
  """test: the sliced test set; test_keys: its problem keys; pools: (arm, bucket, seed) -> pool
  Dataset of max(sizes) rows with `difficulty` [N] int op counts."""

  test: ev.SliceSet
  test_keys: frozenset[str]
  pools: dict[tuple[str, str, int], Dataset]
  difficulty: dict[tuple[str, str, int], np.ndarray]


def build_data(config: StudyConfig) -> StudyData:
  """The test slices and every fine-tuning pool of the config."""
  lo, hi = config.test_ops
  pad = seq_length(hi)
  test_rows: list[dict[str, Any]] = []
  for k in config.ops:
    test_rows += synthetic.generate_dataset(config.test_per_slice, [k], seed=seed_seq(config, 1, k),
                                            modulus=config.modulus, unique=True)
  test = ev.make_slice_set(test_rows, config.test_mixture(), pad_length=pad)
  pools, diff = {}, {}
  for a_idx, (arm, buckets) in enumerate(config.arms):
    for b_idx, (bucket, _) in enumerate(buckets):
      mix = config.mixture(arm, bucket)
      for seed in config.all_seeds:
        rows = synthetic.generate_dataset(max(config.sizes), mix,
                                          seed=seed_seq(config, 2, a_idx, b_idx, seed),
                                          modulus=config.modulus)
        pools[(arm, bucket, seed)] = Dataset.from_rows(rows, options=EncodeOptions(pad_length=pad),
                                                       source=f"<{arm} {bucket} seed {seed}>")
        diff[(arm, bucket, seed)] = np.array([int(r["difficulty"]) for r in rows])
  return StudyData(test=test, test_keys=frozenset(r["key"] for r in test_rows), pools=pools,
                   difficulty=diff)


def pretrain_corpus(config: StudyConfig, which: str, exclude: frozenset[str], *,
                    replica: int = 0) -> Dataset:
  """The pretraining corpus of "base" or "strong" replica r (deduplicated against the test
  set); replica 0 draws the corpus of one-base studies, replica r > 0 its own."""
  lo, hi = config.pretrain_ops if which == "base" else config.strong_pretrain_ops
  parts = (3, 0 if which == "base" else 1, *([replica] if replica else []))
  rows = synthetic.generate_dataset(config.pretrain_examples, list(range(lo, hi + 1)),
                                    seed=seed_seq(config, *parts), modulus=config.modulus,
                                    exclude=exclude)
  return Dataset.from_rows(rows, options=EncodeOptions(pad_length=seq_length(hi)),
                           source=f"<pretraining {which} r{replica}>")
