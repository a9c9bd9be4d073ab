"""Tests for pacbayes.data: JSONL rows, masks, tokenisation, batches, errors."""

import json

import jax
import numpy as np
import pytest

from pacbayes.data import (
    DataError,
    Dataset,
    EncodeOptions,
    completion_lengths,
    iterate_batches,
    load_dataset,
    num_batches,
    read_jsonl,
)
from tests.helpers.jsonl import write_jsonl

WORDS = ["<pad>", "<s>", "</s>", "<unk>", "the", "answer", "is", "42", "what", "?", "7"]


def _make_tokenizer(folder, *, bos=True):
  from tokenizers import Tokenizer, models, pre_tokenizers, processors
  from transformers import PreTrainedTokenizerFast

  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  if bos:
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
  wrapped = PreTrainedTokenizerFast(
    tokenizer_object=tok,
    bos_token="<s>",
    eos_token="</s>",
    pad_token="<pad>",
    unk_token="<unk>",
  )
  wrapped.save_pretrained(str(folder))
  return folder


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
  return _make_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tok_dir_nobos(tmp_path_factory):
  return _make_tokenizer(tmp_path_factory.mktemp("tok_nobos"), bos=False)


def test_input_ids_rows_masks_and_padding(tmp_path):
  path = write_jsonl(tmp_path / "d.jsonl", [{"input_ids": [5, 6, 7]}, {"input_ids": [1, 2]}])
  ds = load_dataset(path, pad_id=9)
  np.testing.assert_array_equal(ds.input_ids, [[5, 6, 7], [1, 2, 9]])
  np.testing.assert_array_equal(ds.attention_mask, [[1, 1, 1], [1, 1, 0]])
  np.testing.assert_array_equal(ds.loss_mask, [[0, 1, 1], [0, 1, 0]])
  np.testing.assert_array_equal(ds.prompt_lengths, [3, 2])
  assert ds.input_ids.dtype == np.int32 and ds.loss_mask.dtype == np.int32
  assert ds.difficulty is None and ds.answers is None
  assert ds.source == str(path) and len(ds) == 2 and ds.num_truncated == 0


def test_prompt_completion_ids_loss_on_completion_only(tmp_path):
  rows = [
    {"prompt_ids": [1, 4, 5], "completion_ids": [6, 7, 2], "difficulty": 2, "answer": "42"},
    {"prompt_ids": [], "completion_ids": [8, 9], "difficulty": 0.5, "answer": 7},
  ]
  ds = load_dataset(write_jsonl(tmp_path / "d.jsonl", rows))
  np.testing.assert_array_equal(ds.input_ids, [[1, 4, 5, 6, 7, 2], [8, 9, 0, 0, 0, 0]])
  # loss_mask[b, t] = 1 iff input_ids[b, t] is a completion token (predicted from t - 1).
  np.testing.assert_array_equal(ds.loss_mask, [[0, 0, 0, 1, 1, 1], [0, 1, 0, 0, 0, 0]])
  np.testing.assert_array_equal(ds.prompt_lengths, [3, 0])
  np.testing.assert_array_equal(ds.difficulty, [2.0, 0.5])
  assert ds.difficulty.dtype == np.float64
  assert ds.answers == ["42", "7"]
  np.testing.assert_array_equal(completion_lengths(ds), [3, 1])


def test_blank_lines_keep_file_line_numbers(tmp_path):
  path = tmp_path / "d.jsonl"
  path.write_text('{"input_ids": [1, 2]}\n\n{"input_ids": [3, 4]}\n')
  ds = load_dataset(path)
  np.testing.assert_array_equal(ds.line_numbers, [1, 3])
  assert len(read_jsonl(path)) == 2


