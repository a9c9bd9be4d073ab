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
    "pacbayes.bounds.delta": ("DeltaPlan",),
    "pacbayes.bounds.feasibility": ("best_possible_bound",),
    "pacbayes.bounds.testset": ("binomial_upper",),
    "pacbayes.certificate.core": ("certify",),
    "pacbayes.certificate.heldout": ("heldout_certificate",),
    "pacbayes.certificate.report": ("Certificate",),
    "pacbayes.certificate.route": ("CertifyPlan", "certify_posterior"),
    "pacbayes.pipeline.config": ("BoundConfig",),
    "pacbayes.posterior.sharpness": ("sharpness_measure",),
    "pacbayes.select": ("select_bucket", "select_from_results"),
    "pacbayes.posterior.kl": ("CheckpointKL", "checkpoint_kl", "gaussian_kl", "isotropic_kl"),
    "pacbayes.core.errors": ("PacBayesWarning",),
    "pacbayes.posterior": ("MCRisk", "SigmaChoice", "choose_sigma", "mc_risk",
                           "optimise_posterior", "perturbation_mask", "sample_posterior",
                           "search_sigma", "sigma_prior_grid"),
    "pacbayes.certificate.shift": ("certify_with_shift",),
    "pacbayes.losses": ("sequence_error",),
    "pacbayes.pipeline.run": ("certify_params", "run_bound"),
    "pacbayes.core.sharding": ("make_mesh", "maybe_initialize_distributed"),
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


__all__ = sorted([*_MODULE_OF, "__version__"])
