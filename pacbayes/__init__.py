"""pacbayes: two-gap PAC-Bayes bounds for LLM fine-tuning, in JAX."""

import jax as _jax

# Bound arithmetic (kl inverses, KL sums over billions of parameters) needs float64;
# model code always passes explicit float32/bfloat16 dtypes, so enabling x64 here
# changes only the defaults of untyped constructors.
_jax.config.update("jax_enable_x64", True)

__version__ = "0.1.0"


class PacBayesWarning(UserWarning):
  """Warnings raised by pacbayes itself (errors in the test suite)."""


__all__ = ["PacBayesWarning", "__version__"]
