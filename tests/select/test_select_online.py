"""`pacbayes select --model`: pilots fine-tuned per bucket on a tiny Llama, end to end in
process, its numbers checked by hand, a rerun that reuses every pilot, and its refusals.

The pool is synthetic (`pacbayes.data.synthetic`, difficulty = number of operations, 1 or 2;
two difficulties keep the compiles, most of the time on a CPU, to two training programs);
a row of difficulty d has exactly prompt_length(d) + completion_length(d) tokens, so the
pilots' training tokens are known in closed form. The module shares one JAX compilation
cache (the command keeps a cache the caller configured), so the second test compiles no
training program the first one compiled.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from pacbayes.data.synthetic.datasets import generate_dataset, write_jsonl
from pacbayes.data.synthetic.problems import completion_length, prompt_length
from pacbayes.data.synthetic.tokenizer import VOCAB_SIZE
from pacbayes.select import pool as pl
from tests.helpers.models import save_tiny_llama, tiny_llama_config

BUDGET = 64  # pilots N/16, N/8, N/4 = 4, 8, 16 rows
FAST = ("--seeds", "2", "--epochs", "1", "--min-steps", "2", "--batch-size", "4",
        "--lr", "1e-2", "--mesh", "data=1", "--bootstrap", "200", "--no-progress")


def _tokens(d):
  return prompt_length(d) + completion_length(d)


@pytest.fixture(scope="module", autouse=True)
def shared_compilation_cache(tmp_path_factory):
  import jax
  from jax.experimental.compilation_cache import compilation_cache as cc

  old = (jax.config.jax_compilation_cache_dir,
         jax.config.jax_persistent_cache_min_compile_time_secs)
  cc.reset_cache()
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  yield
  cc.reset_cache()
  jax.config.update("jax_compilation_cache_dir", old[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("select_online")
  base = save_tiny_llama(root / "base", config=tiny_llama_config(vocab_size=VOCAB_SIZE))
  pool = [r for d in (1, 2) for r in generate_dataset(40, d, seed=d)]
  test = [r for d in (1, 2) for r in generate_dataset(12, d, seed=10 + d)]
  write_jsonl(pool, root / "pool.jsonl")
  write_jsonl(test, root / "test.jsonl")
  return {"root": root, "base": base, "pool": str(root / "pool.jsonl"),
          "test": str(root / "test.jsonl"), "rows": pool}




def test_online_end_to_end_and_rerun(cli, setup, tmp_path, capsys):
  out, fig, work = tmp_path / "sel.json", tmp_path / "sel.png", tmp_path / "work"
  args = ("--model", setup["base"], "--train", setup["pool"], "--test", setup["test"],
          "--budget", BUDGET, "--work", work, *FAST)
  assert cli(*args, "--out", out, "--figure", fig) == 0
  sel = json.loads(out.read_text())
  assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  src = sel["source"]
  # Default buckets: the thirds of a pool with 40 rows of each of 1 and 2 (ties at the
  # thresholds leave the top third empty: dropped).
  assert [(b["name"], b["difficulty"], b["pool_rows"]) for b in src["buckets"]] == [
      ("easy", [1.0, 1.0], 40), ("medium", [2.0, 2.0], 40)]
  assert src["pilot_sizes"] == [4, 8, 16] and src["seeds"] == 2
  assert src["protocol"]["kind"] == "full"  # a tiny base: full fine-tunes by default
  assert src["protocol"]["steps"] == {"4": 2, "8": 2, "16": 4}
  assert src["target"]["items"] == 24
  runs = sel["pilot_runs"]
  assert len(runs) == 2 * 3 * 2 and not any(r["reused"] for r in runs)
  d_of = {"easy": 1, "medium": 2}
  for r in runs:  # every batch is full: tokens = steps x batch x row length, exactly
    assert r["steps"] == max(2, -(-r["n"] // 4))
    assert r["tokens"] == r["steps"] * 4 * _tokens(d_of[r["bucket"]])
  cost = sel["cost"]
  assert cost["pilot_tokens"] == sum(r["tokens"] for r in runs)
  assert cost["every_bucket_at_budget_steps"] == 16
  assert cost["every_bucket_at_budget_tokens_estimated"] == sum(
      16 * 4 * _tokens(d) for d in (1, 2))
  assert cost["rows_ratio"] == pytest.approx(2 * 28 * 2 / (2 * BUDGET))
  # G_ext: each bucket is one difficulty, the test is uniform over two: TV = 1/2.
  for v in sel["measures"]["g_ext_tv_difficulty"]["by_bucket"].values():
    assert v == pytest.approx(1 / 2)
  assert sel["measures"]["kind"] == "measure (uncertified)"
  assert all(r["g_gen_weight_sq_distance"] > 0 for r in runs)
  # The pilots' numbers in the selection are the runs' risks, grouped by size.
  for row in sel["buckets"]:
    for p in row["pilots"]:
      mine = sorted(r["risk"] for r in runs if r["bucket"] == row["bucket"] and r["n"] == p["n"])
      assert sorted(p["per_seed"]) == pytest.approx(mine)
      assert p["mean"] == pytest.approx(np.mean(mine))
  # A pilot's stored per-item losses give its risk (uniform weights over the test rows).
  record = json.loads(next((work / "pilots").glob("0-easy/n4-s0/pilot.json")).read_text())
  assert len(record["losses"]) == 24
  assert record["record"]["risk"] == pytest.approx(np.mean(record["losses"]))
  assert set(record["losses"]) <= {0.0, 1.0}
  # The base's risk, recomputed here with the loss module on a plain forward pass.
  assert sel["base_risk"] == pytest.approx(_base_seq_error(setup), abs=1e-12)
  assert not list((work / "pilots").glob("*/*/run/*.safetensors"))  # full weights dropped
  shown = capsys.readouterr().out
  assert "cost: the pilots (12 runs" in shown and "nothing here is certified" in shown
  # A rerun with the same --work reuses every pilot and gives the same selection.
  out2 = tmp_path / "again.json"
  assert cli(*args, "--out", out2) == 0
  again = json.loads(out2.read_text())
  assert again["timings"]["reused_pilots"] == 12
  assert [b["pilots"] for b in again["buckets"]] == [b["pilots"] for b in sel["buckets"]]
  assert [b["p_best"] for b in again["buckets"]] == [b["p_best"] for b in sel["buckets"]]


def _base_seq_error(setup):
  import jax

  from pacbayes.data.dataset import load_dataset
  from pacbayes.losses import sequence_error
  from pacbayes.models import load_pretrained

  model, config = load_pretrained(setup["base"])
  data = load_dataset(setup["test"], vocab_size=config.vocab_size)
  logits = jax.jit(lambda x, m: model(x, m))(data.input_ids, data.attention_mask)
  return float(np.mean(np.asarray(sequence_error(logits, data.input_ids, data.loss_mask))))


def test_test_mixture_uses_held_out_pool_rows(cli, setup, tmp_path):
  out, work = tmp_path / "sel.json", tmp_path / "work"
  assert cli("--model", setup["base"], "--train", setup["pool"], "--test-mixture",
             "1:0.25,2:0.75", "--heldout-rows", 4, "--buckets", "1-1", "2-2",
             "--pilot-sizes", 4, 8, "--budget", 32, "--out", out, "--work", work, *FAST) == 0
  sel = json.loads(out.read_text())
  held = sel["source"]["heldout"]["lines"]
  assert sorted(held) == ["1", "2"] and all(len(v) == 4 for v in held.values())
  held_lines = {int(x) for v in held.values() for x in v}
  # No pilot trains on a held-out row.
  rows = setup["rows"]
  for f in (work / "pilots").glob("*/*/train.jsonl"):
    keys = {json.loads(line)["key"] for line in f.read_text().splitlines()}
    assert not keys & {rows[i - 1]["key"] for i in held_lines}
  assert [b["pool_rows"] for b in sel["source"]["buckets"]] == [40 - 4, 40 - 4]
  # Item weights p(d)/4: a pilot's risk is 0.25 x mean(d=1 items) + 0.75 x mean(d=2 items).
  record = json.loads(next((work / "pilots").glob("0-*/n4-s0/pilot.json")).read_text())
  losses = np.array(record["losses"])
  assert record["record"]["risk"] == pytest.approx(0.25 * losses[:4].mean()
                                                  + 0.75 * losses[4:].mean())
  by = sel["measures"]["g_ext_tv_difficulty"]["by_bucket"]
  assert by == pytest.approx({"1-1": 0.75, "2-2": 0.25})  # TV to (1: .25, 2: .75)


def test_pilot_samples_are_disjoint_across_seeds_and_seeded():
  pool = pl.Pool("p", [{}] * 30, list(range(1, 31)), np.repeat([1.0, 2.0], 15))
  buckets = [pl.Bucket("a", 1, 1), pl.Bucket("b", 2, 2)]
  excluded = np.array([0, 16])  # one row of each bucket held out: 14 rows left in each
  samples = pl.pilot_samples(pool, buckets, (2, 5), 2, excluded, seed=4)
  for k in range(2):
    flat = np.concatenate([samples[(k, s)] for s in range(2)])
    assert flat.size == 10 and np.unique(flat).size == 10  # blocks of 5, disjoint seeds
    assert not {0, 16} & set(flat.tolist())  # held-out rows are never drawn
    assert np.all(pool.difficulty_R[flat] == k + 1)
  again = pl.pilot_samples(pool, buckets, (2, 5), 2, excluded, seed=4)
  assert all(np.array_equal(samples[key], again[key]) for key in samples)
  other = pl.pilot_samples(pool, buckets, (2, 5), 2, excluded, seed=5)
  assert any(not np.array_equal(samples[key], other[key]) for key in samples)
  with pytest.raises(ValueError, match=r"bucket a .* 14 rows .* needs 15"):
    pl.pilot_samples(pool, buckets, (2, 5), 3, excluded, seed=4)


def test_default_buckets_are_thirds_and_drop_empty_ones():
  pool = pl.Pool("p", [{}] * 9, list(range(1, 10)), np.array([1, 1, 1, 2, 2, 2, 5, 6, 7.0]))
  assert [(b.name, b.lo, b.hi) for b in pl.default_buckets(pool)] == [
      ("easy", 1, 1), ("medium", 2, 2), ("hard", 5, 7)]
  ties = pl.Pool("p", [{}] * 6, list(range(1, 7)), np.array([1, 1, 1, 1, 1, 2.0]))
  assert [(b.name, b.lo, b.hi) for b in pl.default_buckets(ties)] == [
      ("easy", 1, 1), ("hard", 2, 2)]
  with pytest.raises(ValueError, match="one value"):
    pl.default_buckets(pl.Pool("p", [{}] * 3, [1, 2, 3], np.ones(3)))


def _digest(path):
  return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def short_pool(setup, tmp_path_factory):
  """20 rows of difficulty 1 and 40 of 2; and a copy whose line 3 has no difficulty."""
  root = tmp_path_factory.mktemp("short")
  rows = setup["rows"][:20] + setup["rows"][40:]
  write_jsonl(rows, root / "short.jsonl")
  bad = [dict(r) for r in rows]
  del bad[2]["difficulty"]
  write_jsonl(bad, root / "nodiff.jsonl")
  return {"short": str(root / "short.jsonl"), "nodiff": str(root / "nodiff.jsonl")}


@pytest.mark.parametrize("case, extra, needle", [
    ("few_rows", ("--buckets", "1-1", "2-2"),
     "bucket 1-1 (difficulty in [1, 1]) has 20 rows in --train"),
    ("budget", ("--pilot-sizes", 8, 80), "--budget 64: not above the largest pilot"),
    ("no_difficulty", (), ":3: the row has no 'difficulty'"),
    ("mixture", ("--test-mixture", "1:0.5,7:0.5"),
     "--test-mixture: difficulty 7 has mass 0.5 but no row of --train"),
    ("offline_flag", (), "--train: only with --model"),
    ("bad_bucket", ("--buckets", "1-1", "5-6"), "--buckets 5-6: no row of --train"),
])
def test_refusals_name_the_flag_and_write_nothing(cli, setup, short_pool, tmp_path, capsys,
                                                  case, extra, needle):
  out, fig, work = tmp_path / "sel.json", tmp_path / "sel.png", tmp_path / "work"
  train = short_pool["nodiff" if case == "no_difficulty" else "short"]
  target = () if case == "mixture" else ("--test", setup["test"])
  head = (("--from-results", setup["test"], "--train", train) if case == "offline_flag" else
          ("--model", setup["base"], "--train", train, *target))
  before = {p: _digest(p) for p in (train, setup["test"])}
  listing = sorted(os.listdir(tmp_path))
  status = cli(*head, "--budget", BUDGET, "--out", out, "--figure", fig, "--work", work,
               *FAST, *extra)
  captured = capsys.readouterr()
  err = captured.err.strip()
  assert status == 2
  assert err.count("\n") == 0 and needle in err, err
  assert "Traceback" not in captured.err + captured.out
  assert sorted(os.listdir(tmp_path)) == listing  # no JSON, figure or work folder
  assert {p: _digest(p) for p in before} == before


def test_compilation_cache_is_scoped_and_keeps_a_configured_one(tmp_path):
  import jax

  from pacbayes.select.pilot_eval import compilation_cache

  configured = jax.config.jax_compilation_cache_dir  # the module's shared cache
  with compilation_cache(str(tmp_path / "mine")):
    assert jax.config.jax_compilation_cache_dir == configured  # the caller's is kept
  jax.config.update("jax_compilation_cache_dir", None)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  try:
    with compilation_cache(str(tmp_path / "mine")):
      assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine")
      assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
    assert jax.config.jax_compilation_cache_dir is None
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.5
  finally:
    jax.config.update("jax_compilation_cache_dir", configured)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
