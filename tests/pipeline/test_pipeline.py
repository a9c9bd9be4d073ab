"""Tests for pacbayes.pipeline.run and the input/shift/loading stages of `pacbayes bound`.

Cheap unit tests on toys and small files; the end-to-end runs on trained checkpoints are in
test_bound_command.py (whose pair this module reuses for the API-level checks).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pacbayes.bounds.delta import DeltaPlan
from pacbayes.certificate.core import certify
from pacbayes.cli.bound import flag_message
from pacbayes.data import tokenize
from pacbayes.data.jsonl import DataError
from pacbayes.pipeline import inputs as bi
from pacbayes.pipeline import run as pipeline
from pacbayes.pipeline import shift_terms as bound_shift
from pacbayes.pipeline.config import BoundConfig
from pacbayes.pipeline.load import load_training_set
from pacbayes.posterior.sigma import DEFAULT_SIGMA_GRID, plan_sigma
from tests.helpers.bound_pairs import build, config, successor_rows, write_jsonl
from tests.helpers.toy import toy, zero_one

# ------------------------------------------------------------- certify_params on a toy


FAST = dict(chunk_size=8, batch_size=8, progress=False, mesh=None)


def test_certify_params_chooses_the_grid_point_of_the_smallest_bound():
  post, data = toy()
  prior = {"w": post["w"] * 0.9}
  grid = [0.1, 0.3, 1.0, 3.0]
  cert = pipeline.certify_params(zero_one, prior, post, data, key=jax.random.key(0),
                                 sigma_grid=grid, loss_name="zero_one", **FAST)
  assert cert.grid_size == 4 and cert.sigma_p in grid and cert.sigma_q > 0
  assert cert.num_mc == 8 and cert.loss == "zero_one"
  per_grid = cert.extra["per_grid"]
  assert [g["sigma_p"] for g in per_grid] == grid
  assert cert.bound == min(g["bound"] for g in per_grid)
  # Independent: the same Monte-Carlo numbers at each grid point, through certify directly.
  parts = dict(cert.delta_parts)
  d2 = float(np.sum((np.asarray(post["w"], np.float64) - np.asarray(prior["w"], np.float64))
                    ** 2))
  totals = []
  for s in grid:
    r = cert.sigma_q**2 / s**2
    kl = 0.5 * (4 * r - 4 - 4 * math.log(r) + d2 / s**2)
    c = certify(cert.emp_risk, cert.num_mc, kl, cert.n,
                deltas=DeltaPlan((("mc", parts["mc"]), ("pb", parts["pb"]))), grid_size=4)
    totals.append((c.bound, kl, s))
  assert cert.sigma_p == min(totals)[2]
  assert cert.bound == pytest.approx(min(totals)[0], rel=1e-12)
  assert "searched" in cert.extra["sigma_search"]["how"]


def test_certify_params_fixed_sigma_is_reported_as_given():
  post, data = toy()
  prior = {"w": post["w"] * 0.9}
  cert = pipeline.certify_params(zero_one, prior, post, data, key=jax.random.key(0),
                                 sigma_q=0.1, sigma_prior=0.3, **FAST)
  assert cert.sigma_q == 0.1 and cert.sigma_p == 0.3 and cert.grid_size == 1
  assert cert.extra["sigma_search"]["how"].startswith("sigma_q fixed")
  default = pipeline.certify_params(zero_one, prior, post, data, key=jax.random.key(0),
                                    sigma_q=0.1, **FAST)
  assert default.grid_size == len(DEFAULT_SIGMA_GRID)
  assert default.extra["sigma_grid_source"] == "default"
  assert any("DEFAULT grid" in note for note in default.notes)


def test_prior_given_as_a_loader_is_released_before_the_monte_carlo(monkeypatch):
  """A prior handed over as a function (as `pacbayes bound` does) is called once, gives the
  same certificate (isotropic and diagonal posteriors) and is no longer alive when the Monte
  Carlo runs."""
  import gc
  import weakref

  from pacbayes.certificate import route

  post, data = toy()
  refs, dead_at_mc = [], []
  real = route.mc_risk

  def spy(*args, **kw):
    gc.collect()
    dead_at_mc.append(refs[-1]() is None if refs else None)
    return real(*args, **kw)

  monkeypatch.setattr(route, "mc_risk", spy)
  for sigma_q in (0.1, {"w": jnp.full_like(post["w"], 0.1)}):
    refs.clear()
    want = pipeline.certify_params(zero_one, {"w": post["w"] * 0.9}, post, data,
                                   key=jax.random.key(0), sigma_q=sigma_q, sigma_prior=0.3,
                                   **FAST)
    holder = [{"w": post["w"] * 0.9}]
    refs.append(weakref.ref(holder[0]["w"]))
    got = pipeline.certify_params(zero_one, holder.pop, post, data, key=jax.random.key(0),
                                  sigma_q=sigma_q, sigma_prior=0.3, **FAST)  # pop: once only
    assert got.bound == want.bound and got.kl == want.kl and got.kl > 0
  assert dead_at_mc == [None, True, None, True]


def test_certify_params_refuses_bad_inputs():
  post, data = toy()
  prior = {"w": post["w"] * 0.9}
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="different parameters"):
    pipeline.certify_params(zero_one, {"v": prior["w"]}, post, data, key=key, sigma_q=0.1,
                            sigma_prior=0.1, **FAST)
  with pytest.raises(ValueError, match="shape"):
    pipeline.certify_params(zero_one, {"w": jnp.zeros(5)}, post, data, key=key, sigma_q=0.1,
                            sigma_prior=0.1, **FAST)
  with pytest.raises(ValueError, match="sigma_grid"):
    pipeline.certify_params(zero_one, prior, post, data, key=key, sigma_q=0.1,
                            sigma_grid=[0.1, 0.0], **FAST)
  with pytest.raises(ValueError, match="sigma_grid and sigma_prior"):
    pipeline.certify_params(zero_one, prior, post, data, key=key, sigma_grid=[0.1],
                            sigma_prior=0.1, **FAST)
  with pytest.raises(ValueError, match="infinite"):
    pipeline.certify_params(zero_one, prior, post, data, key=key, sigma_q=0.1,
                            sigma_prior=0.1, mask={"w": False}, **FAST)


# ------------------------------------------------------------------------- input checks


def test_delta_plan_sums_to_delta():
  for kw in ({}, {"tv": True}, {"tv": True, "mixture": True, "per_slice": True}):
    parts = DeltaPlan.for_kinds(0.05, **kw).as_dict()
    assert math.fsum(parts.values()) == 0.05
    assert len(set(parts.values())) <= 2  # equal shares (the last absorbs rounding)
  assert DeltaPlan.for_kinds(0.05, tv=True, mixture=True, per_slice=True).names == (
      "mc", "pb", "tv", "mixture", "slice_mc", "slice_pb")


def test_sigma_plan_rules():
  grid = (1e-3, 1e-2)
  assert plan_sigma(None, None, None, grid).grid_source == "default"
  assert "DEFAULT grid" in plan_sigma(1e-3, None, None, grid).describe()
  p = plan_sigma(1e-3, [1e-4, 3e-4], None, grid)
  assert p.sigma_q == 1e-3 and p.grid == (1e-4, 3e-4) and p.grid_source == "sigma_grid"
  assert plan_sigma(None, None, 2e-3, grid).grid == (2e-3,)
  with pytest.raises(ValueError, match="sigma_grid and sigma_prior"):
    plan_sigma(None, [1e-3], 1e-3, grid)
  for bad in (0.0, -1.0, math.inf, math.nan, True):
    with pytest.raises(ValueError, match="sigma"):
      plan_sigma(bad, None, None, grid)


def test_seed_and_sizes():
  assert bi.check_seed(2**32 - 1) == 2**32 - 1
  for bad in (-1, 2**32, 2**64, 1.0, True, "3"):
    with pytest.raises(ValueError, match="seed"):
      bi.check_seed(bad)
  with pytest.raises(ValueError, match="beyond reason"):
    bi.check_batch_size(10**8)


@pytest.mark.parametrize("requested, train_d, test, mixture, support, expected", [
    (None, True, True, False, False, "difficulty"),
    (None, False, True, False, False, "ngram"),
    (None, True, False, True, False, "difficulty"),
    ("ngram", True, True, False, False, "ngram"),
    ("embedding", False, True, False, False, "embedding"),
    (None, True, False, False, False, None),
])
def test_shift_feature_rule(requested, train_d, test, mixture, support, expected):
  assert bi.choose_shift_feature(requested, train_has_difficulty=train_d, test_given=test,
                                 mixture_given=mixture, support_given=support) == expected


@pytest.mark.parametrize("kw, message", [
    (dict(requested="difficulty", train_has_difficulty=False, test_given=True), "difficulty"),
    (dict(requested=None, train_has_difficulty=False, test_given=False, mixture_given=True),
     "test_mixture"),
    (dict(requested="ngram", train_has_difficulty=True, test_given=True, mixture_given=True),
     "test_mixture"),
    (dict(requested="ngram", train_has_difficulty=True, test_given=True, support_given=True),
     "difficulty_support"),
    (dict(requested=None, train_has_difficulty=True, test_given=False, support_given=True),
     "difficulty_support"),
    (dict(requested="tfidf", train_has_difficulty=True, test_given=True), "shift_feature"),
])
def test_shift_feature_refusals(kw, message):
  kw = {"mixture_given": False, "support_given": False, **kw}
  with pytest.raises(ValueError, match=message):
    bi.choose_shift_feature(kw.pop("requested"), **kw)


@pytest.mark.parametrize("value", ['"hard"', "null", "true", "[2]", '{"d": 2}', "Infinity",
                                   None])
def test_read_difficulty_refuses_a_bad_row_with_file_and_line(tmp_path, value):
  lines = ['{"input_ids": [1, 2], "difficulty": 1}'] * 4
  lines[2] = ('{"input_ids": [1, 2]}' if value is None else
              '{"input_ids": [1, 2], "difficulty": ' + value + "}")
  path = tmp_path / "t.jsonl"
  path.write_text("\n".join(lines) + "\n")
  with pytest.raises(DataError, match=r"t\.jsonl:3"):
    bi.read_difficulty(path)


def test_read_difficulty_without_any(tmp_path):
  path = write_jsonl(tmp_path / "p.jsonl", successor_rows(3, 0))
  values, lines = bi.read_difficulty(path)
  assert values is None and lines == [1, 2, 3]


# ------------------------------------------------------------------------- shift stage


@pytest.fixture
def difficulty_files(tmp_path):
  train = write_jsonl(tmp_path / "train.jsonl", successor_rows(30, 0, difficulty=[1, 2, 3]))
  test = write_jsonl(tmp_path / "test.jsonl", successor_rows(30, 1, difficulty=[2, 3]))
  return train, test, np.asarray([1, 2, 3] * 10, np.float64)


def test_plan_shift_mixtures(difficulty_files, tmp_path):
  train, test, d = difficulty_files
  kw = dict(train_difficulty=d, shift_feature=None)
  p = bound_shift.plan_shift(train, test, test_mixture="uniform", difficulty_support=None, **kw)
  assert p.mixture == {2.0: 0.5, 3.0: 0.5} and "observed support" in p.mixture_source
  p = bound_shift.plan_shift(train, None, test_mixture="uniform",
                             difficulty_support=[1, 2, 3, 4], **kw)
  assert p.mixture == {v: 0.25 for v in (1.0, 2.0, 3.0, 4.0)}
  assert "given difficulty support" in p.mixture_source
  with pytest.raises(ValueError, match="test_mixture: 'uniform' needs"):
    bound_shift.plan_shift(train, None, test_mixture="uniform", difficulty_support=None, **kw)
  mix = tmp_path / "mix.json"
  mix.write_text('{"2": 0.25, "3": 0.75}')
  p = bound_shift.plan_shift(train, test, test_mixture=str(mix), difficulty_support=None, **kw)
  assert p.mixture == {2.0: 0.25, 3.0: 0.75} and p.feature == "difficulty"
  mix.write_text('{"3": 1.0}')
  with pytest.raises(ValueError, match=r"test\.jsonl:1: difficulty 2 has no mass"):
    bound_shift.plan_shift(train, test, test_mixture=str(mix), difficulty_support=None, **kw)
  with pytest.raises(ValueError, match=r"difficulty 3 is not in difficulty_support"):
    bound_shift.plan_shift(train, test, test_mixture=None, difficulty_support=[1, 2], **kw)
  plain = write_jsonl(tmp_path / "plain.jsonl", successor_rows(5, 0))
  with pytest.raises(ValueError, match=r"plain\.jsonl:1: the test rows carry no"):
    bound_shift.plan_shift(train, plain, test_mixture=None, difficulty_support=None, **kw)


def test_one_pool_check_refutes_another_pool(tmp_path):
  n = 200
  train = write_jsonl(tmp_path / "a.jsonl", successor_rows(n, 0, difficulty=[1, 2]))
  same = write_jsonl(tmp_path / "b.jsonl", successor_rows(n, 1, difficulty=[2, 2, 1]))
  other = write_jsonl(tmp_path / "c.jsonl", successor_rows(n, 2, step=-1, difficulty=[1, 2]))
  ok = bound_shift.check_one_pool(train, same, 0.3, delta=0.05, seed=0)
  assert not ok["refuted"] and ok["tv_lower"] <= 0.3
  bad = bound_shift.check_one_pool(train, other, 0.3, delta=0.05, seed=0)
  assert bad["refuted"] and bad["tv_lower"] > 0.3 and "one pool" in bad["reason"]


def test_flag_message():
  assert flag_message("sigma_grid[1]=4e-320 underflows") == "--sigma-grid[1]=4e-320 underflows"
  assert flag_message("difficulty_support: no") == "--difficulty-support: no"
  assert flag_message("sigma_q: 0.1; delta = 3") == "sigma_q: 0.1; delta = 3"


# --------------------------------------------------------------- tokenizer, lengths


def _chat_tokenizer_dir(tmp_path, template=True):
  from tokenizers import Tokenizer, models, pre_tokenizers, processors
  from transformers import PreTrainedTokenizerFast

  vocab = {"<pad>": 0, "<s>": 1, **{f"w{i}": i for i in range(2, 32)}}
  tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.add_special_tokens(["<pad>", "<s>"])
  tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
  hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>")
  if template:
    hf.chat_template = ("{{ bos_token }}{% for m in messages %}w2 {{ m['content'] }} w3"
                        "{% endfor %}{% if add_generation_prompt %} w4{% endif %}")
  folder = tmp_path / ("tok" if template else "plain_tok")
  hf.save_pretrained(folder)
  return str(folder)


def test_chat_template_renders_the_prompt_once_with_bos(tmp_path):
  folder = _chat_tokenizer_dir(tmp_path)
  tok = tokenize.load_tokenizer(folder)
  assert tokenize.render_chat_prompts(tok, ["w10 w11"]) == ["w2 w10 w11 w3 w4"]
  rows = [{"prompt": "w10 w11", "completion": "w12"}]
  path = write_jsonl(tmp_path / "chat.jsonl", rows)
  ds = load_training_set(path, tokenizer_dir=folder, config=config(), max_length=None,
                         chat_template=True)
  assert ds.input_ids[0].tolist() == [1, 2, 10, 11, 3, 4, 12]  # one BOS, then the template
  assert ds.loss_mask[0].tolist() == [0, 0, 0, 0, 0, 0, 1]  # only the completion is scored
  plain = load_training_set(path, tokenizer_dir=folder, config=config(), max_length=None,
                            chat_template=False)
  assert plain.input_ids[0].tolist() == [1, 10, 11, 12]
  copy = [dict(r) for r in rows]
  tokenize.apply_chat_template_rows(copy, tok, source="x", line_numbers=[1])
  assert copy == rows  # inputs are not modified


def test_chat_template_refusals(tmp_path):
  folder = _chat_tokenizer_dir(tmp_path, template=False)
  tok = tokenize.load_tokenizer(folder)
  with pytest.raises(DataError, match="has no chat template"):
    tokenize.render_chat_prompts(tok, ["w2"], tokenizer_dir=folder)
  tok.chat_template = "{{ messages[0]['content'] }}"
  with pytest.raises(DataError, match=r"data\.jsonl:7: --chat-template renders"):
    tokenize.apply_chat_template_rows([{"input_ids": [1, 2]}], tok, source="data.jsonl",
                                      line_numbers=[7])


def test_lengths_refused_beyond_the_context_or_truncated(tmp_path):
  rows = successor_rows(4, 0)
  rows[1]["input_ids"] = rows[1]["input_ids"] * 3  # 24 tokens, context 16
  path = write_jsonl(tmp_path / "long.jsonl", rows)
  with pytest.raises(DataError, match=r"long\.jsonl:2: .*max_position_embeddings"):
    load_training_set(path, tokenizer_dir=None, config=config(), max_length=None,
                      chat_template=False)
  ds = load_training_set(path, tokenizer_dir=None, config=config(), max_length=8,
                         chat_template=False)
  assert ds.num_truncated == 1 and ds.input_ids.shape[1] == 8
  with pytest.raises(DataError, match="max_length: 32 exceeds the model's context"):
    load_training_set(path, tokenizer_dir=None, config=config(), max_length=32,
                      chat_template=False)


# ------------------------------------------------------------------- run_bound (API)


def test_run_bound_estimate_kind_and_mesh_agree():
  """Without difficulty: the n-gram estimate kind; one device and the 8-device mesh agree."""
  p = build()
  kw = dict(sigma=1e-3, sigma_prior=1e-3, chunk_size=10, progress=False, seed=3,
            measure_rows=16, measure_steps=2)
  a = pipeline.run_bound(BoundConfig(p["prior"], p["posterior"], p["plain"], p["plain"],
                                     mesh=None, **kw))
  b = pipeline.run_bound(BoundConfig(p["prior"], p["posterior"], p["plain"], p["plain"],
                                     mesh="auto", **kw))
  assert a.g_ext_kind == "estimate" and a.extra["shift"]["feature"] == "ngram"
  assert "ngram: the training rows carry no difficulty" in a.extra["shift"]["rule"]
  assert a.emp_risk == b.emp_risk and a.kl == b.kl and a.bound == b.bound
  assert "shift_check" not in a.extra  # no certified kind, nothing to cross-check
  assert a.delta_parts == b.delta_parts and math.fsum(v for _, v in a.delta_parts) == 0.05
  # The measures do not depend on the mesh either.
  for name in ("finetune_risk_train", "g_gen_sharpness"):
    assert a.extra["measures"][name]["value"] == b.extra["measures"][name]["value"]
