"""Checks of posterior and prior scales (sigma) and of weights: cheap, run before any expensive
work (`pacbayes.posterior.kl` and the `bound` command use them; docs/THEORY.md §1.3).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_dtypes
import numpy as np

__all__ = ["check_finite", "check_sigma", "check_sigma_leaf", "check_sigmas"]

_DTYPE_INFO = {
  "float32": np.finfo(np.float32),
  "bfloat16": ml_dtypes.finfo(ml_dtypes.bfloat16),
  "float16": np.finfo(np.float16),
}
_DTYPE_CAST = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
# sigma^2 must be a normal float64: the KL divides by sigma_p^2 and takes logs of the ratio.
_F64 = np.finfo(np.float64)


def check_sigma(value: Any, what: str = "sigma", *, dtype: str | None = "float32") -> float:
  """Checks one posterior/prior standard deviation and returns it as a float.

  Args:
    value: the scale.
    what: its name in messages (an argument or a CLI flag, e.g. "--sigma-prior").
    dtype: the dtype the noise ``sigma * eps`` is made in ("float32", "bfloat16", "float16"),
      or None to check only the float64 KL arithmetic.

  Returns:
    ``float(value)``.

  Raises:
    ValueError: naming ``what`` and the cause: not a real number; not positive and finite;
      ``value**2`` under- or overflows float64 (the KL's ``1/sigma_p^2`` and
      ``ln(sigma_q^2/sigma_p^2)`` would be inf or NaN: e.g. 1e-200, 4e-320); or ``value``
      rounds to zero, to a subnormal or to infinity in ``dtype`` (the posterior noise would
      vanish, lose its precision or overflow: e.g. 1e-50 in float32).
  """
  if isinstance(value, (bool, np.bool_, str, bytes)):
    raise ValueError(f"{what} must be a positive number; got {value!r}.")
  try:
    x = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{what} must be a positive number; got {value!r}.") from None
  if not (math.isfinite(x) and x > 0):
    raise ValueError(f"{what} must be positive and finite; got {value!r}.")
  if not _F64.tiny <= x * x <= _F64.max:
    side = "underflows" if x < 1 else "overflows"
    raise ValueError(
      f"{what}={x!r} is outside the usable range: its square {side} in float64 (the KL needs "
      f"{math.sqrt(_F64.tiny):.1e} <= sigma <= {math.sqrt(_F64.max):.1e}).")
  if dtype is not None:
    if dtype not in _DTYPE_INFO:
      raise ValueError(f"dtype={dtype!r}: expected one of {sorted(_DTYPE_INFO)} or None")
    info = _DTYPE_INFO[dtype]
    with np.errstate(over="ignore", under="ignore"):
      rounded = float(np.asarray(x).astype(_DTYPE_CAST[dtype]))
    if not math.isfinite(rounded):
      raise ValueError(f"{what}={x!r} overflows in {dtype} (largest {float(info.max):.3g}): the "
                       "posterior noise would be infinite.")
    if rounded < float(info.tiny):
      raise ValueError(
        f"{what}={x!r} underflows in {dtype} (it rounds to {rounded!r}; the smallest normal "
        f"{dtype} is {float(info.tiny):.3g}): the posterior noise would vanish or lose its "
        "precision.")
  return x


def check_sigmas(sigmas: Mapping[str, Any], *, dtype: str | None = "float32") -> dict[str, Any]:
  """Checks several sigma arguments at once (see `check_sigma`), e.g. every CLI sigma flag.

  Args:
    sigmas: ``{name: value}`` where a value is a number, a non-empty sequence of numbers (a
      grid), or None (not given; passed through).
    dtype: as in `check_sigma`.

  Returns:
    The same keys: numbers as floats, sequences as tuples of floats, None kept.

  Raises:
    ValueError: naming the key (and the grid position) of the first bad value.
  """
  out: dict[str, Any] = {}
  for name, value in sigmas.items():
    if value is None:
      out[name] = None
    elif isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
      out[name] = check_sigma(value, name, dtype=dtype)
    else:
      values = list(value)
      if not values:
        raise ValueError(f"{name} must hold at least one value.")
      out[name] = tuple(check_sigma(v, f"{name}[{i}]", dtype=dtype)
                        for i, v in enumerate(values))
  return out


def check_sigma_leaf(value: Any, what: str) -> None:
  """Raises if a concrete (non-traced) sigma leaf is unusable (see `check_sigma`, no dtype)."""
  if isinstance(value, jax.core.Tracer):
    return
  arr = np.asarray(value, dtype=np.float64)
  with np.errstate(over="ignore", under="ignore", invalid="ignore"):
    sq = np.square(arr)
    ok = np.isfinite(arr) & (arr > 0) & (sq >= _F64.tiny) & np.isfinite(sq)
  if not np.all(ok):
    check_sigma(arr[~ok].ravel()[0], what, dtype=None)


def check_finite(tree: Any, what: str = "params") -> None:
  """Raises ValueError naming the first leaf of ``tree`` that holds a NaN or infinite value.

  Args:
    tree: a pytree of arrays (e.g. model parameters).
    what: its name in the message.
  """
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  for path, leaf in flat:
    arr = np.asarray(leaf)
    if arr.dtype.kind in "fc" or arr.dtype == np.dtype(ml_dtypes.bfloat16):
      values = np.asarray(arr, np.float64)
      if not np.all(np.isfinite(values)):
        bad = values[~np.isfinite(values)].ravel()[0]
        raise ValueError(f"{what}: leaf {jax.tree_util.keystr(path)} holds a non-finite value "
                         f"({bad!r}).")
