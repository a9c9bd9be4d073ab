"""Datasets: JSONL rows, tokenisation, batching, difficulty measures, the synthetic task."""

from pacbayes.data.dataset import Dataset as Dataset
from pacbayes.data.dataset import iterate_batches as iterate_batches
from pacbayes.data.dataset import load_dataset as load_dataset
from pacbayes.data.dataset import num_batches as num_batches
from pacbayes.data.difficulty import Buckets as Buckets
from pacbayes.data.difficulty import assign_buckets as assign_buckets
from pacbayes.data.difficulty import bucket_by_quantiles as bucket_by_quantiles
from pacbayes.data.difficulty import completion_lengths as completion_lengths
from pacbayes.data.difficulty import difficulty_values as difficulty_values
from pacbayes.data.jsonl import DataError as DataError
from pacbayes.data.jsonl import read_jsonl as read_jsonl
from pacbayes.data.jsonl import read_jsonl_with_lines as read_jsonl_with_lines
from pacbayes.data.rows import EncodeOptions as EncodeOptions
from pacbayes.data.tokenize import load_tokenizer as load_tokenizer

__all__ = [
  "Buckets",
  "DataError",
  "Dataset",
  "EncodeOptions",
  "assign_buckets",
  "bucket_by_quantiles",
  "completion_lengths",
  "difficulty_values",
  "iterate_batches",
  "load_dataset",
  "load_tokenizer",
  "num_batches",
  "read_jsonl",
  "read_jsonl_with_lines",
]
