"""Public face of the posterior engine: draws, Monte-Carlo risk, sigma choice, posterior fit.

The engine lives in four modules that import one another in one direction only
(draws <- montecarlo <- posterior, sigma); this module re-exports their public names so that
`from pacbayes.posterior.perturb import mc_risk` (or `perturb.search_sigma`, ...) keeps working:

- `pacbayes.posterior.draws`: masks, sigmas, Gaussian noise, `sample_posterior`, data batches.
- `pacbayes.posterior.montecarlo`: `mc_risk` (both sampling schemes, bounded memory), `MCRisk`,
  `empirical_risk`.
- `pacbayes.posterior.sigma`: `choose_sigma`, the posterior and prior scale that minimise the bound.
- `pacbayes.posterior.fit`: `sigma_prior_grid`, the older risk-tolerance `search_sigma`,
  `optimise_posterior` (PBB-style diagonal posterior fit).
"""

from __future__ import annotations

from pacbayes.posterior.draws import (
    RANGE_TOL,
    LossFn,
    check_data,
    check_range,
    count_perturbed,
    gather,
    leaf_keys,
    leaf_paths,
    mask_leaves,
    perturb_leaf,
    perturb_leaves,
    perturbation_mask,
    positive_int,
    progress_bar,
    sample_posterior,
    sigma_leaves,
    sq_distance,
)
from pacbayes.posterior.fit import (
    FitOptions,
    PosteriorFit,
    SigmaSearch,
    ToleranceSearch,
    optimise_posterior,
    search_sigma,
    sigma_prior_grid,
)
from pacbayes.posterior.montecarlo import (
    SCHEMES,
    MCRisk,
    MonteCarloOptions,
    draw_step,
    draws_per_step_for_memory,
    empirical_risk,
    mc_risk,
    perturbed_copy,
    plain_step,
    row_losses,
)
from pacbayes.posterior.sigma import (
    BoundTarget,
    SearchOptions,
    SigmaChoice,
    choose_sigma,
    subset_bound,
)

__all__ = [
    "FitOptions",
    "ToleranceSearch",
    "BoundTarget",
    "MonteCarloOptions",
    "SearchOptions",
    "row_losses",
    "RANGE_TOL",
    "SCHEMES",
    "LossFn",
    "MCRisk",
    "PosteriorFit",
    "SigmaChoice",
    "SigmaSearch",
    "check_data",
    "check_range",
    "choose_sigma",
    "count_perturbed",
    "draw_step",
    "draws_per_step_for_memory",
    "empirical_risk",
    "gather",
    "leaf_keys",
    "leaf_paths",
    "mask_leaves",
    "mc_risk",
    "optimise_posterior",
    "perturb_leaf",
    "perturb_leaves",
    "perturbed_copy",
    "perturbation_mask",
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