def test_text_rows_through_tokenizer(tmp_path, tok_dir):
  rows = [{"text": "what is the answer ?"}, {"prompt": "what is the answer ?", "completion": "42"}]
  ds = load_dataset(write_jsonl(tmp_path / "d.jsonl", rows), tokenizer_dir=tok_dir, vocab_size=11)
  # Text: BOS from the tokenizer, no EOS. Prompt/completion: BOS + prompt + completion + EOS.
  np.testing.assert_array_equal(ds.input_ids, [[1, 8, 6, 4, 5, 9, 0, 0], [1, 8, 6, 4, 5, 9, 7, 2]])
  np.testing.assert_array_equal(ds.loss_mask[0], [0, 1, 1, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(ds.loss_mask[1], [0, 0, 0, 0, 0, 0, 1, 1])
  np.testing.assert_array_equal(ds.prompt_lengths, [6, 6])


def test_tokenizer_without_bos_and_without_eos(tmp_path, tok_dir_nobos):
  rows = [{"prompt": "what is", "completion": "42"}]
  ds = load_dataset(write_jsonl(tmp_path / "d.jsonl", rows), tokenizer_dir=tok_dir_nobos,
                    add_eos=False)
  np.testing.assert_array_equal(ds.input_ids, [[8, 6, 7]])
  np.testing.assert_array_equal(ds.loss_mask, [[0, 0, 1]])


def test_from_rows_with_loaded_tokenizer(tok_dir):
  from pacbayes.data import load_tokenizer

  tok = load_tokenizer(tok_dir)
  ds = Dataset.from_rows([{"text": "the answer is 7"}], tokenizer=tok, source="mem")
  np.testing.assert_array_equal(ds.input_ids, [[1, 4, 5, 6, 10]])
  assert ds.source == "mem"


def test_truncation_counts_and_keeps_the_prompt(tmp_path):
  rows = [
    {"prompt_ids": [1, 2], "completion_ids": [3, 4, 5, 6]},
    {"input_ids": [1, 2, 3]},
  ]
  ds = load_dataset(write_jsonl(tmp_path / "d.jsonl", rows), max_length=4)
  assert ds.num_truncated == 1 and ds.max_length == 4
  np.testing.assert_array_equal(ds.input_ids, [[1, 2, 3, 4], [1, 2, 3, 0]])
  np.testing.assert_array_equal(ds.loss_mask, [[0, 0, 1, 1], [0, 1, 1, 0]])
  with pytest.raises(DataError, match=r"d\.jsonl:1: 6 tokens exceed max_length=4; the row is "
                     r"refused \(pass on_overflow='truncate'"):
    load_dataset(tmp_path / "d.jsonl", max_length=4, on_overflow="error")


def test_truncation_that_removes_every_target_is_refused(tmp_path):
  path = write_jsonl(
    tmp_path / "d.jsonl", [{"input_ids": [1, 2]}, {"prompt_ids": [1, 2, 3], "completion_ids": [4]}]
  )
  with pytest.raises(DataError, match=r":2: the row has no target tokens after truncation"):
    load_dataset(path, max_length=3)


def test_pad_length_and_pad_id(tmp_path):
  ds = load_dataset(write_jsonl(tmp_path / "d.jsonl", [{"input_ids": [3, 4]}]), pad_length=5,
                    pad_id=1)
  np.testing.assert_array_equal(ds.input_ids, [[3, 4, 1, 1, 1]])
  with pytest.raises(ValueError, match="pad_length"):
    load_dataset(tmp_path / "d.jsonl", pad_length=1)
  with pytest.raises(ValueError, match="pad_id"):
    load_dataset(tmp_path / "d.jsonl", pad_id=10, vocab_size=10)


BAD_ROWS = [
  ("{not json", "not valid JSON"),
  ("[1, 2, 3]", "expected a JSON object"),
  ({"foo": 1}, "none of 'input_ids', 'text'"),
  ({"input_ids": [1, 2], "text": "x"}, "mixes formats"),
  ({"prompt": "x"}, "has 'prompt' but no 'completion'"),
  ({"completion_ids": [1]}, "has 'completion_ids' but no 'prompt_ids'"),
  ({"input_ids": [1, -2]}, "negative token id"),
  ({"input_ids": [1, 2.5]}, "flat list of ints"),
  ({"input_ids": [1.0, 2.0]}, "flat list of ints"),
  ({"input_ids": ["a", "b"]}, "flat list of ints"),
  ({"input_ids": [[1, 2]]}, "flat list of ints"),
  ({"input_ids": [True, False]}, "flat list of ints"),
  ({"input_ids": "1 2"}, "must be a list of ints"),
  ({"input_ids": [1, 2**40]}, "too large for int32"),
  ({"input_ids": [1, 10]}, r"token id 10 is outside the vocabulary \[0, 10\)"),
  ({"input_ids": []}, "'input_ids' is empty"),
  ({"input_ids": [3]}, "no target tokens"),
  ({"prompt_ids": [1], "completion_ids": []}, "'completion_ids' is empty"),
  ({"prompt_ids": [], "completion_ids": [4]}, "no target tokens"),
  ({"prompt": "a", "completion": ""}, "'completion' is empty"),
  ({"prompt": 3, "completion": "a"}, "'prompt' must be a string"),
  ({"text": ""}, "'text' is empty"),
  ({"text": ["a"]}, "'text' must be a string"),
  ({"text": "hello"}, "no tokenizer was given"),
  ({"input_ids": [1, 2], "difficulty": "hard"}, "'difficulty' must be a finite number"),
  ({"input_ids": [1, 2], "difficulty": True}, "'difficulty' must be a finite number"),
  ({"input_ids": [1, 2], "difficulty": float("nan")}, "NaN is not a JSON number"),
  ('{"input_ids": [1, 2], "difficulty": 3, "difficulty": 1}', "key 'difficulty' appears twice"),
  ('{"input_ids": [1, Infinity]}', "Infinity is not a JSON number"),
  ({"input_ids": [1, 2], "answer": [1]}, "'answer' must be a string"),
]


@pytest.mark.parametrize("bad,message", BAD_ROWS, ids=[m for _, m in BAD_ROWS])
def test_bad_row_errors_name_the_line(tmp_path, bad, message):
  good = {"input_ids": [1, 2]}
  if isinstance(bad, dict):
    for key in ("difficulty", "answer"):
      if key in bad:
        good[key] = 1
  bad_line = bad if isinstance(bad, str) else json.dumps(bad)
  path = tmp_path / "d.jsonl"
  path.write_text(json.dumps(good) + "\n\n" + bad_line + "\n" + json.dumps(good) + "\n")
  with pytest.raises(DataError, match=f"^{str(path)}:3: .*{message}") as info:
    load_dataset(path, vocab_size=10)
  assert isinstance(info.value, ValueError)


def test_field_on_some_rows_only(tmp_path):
  path = write_jsonl(
    tmp_path / "d.jsonl", [{"input_ids": [1, 2], "difficulty": 1}, {"input_ids": [1, 2]}]
  )
  with pytest.raises(DataError, match=r"d\.jsonl:2: the row has no 'difficulty'.*d\.jsonl:1"):
    load_dataset(path)


def test_tokenizer_ids_outside_model_vocab(tmp_path, tok_dir):
  path = write_jsonl(tmp_path / "d.jsonl", [{"text": "the answer is 7"}])
  with pytest.raises(DataError, match=r":1: token id 10 \(from the tokenizer\) is outside"):
    load_dataset(path, tokenizer_dir=tok_dir, vocab_size=8)


def test_file_errors(tmp_path):
  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n  \n")
  with pytest.raises(DataError, match="empty.jsonl: the file holds no rows"):
    load_dataset(empty)
  with pytest.raises(DataError, match="no such file"):
    load_dataset(tmp_path / "missing.jsonl")
  binary = tmp_path / "bin.jsonl"
  binary.write_bytes(b'{"input_ids": [1, 2]}\n\xff\xfe\n')
  with pytest.raises(DataError, match=r"bin\.jsonl:2: not UTF-8"):
    load_dataset(binary)
  with pytest.raises(DataError, match="tokenizer_dir"):
    load_dataset(write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}]),
                 tokenizer_dir=tmp_path / "nope")


