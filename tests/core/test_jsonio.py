"""The strict JSON reader: repeated keys, NaN/Infinity, truncation and types, one line each."""

import json

import pytest

from pacbayes.core.jsonio import JSONError, field, loads, read_json, read_object


@pytest.mark.parametrize(("text", "needle"), [
  ('{"a": 1,\n "b": {"c": 1,\n  "c": 2}}', "f.json:3: key 'c' appears twice"),
  ('[{"x": 1},\n {"x": 2, "x": 3}]', "f.json:2: key 'x' appears twice"),
  ('{"a": [1, 2]\n,\n"a": 3}', "f.json:3: key 'a' appears twice"),
  ('{"a": 1,\n "b": NaN}', "f.json:2: not valid JSON (NaN is not a JSON number)"),
  ('{"a": "Infinity", "b": -Infinity}', "f.json:1: not valid JSON (-Infinity"),
  ('{"a": 1', "f.json:1: not valid JSON (the file ends early"),
  ('{"a": 1}}', "f.json:1: not valid JSON (Extra data"),
])
def test_loads_refuses_with_file_and_line(text, needle):
  with pytest.raises(JSONError) as e:
    loads(text, where="f.json")
  assert needle in str(e.value) and "\n" not in str(e.value)


def test_same_key_in_different_objects_is_fine():
  assert loads('[{"a": 1}, {"a": 2}, {"b": {"a": 3}, "a": 4}]', where="x")[2]["a"] == 4
  assert loads('{"a": NaN}', where="x", allow_nan=True)["a"] != 0


def test_read_json_names_the_file(tmp_path):
  file = tmp_path / "run.json"
  file.write_text(json.dumps({"seed": 1, "model": "m"})[:9])
  with pytest.raises(JSONError, match=f"^{file}:1: not valid JSON"):
    read_json(file)
  with pytest.raises(JSONError, match="no such file"):
    read_json(tmp_path / "none.json")
  (tmp_path / "empty.json").write_text(" \n")
  with pytest.raises(JSONError, match="empty"):
    read_json(tmp_path / "empty.json")
  (tmp_path / "list.json").write_text("[1]")
  with pytest.raises(JSONError, match="expected a JSON object, got a list"):
    read_object(tmp_path / "list.json")
  (tmp_path / "bin.json").write_bytes(b'{"a":\n"\xff"}')
  with pytest.raises(JSONError, match="bin.json:2: not UTF-8"):
    read_json(tmp_path / "bin.json")


@pytest.mark.parametrize(("value", "kind", "ok"), [
  (True, "bool", True), ("false", "bool", False), (0, "bool", False),
  (3, "int", True), (3.0, "int", False), (True, "int", False),
  (2.5, "number", True), (True, "number", False), ("1", "number", False),
  (["q", "v"], "str_list", True), (["q", 1], "str_list", False), (None, "str_list", False),
])
def test_field_checks_types(value, kind, ok):
  if ok:
    assert field({"k": value}, "k", kind, where="c.json") == value
  else:
    with pytest.raises(JSONError, match=r"^c\.json: key 'k': expected"):
      field({"k": value}, "k", kind, where="c.json")


def test_field_defaults_and_missing():
  assert field({}, "k", "bool", where="c.json", default=False) is False
  assert field({"k": None}, "k", "str", where="c.json", nullable=True) is None
  with pytest.raises(JSONError, match="key 'k' is missing"):
    field({}, "k", "int", where="c.json")


def test_a_jsonl_row_cut_short_is_said_to_be_a_row(tmp_path):
  # a JSON file spread over lines, read as JSONL: its first line ends inside the object
  from pacbayes.data.jsonl import read_jsonl

  p = tmp_path / "results.json"
  p.write_text('{\n  "schema": "x"\n}\n')
  with pytest.raises(ValueError, match=r"results.json:1: not valid JSON \(the line ends inside "
                                       r"a JSON value: a truncated row, or JSON spread over"):
    list(read_jsonl(p))
