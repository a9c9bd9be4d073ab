"""Tests for the iGSM-style synthetic task: answers, difficulty, determinism, tokenizer, files."""

import collections
import json
import os

import numpy as np
import pytest

from pacbayes.data import synthetic as syn
from pacbayes.data.jsonl import read_jsonl

OPS = list(range(1, 13))


def _statements(prompt_text):
  """Reference parse: {target: (left, op, right)} in prompt order, and the query."""
  toks = prompt_text.split()
  assert toks[0] == "<bos>" and toks[-1] == "<sep>" and toks[-3] == "?"
  body = " ".join(toks[1:-3])
  defs = {}
  for chunk in body.split(";"):
    if chunk.strip():
      target, eq, left, op, right = chunk.split()
      assert eq == "="
      defs[target] = (left, op, right)
  return defs, toks[-2]


def _needed(defs, query):
  seen, stack = set(), [query]
  while stack:
    v = stack.pop()
    if v in seen:
      continue
    seen.add(v)
    stack += [x for x in (defs[v][0], defs[v][2]) if not x.isdigit()]
  return seen


def _reference_order(defs, query):
  """Canonical order by a plain rescan: the first needed prompt statement that is ready."""
  needed = _needed(defs, query)
  done, order = set(), []
  while len(order) < len(needed):
    for v, (a, _, b) in defs.items():
      if v in needed and v not in done and all(x.isdigit() or x in done for x in (a, b)):
        order.append(v)
        done.add(v)
        break
  return order


@pytest.fixture(scope="module")
def problems():
  rng = np.random.default_rng(1234)
  out = [syn.generate_problem(k, rng=rng) for k in OPS for _ in range(25)]
  out += [syn.generate_problem(k, rng=rng, num_distractors=d) for k in OPS for d in (1, 4)]
  return out


def test_answers_match_independent_evaluator(problems):
  for m in (2, 5, 10):
    rng = np.random.default_rng(m)
    problems = problems + [syn.generate_problem(k, rng=rng, modulus=m) for k in OPS]
  for p in problems:
    assert syn.evaluate_answer(p.prompt, modulus=p.modulus) == p.answer
    assert syn.extract_answer(p.completion) == str(p.answer)
    assert 0 <= p.answer < p.modulus


def test_difficulty_is_op_count_on_solution_path(problems):
  for p in problems:
    defs, query = _statements(p.prompt)
    needed = _needed(defs, query)
    ops_on_path = sum(defs[v][1] in ("+", "-", "*") for v in needed)
    assert ops_on_path == len(needed) == p.num_ops
    assert len(defs) == p.num_ops + p.num_distractors
    steps = p.completion.split(";")[:-1]
    assert len(steps) == p.num_ops


def _check_steps(p):
  """Each completion step copies a prompt statement whose variable operands are computed by
  earlier steps, and states its value as solved from the prompt text alone (asking for that
  variable instead of the query); the answer is the query's value."""
  defs, query = _statements(p.prompt)
  toks = p.completion.split()
  assert toks[-3:] == ["answer", str(p.answer), "<eos>"]
  body = toks[:-3]
  assert len(body) % 8 == 0
  done = set()
  for i in range(0, len(body), 8):
    target, eq1, left, op, right, eq2, value, semi = body[i : i + 8]
    assert (eq1, eq2, semi) == ("=", "=", ";") and target not in done
    assert defs[target] == (left, op, right)
    assert all(x.isdigit() or x in done for x in (left, right))
    asked = p.prompt.replace(f"? {query} <sep>", f"? {target} <sep>")
    assert value == str(syn.evaluate_answer(asked, modulus=p.modulus))
    done.add(target)
  assert query in done


def test_cot_is_canonical_and_valid(problems):
  for p in problems:
    defs, query = _statements(p.prompt)
    steps = [s.split()[0] for s in p.completion.split(";")[:-1]]
    assert steps == _reference_order(defs, query)
    assert steps[-1] == query
    _check_steps(p)


def test_parse_problem_round_trip(problems):
  for p in problems[::7]:
    q = syn.parse_problem(p.prompt, modulus=p.modulus)
    assert q == p and q.completion == p.completion and q.key() == p.key()


def test_key_ignores_statement_order():
  p = syn.generate_problem(6, rng=np.random.default_rng(0))
  shuffled = syn.Problem(tuple(reversed(p.statements)), p.query, p.modulus)
  assert shuffled.key() == p.key() and shuffled.prompt != p.prompt
  assert shuffled.answer == p.answer


def test_determinism_and_seed_dependence():
  a = syn.generate_dataset(200, OPS, seed=5)
  b = syn.generate_dataset(200, OPS, seed=5)
  c = syn.generate_dataset(200, OPS, seed=6)
  assert a == b
  assert [r["key"] for r in a] != [r["key"] for r in c]
  assert len({r["key"] for r in a} & {r["key"] for r in c}) < 10
  p1 = syn.generate_problem(5, rng=np.random.default_rng(3))
  p2 = syn.generate_problem(5, rng=np.random.default_rng(3))
  assert p1 == p2 and p1.prompt == p2.prompt


