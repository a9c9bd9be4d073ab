"""Float64 where the bound arithmetic needs it, without changing the process's JAX defaults.

Importing pacbayes leaves ``jax_enable_x64`` as it was. Functions whose arithmetic needs
float64 in JAX (kl inverses, KL sums over many parameters, Monte-Carlo means) run inside
:func:`float64_scope` (JAX's scoped ``jax.enable_x64``); the command line turns x64 on for its
own process (:func:`enable_x64_globally`).

A float64 JAX array that leaves the scope is a trap for a program without x64: the first
``jnp`` operation on it warns ("Explicitly requested dtype float64 ... truncated") and
computes in float32. :func:`with_float64` therefore hands concrete results back as NumPy
arrays when it was the one to open the scope. Under a trace (``jax.jit``, ``jax.grad``,
``jax.vmap``) results stay tracers (float64): the caller's trace carries them on.

Functions that JAX may trace later, outside the caller's scope (the rules of a
``jax.custom_jvp``, traced when an enclosing ``jax.jit`` is differentiated), take
``@float64_scope()`` as a decorator, which opens the scope whenever they run.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def float64_scope() -> Iterator[None]:
  """A block in which JAX creates float64 by default (JAX's scoped ``enable_x64``).

  Also a decorator (``@float64_scope()``): the scope is then opened on every call. Results
  are returned as computed (JAX arrays); see :func:`with_float64` for public functions.
  """
  import jax  # noqa: PLC0415  (JAX is imported only when a scope is opened)

  if jax.config.jax_enable_x64:
    yield
    return
  with jax.enable_x64(True):
    yield


def _to_host(tree: Any) -> Any:
  """Concrete JAX arrays in ``tree`` as NumPy arrays (dtype kept); tracers and the rest kept."""
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  def leaf(x: Any) -> Any:
    if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
      return np.asarray(x)
    return x

  return jax.tree.map(leaf, tree)


def with_float64(fn: F) -> F:
  """Decorator: runs ``fn`` inside :func:`float64_scope`, results safe outside it.

  When x64 is already on (the command line, the tests, or an enclosing scope) ``fn`` runs as
  it is and its result is returned unchanged. Otherwise the scope is opened for the call and
  every concrete JAX array in the result (a pytree) comes back as a NumPy array of the same
  dtype (float64 stays float64); tracers are returned as they are, so ``fn`` stays usable
  under ``jax.jit`` / ``jax.grad``.
  """

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    import jax  # noqa: PLC0415

    if jax.config.jax_enable_x64:
      return fn(*args, **kwargs)
    with jax.enable_x64(True):
      return _to_host(fn(*args, **kwargs))

  return wrapped  # type: ignore[return-value]


def enable_x64_globally() -> None:
  """Turns JAX's x64 mode on for this process (for programs, never on library import)."""
  import jax  # noqa: PLC0415

  jax.config.update("jax_enable_x64", True)


__all__ = ["enable_x64_globally", "float64_scope", "with_float64"]