def test_encode_options_match_load_dataset_keywords(tmp_path):
  rows = [{"input_ids": [3, 4, 5, 6, 7]}, {"prompt_ids": [3], "completion_ids": [4, 5]}]
  path = write_jsonl(tmp_path / "d.jsonl", rows)
  options = EncodeOptions(max_length=4, pad_id=2, pad_length=6)
  ds = Dataset.from_rows(rows, options=options, source=str(path))
  ref = load_dataset(path, max_length=4, pad_id=2, pad_length=6)
  for name in ("input_ids", "attention_mask", "loss_mask", "prompt_lengths"):
    np.testing.assert_array_equal(getattr(ds, name), getattr(ref, name))
  assert ds.pad_id == ref.pad_id == 2 and ds.num_truncated == ref.num_truncated == 1
  assert Dataset.from_rows(rows).max_length == 5  # None: the defaults (no limit)
  with pytest.raises(ValueError, match="options: expected an EncodeOptions"):
    Dataset.from_rows(rows, options={"max_length": 4})
  with pytest.raises(DataError, match="use --max-length"):
    Dataset.from_rows(rows, options=EncodeOptions(max_length=4, on_overflow="error",
                                                  overflow_hint="use --max-length"))


def test_iterate_batches_fixed_shape_and_weights():
  rows = [{"input_ids": list(range(1, 3 + i))} for i in range(5)]
  ds = Dataset.from_rows(rows, options=EncodeOptions(pad_id=0))
  batches = list(iterate_batches(ds, 2))
  assert len(batches) == num_batches(ds, 2) == 3
  for b in batches:
    assert set(b) == {"input_ids", "attention_mask", "loss_mask", "weight"}
    assert b["input_ids"].shape == (2, ds.max_length) and b["input_ids"].dtype == np.int32
    assert b["weight"].shape == (2,) and b["weight"].dtype == np.float32
  np.testing.assert_array_equal(batches[-1]["weight"], [1.0, 0.0])
  np.testing.assert_array_equal(batches[-1]["input_ids"][1], 0)
  assert batches[-1]["attention_mask"][1].sum() == 0 and batches[-1]["loss_mask"][1].sum() == 0
  stacked = np.concatenate([b["input_ids"] for b in batches])[:5]
  np.testing.assert_array_equal(stacked, ds.input_ids)

  short = list(iterate_batches(ds, 2, pad_to_multiple=False))
  assert short[-1]["input_ids"].shape == (1, ds.max_length)


