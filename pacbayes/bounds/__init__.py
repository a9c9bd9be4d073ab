"""Layer 1: the numbers of the bound, no model and no data.

The binary kl and its inverses, the PAC-Bayes bounds (float64 JAX, scoped: see
`pacbayes.core.precision`), concentration bounds, mixture-shift and extrapolation terms
(NumPy / SciPy).
"""

from pacbayes.bounds.binary_kl import kl_bernoulli, kl_inv_lower, kl_inv_upper
from pacbayes.bounds.btrain import (
  B_TRAIN_METHODS,
  b_train_upper,
  maurer_budget,
  maurer_upper,
)
from pacbayes.bounds.checks import as_float64, check_at_least, check_interval
from pacbayes.bounds.concentration import clopper_pearson_lower
from pacbayes.bounds.delta import (
  KIND_PARTS,
  PART_NAMES,
  DeltaPlan,
  split_delta,
)
from pacbayes.bounds.extrapolation import (
  KIND_MIXTURE,
  KIND_NONE,
  KIND_TV,
  NAMES,
  ExtrapolationBound,
  SliceBound,
  detect_scheme,
  loss_weights,
  per_slice_bounds,
  slice_mc_upper,
  slice_values,
  weighted_loss_bound,
  weighted_value,
)
from pacbayes.bounds.feasibility import (
  FUTILE,
  Feasibility,
  best_possible_bound,
)
from pacbayes.bounds.kinds import KIND_CERTIFIED, KIND_DIAGNOSTIC, KIND_ESTIMATE, KIND_LOWER
from pacbayes.bounds.mixture import (
  MixtureBounds,
  check_mixture,
  difficulty_key,
  load_mixture,
  mixture_bounds,
  mixture_shift_bound,
  mixture_shift_formula,
  training_columns,
  training_slices,
  uniform_mixture,
  worst_case_mean,
)
from pacbayes.bounds.pac import (
  DEFAULT_CATONI_GRID,
  catoni,
  flamb,
  flamb_optimal_lam,
  fquad,
  hoeffding_upper,
  maurer,
  mc_epsilon,
  mc_sample_bound,
  mcallester,
)
from pacbayes.bounds.testset import (
  METHOD_BINOMIAL,
  METHOD_KL,
  HoldoutBound,
  SliceHoldoutBounds,
  binomial_upper,
  holdout_bound,
  slice_holdout_bounds,
)

__all__ = [
  "B_TRAIN_METHODS",
  "DEFAULT_CATONI_GRID",
  "DeltaPlan",
  "ExtrapolationBound",
  "FUTILE",
  "Feasibility",
  "HoldoutBound",
  "KIND_CERTIFIED",
  "KIND_DIAGNOSTIC",
  "KIND_ESTIMATE",
  "KIND_LOWER",
  "KIND_MIXTURE",
  "KIND_NONE",
  "KIND_PARTS",
  "KIND_TV",
  "METHOD_BINOMIAL",
  "METHOD_KL",
  "MixtureBounds",
  "NAMES",
  "PART_NAMES",
  "SliceBound",
  "SliceHoldoutBounds",
  "as_float64",
  "b_train_upper",
  "best_possible_bound",
  "binomial_upper",
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
  "holdout_bound",
  "kl_bernoulli",
  "kl_inv_lower",
  "kl_inv_upper",
  "load_mixture",
  "loss_weights",
  "maurer",
  "maurer_budget",
  "maurer_upper",
  "mc_epsilon",
  "mc_sample_bound",
  "mcallester",
  "mixture_bounds",
  "mixture_shift_bound",
  "mixture_shift_formula",
  "per_slice_bounds",
  "slice_holdout_bounds",
  "slice_mc_upper",
  "slice_values",
  "split_delta",
  "training_columns",
  "training_slices",
  "uniform_mixture",
  "weighted_loss_bound",
  "weighted_value",
  "worst_case_mean",
]
