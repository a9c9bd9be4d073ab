"""Checks and readers for the inputs of `pacbayes bound`, run before any expensive work.

Every function raises `ValueError` (or a subclass) whose message names the argument (the
Python name; the command line turns `sigma_grid` into `--sigma-grid`), the file and line, or
the key at fault, so that a bad input costs a second, not a model load and a Monte-Carlo pass.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from pacbayes.data.jsonl import DataError

__all__ = [
    "MAX_BATCH_SIZE", "MAX_SEED", "SHIFT_FEATURES", "SigmaPlan", "check_batch_size",
    "check_delta", "check_grid", "delta_plan", "check_positive_int", "check_seed", "check_sigma",
    "choose_shift_feature", "plan_sigma", "read_difficulty",
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


def check_sigma(value: Any, name: str) -> float | None:
  """None, or a finite float > 0 (kept as the float64 the caller gave)."""
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not (
      math.isfinite(value) and value > 0):
    raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
  return float(value)


def check_grid(grid: Any, name: str = "sigma_grid") -> tuple[float, ...] | None:
  """None, or a tuple of distinct positive float64 sigmas, in the order given."""
  if grid is None:
    return None
  try:
    values = tuple(float(v) for v in np.asarray(grid, dtype=np.float64).ravel().tolist())
  except (TypeError, ValueError):
    raise ValueError(f"{name}: expected numbers, got {grid!r}") from None
  if not values:
    raise ValueError(f"{name}: expected at least one prior sigma")
  for v in values:
    check_sigma(v, name)
  if len(set(values)) != len(values):
    raise ValueError(f"{name}: values must be distinct, got {list(values)}")
  return values


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


def delta_plan(delta: float, *, tv: bool = False, mixture: bool = False,
               per_slice: bool = False) -> dict[str, float]:
  """Equal shares of `delta` over the parts of a certificate that spend confidence.

  Parts: "mc" (Monte-Carlo) and "pb" (PAC-Bayes) always; "tv" when the TV term is estimated
  from samples; "mixture" when a mixture is estimated from samples; "slice_mc" and
  "slice_pb" for per-slice bounds. Fixed before any data is seen; the shares sum to delta
  (`pacbayes.bounds.extrapolation.split_delta`).
  """
  from pacbayes.bounds.extrapolation import split_delta

  parts = ["mc", "pb"] + (["tv"] if tv else []) + (["mixture"] if mixture else []) + (
      ["slice_mc", "slice_pb"] if per_slice else [])
  return split_delta(check_delta(delta), parts)


# --------------------------------------------------------------------------- sigma plan


class SigmaPlan:
  """How the posterior and prior scales are chosen, decided from the arguments alone.

  Attributes:
    sigma_q: the posterior sigma when fixed (float64 as given), else None (searched).
    grid: the prior sigmas the certificate chooses from (k = len(grid), ln k paid).
    grid_source: "sigma_prior" (one fixed value), "sigma_grid" (the user's grid) or
      "default" (`default_grid`, stated in the report).
  """

  def __init__(self, sigma_q: float | None, grid: tuple[float, ...], grid_source: str):
    self.sigma_q = sigma_q
    self.grid = grid
    self.grid_source = grid_source

  def describe(self) -> str:
    """One sentence for the report."""
    post = ("posterior sigma fixed by the caller" if self.sigma_q is not None else
            "posterior sigma chosen to minimise the bound (free: Q may depend on S)")
    if self.grid_source == "sigma_prior":
      prior = f"prior sigma fixed at {self.grid[0]!r} (k = 1)"
    elif self.grid_source == "sigma_grid":
      prior = f"prior sigma from the given grid of k = {len(self.grid)}, ln k paid"
    else:
      prior = (f"prior sigma from the DEFAULT grid ({self.grid[0]:g} .. {self.grid[-1]:g}, "
               f"k = {len(self.grid)}, ln k = {math.log(len(self.grid)):.3g} paid)")
    return f"{post}; {prior}"


def plan_sigma(sigma: Any, sigma_grid: Any, sigma_prior: Any,
               default_grid: Sequence[float]) -> SigmaPlan:
  """Checks the sigma arguments together and says how each scale will be chosen.

  Rules: `sigma_prior` fixes the prior (k = 1); `sigma_grid` is a prior grid fixed in
  advance (ln k paid); neither gives `default_grid`, which the report states; both are
  refused. `sigma` fixes the posterior scale, with either prior choice; without it the
  posterior scale is searched.

  Raises:
    ValueError: naming the argument.
  """
  sigma = check_sigma(sigma, "sigma")
  sigma_prior = check_sigma(sigma_prior, "sigma_prior")
  grid = check_grid(sigma_grid)
  if grid is not None and sigma_prior is not None:
    raise ValueError("sigma_grid and sigma_prior: give one (a grid to choose the prior sigma "
                     "from, or one fixed prior sigma), not both")
  if sigma_prior is not None:
    return SigmaPlan(sigma, (sigma_prior,), "sigma_prior")
  if grid is not None:
    return SigmaPlan(sigma, grid, "sigma_grid")
  return SigmaPlan(sigma, tuple(float(v) for v in default_grid), "default")


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



def check_run_options(*, num_draws, chunk_size, draws_per_step, max_memory, max_length,
                      mc_scheme: str, method: str, dtype: str | None, space: str, include,
                      exclude) -> None:
  """The option checks of `pacbayes.pipeline.run.run_bound` that need no file (names the option).

  Raises:
    ValueError: a size that is not a positive int, an unknown scheme, method, dtype or
      space, or a combination that does not apply (chunk_size with the passes scheme,
      num_draws with chunk_size, draws_per_step with max_memory, include/exclude with the
      LoRA space).
  """
  from pacbayes.certificate.core import METHODS
  from pacbayes.models.config import DTYPES
  from pacbayes.posterior import perturb

  for name, value in (("num_draws", num_draws), ("chunk_size", chunk_size),
                      ("draws_per_step", draws_per_step), ("max_length", max_length)):
    check_positive_int(value, name)
  if mc_scheme not in perturb.SCHEMES:
    raise ValueError(f"mc_scheme: expected one of {perturb.SCHEMES}, got {mc_scheme!r}")
  if mc_scheme == "passes" and chunk_size is not None:
    raise ValueError("chunk_size: applies to mc_scheme 'chunk' only")
  if num_draws is not None and chunk_size is not None:
    raise ValueError("num_draws and chunk_size: give one (both set the draws of the chunk "
                     "scheme)")
  if draws_per_step is not None and max_memory is not None:
    raise ValueError("draws_per_step and max_memory: give one")
  if method not in METHODS:
    raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
  if dtype is not None and dtype not in DTYPES:
    raise ValueError(f"dtype: expected one of {DTYPES}, got {dtype!r}")
  if space not in ("weights", "lora"):
    raise ValueError(f"space: expected 'weights' or 'lora', got {space!r}")
  if space == "lora" and (include is not None or exclude is not None):
    raise ValueError(f"{'include' if include is not None else 'exclude'}: not with space "
                     "'lora' (every LoRA parameter is perturbed, the base never)")
