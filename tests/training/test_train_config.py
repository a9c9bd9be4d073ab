"""One TrainConfig: one set of defaults, shared by the study and `finetune`."""

import dataclasses

import pytest

from pacbayes.losses import OBJECTIVES
from pacbayes.training.config import METHODS, TrainConfig, default
from pacbayes.training.finetune import FinetuneConfig


def test_methods_are_the_objectives():
  assert METHODS == OBJECTIVES


def test_finetune_defaults_are_train_config_defaults():
  fine = {f.name: f.default for f in dataclasses.fields(FinetuneConfig)}
  for name in ("learning_rate", "batch_size", "grad_accum", "end_lr_ratio", "weight_decay",
               "grad_clip", "b1", "b2", "eps"):
    assert fine[name] == default(name), name
  cfg = FinetuneConfig(model="m", train="t", out="o", method="dft", warmup_ratio=0.1)
  tcfg = cfg.train_config(40)
  assert tcfg.method == "dft" and tcfg.warmup_steps == 4 and tcfg.b2 == default("b2")


@pytest.mark.parametrize("change", [{"steps": 0}, {"steps": 2.0}, {"learning_rate": float("nan")},
                                    {"b2": 1.0}, {"grad_clip": float("inf")}, {"method": "rl"}])
def test_train_config_refuses(change):
  with pytest.raises(ValueError, match="TrainConfig"):
    TrainConfig(**{"steps": 1} | change)