def test_iterate_batches_shuffle_and_extras():
  rows = [{"input_ids": [1, 2 + i], "difficulty": i} for i in range(7)]
  ds = Dataset.from_rows(rows)
  batches = list(
    iterate_batches(ds, 3, key=jax.random.key(0), extra=("index", "prompt_lengths", "difficulty"))
  )
  index = np.concatenate([b["index"] for b in batches])
  assert sorted(index[index >= 0].tolist()) == list(range(7))
  assert (index[7:] == -1).all()
  for b in batches:
    real = b["index"] >= 0
    np.testing.assert_array_equal(b["input_ids"][real], ds.input_ids[b["index"][real]])
    np.testing.assert_array_equal(b["difficulty"][real], ds.difficulty[b["index"][real]])
  again = np.concatenate(
    [b["index"] for b in iterate_batches(ds, 3, key=jax.random.key(0), extra=("index",))]
  )
  np.testing.assert_array_equal(index, again)
  with pytest.raises(ValueError, match="extra"):
    next(iterate_batches(ds, 3, extra=("nope",)))
  with pytest.raises(ValueError, match="batch_size"):
    next(iterate_batches(ds, 0))


def test_subset_and_dataclass_checks():
  ds = Dataset.from_rows(
    [{"input_ids": [1, 2], "answer": "a"}, {"input_ids": [3, 4, 5], "answer": "b"}]
  )
  sub = ds.subset([1])
  np.testing.assert_array_equal(sub.input_ids, [[3, 4, 5]])
  assert sub.answers == ["b"] and sub.line_numbers.tolist() == [2]
  bad = ds.loss_mask.copy()
  bad[:, 0] = 1
  with pytest.raises(ValueError, match="position 0"):
    Dataset(ds.input_ids, ds.attention_mask, bad, ds.prompt_lengths)
  with pytest.raises(ValueError, match="int32"):
    Dataset(ds.input_ids.astype(np.int64), ds.attention_mask, ds.loss_mask, ds.prompt_lengths)


