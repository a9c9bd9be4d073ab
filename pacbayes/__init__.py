"""pacbayes: two-gap PAC-Bayes bounds for LLM fine-tuning, in JAX."""

import jax as _jax

# Bound arithmetic (kl inverses, KL sums over billions of parameters) needs float64;
# model code always passes explicit float32/bfloat16 dtypes, so enabling x64 here
# changes only the defaults of untyped constructors.
_jax.config.update("jax_enable_x64", True)

__version__ = "0.1.0"


class PacBayesWarning(UserWarning):
  """Warnings raised by pacbayes itself (errors in the test suite)."""


from pacbayes.bounds import (  # noqa: E402
    catoni,
    flamb,
    flamb_optimal_lam,
    fquad,
    kl_bernoulli,
    kl_inv_lower,
    kl_inv_upper,
    maurer,
    mc_sample_bound,
    mcallester,
)
from pacbayes.certificate import Certificate, certify  # noqa: E402
from pacbayes.kl import CheckpointKL, checkpoint_kl, gaussian_kl, isotropic_kl  # noqa: E402
from pacbayes.perturb import (  # noqa: E402
    MCRisk,
    mc_risk,
    optimise_posterior,
    perturbation_mask,
    sample_posterior,
    search_sigma,
    sigma_prior_grid,
)
from pacbayes.pipeline import certify_params, run_bound  # noqa: E402
from pacbayes.sharding import make_mesh, maybe_initialize_distributed  # noqa: E402
from pacbayes.shift import (  # noqa: E402
    importance_weighted_gap,
    shift_report,
    tv_classifier,
    tv_discrete,
)

__all__ = [
    "Certificate",
    "CheckpointKL",
    "MCRisk",
    "PacBayesWarning",
    "__version__",
    "catoni",
    "certify",
    "certify_params",
    "checkpoint_kl",
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
    "shift_report",
    "sigma_prior_grid",
    "tv_classifier",
    "tv_discrete",
]
