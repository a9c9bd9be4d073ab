"""Distribution shift between training and test rows.

TV over difficulty, n-gram features and the domain classifier. Each name is imported from the
module that defines it.
"""

from pacbayes.bounds.concentration import clopper_pearson_lower
from pacbayes.bounds.kinds import KIND_CERTIFIED, KIND_DIAGNOSTIC, KIND_ESTIMATE, KIND_LOWER
from pacbayes.shift.classifier import (
  ClassifierOptions,
  ClassifierTVResult,
  ShiftError,
  check_delta,
  tv_classifier,
  tv_lower_from_heldout,
)
from pacbayes.shift.discrete import TVResult, log_two_pow_k_minus_two, tv_discrete, weissman_epsilon
from pacbayes.shift.features import (
  FeatureError,
  FeatureOptions,
  checkpoint_embeddings,
  cot_length,
  difficulty,
  embed_with,
  hashed_ngrams,
  mean_hidden_states,
  read_rows,
)
from pacbayes.shift.report import (
  FEATURES,
  GapEstimate,
  format_shift_table,
  importance_weighted_gap,
  shift_report,
)

__all__ = [
  "ClassifierOptions",
  "ClassifierTVResult",
  "FEATURES",
  "FeatureError",
  "FeatureOptions",
  "GapEstimate",
  "KIND_CERTIFIED",
  "KIND_DIAGNOSTIC",
  "KIND_ESTIMATE",
  "KIND_LOWER",
  "ShiftError",
  "TVResult",
  "check_delta",
  "checkpoint_embeddings",
  "clopper_pearson_lower",
  "cot_length",
  "difficulty",
  "embed_with",
  "format_shift_table",
  "hashed_ngrams",
  "importance_weighted_gap",
  "log_two_pow_k_minus_two",
  "mean_hidden_states",
  "read_rows",
  "shift_report",
  "tv_classifier",
  "tv_discrete",
  "tv_lower_from_heldout",
  "weissman_epsilon",
]
