"""Distribution shift between training and test rows: TV over difficulty, n-gram features, the domain classifier."""

from pacbayes.shift.classifier import (
    KIND_CERTIFIED as KIND_CERTIFIED,
)
from pacbayes.shift.classifier import (
    KIND_DIAGNOSTIC as KIND_DIAGNOSTIC,
)
from pacbayes.shift.classifier import (
    KIND_ESTIMATE as KIND_ESTIMATE,
)
from pacbayes.shift.classifier import (
    KIND_LOWER as KIND_LOWER,
)
from pacbayes.shift.classifier import (
    ClassifierTVResult as ClassifierTVResult,
)
from pacbayes.shift.classifier import (
    ShiftError as ShiftError,
)
from pacbayes.shift.classifier import (
    check_delta as check_delta,
)
from pacbayes.shift.classifier import (
    clopper_pearson_lower as clopper_pearson_lower,
)
from pacbayes.shift.classifier import (
    tv_classifier as tv_classifier,
)
from pacbayes.shift.classifier import (
    tv_lower_from_heldout as tv_lower_from_heldout,
)
from pacbayes.shift.features import (
    FeatureError as FeatureError,
)
from pacbayes.shift.features import (
    checkpoint_embeddings as checkpoint_embeddings,
)
from pacbayes.shift.features import (
    cot_length as cot_length,
)
from pacbayes.shift.features import (
    difficulty as difficulty,
)
from pacbayes.shift.features import (
    embed_with as embed_with,
)
from pacbayes.shift.features import (
    hashed_ngrams as hashed_ngrams,
)
from pacbayes.shift.features import (
    mean_hidden_states as mean_hidden_states,
)
from pacbayes.shift.features import (
    read_rows as read_rows,
)
from pacbayes.shift.report import (
    FEATURES as FEATURES,
)
from pacbayes.shift.report import (
    GapEstimate as GapEstimate,
)
from pacbayes.shift.report import (
    TVResult as TVResult,
)
from pacbayes.shift.report import (
    format_shift_table as format_shift_table,
)
from pacbayes.shift.report import (
    importance_weighted_gap as importance_weighted_gap,
)
from pacbayes.shift.report import (
    log_two_pow_k_minus_two as log_two_pow_k_minus_two,
)
from pacbayes.shift.report import (
    shift_report as shift_report,
)
from pacbayes.shift.report import (
    tv_discrete as tv_discrete,
)
from pacbayes.shift.report import (
    weissman_epsilon as weissman_epsilon,
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
