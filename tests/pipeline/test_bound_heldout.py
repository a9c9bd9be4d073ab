"""`pacbayes bound --held-out` end to end on the synthetic task, its refusals, and the measures.

A tiny Llama (the synthetic vocabulary) is fine-tuned with `finetune --holdout 0.3` (LoRA); then
`bound --held-out` must certify the fine-tuned weights on exactly the held-out rows: the bound
is the exact binomial tail of their errors (checked here against scipy), at or above their
measured risk, the PAC-Bayes part uses the other rows only, and the report carries the
measures and estimates (top level and `extra.measures`, which `pacbayes plot` reads).
"""

import json
import shutil

import numpy as np
import pytest
from scipy import stats

from pacbayes.cli.main import main
from pacbayes.data.synthetic import generate_problems, problem_to_row
from pacbayes.data.synthetic.tokenizer import VOCAB_SIZE
from tests.helpers.jsonl import write_jsonl
from tests.helpers.models import save_tiny_llama, tiny_llama_config

FAST = ["--sigma", "1e-3", "--sigma-prior", "1e-3", "--batch-size", "16", "--measure-rows",
        "8", "--measure-steps", "2", "--quiet"]


def _rows(n, ops, seed):
  return [problem_to_row(p) for p in generate_problems(n, list(ops), seed=seed)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  root = tmp_path_factory.mktemp("heldout")
  cfg = tiny_llama_config(vocab_size=VOCAB_SIZE, max_position_embeddings=128)
  save_tiny_llama(root / "base", seed=0, config=cfg)
  write_jsonl(root / "train.jsonl", _rows(40, (1, 2), seed=1))
  write_jsonl(root / "test.jsonl", _rows(12, (1, 2), seed=2))
  (root / "mixture.json").write_text(json.dumps({"1": 0.5, "2": 0.5}))
  common = ["finetune", "--model", str(root / "base"), "--train", str(root / "train.jsonl"),
            "--lora-rank", "2", "--steps", "4", "--batch-size", "8", "--lr", "1e-2",
            "--no-progress"]
  assert main([*common, "--out", str(root / "held"), "--holdout", "0.3"]) == 0
  shutil.copytree(root / "held", root / "plain")  # the same adapter without its record
  (root / "plain" / "holdout.json").unlink()
  return root


def _bound(world, posterior, out, *extra, train=None):
  return main(["bound", "--prior", str(world / "base"), "--posterior", str(posterior),
               "--train", str(train or world / "train.jsonl"), "--out", str(out),
               *FAST, *extra])


def test_held_out_end_to_end(world, tmp_path, capsys):
  out = tmp_path / "report.json"
  code = _bound(world, world / "held", out, "--held-out", "--loss", "sequence_error",
                "--test", str(world / "test.jsonl"), "--test-mixture", str(world / "mixture.json"))
  text = capsys.readouterr().out
  assert code == 0
  report = json.loads(out.read_text())
  held = report["heldout"]
  record = json.loads((world / "held" / "holdout.json").read_text())
  m = len(record["held_out_lines"])
  assert held["m"] == m == 12 and report["n"] == 40 - m  # PAC-Bayes on the training rows only
  assert held["kind"] == "held-out test-set bound on the fine-tuned weights"
  assert "were not used for training" in held["not_used_for_training"]
  # The bound is the exact binomial tail of the held-out errors (Langford 2005, Thm 3.3).
  k = round(held["errors"])
  delta_h = dict(held["delta_parts"])["heldout"]
  assert held["bound_train"] >= held["emp_risk"] == pytest.approx(k / m)
  if k < m:
    assert stats.binom.cdf(k, m, held["bound_train"]) == pytest.approx(delta_h, rel=1e-6)
  for sl in held["slices"]:
    assert sl["bound"] >= (sl["emp_risk"] or 0.0)
  assert held["bound_test"] is not None and held["bound_test"] >= min(
      s["emp_risk"] for s in held["slices"] if s["emp_risk"] is not None)
  # Measures and estimates, in words, at the top level and where `plot` reads them.
  assert {"g_gen_sharpness", "g_ext_tv_difficulty"} <= set(report["measures"])
  assert {"finetune_risk_train", "finetune_risk_test", "base_risk_test",
          "finetune_risk_test_plugin"} <= set(report["estimates"])
  sharp = report["measures"]["g_gen_sharpness"]
  assert sharp["value"] == pytest.approx(np.sqrt(sharp["kl"] / (2 * report["n"])))
  assert sharp["subset_rows"] == 8 and "uncertified" in sharp["kind"]
  assert set(report["extra"]["measures"]) == set(report["measures"]) | set(report["estimates"])
  tr = report["estimates"]["finetune_risk_train"]
  assert tr["value"] == pytest.approx(report["extra"]["unperturbed_risk"])
  assert set(tr["by_slice"]) == {"1", "2"}
  assert "held-out test-set bound on the fine-tuned weights" in text
  assert "NOT CERTIFIED" in text and "were not used for training" in text
  assert report["extra"]["adapter"]["base_check"] == "fingerprint"


def test_plain_bound_has_measures_without_heldout(world, tmp_path):
  out = tmp_path / "r.json"
  assert _bound(world, world / "held", out) == 0
  report = json.loads(out.read_text())
  assert "heldout" not in report and report["n"] == 40
  assert "g_gen_sharpness" in report["measures"]
  assert set(report["estimates"]) == {"finetune_risk_train"}


def _refused(capsys, code):
  err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
  assert code == 2 and len(err) == 1, err
  assert "Traceback" not in err[0]
  return err[0]


def test_refuses_missing_holdout_json(world, tmp_path, capsys):
  line = _refused(capsys, _bound(world, world / "plain", tmp_path / "r.json", "--held-out"))
  assert str(world / "plain") in line and "--held-out" in line and "holdout.json" in line


def test_refuses_full_model_without_holdout_json(world, tmp_path, capsys):
  full = save_tiny_llama(tmp_path / "full", seed=5,
                         config=tiny_llama_config(vocab_size=VOCAB_SIZE,
                                                  max_position_embeddings=128))
  line = _refused(capsys, _bound(world, full, tmp_path / "r.json", "--held-out"))
  assert full in line and "--held-out" in line


def test_refuses_changed_training_file(world, tmp_path, capsys):
  train = tmp_path / "train.jsonl"
  shutil.copy(world / "train.jsonl", train)
  with open(train, "a") as f:
    f.write(json.dumps(_rows(1, (1,), seed=9)[0]) + "\n")
  line = _refused(capsys, _bound(world, world / "held", tmp_path / "r.json", "--held-out",
                                 train=train))
  assert str(train) in line and "sha256" in line
  assert not (tmp_path / "r.json").exists()


def test_refuses_held_out_in_library_without_record(world):
  from pacbayes.pipeline.config import BoundConfig
  from pacbayes.pipeline.run import run_bound

  cfg = BoundConfig(prior=str(world / "base"), posterior=str(world / "plain"),
                    train=str(world / "train.jsonl"), held_out=True, progress=False)
  with pytest.raises(ValueError, match="has no holdout.json"):
    run_bound(cfg)


def test_accept_base_for_an_adapter_without_fingerprint(world, tmp_path, capsys):
  from pacbayes.lora.folder import BASE_FINGERPRINT, INIT_INFO

  adapter = tmp_path / "foreign"
  shutil.copytree(world / "plain", adapter)
  info = json.loads((adapter / INIT_INFO).read_text())
  info.pop(BASE_FINGERPRINT)
  (adapter / INIT_INFO).write_text(json.dumps(info))
  cfg = json.loads((adapter / "adapter_config.json").read_text())
  cfg["base_model_name_or_path"] = "someone/another-name"
  (adapter / "adapter_config.json").write_text(json.dumps(cfg))
  line = _refused(capsys, _bound(world, adapter, tmp_path / "r.json"))
  assert "--accept-base" in line and "another-name" in line
  out = tmp_path / "ok.json"
  assert _bound(world, adapter, out, "--accept-base", "--measure-rows", "0") == 0
  report = json.loads(out.read_text())
  assert report["extra"]["adapter"] == {"base_check": "stated", "accept_base": True}
  assert "g_gen_sharpness" not in report["measures"]


def test_row_format_warning(tmp_path):
  from pacbayes.pipeline.holdout import check_row_format

  (tmp_path / "finetune.json").write_text(json.dumps({"row_format": "chat_template"}))
  line = check_row_format(str(tmp_path), chat_template=False)
  assert line.startswith("warning:") and "without" not in line and "'chat_template'" in line
  assert check_row_format(str(tmp_path), chat_template=True) is None
  assert check_row_format(str(tmp_path / "absent"), chat_template=False) is None


def test_exact_training_mixture_spends_no_delta_on_the_mixtures(world, tmp_path):
  # --train-mixture with an exact --test-mixture: the held-out certificate's mixture is exact
  # (delta 0), so the whole delta goes to the held-out and per-slice bounds, half each; an
  # estimated training mixture charges a third of delta first.
  (tmp_path / "train_mix.json").write_text(json.dumps({"1": 0.5, "2": 0.5}))
  test = ["--held-out", "--loss", "sequence_error", "--test-mixture",
          str(world / "mixture.json")]
  assert _bound(world, world / "held", tmp_path / "exact.json", *test,
                "--train-mixture", str(tmp_path / "train_mix.json")) == 0
  assert _bound(world, world / "held", tmp_path / "est.json", *test) == 0
  exact = json.loads((tmp_path / "exact.json").read_text())["heldout"]
  est = json.loads((tmp_path / "est.json").read_text())["heldout"]
  parts, est_parts = dict(exact["delta_parts"]), dict(est["delta_parts"])
  assert parts["mixture"] == 0.0 and est_parts["mixture"] > 0.0
  assert parts["heldout"] == pytest.approx(0.025) and parts["slices"] == pytest.approx(0.025)
  assert exact["delta"] == pytest.approx(0.05) == pytest.approx(est["delta"])
  assert exact["bound_train"] <= est["bound_train"]  # more delta, same rows: never looser
  assert any("given exactly" in n for n in exact["notes"])
