"""Checks and readers for the inputs of `pacbayes bound`, run before any expensive work.

Every function raises `ValueError` (or a subclass) whose message names the argument (the
Python name; the command line turns `sigma_grid` into `--sigma-grid`), the file and line, or
the key at fault, so that a bad input costs a second, not a model load and a Monte-Carlo pass.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from pacbayes.data.jsonl import DataError

__all__ = [
    "MAX_BATCH_SIZE", "MAX_SEED", "SHIFT_FEATURES", "check_batch_size", "check_delta",
    "check_positive_int", "check_run_options", "check_seed", "choose_shift_feature",
    "read_difficulty",
]

SHIFT_FEATURES = ("difficulty", "ngram", "embedding")
# Seeds are fed to jax.random.key, which takes any integer but folds it to 64 bits; one
# documented range keeps reports reproducible across front ends.
MAX_SEED = 2**32
# More rows per forward pass than this never fits in memory for a language model; the check
# turns a MemoryError after loading into a one-line refusal before it.
MAX_BATCH_SIZE = 4096


def check_delta(delta: Any, name: str = "delta") -> float:
  """A failure probability in the open interval (0, 1)."""
  if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
    raise ValueError(f"{name}: expected a number in (0, 1), got {delta!r}")
  return float(delta)


def check_seed(seed: Any, name: str = "seed") -> int:
  """An integer in [0, 2^32)."""
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not (
      0 <= int(seed) < MAX_SEED):
    raise ValueError(f"{name}: expected an integer in [0, 2^32), got {seed!r}")
  return int(seed)


def check_positive_int(value: Any, name: str, *, upper: int | None = None) -> int | None:
  """None, or an int in [1, upper]."""
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
  if upper is not None and value > upper:
    raise ValueError(f"{name}: {value} is beyond reason (at most {upper})")
  return int(value)


def check_batch_size(value: Any, name: str = "batch_size") -> int:
  """Rows per forward pass, in [1, MAX_BATCH_SIZE]."""
  out = check_positive_int(value, name, upper=MAX_BATCH_SIZE)
  if out is None:
    raise ValueError(f"{name}: expected an integer >= 1, got None")
  return out


# --------------------------------------------------------------------------- difficulty


def _numeric(value: Any) -> bool:
  return (not isinstance(value, bool) and isinstance(value, (int, float))
          and math.isfinite(value))


def read_difficulty(path: str | os.PathLike) -> tuple[np.ndarray | None, list[int]]:
  """The `difficulty` of every row of a JSONL file, strictly.

  Returns:
    (float64 [N] values, line numbers), or (None, lines) when no row has the key.

  Raises:
    DataError: ``"path:line: ..."`` for the first row whose `difficulty` is missing while other
      rows have one, or is a string, null, a boolean, a list, a mapping or not finite.
  """
  from pacbayes.data.jsonl import read_jsonl_with_lines

  path = os.fspath(path)
  rows, lines = read_jsonl_with_lines(path)
  if not rows:
    raise DataError(f"{path}: no rows")
  has = [isinstance(r, dict) and "difficulty" in r for r in rows]
  if not any(has):
    return None, lines
  out = np.empty(len(rows), np.float64)
  for i, (row, line) in enumerate(zip(rows, lines, strict=True)):
    if not has[i]:
      j = has.index(True)
      raise DataError(f"{path}:{line}: the row has no 'difficulty', but other rows do (e.g. "
                      f"line {lines[j]}); every row needs a numeric difficulty")
    d = row["difficulty"]
    if not _numeric(d):
      raise DataError(f"{path}:{line}: 'difficulty' must be a finite number, got {d!r}")
    out[i] = float(d)
  return out, lines


def choose_shift_feature(requested: str | None, *, train_has_difficulty: bool,
                         test_given: bool, mixture_given: bool,
                         support_given: bool) -> str | None:
  """The feature behind g_ext, by the rule stated in `pacbayes bound --help`.

  Rule: `requested` if given; else "difficulty" when the training rows carry `difficulty`
  (or a test mixture is given), "ngram" otherwise. The test file never decides: with the
  difficulty feature, a test row without a numeric difficulty is refused with its line.

  Returns:
    The feature, or None when there is no test side (no test file, no mixture).

  Raises:
    ValueError: a feature that is not one of `SHIFT_FEATURES`; a feature other than
      difficulty with a test mixture or a difficulty support; the difficulty feature (or a
      mixture, or a support) when the training rows have no difficulty; a feature without
      a test side.
  """
  if requested is not None and requested not in SHIFT_FEATURES:
    raise ValueError(f"shift_feature: expected one of {SHIFT_FEATURES}, got {requested!r}")
  if not test_given and not mixture_given:
    if requested is not None:
      raise ValueError("shift_feature: there is no test side (give test or test_mixture)")
    if support_given:
      raise ValueError("difficulty_support: there is no test side (give test or test_mixture)")
    return None
  feature = requested or ("difficulty" if train_has_difficulty or mixture_given else "ngram")
  if feature != "difficulty":
    if mixture_given:
      raise ValueError(f"test_mixture: a mixture over difficulty cannot be used with "
                       f"shift_feature={feature!r}")
    if support_given:
      raise ValueError(f"difficulty_support: applies to the difficulty feature only, not "
                       f"shift_feature={feature!r}")
    return feature
  if not train_has_difficulty:
    what = ("test_mixture" if mixture_given and requested is None else
            "difficulty_support" if support_given and requested is None else
            "shift_feature='difficulty'")
    raise ValueError(f"{what}: the training rows carry no 'difficulty'")
  return feature



def check_run_options(config: Any) -> None:
  """The option checks of a `pacbayes.pipeline.config.BoundConfig` that need no file.

  Raises:
    ValueError: naming the option: a size that is not a positive int, an unknown scheme,
      method, dtype or space, or a combination that does not apply (chunk_size with the
      passes scheme, num_draws with chunk_size, draws_per_step with max_memory,
      include/exclude with the LoRA space).
  """
  from pacbayes.certificate.core import METHODS
  from pacbayes.models.config import DTYPES
  from pacbayes.posterior.montecarlo import SCHEMES

  c = config
  for name in ("num_draws", "chunk_size", "draws_per_step", "max_length"):
    check_positive_int(getattr(c, name), name)
  if c.mc_scheme not in SCHEMES:
    raise ValueError(f"mc_scheme: expected one of {SCHEMES}, got {c.mc_scheme!r}")
  if c.mc_scheme == "passes" and c.chunk_size is not None:
    raise ValueError("chunk_size: applies to mc_scheme 'chunk' only")
  if c.num_draws is not None and c.chunk_size is not None:
    raise ValueError("num_draws and chunk_size: give one (both set the draws of the chunk "
                     "scheme)")
  if c.draws_per_step is not None and c.max_memory is not None:
    raise ValueError("draws_per_step and max_memory: give one")
  if c.method not in METHODS:
    raise ValueError(f"method: expected one of {METHODS}, got {c.method!r}")
  if c.dtype is not None and c.dtype not in DTYPES:
    raise ValueError(f"dtype: expected one of {DTYPES}, got {c.dtype!r}")
  if c.space not in ("weights", "lora"):
    raise ValueError(f"space: expected 'weights' or 'lora', got {c.space!r}")
  if c.space == "lora" and (c.include is not None or c.exclude is not None):
    raise ValueError(f"{'include' if c.include is not None else 'exclude'}: not with space "
                     "'lora' (every LoRA parameter is perturbed, the base never)")
