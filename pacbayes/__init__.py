"""pacbayes: two-gap PAC-Bayes bounds for LLM fine-tuning, in JAX.

Importing the package is cheap: the public names below are loaded from their modules on first
use, so that the command line can install its Ctrl-C handler before JAX is imported.
"""

import importlib
import os
import sys

# Bound arithmetic (kl inverses, KL sums over billions of parameters) needs float64; model
# code always passes explicit float32/bfloat16 dtypes, so x64 changes only the defaults of
# untyped constructors. JAX reads JAX_ENABLE_X64 when it is first imported; if it was imported
# before pacbayes, the flag is set on its config instead.
if "jax" in sys.modules:
  sys.modules["jax"].config.update("jax_enable_x64", True)
else:
  os.environ["JAX_ENABLE_X64"] = "1"

__version__ = "0.1.0"


class PacBayesWarning(UserWarning):
  """Warnings raised by pacbayes itself (errors in the test suite)."""


_EXPORTS = {
    "pacbayes.bounds": ("catoni", "flamb", "flamb_optimal_lam", "fquad", "kl_bernoulli",
                        "kl_inv_lower", "kl_inv_upper", "maurer", "mc_sample_bound",
                        "mcallester"),
    "pacbayes.certificate": ("Certificate", "certify"),
    "pacbayes.kl": ("CheckpointKL", "checkpoint_kl", "gaussian_kl", "isotropic_kl"),
    "pacbayes.perturb": ("MCRisk", "SigmaChoice", "choose_sigma", "mc_risk",
                         "optimise_posterior", "perturbation_mask", "sample_posterior",
                         "search_sigma",
    "sequence_error", "sigma_prior_grid"),
    "pacbayes.certify_shift": ("certify_with_shift",),
    "pacbayes.losses": ("sequence_error",),
    "pacbayes.pipeline": ("certify_params", "run_bound"),
    "pacbayes.sharding": ("make_mesh", "maybe_initialize_distributed"),
    "pacbayes.shift": ("importance_weighted_gap", "shift_report", "tv_classifier",
                       "tv_discrete"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
  module = _MODULE_OF.get(name)
  if module is None:
    raise AttributeError(f"module 'pacbayes' has no attribute {name!r}")
  value = getattr(importlib.import_module(module), name)
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(_MODULE_OF))


__all__ = [
    "Certificate",
    "CheckpointKL",
    "MCRisk",
    "PacBayesWarning",
    "SigmaChoice",
    "__version__",
    "catoni",
    "certify",
    "certify_params",
    "certify_with_shift",
    "checkpoint_kl",
    "choose_sigma",
    "flamb",
    "flamb_optimal_lam",
    "fquad",
    "gaussian_kl",
    "importance_weighted_gap",
    "isotropic_kl",
    "kl_bernoulli",
    "kl_inv_lower",
    "kl_inv_upper",
    "make_mesh",
    "maurer",
    "maybe_initialize_distributed",
    "mc_risk",
    "mc_sample_bound",
    "mcallester",
    "optimise_posterior",
    "perturbation_mask",
    "run_bound",
    "sample_posterior",
    "search_sigma",
    "sequence_error",
    "shift_report",
    "sigma_prior_grid",
    "tv_classifier",
    "tv_discrete",
]
