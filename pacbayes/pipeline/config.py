"""`BoundConfig`: every setting of `pacbayes bound`, one frozen value built once by the command.

`BoundConfig.from_args` builds it from the parsed command line through a checked mapping
(each flag's destination is a field of the same name, or listed in `RENAMED` / `COMMAND_ONLY`;
anything else is an error), so no flag is copied by hand. `pacbayes.pipeline.run.run_bound`
takes it; `mc_options`, `sigma_plan` and `check` derive the library's options from it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from pacbayes.posterior.montecarlo import MonteCarloOptions
from pacbayes.posterior.sigma import DEFAULT_SIGMA_GRID, SigmaPlan, plan_sigma

__all__ = ["COMMAND_ONLY", "RENAMED", "BoundConfig"]

# Command-line destinations whose field has another name.
RENAMED = {"draws": "num_draws"}
# Destinations that belong to the command, not to the computation (quiet sets `progress`).
COMMAND_ONLY = ("command", "func", "out", "force", "quiet")


def _tuple(value: Any) -> Any:
  if value is None or isinstance(value, (str, os.PathLike, Mapping)):
    return value
  return tuple(value)


@dataclasses.dataclass(frozen=True)
class BoundConfig:
  """The settings of one `pacbayes bound` run (see `pacbayes bound --help` for each flag).

  Attributes:
    prior, posterior: the base and fine-tuned checkpoint folders (or a LoRA adapter folder).
    train: the training JSONL (S); test: an optional test JSONL for g_ext.
    loss, alpha: the [0, 1] loss and the smoothing of "smoothed_nll".
    method: the PAC-Bayes bound behind g_gen.
    sigma, sigma_grid, sigma_prior: the scales (`sigma_plan`).
    mc_scheme, num_draws, chunk_size, batch_size, draws_per_step, max_memory: the Monte
      Carlo (`mc_options`).
    include, exclude: Hugging Face parameter-name globs of perturbed / unperturbed weights.
    shift_feature, test_mixture, train_mixture, difficulty_support: the extrapolation side
      (`pacbayes.pipeline.shift_terms`); `train_mixture` is the training mixture over
      difficulty when it is known exactly (by design, as in the study).
    max_length, dtype, chat_template, space: reading the data and the weights.
    delta: total failure probability; seed: seed of every random choice.
    mesh: a Mesh, None, or "auto"; progress: progress bars and lines on stderr.
    held_out: certify the fine-tuned weights on the rows `finetune --holdout` kept out
      (``POSTERIOR/holdout.json``); the PAC-Bayes part then uses the other rows only.
    accept_base: accept --prior as the base of an adapter that records no fingerprint and
      whose base name does not match (`pacbayes.lora.folder.check_base`).
    measure_rows: rows of S for the sharpness measure (0: not computed); measure_steps: its
      bisection steps (`pacbayes.pipeline.measures`).
  """

  prior: str
  posterior: str
  train: str
  test: str | None = None
  loss: str = "token_error"
  alpha: float | None = None
  method: str = "maurer"
  sigma: float | None = None
  sigma_grid: tuple[float, ...] | None = None
  sigma_prior: float | None = None
  mc_scheme: str = "chunk"
  num_draws: int | None = None
  chunk_size: int | None = None
  batch_size: int = 8
  draws_per_step: int | None = None
  max_memory: int | None = None
  include: tuple[str, ...] | None = None
  exclude: tuple[str, ...] | None = None
  shift_feature: str | None = None
  test_mixture: Any = None
  train_mixture: Any = None
  difficulty_support: tuple[float, ...] | None = None
  max_length: int | None = None
  dtype: str | None = None
  chat_template: bool = False
  space: str = "weights"
  delta: float = 0.05
  seed: int = 0
  mesh: Any = "auto"
  progress: bool = True
  held_out: bool = False
  accept_base: bool = False
  measure_rows: int = 256
  measure_steps: int = 6

  def __post_init__(self):
    set_ = object.__setattr__
    for name in ("prior", "posterior", "train", "test"):
      value = getattr(self, name)
      if value is not None:
        set_(self, name, os.fspath(value))
    for name in ("sigma_grid", "include", "exclude", "difficulty_support"):
      set_(self, name, _tuple(getattr(self, name)))

  @classmethod
  def from_args(cls, args: Any) -> BoundConfig:
    """The config of a parsed command line (an `argparse.Namespace` or a mapping).

    Raises:
      ValueError: a destination that is neither a field, nor in `RENAMED` / `COMMAND_ONLY`.
    """
    values = dict(args if isinstance(args, Mapping) else vars(args))
    fields = {f.name for f in dataclasses.fields(cls)}
    kw: dict[str, Any] = {}
    for dest, value in values.items():
      if dest in COMMAND_ONLY:
        continue
      name = RENAMED.get(dest, dest)
      if name not in fields:
        raise ValueError(f"BoundConfig: the option {dest!r} has no field; add it to BoundConfig "
                         "(or to COMMAND_ONLY)")
      kw[name] = value
    kw["progress"] = not values.get("quiet", False)
    return cls(**kw)

  def mc_options(self) -> MonteCarloOptions:
    """The Monte-Carlo options (the certificate's defaults applied)."""
    return MonteCarloOptions(
        scheme=self.mc_scheme, num_draws=self.num_draws, chunk_size=self.chunk_size,
        batch_size=self.batch_size, draws_per_step=self.draws_per_step,
        max_memory=self.max_memory).with_defaults()

  def sigma_plan(self) -> SigmaPlan:
    """How sigma_q and sigma_p are chosen (`posterior.sigma.plan_sigma`)."""
    return plan_sigma(self.sigma, self.sigma_grid, self.sigma_prior, DEFAULT_SIGMA_GRID)

  def check(self) -> None:
    """The checks that need no file: values, combinations (errors name the option)."""
    from pacbayes.pipeline import inputs as bi

    bi.check_delta(self.delta)
    bi.check_seed(self.seed)
    bi.check_batch_size(self.batch_size)
    bi.check_run_options(self)
    self.sigma_plan()
    for name in ("measure_rows", "measure_steps"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
    if self.train_mixture is not None and self.test_mixture is None:
      raise ValueError("train_mixture: an exact training mixture needs an exact test mixture "
                       "(test_mixture)")
