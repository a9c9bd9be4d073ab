"""Layer 1: the numbers of the bound (binary kl, PAC-Bayes bounds, concentration, mixtures, extrapolation terms); NumPy/SciPy only."""

from pacbayes.bounds.binary_kl import (
    as_float64 as as_float64,
)
from pacbayes.bounds.binary_kl import (
    check_at_least as check_at_least,
)
from pacbayes.bounds.binary_kl import (
    check_interval as check_interval,
)
from pacbayes.bounds.binary_kl import (
    kl_bernoulli as kl_bernoulli,
)
from pacbayes.bounds.binary_kl import (
    kl_inv_lower as kl_inv_lower,
)
from pacbayes.bounds.binary_kl import (
    kl_inv_upper as kl_inv_upper,
)
from pacbayes.bounds.concentration import (
    clopper_pearson_lower as clopper_pearson_lower,
)
from pacbayes.bounds.extrapolation import (
    KIND_MIXTURE as KIND_MIXTURE,
)
from pacbayes.bounds.extrapolation import (
    KIND_NONE as KIND_NONE,
)
from pacbayes.bounds.extrapolation import (
    KIND_TV as KIND_TV,
)
from pacbayes.bounds.extrapolation import (
    NAMES as NAMES,
)
from pacbayes.bounds.extrapolation import (
    ExtrapolationBound as ExtrapolationBound,
)
from pacbayes.bounds.extrapolation import (
    SliceBound as SliceBound,
)
from pacbayes.bounds.extrapolation import (
    detect_scheme as detect_scheme,
)
from pacbayes.bounds.extrapolation import (
    loss_weights as loss_weights,
)
from pacbayes.bounds.extrapolation import (
    maurer_upper as maurer_upper,
)
from pacbayes.bounds.extrapolation import (
    per_slice_bounds as per_slice_bounds,
)
from pacbayes.bounds.extrapolation import (
    slice_mc_upper as slice_mc_upper,
)
from pacbayes.bounds.extrapolation import (
    slice_values as slice_values,
)
from pacbayes.bounds.extrapolation import (
    split_delta as split_delta,
)
from pacbayes.bounds.extrapolation import (
    training_slices as training_slices,
)
from pacbayes.bounds.extrapolation import (
    weighted_loss_bound as weighted_loss_bound,
)
from pacbayes.bounds.extrapolation import (
    weighted_value as weighted_value,
)
from pacbayes.bounds.kinds import (
    KIND_CERTIFIED as KIND_CERTIFIED,
)
from pacbayes.bounds.kinds import (
    KIND_DIAGNOSTIC as KIND_DIAGNOSTIC,
)
from pacbayes.bounds.kinds import (
    KIND_ESTIMATE as KIND_ESTIMATE,
)
from pacbayes.bounds.kinds import (
    KIND_LOWER as KIND_LOWER,
)
from pacbayes.bounds.mixture import (
    MixtureBounds as MixtureBounds,
)
from pacbayes.bounds.mixture import (
    check_mixture as check_mixture,
)
from pacbayes.bounds.mixture import (
    difficulty_key as difficulty_key,
)
from pacbayes.bounds.mixture import (
    load_mixture as load_mixture,
)
from pacbayes.bounds.mixture import (
    mixture_bounds as mixture_bounds,
)
from pacbayes.bounds.mixture import (
    mixture_shift_bound as mixture_shift_bound,
)
from pacbayes.bounds.mixture import (
    mixture_shift_formula as mixture_shift_formula,
)
from pacbayes.bounds.mixture import (
    uniform_mixture as uniform_mixture,
)
from pacbayes.bounds.mixture import (
    worst_case_mean as worst_case_mean,
)
from pacbayes.bounds.pac import (
    DEFAULT_CATONI_GRID as DEFAULT_CATONI_GRID,
)
from pacbayes.bounds.pac import (
    catoni as catoni,
)
from pacbayes.bounds.pac import (
    flamb as flamb,
)
from pacbayes.bounds.pac import (
    flamb_optimal_lam as flamb_optimal_lam,
)
from pacbayes.bounds.pac import (
    fquad as fquad,
)
from pacbayes.bounds.pac import (
    hoeffding_upper as hoeffding_upper,
)
from pacbayes.bounds.pac import (
    maurer as maurer,
)
from pacbayes.bounds.pac import (
    mc_epsilon as mc_epsilon,
)
from pacbayes.bounds.pac import (
    mc_sample_bound as mc_sample_bound,
)
from pacbayes.bounds.pac import (
    mcallester as mcallester,
)

__all__ = [
    "DEFAULT_CATONI_GRID",
    "ExtrapolationBound",
    "KIND_CERTIFIED",
    "KIND_DIAGNOSTIC",
    "KIND_ESTIMATE",
    "KIND_LOWER",
    "KIND_MIXTURE",
    "KIND_NONE",
    "KIND_TV",
    "MixtureBounds",
    "NAMES",
    "SliceBound",
    "as_float64",
    "catoni",
    "check_at_least",
    "check_interval",
    "check_mixture",
    "clopper_pearson_lower",
    "detect_scheme",
    "difficulty_key",
    "flamb",
    "flamb_optimal_lam",
    "fquad",
    "hoeffding_upper",
    "kl_bernoulli",
    "kl_inv_lower",
    "kl_inv_upper",
    "load_mixture",
    "loss_weights",
    "maurer",
    "maurer_upper",
    "mc_epsilon",
    "mc_sample_bound",
    "mcallester",
    "mixture_bounds",
    "mixture_shift_bound",
    "mixture_shift_formula",
    "per_slice_bounds",
    "slice_mc_upper",
    "slice_values",
    "split_delta",
    "training_slices",
    "uniform_mixture",
    "weighted_loss_bound",
    "weighted_value",
    "worst_case_mean",
]