def test_long_row_message_names_the_flag(tmp_path):
  path = write_jsonl(tmp_path / "d.jsonl", [{"input_ids": [1, 2]}, {"input_ids": list(range(9))}])
  with pytest.raises(DataError, match=r"d\.jsonl:2: 9 tokens exceed max_length=4; the row is "
                     r"refused \(use --max-length N --truncate\)"):
    load_dataset(path, max_length=4, on_overflow="error",
                 overflow_hint="use --max-length N --truncate")


@pytest.mark.parametrize("kind", ["text", "prompt"])
def test_missing_tokenizer_is_named_with_the_folder(tmp_path, kind):
  ckpt = tmp_path / "ckpt"
  ckpt.mkdir()
  (ckpt / "config.json").write_text("{}")
  row = {"text": "hello"} if kind == "text" else {"prompt": "a", "completion": "b"}
  path = write_jsonl(tmp_path / "d.jsonl", [{"input_ids": [1, 2]}, row])
  with pytest.raises(DataError, match=rf"d\.jsonl:2: the row holds '{kind}' strings, but the "
                     rf"tokenizer is missing: {ckpt} holds none of tokenizer\.json"):
    load_dataset(path, tokenizer_dir=ckpt)


@pytest.mark.parametrize("content,match", [
  (b"[" * 100000 + b"\n", r"d\.jsonl:1: JSON nested too deeply"),
  (b'{"input_ids": [' + b"9" * 5000 + b"]}\n", r"d\.jsonl:1: not usable JSON"),
  (b'{"input_ids": [1, 2], "difficulty": 1}\n{"input_ids": [1, 2], "difficulty": NaN}\n',
   r"d\.jsonl:2: not valid JSON \(NaN is not a JSON number\)"),
])
def test_hostile_json_lines(tmp_path, content, match):
  path = tmp_path / "d.jsonl"
  path.write_bytes(content)
  with pytest.raises(DataError, match=match):
    load_dataset(path)


def test_folder_instead_of_file(tmp_path):
  with pytest.raises(DataError, match="is a folder; expected a JSONL file"):
    read_jsonl(tmp_path)


@pytest.mark.parametrize("value", ["3", None, True, [1], {"a": 1}, float("inf")])
def test_malformed_difficulty_is_refused_with_file_and_line(tmp_path, value):
  rows = [{"input_ids": [1, 2], "difficulty": 1}, {"input_ids": [1, 2], "difficulty": value}]
  path = write_jsonl(tmp_path / "d.jsonl", rows)  # inf is written as the JSON extension Infinity
  message = "Infinity is not a JSON number" if value == float("inf") else \
    "'difficulty' must be a finite number"  # the strict reader refuses Infinity first
  with pytest.raises(DataError, match=rf"d\.jsonl:2: .*{message}"):
    load_dataset(path)


def _imports(module_path):
  import ast

  tree = ast.parse(open(module_path, encoding="utf-8").read())
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
    elif isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
  return names


def test_data_package_has_no_import_cycle():
  """Every import between pacbayes.data modules (TYPE_CHECKING ones too) points one way."""
  import pathlib

  import pacbayes.data

  folder = pathlib.Path(pacbayes.data.__file__).parent
  modules = {f"pacbayes.data.{p.stem}": p for p in folder.glob("*.py") if p.stem != "__init__"}
  graph = {m: {i for i in _imports(p) if i in modules} for m, p in modules.items()}
  assert "pacbayes.data.dataset" not in graph["pacbayes.data.difficulty"]
  state = {}

  def visit(m, stack):
    state[m] = "open"
    for n in graph[m]:
      assert state.get(n) != "open", f"import cycle: {' -> '.join([*stack, m, n])}"
      if n not in state:
        visit(n, [*stack, m])
    state[m] = "done"

  for m in graph:
    if m not in state:
      visit(m, [])
