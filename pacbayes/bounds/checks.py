"""Input checks of the bound functions: concrete values only, so every function stays usable
under ``jax.jit`` (a tracer passes unchecked); and the float64 cast they share.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from pacbayes.core.precision import with_float64

__all__ = ["VACUOUS_TOL", "as_float64", "check_at_least", "check_interval", "is_vacuous"]

# A bound on a [0, 1] loss within this of 1 is vacuous: a mixture of per-slice ceilings
# sum_k p(k) * 1 rounds to 1 - 1 ulp (0.9999999999999999) and says nothing either.
VACUOUS_TOL = 1e-9


def is_vacuous(value: float) -> bool:
  """True when a bound on a [0, 1] loss says nothing: value >= 1 - VACUOUS_TOL (NaN: True)."""
  return not float(value) < 1.0 - VACUOUS_TOL


def _concrete(name: str, value: ArrayLike) -> np.ndarray | None:
  """The value as a float64 NumPy array, or None for a tracer (left unchecked)."""
  if isinstance(value, jax.core.Tracer):
    return None
  try:
    return np.asarray(value, dtype=np.float64)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None
  except (TypeError, ValueError) as err:
    raise ValueError(f"{name} must be a number or an array of numbers, got {value!r}") from err


def _first_bad(arr: np.ndarray, ok: np.ndarray) -> str:
  bad = np.argwhere(~ok)[0]
  where = f" (at index {tuple(int(i) for i in bad)})" if arr.ndim else ""
  return f"{float(arr[tuple(bad)])!r}{where}"


def check_interval(
  name: str,
  value: ArrayLike,
  lo: float,
  hi: float,
  *,
  open_lo: bool = False,
  open_hi: bool = False,
) -> None:
  """Raises ValueError if a concrete `value` leaves the interval; tracers pass unchecked."""
  arr = _concrete(name, value)
  if arr is None:
    return
  ok = (arr > lo if open_lo else arr >= lo) & (arr < hi if open_hi else arr <= hi)
  if not np.all(ok):
    lb, rb = "(" if open_lo else "[", ")" if open_hi else "]"
    rng = f"{lb}{lo:g}, {hi:g}{rb}"
    raise ValueError(f"{name} must lie in {rng}, got {_first_bad(arr, ok)}")


def check_at_least(name: str, value: ArrayLike, lo: float) -> None:
  """Raises ValueError if a concrete `value` is below `lo` or NaN; tracers pass unchecked."""
  arr = _concrete(name, value)
  if arr is None:
    return
  ok = arr >= lo  # NaN fails too
  if not np.all(ok):
    raise ValueError(f"{name} must be >= {lo:g}, got {_first_bad(arr, ok)}")


@with_float64
def as_float64(*xs: ArrayLike) -> list[jax.Array]:
  """The arguments as float64 arrays broadcast to one shape."""
  return jnp.broadcast_arrays(*[jnp.asarray(x, dtype=jnp.float64) for x in xs])

