"""Same machine, same lock, same config -> the same results.json, timings aside; resume works.

Runs a micro study twice in two folders (no shared cache), once in one worker process and once
in two, and compares every field except wall times (keys ending in "_s"): the number of
workers must not change a number. Then reruns the first folder in this process with training
disabled to check that a finished study resumes entirely from its cache.
"""

import json

import pytest

from pacbayes.study import runner as study
from pacbayes.study import theory
from pacbayes.study.config import StudyConfig
from pacbayes.study.view import study_view
from pacbayes.training import trainer as tr

MICRO = dict(
  test_per_slice=4, sizes=(8, 16, 32), seeds=(0, 1), hidden_size=16, intermediate_size=32,
  num_layers=1, num_heads=2, pretrain_steps=3, strong_pretrain_steps=2, pretrain_examples=32,
  pretrain_batch_size=4, ft_batch_size=4, ft_steps=3, ft_warmup=1, dft_sizes=(8, 32),
  strong_sizes=(16,), strong_buckets=("easy", "medium", "hard"), mc_chunk_size=4,
  sigma_grid=(0.01, 0.1), sigma_subset=4, eval_batch_size=8,
  generate_batch_size=8, certified_sizes=(32,), certified_steps=(1,),
)


def _without_times(x):
  if isinstance(x, dict):
    return {k: _without_times(v) for k, v in x.items() if not k.endswith("_s")}
  if isinstance(x, list):
    return [_without_times(v) for v in x]
  return x


@pytest.mark.slow
# The micro grid (0.01, 0.1) is meant to be tiny: its sigma_p may sit at an edge, which
# `choose_sigma` rightly warns about; the warning is not what this test checks.
@pytest.mark.filterwarnings("ignore:sigma_p = .* point of the prior grid")
def test_micro_study_is_reproducible_and_resumes(tmp_path, monkeypatch):
  cfg = StudyConfig.preset("quick", **MICRO)
  first = study.run_study(cfg, tmp_path / "a", progress=False, workers=1)
  second = study.run_study(cfg, tmp_path / "b", progress=False, workers=2)
  a = json.loads((tmp_path / "a" / "results.json").read_text())
  b = json.loads((tmp_path / "b" / "results.json").read_text())
  assert _without_times(a) == _without_times(b)
  assert first["schema"] == "pacbayes.study/2"
  # every main cell x seed, per-item strings of the test length, the certificate's parts
  assert len(a["cells"]) == 2 * (9 + 2 + 3)
  n_items = sum(a["test_items"]["counts"])
  for c in a["cells"]:
    cert = c["certificate"]
    assert cert["bound"] == pytest.approx(
      cert["emp_risk"] + cert["epsilon"] + cert["g_gen"] + cert["g_ext"])
    assert cert["loss"] == "sequence_error"
    assert len(c["items"]["correct"]) == len(c["items"]["seq_error"])
    assert 0 <= c["q_test_risk"] <= 1
  view = study_view(a)
  assert view.items["correct"].shape[-1] == n_items
  assert len(a["certified"]) == 2 * 3
  lines = [v.line() for v in theory.judge(a)]
  assert all(line.split()[0] in ("PASS", "FAIL", "INCONCLUSIVE") for line in lines)

  def boom(*args, **kwargs):
    raise AssertionError("train called on a cached study")

  monkeypatch.setattr(tr, "train", boom)
  study.run_study(cfg, tmp_path / "a", progress=False)
  again = json.loads((tmp_path / "a" / "results.json").read_text())
  assert _without_times(again) == _without_times(b)
  assert second["preset"] == "quick"
