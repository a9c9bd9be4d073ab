"""The synthetic difficulty study: pretraining, SFT/DFT, grids, evaluation by slice."""

from pacbayes.study.config import PRESETS as PRESETS
from pacbayes.study.config import StudyConfig as StudyConfig
from pacbayes.study.evaluate import SliceSet as SliceSet
from pacbayes.study.evaluate import evaluate_model as evaluate_model
from pacbayes.study.evaluate import make_slice_set as make_slice_set
from pacbayes.study.evaluate import slice_accuracy as slice_accuracy
from pacbayes.study.runner import run_study as run_study
from pacbayes.study.runner import summary_table as summary_table
from pacbayes.study.subspace import Subspace as Subspace
from pacbayes.study.subspace import make_subspace as make_subspace
from pacbayes.training.trainer import TrainConfig as TrainConfig
from pacbayes.training.trainer import TrainResult as TrainResult
from pacbayes.training.trainer import token_loss as token_loss

__all__ = [
  "PRESETS",
  "SliceSet",
  "StudyConfig",
  "Subspace",
  "TrainConfig",
  "TrainResult",
  "evaluate_model",
  "make_slice_set",
  "make_subspace",
  "run_study",
  "slice_accuracy",
  "summary_table",
  "token_loss",
]
