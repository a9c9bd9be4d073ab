"""The one certificate route: `pacbayes bound` and the study's cells give the same certificate.

The same tiny prior / posterior pair (the trained successor-task Llama of test_bound_command),
the same rows with their difficulty, both mixtures known exactly, the same delta, grid, seed
and Monte-Carlo sizes: once through the command line (`pacbayes.cli.main.main`, files on disk,
`BoundConfig` built from the flags) and once through `pacbayes.study.cellcert.certify_cell`
(arrays in memory). Every field of the two certificates must be identical (bit for bit), the
details of the sigma choice and the certifiability check too.
"""

import argparse
import json

import jax
import pytest

from pacbayes.certificate.report import Certificate
from pacbayes.cli import bound as bound_cmd
from pacbayes.cli.main import main
from pacbayes.pipeline.config import COMMAND_ONLY, RENAMED, BoundConfig
from pacbayes.pipeline.load import load_pair, load_training_set, model_loss
from pacbayes.study.cellcert import cell_plan, certify_cell
from tests.helpers.bound_pairs import build, config

TRAIN_MIX = {1: 1 / 3, 2: 1 / 3, 3: 1 / 3}  # train.jsonl cycles difficulty 1, 2, 3
TEST_MIX = {2: 0.25, 3: 0.5, 4: 0.25}
GRID = [1e-4, 1e-3, 1e-2]
SEED, CHUNK, DELTA = 3, 10, 0.05


@pytest.fixture(scope="module")
def pair():
  return build()


def _write(path, mix):
  path.write_text(json.dumps({str(k): v for k, v in mix.items()}))
  return str(path)


def test_cli_and_study_give_identical_certificates(pair, tmp_path, capsys):
  out = tmp_path / "report.json"
  argv = ["bound", "--prior", pair["prior"], "--posterior", pair["posterior"],
          "--train", pair["train"], "--loss", "sequence_error",
          "--train-mixture", _write(tmp_path / "train_mix.json", TRAIN_MIX),
          "--test-mixture", _write(tmp_path / "test_mix.json", TEST_MIX),
          "--sigma-grid", *map(str, GRID), "--chunk-size", str(CHUNK), "--delta", str(DELTA),
          "--seed", str(SEED), "--out", str(out), "--quiet"]
  assert main(argv) == 0
  capsys.readouterr()
  cli = json.loads(out.read_text())

  p = load_pair(pair["prior"], pair["posterior"], dtype="float32")
  loss_fn = model_loss(p.graphdef, p.rest, "sequence_error", {})
  train = load_training_set(pair["train"], tokenizer_dir=pair["posterior"], config=config(),
                            max_length=None, chat_template=False)
  data = {k: getattr(train, k) for k in ("input_ids", "attention_mask", "loss_mask")}
  plan = cell_plan(train.difficulty, train_mixture=TRAIN_MIX, test_mixture=TEST_MIX,
                   delta=DELTA, sigma_grid=GRID, chunk_size=CHUNK, subset_size=256, batch_size=8)
  study = certify_cell(loss_fn, p.params_p, p.params_q, data, plan, key=jax.random.key(SEED))

  # Paths, timings, the command's own remarks, and the uncertified measures and estimates that
  # only the command computes (they sit beside the certificate, not in it).
  skip = {"extra", "notes", "measures", "estimates"}
  differ = {k: (cli[k], study.get(k)) for k in cli if k not in skip and cli[k] != study.get(k)}
  assert not differ, differ
  for key in ("sigma_search", "per_grid", "feasibility", "unperturbed_risk",
              "unperturbed_by_slice", "grid_index", "sigma_grid"):
    assert cli["extra"][key] == study["extra"][key], key
  # Every kind the plan pays for, in both: TV (exact), mixture shift, weighted, per slice.
  assert [k["name"] for k in cli["extrapolation"]] == ["tv", "mixture_shift", "weighted",
                                                       "per_slice"]
  assert [k for k, _ in cli["delta_parts"]] == ["mc", "pb", "weighted_mc", "weighted_pb",
                                                "slice_mc", "slice_pb"]
  cert = Certificate.from_dict(cli)
  assert cert.best_possible_bound is not None and cert.best_possible_bound <= cert.b_train
  assert study["sigma_choice"]["sigma_p"] == cert.sigma_p
  assert study["sq_distance"] == cli["extra"]["sq_distance"]


def test_bound_config_is_built_from_every_flag_by_a_checked_mapping():
  parser = argparse.ArgumentParser()
  bound_cmd.add_parser(parser.add_subparsers(dest="command"))
  args = parser.parse_args(["bound", "--prior", "p", "--posterior", "q", "--train", "t.jsonl",
                            "--draws", "7", "--quiet", "--sigma-grid", "1e-3", "2e-3"])
  cfg = BoundConfig.from_args(args)
  assert cfg.num_draws == 7 and cfg.progress is False and cfg.sigma_grid == (1e-3, 2e-3)
  fields = {f for f in BoundConfig.__dataclass_fields__}
  dests = set(vars(args))
  # Every flag lands in a field (renamed or of the same name) or belongs to the command.
  assert dests - set(COMMAND_ONLY) - set(RENAMED) <= fields
  # Every field but the library-only ones is set by some flag.
  covered = (dests - set(COMMAND_ONLY) - set(RENAMED)) | set(RENAMED.values())
  assert fields - covered == {"mesh", "progress"}
  with pytest.raises(ValueError, match="'surprise' has no field"):
    BoundConfig.from_args({**vars(args), "surprise": 1})