def test_ops_mixtures():
  rows = syn.generate_dataset(3000, {2: 0.5, 5: 0.3, 9: 0.2}, seed=0)
  counts = collections.Counter(r["difficulty"] for r in rows)
  assert set(counts) == {2, 5, 9}
  for k, p in {2: 0.5, 5: 0.3, 9: 0.2}.items():
    assert abs(counts[k] / 3000 - p) < 4 * np.sqrt(p * (1 - p) / 3000)
  assert {r["difficulty"] for r in syn.generate_dataset(300, range(3, 6), seed=0)} == {3, 4, 5}
  assert {r["difficulty"] for r in syn.generate_dataset(20, 7, seed=0)} == {7}
  assert all(type(r["difficulty"]) is int for r in rows)


def test_answers_roughly_balanced():
  rows = syn.generate_dataset(3000, OPS, seed=2)
  freq = np.bincount([int(r["answer"]) for r in rows], minlength=7) / 3000
  # Products make 0 the most common answer; it must stay far from a shortcut.
  assert freq.min() > 0.10 and freq.max() < 0.26


def test_splits_are_disjoint_and_exclude_works():
  train, test = syn.generate_splits(2000, 300, [1, 2, 3], seed=0)
  test_keys = {r["key"] for r in test}
  assert not test_keys & {r["key"] for r in train}
  assert len(train) == 2000 and len(test) == 300
  # Without dedup, op count 1 (26 * 134 distinct problems) collides often.
  train_nd, _ = syn.generate_splits(2000, 300, [1, 2, 3], seed=0, dedup=False)
  assert test_keys & {r["key"] for r in train_nd}
  rows = syn.generate_dataset(500, 1, seed=1, unique=True)
  assert len({r["key"] for r in rows}) == 500
  with pytest.raises(ValueError, match="exclude/unique"):
    syn.generate_dataset(300, 1, seed=1, modulus=2, unique=True)  # 234 exist.


def test_sequence_lengths():
  for k in OPS:
    for d in (0, 3):
      p = syn.generate_problem(k, rng=np.random.default_rng(k), num_distractors=d)
      row = syn.problem_to_row(p)
      assert len(row["prompt_ids"]) == syn.prompt_length(k, d) == len(p.prompt.split())
      assert len(row["completion_ids"]) == syn.completion_length(k)
  assert syn.prompt_length(8) + syn.completion_length(8) <= 128
  longest = syn.prompt_length(syn.MAX_STATEMENTS) + syn.completion_length(syn.MAX_STATEMENTS)
  assert longest <= syn.MODEL_MAX_LENGTH


def test_tokenizer_round_trip():
  tok = syn.SyntheticTokenizer()
  assert tok.vocab_size == syn.VOCAB_SIZE == len(set(syn.VOCAB)) == 48
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  for r in syn.generate_dataset(100, OPS, seed=3, num_distractors=2):
    full = r["prompt_text"] + " " + r["completion_text"]
    ids = r["prompt_ids"] + r["completion_ids"]
    assert tok.encode(full) == ids
    assert tok.decode(ids) == full
    assert tok.encode(r["prompt_text"] + r["completion_text"]) == ids  # "<sep>a" splits.
  assert tok.decode([1, 20, 2], skip_special_tokens=True) == syn.VOCAB[20]
  with pytest.raises(ValueError, match="not in the synthetic vocabulary"):
    tok.encode("a = 12 + 3")
  with pytest.raises(ValueError, match="outside the vocabulary"):
    tok.decode([48])


def test_hf_tokenizer_matches(tmp_path):
  transformers = pytest.importorskip("transformers")
  syn.save_tokenizer(tmp_path)
  config = json.loads((tmp_path / "tokenizer_config.json").read_text())
  assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
  hf = transformers.AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
  assert len(hf) == syn.VOCAB_SIZE
  assert (hf.pad_token_id, hf.bos_token_id, hf.eos_token_id, hf.sep_token_id) == (0, 1, 2, 3)
  assert hf.convert_ids_to_tokens(list(range(syn.VOCAB_SIZE))) == list(syn.VOCAB)
  rows = syn.generate_dataset(100, OPS, seed=4, num_distractors=1)
  texts = [r["prompt_text"] + " " + r["completion_text"] for r in rows]
  encoded = hf(texts)["input_ids"]
  for r, text, ids in zip(rows, texts, encoded, strict=True):
    assert ids == r["prompt_ids"] + r["completion_ids"]
    assert hf.decode(ids) == text
    assert hf(r["prompt_text"] + r["completion_text"])["input_ids"] == ids


