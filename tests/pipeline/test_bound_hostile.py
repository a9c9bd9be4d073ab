"""Hostile inputs to `pacbayes bound`: each gives exit status 2, one line on stderr naming the
flag, file, line or key, no traceback, no report written, and no input changed.

Every option the command has is covered by at least one case; most are refused before any
weight is read (the cases that need the weights say so).
"""

import hashlib
import os

import pytest

from pacbayes.cli.main import main
from tests.helpers.bound_pairs import build, successor_rows, write_jsonl


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """The pair of test_bound_command plus hostile files in a folder of their own."""
  p = dict(build())
  root = tmp_path_factory.mktemp("hostile")
  rows = successor_rows(12, 5, difficulty=[2, 3])
  for name, value in (("string", "hard"), ("null", None), ("bool", True), ("list", [2]),
                      ("missing", ...)):
    bad = [dict(r) for r in rows]
    if value is ...:
      del bad[4]["difficulty"]
    else:
      bad[4]["difficulty"] = value
    p[f"test_{name}"] = write_jsonl(root / f"test_{name}.jsonl", bad)
  long_rows = successor_rows(5, 6, difficulty=[1])
  long_rows[2]["input_ids"] = long_rows[2]["input_ids"] * 3  # 24 tokens > context 16
  p["train_long"] = write_jsonl(root / "train_long.jsonl", long_rows)
  for name, text in (("mix_not_json", "{oops"), ("mix_list", "[0.5, 0.5]"),
                     ("mix_negative", '{"1": -0.5, "2": 1.5}'), ("mix_sum", '{"1": 0.5}'),
                     ("mix_key", '{"easy": 1.0}'), ("mix_outside", '{"1": 0.5, "9": 0.5}'),
                     ("mix_one", '{"1": 1.0}')):
    (root / f"{name}.json").write_text(text)
    p[name] = str(root / f"{name}.json")
  p["folder"] = str(root)
  return p


def _snapshot(p):
  out = {}
  for key in ("prior", "posterior", "train", "test", "plain", "mix_one"):
    path = p[key]
    items = ([os.path.join(path, f) for f in sorted(os.listdir(path))] if os.path.isdir(path)
             else [path])
    for item in items:
      with open(item, "rb") as f:
        out[item] = (hashlib.sha256(f.read()).hexdigest(), os.stat(item).st_mtime_ns)
  return out


