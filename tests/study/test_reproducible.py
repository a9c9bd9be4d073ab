"""Same machine, same lock, same config -> the same results.json, timings aside; resume works.

Runs a micro study twice in two folders (no shared cache), once in one worker process and once
in two, and compares every field except wall times (keys ending in "_s"): the number of
workers must not change a number. Then reruns the first folder in this process with training
disabled to check that a finished study resumes entirely from its cache.
"""

import json

import numpy as np
import pytest

from pacbayes.study import runner as study
from pacbayes.study import theory
from pacbayes.study.config import StudyConfig
from pacbayes.study.view import SCHEMA, study_view
from pacbayes.training import trainer as tr

# Three buckets and sizes, two base replicas, a third seed at one corner (unequal seeds), DFT,
# the stronger base and the certified arm: every kind of cell.
MICRO = dict(
  test_per_slice=4, arms=(("tilted", (("easy", (4.0, 2.0, 1.0)), ("medium", (1.0, 1.0, 1.0)),
                                      ("hard", (1.0, 2.0, 4.0)))),),
  sizes=(8, 16, 32), seeds=(0, 1), seeds_at=(("hard", 8, (0, 1, 2)),), num_bases=2,
  hidden_size=16, intermediate_size=32,
  num_layers=1, num_heads=2, pretrain_steps=3, strong_pretrain_steps=2, pretrain_examples=32,
  pretrain_batch_size=4, ft_batch_size=4, ft_epochs=0.5, ft_min_steps=2, ft_warmup=1,
  dft_sizes=(8, 32), strong_sizes=(16,), strong_buckets=("easy", "medium", "hard"),
  mc_chunk_size=4, sigma_grid=(0.01, 0.1), sigma_subset=4, eval_batch_size=8,
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
  assert first["schema"] == SCHEMA
  # every main cell x seed (a third seed at hard n=8 for SFT and DFT), per-item strings of the
  # test length; main cells carry no certificate, steps follow the fixed-epoch rule
  assert len(a["cells"]) == 2 * (9 + 2 + 3) + 2
  n_items = sum(a["test_items"]["counts"])
  steps = {8: 2, 16: 2, 32: 4}  # max(2, ceil(0.5 * n / 4))
  for c in a["cells"]:
    assert "certificate" not in c and "q_seq_error" not in c["items"]
    assert len(c["items"]["correct"]) == len(c["items"]["seq_error"])
    assert c["ft_steps"] == steps[c["n"]] and c["base_replica"] == c["seed"] % 2
    for k, g in c["gain_by_slice"].items():
      assert g == pytest.approx(c["learned_by_slice"][k] - c["forgot_by_slice"][k])
    assert set(c["accuracy_by_mixture"]) == {"uniform", "hard"}
  assert a["protocol"]["steps"] == {"8": 2, "16": 2, "32": 4}
  assert len(a["bases"]["base"]["replicas"]) == 2
  view = study_view(a)
  assert view.items["correct"].shape[-1] == n_items
  assert view.seeds == (0, 1, 2)
  hard8 = view.index(("base", "sft", "hard", 8))
  assert np.isfinite(view.items["correct"][0, hard8, 2]).all()
  assert np.isnan(view.items["correct"][0, view.index(("base", "sft", "easy", 8)), 2]).all()
  assert np.isnan(view.scalars["bound"]).all()
  assert set(view.p_tests) == {"uniform", "hard"}
  # the certified arm: per (bucket, seed) at n=32, the main budget and a shorter one, certified
  assert len(a["certified"]) == 2 * 3
  for c in a["certified"]:
    assert [b["steps"] for b in c["budgets"]] == [1, 4]
    assert c["chosen_steps"] in (1, 4) and all(0 <= b["bound"] for b in c["budgets"])
  lines = [v.line() for v in theory.judge(a)]
  assert all(line.split()[0] in ("PASS", "FAIL", "INCONCLUSIVE") for line in lines)

  def boom(*args, **kwargs):
    raise AssertionError("train called on a cached study")

  monkeypatch.setattr(tr, "train", boom)
  study.run_study(cfg, tmp_path / "a", progress=False)
  again = json.loads((tmp_path / "a" / "results.json").read_text())
  assert _without_times(again) == _without_times(b)
  assert second["preset"] == "quick"