def test_jsonl_export_and_loader(tmp_path):
  from pacbayes.data.dataset import load_dataset

  syn.save_tokenizer(tmp_path)
  mix = {1: 0.4, 5: 0.3, 12: 0.3}
  ids_rows = syn.generate_dataset(60, mix, seed=9)
  text_rows = syn.generate_dataset(60, mix, seed=9, row_format="text")
  syn.write_jsonl(ids_rows, tmp_path / "ids.jsonl")
  syn.write_jsonl(text_rows, tmp_path / "text.jsonl")
  assert sorted(os.listdir(tmp_path)) == [
    "ids.jsonl",
    "text.jsonl",
    "tokenizer.json",
    "tokenizer_config.json",
  ]
  back = read_jsonl(tmp_path / "ids.jsonl")
  assert back == ids_rows
  common = {"difficulty", "answer", "num_distractors", "modulus", "key"}
  assert set(back[0]) == common | {"prompt_ids", "completion_ids", "prompt_text", "completion_text"}
  assert set(text_rows[0]) == common | {"prompt", "completion"}
  for r in back:
    assert isinstance(r["answer"], str) and r["answer"] == syn.extract_answer(r["completion_text"])
    assert r["answer"] == str(syn.evaluate_answer(r["prompt_text"]))
  a = load_dataset(tmp_path / "ids.jsonl", vocab_size=syn.VOCAB_SIZE)
  b = load_dataset(tmp_path / "text.jsonl", tokenizer_dir=tmp_path, vocab_size=syn.VOCAB_SIZE)
  for name in ("input_ids", "attention_mask", "loss_mask", "prompt_lengths", "difficulty"):
    np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
  assert a.answers == [r["answer"] for r in ids_rows]
  for i, r in enumerate(ids_rows):
    assert a.prompt_lengths[i] == len(r["prompt_ids"])
    assert a.loss_mask[i].sum() == len(r["completion_ids"])


def test_write_jsonl_is_atomic(tmp_path):
  path = tmp_path / "out.jsonl"
  syn.write_jsonl([{"a": 1}], path)

  def rows():
    yield {"a": 2}
    raise RuntimeError("boom")

  with pytest.raises(RuntimeError):
    syn.write_jsonl(rows(), path)
  assert read_jsonl(path) == [{"a": 1}]
  assert os.listdir(tmp_path) == ["out.jsonl"]


def test_extract_answer():
  assert syn.extract_answer("a = 1 + 2 = 3 ; answer 3 <eos>") == "3"
  assert syn.extract_answer("answer 4 <eos> answer 5") == "4"
  assert syn.extract_answer("<eos> answer 4") is None
  assert syn.extract_answer("a = 1 + 2 = 3 ;") is None
  assert syn.extract_answer("answer ; 3") is None
  assert syn.extract_answer("answer 6<eos><pad><pad>") == "6"


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(num_ops=0), "num_ops"),
    (dict(num_ops=3, modulus=11), "modulus"),
    (dict(num_ops=3, modulus=1), "modulus"),
    (dict(num_ops=20, num_distractors=7), "num_distractors"),
    (dict(num_ops=3, num_distractors=-1), "num_distractors"),
  ],
)
def test_generate_problem_rejects_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    syn.generate_problem(rng=np.random.default_rng(0), **kwargs)
  with pytest.raises(ValueError, match="rng"):
    syn.generate_problem(3, rng=0)


@pytest.mark.parametrize("ops", [{}, {3: -1.0}, [0, 2], [27], "12", 2.5, {3: 0.0}])
def test_generate_dataset_rejects_bad_mixtures(ops):
  with pytest.raises(ValueError, match="ops"):
    syn.generate_dataset(5, ops, seed=0)


def test_problem_validation():
  S = syn.Statement
  with pytest.raises(ValueError, match="assigned twice"):
    syn.Problem((S("a", 1, "+", 2), S("a", 1, "+", 3)), "a")
  with pytest.raises(ValueError, match="never assigned"):
    syn.Problem((S("a", "b", "+", 2),), "a")
  with pytest.raises(ValueError, match="cycle"):
    syn.Problem((S("a", "b", "+", 2), S("b", "a", "*", 1)), "a")
  with pytest.raises(ValueError, match="constant"):
    syn.Problem((S("a", 7, "+", 2),), "a", modulus=7)
  with pytest.raises(ValueError, match="query"):
    syn.Problem((S("a", 1, "+", 2),), "b")
  with pytest.raises(ValueError, match="operator"):
    syn.Problem((S("a", 1, "/", 2),), "a")
  with pytest.raises(ValueError, match="prompt_text"):
    syn.evaluate_answer("<bos> a = 1 + ; ? a <sep>")
  with pytest.raises(ValueError, match="row_format"):
    syn.generate_dataset(3, 2, seed=0, row_format="tokens")
