"""Posteriors: Gaussian KL, draws, Monte-Carlo risk, the choice of sigma, posterior fitting."""

from pacbayes.posterior.kl import (
    CheckpointError as CheckpointError,
)
from pacbayes.posterior.kl import (
    CheckpointKL as CheckpointKL,
)
from pacbayes.posterior.kl import (
    SafetensorsFolder as SafetensorsFolder,
)
from pacbayes.posterior.kl import (
    TensorKL as TensorKL,
)
from pacbayes.posterior.kl import (
    check_finite as check_finite,
)
from pacbayes.posterior.kl import (
    check_sigma as check_sigma,
)
from pacbayes.posterior.kl import (
    check_sigmas as check_sigmas,
)
from pacbayes.posterior.kl import (
    checkpoint_kl as checkpoint_kl,
)
from pacbayes.posterior.kl import (
    gaussian_kl as gaussian_kl,
)
from pacbayes.posterior.kl import (
    isotropic_kl as isotropic_kl,
)
from pacbayes.posterior.kl import (
    iter_safetensors as iter_safetensors,
)
from pacbayes.posterior.montecarlo import (
    MonteCarloOptions as MonteCarloOptions,
)
from pacbayes.posterior.montecarlo import (
    row_losses as row_losses,
)
from pacbayes.posterior.perturb import (
    RANGE_TOL as RANGE_TOL,
)
from pacbayes.posterior.perturb import (
    SCHEMES as SCHEMES,
)
from pacbayes.posterior.perturb import (
    LossFn as LossFn,
)
from pacbayes.posterior.perturb import (
    MCRisk as MCRisk,
)
from pacbayes.posterior.perturb import (
    PosteriorFit as PosteriorFit,
)
from pacbayes.posterior.perturb import (
    SigmaChoice as SigmaChoice,
)
from pacbayes.posterior.perturb import (
    SigmaSearch as SigmaSearch,
)
from pacbayes.posterior.perturb import (
    check_data as check_data,
)
from pacbayes.posterior.perturb import (
    check_range as check_range,
)
from pacbayes.posterior.perturb import (
    choose_sigma as choose_sigma,
)
from pacbayes.posterior.perturb import (
    count_perturbed as count_perturbed,
)
from pacbayes.posterior.perturb import (
    draw_step as draw_step,
)
from pacbayes.posterior.perturb import (
    draws_per_step_for_memory as draws_per_step_for_memory,
)
from pacbayes.posterior.perturb import (
    empirical_risk as empirical_risk,
)
from pacbayes.posterior.perturb import (
    gather as gather,
)
from pacbayes.posterior.perturb import (
    leaf_keys as leaf_keys,
)
from pacbayes.posterior.perturb import (
    leaf_paths as leaf_paths,
)
from pacbayes.posterior.perturb import (
    mask_leaves as mask_leaves,
)
from pacbayes.posterior.perturb import (
    mc_risk as mc_risk,
)
from pacbayes.posterior.perturb import (
    optimise_posterior as optimise_posterior,
)
from pacbayes.posterior.perturb import (
    perturb_leaf as perturb_leaf,
)
from pacbayes.posterior.perturb import (
    perturb_leaves as perturb_leaves,
)
from pacbayes.posterior.perturb import (
    perturbation_mask as perturbation_mask,
)
from pacbayes.posterior.perturb import (
    perturbed_copy as perturbed_copy,
)
from pacbayes.posterior.perturb import (
    plain_step as plain_step,
)
from pacbayes.posterior.perturb import (
    positive_int as positive_int,
)
from pacbayes.posterior.perturb import (
    progress_bar as progress_bar,
)
from pacbayes.posterior.perturb import (
    sample_posterior as sample_posterior,
)
from pacbayes.posterior.perturb import (
    search_sigma as search_sigma,
)
from pacbayes.posterior.perturb import (
    sigma_leaves as sigma_leaves,
)
from pacbayes.posterior.perturb import (
    sigma_prior_grid as sigma_prior_grid,
)
from pacbayes.posterior.perturb import (
    sq_distance as sq_distance,
)
from pacbayes.posterior.perturb import (
    subset_bound as subset_bound,
)
from pacbayes.posterior.sigma import (
    DEFAULT_SIGMA_GRID as DEFAULT_SIGMA_GRID,
)
from pacbayes.posterior.sigma import (
    BoundTarget as BoundTarget,
)
from pacbayes.posterior.sigma import (
    SearchOptions as SearchOptions,
)
from pacbayes.posterior.sigma import (
    SigmaPlan as SigmaPlan,
)
from pacbayes.posterior.sigma import (
    plan_sigma as plan_sigma,
)

__all__ = [
    "BoundTarget",
    "DEFAULT_SIGMA_GRID",
    "MonteCarloOptions",
    "SearchOptions",
    "SigmaPlan",
    "plan_sigma",
    "row_losses",
    "CheckpointError",
    "CheckpointKL",
    "LossFn",
    "MCRisk",
    "PosteriorFit",
    "RANGE_TOL",
    "SCHEMES",
    "SafetensorsFolder",
    "SigmaChoice",
    "SigmaSearch",
    "TensorKL",
    "check_data",
    "check_finite",
    "check_range",
    "check_sigma",
    "check_sigmas",
    "checkpoint_kl",
    "choose_sigma",
    "count_perturbed",
    "draw_step",
    "draws_per_step_for_memory",
    "empirical_risk",
    "gather",
    "gaussian_kl",
    "isotropic_kl",
    "iter_safetensors",
    "leaf_keys",
    "leaf_paths",
    "mask_leaves",
    "mc_risk",
    "optimise_posterior",
    "perturb_leaf",
    "perturb_leaves",
    "perturbation_mask",
    "perturbed_copy",
    "plain_step",
    "positive_int",
    "progress_bar",
    "sample_posterior",
    "search_sigma",
    "sigma_leaves",
    "sigma_prior_grid",
    "sq_distance",
    "subset_bound",
]