def _cases(p, tmp):
  """(id, args after the base ones, text the error line must contain, base overrides)."""
  t = ["--test", p["test"]]
  return [
      ("grid_and_prior", ["--sigma-grid", "1e-3", "--sigma-prior", "1e-3"], "--sigma-prior", {}),
      ("chunk_with_passes", ["--mc-scheme", "passes", "--chunk-size", "4"], "--chunk-size", {}),
      ("draws_and_chunk", ["--draws", "10", "--chunk-size", "4"], "--draws", {}),
      ("draws_zero", ["--draws", "0"], "--draws", {}),
      ("alpha_without_nll", ["--alpha", "0.1"], "--alpha", {}),
      ("alpha_range", ["--loss", "smoothed_nll", "--alpha", "1.5"], "--alpha", {}),
      ("loss_bad", ["--loss", "zero_one"], "--loss", {}),
      ("per_step_and_memory", ["--draws-per-step", "2", "--max-memory", "1G"],
       "--draws-per-step", {}),
      ("memory_bad", ["--max-memory", "lots"], "--max-memory", {}),
      ("memory_tiny", ["--max-memory", "10"], "--max-memory", {}),
      ("seed_negative", ["--seed", "-1"], "--seed", {}),
      ("seed_huge", ["--seed", str(2**64)], "--seed", {}),
      ("seed_float", ["--seed", "1e3"], "--seed", {}),
      ("batch_huge", ["--batch-size", "100000000"], "--batch-size", {}),
      ("batch_float", ["--batch-size", "1e8"], "--batch-size", {}),
      ("delta_zero", ["--delta", "0"], "--delta", {}),
      ("delta_nan", ["--delta", "nan"], "--delta", {}),
      ("dtype_bad", ["--dtype", "float16"], "--dtype", {}),
      ("method_bad", ["--method", "bogus"], "--method", {}),
      ("feature_bad", [*t, "--shift-feature", "tfidf"], "--shift-feature", {}),
      ("max_length_zero", ["--max-length", "0"], "--max-length", {}),
      ("max_length_beyond_context", ["--max-length", "100"], "--max-length", {}),
      ("row_beyond_context", [], "train_long.jsonl:3", {"train": p["train_long"]}),
      ("mixture_missing", ["--test-mixture", str(tmp / "nope.json")], "--test-mixture", {}),
      ("mixture_folder", ["--test-mixture", p["folder"]], "--test-mixture", {}),
      ("mixture_not_json", ["--test-mixture", p["mix_not_json"]], "mix_not_json.json", {}),
      ("mixture_list", ["--test-mixture", p["mix_list"]], "mix_list.json", {}),
      ("mixture_negative", ["--test-mixture", p["mix_negative"]], "mix_negative.json", {}),
      ("mixture_sum", ["--test-mixture", p["mix_sum"]], "mix_sum.json", {}),
      ("mixture_key", ["--test-mixture", p["mix_key"]], "easy", {}),
      ("mixture_outside_support", ["--test-mixture", p["mix_outside"], "--difficulty-support",
                                   "1", "2", "3", "4"], "mix_outside.json", {}),
      ("mixture_contradicts_test", [*t, "--test-mixture", p["mix_one"]], "test.jsonl:1", {}),
      ("mixture_with_ngram", [*t, "--test-mixture", "uniform", "--shift-feature", "ngram"],
       "--test-mixture", {}),
      ("uniform_without_values", ["--test-mixture", "uniform"], "--test-mixture", {}),
      ("support_without_difficulty", ["--test", p["plain"], "--difficulty-support", "1", "2"],
       "--difficulty-support", {"train": p["plain"]}),
      ("support_with_ngram", [*t, "--shift-feature", "ngram", "--difficulty-support", "1"],
       "--difficulty-support", {}),
      ("support_misses_train_value", [*t, "--difficulty-support", "1", "2"],
       "--difficulty-support", {}),
      ("difficulty_feature_plain_train", [*t, "--shift-feature", "difficulty"],
       "--shift-feature", {"train": p["plain"]}),
      ("support_without_test", ["--difficulty-support", "1", "2", "3"],
       "--difficulty-support", {}),
      *[(f"test_difficulty_{k}", ["--test", p[f"test_{k}"]], f"test_{k}.jsonl:5", {})
        for k in ("string", "null", "bool", "list", "missing")],
      ("include_no_match", ["--include", "transformer.h.*"], "transformer.h.*", {}),
      ("exclude_no_match", ["--exclude", "transformer.wte.weight"], "--exclude", {}),
      ("exclude_moved_parameter", ["--exclude", "*norm*", "--sigma", "1e-3", "--sigma-prior",
                                   "1e-3"], "model.norm.weight", {}),  # after loading
      ("sigma_underflow", ["--sigma", "1e-50", "--sigma-prior", "1e-3"], "--sigma", {}),
      ("sigma_prior_tiny", ["--sigma-prior", "1e-200"], "--sigma-prior", {}),
      ("grid_denormal", ["--sigma-grid", "1e-3", "4e-320"], "--sigma-grid", {}),
      ("grid_repeated", ["--sigma-grid", "1e-3", "1e-3"], "--sigma-grid", {}),
      ("out_is_train", [], "--out", {"out": p["train"]}),
      ("out_in_posterior", [], "--out",
       {"out": os.path.join(p["posterior"], "config.json")}),
      ("out_is_folder", [], "--out", {"out": str(tmp)}),
      ("out_missing_folder", [], "--out", {"out": str(tmp / "nope" / "r.json")}),
      ("test_missing", ["--test", str(tmp / "nope.jsonl")], "--test", {}),
      ("train_folder", [], "--train", {"train": p["folder"]}),
      ("posterior_is_file", [], "train.jsonl", {"posterior": p["train"]}),
      ("prior_missing", [], "--prior", {"prior": str(tmp / "nobase")}),
      ("posterior_missing", [], "--posterior", {"posterior": str(tmp / "nosft")}),
      ("architecture", [], "different architectures", {"posterior": p["wide"]}),
      ("chat_template_without_tokenizer", ["--chat-template"], "tokenizer", {}),
  ]


CASE_IDS = [c[0] for c in _cases({k: "x" for k in (
    "test", "train_long", "folder", "mix_not_json", "mix_list", "mix_negative", "mix_sum",
    "mix_key", "mix_outside", "mix_one", "plain", "posterior", "train", "wide",
    *[f"test_{k}" for k in ("string", "null", "bool", "list", "missing")])},
    __import__("pathlib").Path("/x"))]


def test_enough_cases():
  assert len(CASE_IDS) >= 40 and len(set(CASE_IDS)) == len(CASE_IDS)


@pytest.mark.parametrize("case", CASE_IDS)
def test_hostile_input(files, tmp_path, capsys, case):
  cases = {c[0]: c for c in _cases(files, tmp_path)}
  _, extra, expected, override = cases[case]
  out = override.get("out", str(tmp_path / "report.json"))
  out_existed = os.path.exists(out)
  args = ["bound", "--prior", override.get("prior", files["prior"]),
          "--posterior", override.get("posterior", files["posterior"]),
          "--train", override.get("train", files["train"]), "--quiet", "--out", out, *extra]
  before = _snapshot(files)
  try:
    code = main(args)
  except SystemExit as e:
    code = e.code
  err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  assert code == 2, err
  assert len(err) == 1, err
  assert "Traceback" not in err[0] and err[0].startswith("pacbayes")
  assert expected in err[0], err[0]
  if not out_existed:
    assert not os.path.exists(out)
  assert _snapshot(files) == before
