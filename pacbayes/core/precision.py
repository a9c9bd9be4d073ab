"""Float64 where the bound arithmetic needs it, without changing the process's JAX defaults.

Importing pacbayes leaves ``jax_enable_x64`` as it was. Functions whose arithmetic needs
float64 in JAX (kl inverses, KL sums over many parameters, Monte-Carlo means) run inside
:func:`float64_scope`; the command line turns x64 on for its own process
(:func:`enable_x64_globally`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def float64_scope() -> Iterator[None]:
  """A block in which JAX creates float64 by default (JAX's scoped ``enable_x64``)."""
  import jax  # noqa: PLC0415  (JAX is imported only when a scope is opened)

  if jax.config.jax_enable_x64:
    yield
    return
  with jax.enable_x64(True):
    yield


def with_float64(fn: F) -> F:
  """Decorator: runs ``fn`` inside :func:`float64_scope` (results are float64 arrays)."""

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with float64_scope():
      return fn(*args, **kwargs)

  return wrapped  # type: ignore[return-value]


def enable_x64_globally() -> None:
  """Turns JAX's x64 mode on for this process (for programs, never on library import)."""
  import jax  # noqa: PLC0415

  jax.config.update("jax_enable_x64", True)


__all__ = ["enable_x64_globally", "float64_scope", "with_float64"]
