"""`pacbayes select`: which difficulty bucket to fine-tune on for a budget, from pilot runs."""

from pacbayes.select.fit import FAMILIES as FAMILIES
from pacbayes.select.fit import CurveFit as CurveFit
from pacbayes.select.fit import auto_family as auto_family
from pacbayes.select.fit import fit_curves as fit_curves
from pacbayes.select.offline import StudyQuery as StudyQuery
from pacbayes.select.offline import select_from_results as select_from_results
from pacbayes.select.online import OnlineQuery as OnlineQuery
from pacbayes.select.online import PilotProtocol as PilotProtocol
from pacbayes.select.online import plan_online as plan_online
from pacbayes.select.online import select_online as select_online
from pacbayes.select.predict import Pilots as Pilots
from pacbayes.select.predict import SelectOptions as SelectOptions
from pacbayes.select.predict import select_bucket as select_bucket

__all__ = [
  "FAMILIES",
  "OnlineQuery",
  "PilotProtocol",
  "CurveFit",
  "Pilots",
  "SelectOptions",
  "StudyQuery",
  "auto_family",
  "fit_curves",
  "plan_online",
  "select_bucket",
  "select_from_results",
  "select_online",
]
