"""The synthetic difficulty study: pretraining, SFT/DFT, grids, evaluation by slice."""

from pacbayes.lab.config import PRESETS as PRESETS
from pacbayes.lab.config import StudyConfig as StudyConfig
from pacbayes.lab.evaluate import SliceSet as SliceSet
from pacbayes.lab.evaluate import evaluate_model as evaluate_model
from pacbayes.lab.evaluate import make_slice_set as make_slice_set
from pacbayes.lab.evaluate import slice_accuracy as slice_accuracy
from pacbayes.lab.study import run_study as run_study
from pacbayes.lab.study import summary_table as summary_table
from pacbayes.lab.subspace import Subspace as Subspace
from pacbayes.lab.subspace import make_subspace as make_subspace
from pacbayes.lab.train import TrainConfig as TrainConfig
from pacbayes.lab.train import TrainResult as TrainResult
from pacbayes.lab.train import token_loss as token_loss

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
