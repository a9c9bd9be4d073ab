"""pacbayes: two-gap PAC-Bayes bounds for LLM fine-tuning, in JAX.

Importing the package is cheap: the public names below are loaded from their modules on first
use, so that the command line can install its Ctrl-C handler before JAX is imported.
Importing it changes nothing in the process (JAX's x64 flag included: see
`pacbayes.core.precision`).
"""

import importlib

__version__ = "0.1.0"


_EXPORTS = {
    "pacbayes.bounds.pac": ("catoni", "flamb", "flamb_optimal_lam", "fquad", "kl_bernoulli",
                        "kl_inv_lower", "kl_inv_upper", "maurer", "mc_sample_bound",
                        "mcallester"),
    "pacbayes.certificate.core": ("Certificate", "certify"),
    "pacbayes.posterior.kl": ("CheckpointKL", "checkpoint_kl", "gaussian_kl", "isotropic_kl"),
    "pacbayes.core.errors": ("PacBayesWarning",),
    "pacbayes.posterior": ("MCRisk", "SigmaChoice", "choose_sigma", "mc_risk",
                           "optimise_posterior", "perturbation_mask", "sample_posterior",
                           "search_sigma", "sigma_prior_grid"),
    "pacbayes.certificate.shift": ("certify_with_shift",),
    "pacbayes.losses": ("sequence_error",),
    "pacbayes.pipeline.run": ("certify_params", "run_bound"),
    "pacbayes.core.sharding": ("make_mesh", "maybe_initialize_distributed"),
    "pacbayes.shift.report": ("importance_weighted_gap", "shift_report", "tv_classifier",
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
