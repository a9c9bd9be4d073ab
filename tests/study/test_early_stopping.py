"""Early stopping of the study's cells (issue 20): the protocol's steps, the trainer's monitor,
and the snapshot a cell keeps (the base when fine-tuning only hurts)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import pacbayes  # noqa: F401  (x64 on)
from pacbayes.study import evaluate as ev
from pacbayes.study import runner
from pacbayes.study.config import StudyConfig
from pacbayes.study.grid import grid_cells
from pacbayes.training import trainer as tr
from tests.study.test_lab import _tiny_model, _train_arrays


def test_protocol_splits_S_and_checks_every_epoch():
  cfg = StudyConfig(ft_epochs=6.0, ft_min_steps=20, ft_batch_size=32, ft_val_fraction=0.1,
                    sizes=(200, 3200), certified_sizes=())
  assert cfg.n_val(200) == 20 and cfg.n_val(3200) == 320
  # budget = max(min, ceil(epochs * n_train / batch)): 6 * 180 / 32 = 33.75; 6 * 2880 / 32
  assert cfg.ft_steps_for(200) == 34 and cfg.ft_steps_for(3200) == 540
  # epoch ends of 180 rows at 5.625 steps each, and the budget
  assert cfg.check_steps(200, 34) == (6, 12, 17, 23, 29, 34)
  assert cfg.check_steps(3200, 540) == (90, 180, 270, 360, 450, 540)
  assert cfg.check_steps(3200, 100) == (90, 100)  # a shorter (certified-arm) budget
  proto = cfg.protocol()
  assert proto["n_val"] == {"200": 20, "3200": 320} and "early stopping" in proto["rule"]
  fixed = cfg.replace(ft_val_fraction=0.0)
  assert fixed.check_steps(200, 34) == () and fixed.ft_steps_for(3200) == 600
  assert "fixed epochs" in fixed.protocol()["rule"]
  with pytest.raises(ValueError, match="ft_val_fraction"):
    StudyConfig(ft_val_fraction=0.5)
  with pytest.raises(ValueError, match="ft_val_fraction"):  # n = 4 keeps no row out at 0.1
    StudyConfig(ft_val_fraction=0.1, sizes=(4, 3200), certified_sizes=())


def test_monitor_sees_the_parameters_after_the_listed_steps():
  graphdef, params, rest = nnx.split(_tiny_model(), nnx.Param, ...)
  apply = tr.model_apply(graphdef, rest)
  data = _train_arrays(n=8)
  seen = {}
  cfg = tr.TrainConfig(steps=5, batch_size=4, learning_rate=1e-2, warmup_steps=1)
  res = tr.train(apply, params, data, cfg, key=jax.random.key(0), progress=False,
                 monitor=tr.Monitor((2, 5), lambda s, p: seen.__setitem__(s, p)))
  assert sorted(seen) == [2, 5]
  same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), seen[5], res.params)
  assert all(jax.tree.leaves(same))
  moved = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), seen[2], res.params)
  assert not all(jax.tree.leaves(moved))


def _study(tmp_path, **over):
  cfg = StudyConfig.preset("micro", sizes=(32,), dft_sizes=(), strong_sizes=(),
                           certified_sizes=(), seeds=(0,), seeds_at=(), ft_epochs=3.0, **over)
  study = runner.Study(cfg, str(tmp_path), progress=False)
  study.pretrain("base")
  return study, grid_cells(cfg)[0]


def test_a_cell_keeps_its_lowest_validation_snapshot(tmp_path):
  study, cell = _study(tmp_path, ft_lr=3e-3)
  params, info = study.train_cell(cell)
  steps = [s for s, _ in info["val_curve"]]
  assert steps == [0, *study.config.check_steps(cell.n, cell.steps)]
  best = min(info["val_curve"], key=lambda sv: (sv[1], sv[0]))
  assert info["stopped_at"] == best[0]
  # the kept weights score what the curve says on the validation rows
  data, _ = study.cell_data(cell)
  val = {k: v[cell.n - study.config.n_val(cell.n):] for k, v in data.items()}
  assert all(np.array_equal(val[k], study.train_val_rows(cell)[1][k]) for k in val)
  assert ev.mean_token_nll(study.nll_fn, params, val) == pytest.approx(best[1], rel=1e-6)


def test_a_cell_keeps_its_base_when_fine_tuning_only_hurts(tmp_path):
  # a base that has learned something (300 pretraining steps), then an absurd rate: every
  # step wrecks it
  study, cell = _study(tmp_path, ft_lr=1.0, pretrain_steps=300, pretrain_lr=1e-2)
  params, info = study.train_cell(cell)
  assert info["stopped_at"] == 0
  assert all(v > info["val_curve"][0][1] for _, v in info["val_curve"][1:])
  same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), params,
                      study.prior(cell))
  assert all(jax.tree.leaves(same))
