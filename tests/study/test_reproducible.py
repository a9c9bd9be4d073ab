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

# The micro preset: three buckets and sizes, two base replicas, a third seed at one corner
# (unequal seeds), DFT, the stronger base and the certified arm: every kind of cell.


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
  cfg = StudyConfig.preset("micro")
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
  # the certified arm's main-budget cells reuse the main cells' checkpoints: 30 main trainings
  # and the 6 shorter budgets, no more
  assert len(list((tmp_path / "a" / "cache" / "cells").glob("*.npz"))) == 30 + 6
  # the certified arm: per (bucket, seed) at n=32, the main budget and a shorter one, certified
  assert len(a["certified"]) == 2 * 3
  for c in a["certified"]:
    assert [b["steps"] for b in c["budgets"]] == [1, 4]
    assert c["chosen_steps"] in (1, 4) and all(0 <= b["bound"] for b in c["budgets"])
  verdicts = theory.judge(a)
  assert all(v.line().split()[0] in ("PASS", "FAIL", "INCONCLUSIVE") for v in verdicts)
  assert any("certified-arm" in v.claim for v in verdicts)  # the bound reads the certified arm
  assert any("hard-tilted" in v.claim for v in verdicts)  # G_ext on the second test mixture
  # the power block: this run's design (3 seeds at hard n=8), a power per judged claim
  block = a["power"]
  assert block["design"]["seeds_at"]["hard@8"] == 3 and block["reps"] == cfg.power_reps
  assert block["power"] and all(0 <= p["pass"] <= 1 for p in block["power"].values())

  def boom(*args, **kwargs):
    raise AssertionError("train called on a cached study")

  monkeypatch.setattr(tr, "train", boom)
  study.run_study(cfg, tmp_path / "a", progress=False)
  again = json.loads((tmp_path / "a" / "results.json").read_text())
  assert _without_times(again) == _without_times(b)
  assert second["preset"] == "micro"
