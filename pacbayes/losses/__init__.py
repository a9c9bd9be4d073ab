"""Losses for language models: bounded per-example losses in [0, 1] (certificates), training
objectives (cross-entropy, DFT) and answer accuracy.

- `pacbayes.losses.bounded`: the one next-token alignment (`next_token_shift`), token error,
  sequence error, smoothed NLL, the `LOSSES` registry and `model_loss_fn` (a
  `ModelLoss`);
- `pacbayes.losses.objectives`: training objectives and the one loss-closure builder
  (`make_loss_fn`), used by `pacbayes.training`;
- `pacbayes.losses.answers`: final-answer extraction and the 0-1 answer error.
"""

from pacbayes.losses.answers import (
  AnswerExtractor,
  answer_error,
  extract_answer,
  model_answer_error,
  normalize_answer,
)
from pacbayes.losses.bounded import (
  LOSSES,
  ModelLoss,
  get_loss,
  model_loss_fn,
  next_token_shift,
  sequence_error,
  smoothed_nll,
  smoothed_nll_range,
  token_error,
)
from pacbayes.losses.objectives import (
  OBJECTIVES,
  dft_token_weights,
  make_loss_fn,
  objective_sums,
  target_log_probs,
  target_mask,
  token_loss,
  token_loss_sum,
)

__all__ = [
  "LOSSES", "OBJECTIVES", "AnswerExtractor", "ModelLoss", "answer_error", "dft_token_weights",
  "extract_answer", "get_loss", "make_loss_fn", "model_answer_error", "model_loss_fn",
  "next_token_shift", "normalize_answer", "objective_sums", "sequence_error", "smoothed_nll",
  "smoothed_nll_range", "target_log_probs", "target_mask", "token_error", "token_loss",
  "token_loss_sum",
]
