"""Tests for pacbayes.data.difficulty: difficulty measures and equal-count buckets."""

import numpy as np
import pytest

from pacbayes.data import Dataset
from pacbayes.data.difficulty import assign_buckets, bucket_by_quantiles, difficulty_values


def test_names_still_importable_from_dataset_and_package():
  import pacbayes.data as pkg
  from pacbayes.data import dataset, difficulty

  for name in ("Buckets", "assign_buckets", "bucket_by_quantiles", "completion_lengths",
               "difficulty_values"):
    assert getattr(dataset, name) is getattr(difficulty, name) is getattr(pkg, name)


def test_difficulty_values():
  ds = Dataset.from_rows(
    [{"prompt_ids": [1], "completion_ids": [2] * (i + 1), "difficulty": -i} for i in range(3)]
  )
  np.testing.assert_array_equal(difficulty_values(ds), [0.0, -1.0, -2.0])
  np.testing.assert_array_equal(difficulty_values(ds, "completion_length"), [1.0, 2.0, 3.0])
  with pytest.raises(ValueError, match="measure"):
    difficulty_values(ds, "nope")
  with pytest.raises(ValueError, match="no 'difficulty'"):
    difficulty_values(Dataset.from_rows([{"input_ids": [1, 2]}]))


@pytest.mark.parametrize("n", [3, 9, 10, 11, 100])
def test_bucket_by_quantiles_is_the_rank_split_without_ties(n):
  rng = np.random.default_rng(n)
  values = rng.permutation(n).astype(float) * 1.5
  buckets = bucket_by_quantiles(values)
  ranks = np.argsort(np.argsort(values))
  expected = np.searchsorted([-(-n // 3), -(-2 * n // 3)], ranks, side="right")
  np.testing.assert_array_equal(buckets.ids, expected)
  assert buckets.counts.sum() == n and buckets.counts.max() - buckets.counts.min() <= 1
  assert buckets.names == ("easy", "medium", "hard")
  np.testing.assert_array_equal(assign_buckets(values, buckets.edges), buckets.ids)
  assert set(buckets.indices("hard")) == set(np.flatnonzero(expected == 2))


def test_bucket_ties_edges_and_errors():
  # Both thresholds fall inside the run of 1s: all of it goes low and "medium" is empty.
  buckets = bucket_by_quantiles([1, 1, 1, 1, 2, 3])
  np.testing.assert_array_equal(buckets.edges, [1.0, 1.0])
  np.testing.assert_array_equal(buckets.ids, [0, 0, 0, 0, 2, 2])
  np.testing.assert_array_equal(buckets.counts, [4, 0, 2])
  assert buckets.labels[-1] == "hard"
  buckets = bucket_by_quantiles([1, 2, 2, 3, 4, 5])
  np.testing.assert_array_equal(
    assign_buckets([0, 2, 2.5, 3, 4, 9], buckets.edges), [0, 0, 1, 1, 2, 2]
  )
  assert bucket_by_quantiles([1, 2, 3, 4], k=2, names=None).names == ("q0", "q1")
  with pytest.raises(ValueError, match="names"):
    bucket_by_quantiles([1, 2, 3], names=("a", "b"))
  with pytest.raises(ValueError, match="at least"):
    bucket_by_quantiles([1, 2])
  with pytest.raises(ValueError, match="finite"):
    bucket_by_quantiles([1, 2, np.nan])
