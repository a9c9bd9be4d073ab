"""Distribution shift between training and test rows.

TV over difficulty, n-gram features and the domain classifier.
"""

from pacbayes.shift.classifier import (
  KIND_CERTIFIED,
  KIND_DIAGNOSTIC,
  KIND_ESTIMATE,
  KIND_LOWER,
  ClassifierTVResult,
  ShiftError,
  check_delta,
  clopper_pearson_lower,
  tv_classifier,
  tv_lower_from_heldout,
)
from pacbayes.shift.features import (
  FeatureError,
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
  TVResult,
  format_shift_table,
  importance_weighted_gap,
  log_two_pow_k_minus_two,
  shift_report,
  tv_discrete,
  weissman_epsilon,
)

__all__ = [
  "ClassifierTVResult",
  "FEATURES",
  "FeatureError",
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
