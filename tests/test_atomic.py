"""Atomic writes: whole new file or the old one, never half, and no temporary left behind."""

import os

import pytest

from pacbayes.atomic import write_atomic, write_text


def test_write_text_creates_folder_and_content(tmp_path):
  path = tmp_path / "a" / "b" / "report.json"
  write_text(path, '{"x": 1}\n')
  assert path.read_text() == '{"x": 1}\n'
  assert os.listdir(path.parent) == ["report.json"]


def test_binary_write(tmp_path):
  path = tmp_path / "blob.bin"
  write_atomic(path, lambda f: f.write(b"\x00\x01"), binary=True)
  assert path.read_bytes() == b"\x00\x01"


@pytest.mark.parametrize("where", ["write", "replace"])
def test_failure_keeps_old_file_and_leaves_no_temporary(tmp_path, monkeypatch, where):
  path = tmp_path / "report.json"
  path.write_text("old")

  def half_then_fail(f):
    f.write("half")
    raise RuntimeError("disk full")

  if where == "replace":
    def broken_replace(src, dst):
      raise OSError("rename failed")
    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="rename failed"):
      write_text(path, "new")
  else:
    with pytest.raises(RuntimeError, match="disk full"):
      write_atomic(path, half_then_fail)
  assert path.read_text() == "old"
  assert os.listdir(tmp_path) == ["report.json"]
