"""The project's warning class (the error classes live with the layer that raises them)."""


class PacBayesWarning(UserWarning):
  """Warnings raised by pacbayes itself (errors in the test suite)."""


__all__ = ["PacBayesWarning"]
