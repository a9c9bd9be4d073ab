"""Atomic writes: whole new file or the old one, never half, and no temporary left behind."""

import os
import stat
import tempfile

import pytest

from pacbayes.core.atomic import current_umask, write_atomic, write_text


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


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
@pytest.mark.parametrize("binary", [False, True])
def test_new_files_get_the_umask_mode_not_0600(tmp_path, umask, binary):
  path = tmp_path / "out.bin"
  old = os.umask(umask)
  try:
    write_atomic(path, lambda f: f.write(b"x" if binary else "x"), binary=binary)
  finally:
    os.umask(old)
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask


def test_existing_file_keeps_its_mode(tmp_path):
  path = tmp_path / "report.json"
  path.write_text("old")
  os.chmod(path, 0o640)
  write_text(path, "new")
  assert path.read_text() == "new"
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_current_umask_matches_os_umask():
  old = os.umask(0o027)
  try:
    assert current_umask() == 0o027
  finally:
    os.umask(old)


def test_unwritable_folder_error_names_the_destination(tmp_path, monkeypatch):
  def refuse(*args, **kwargs):
    raise PermissionError(13, "Permission denied", str(tmp_path / ".tmp-abc"))

  monkeypatch.setattr(tempfile, "mkstemp", refuse)
  with pytest.raises(PermissionError) as e:
    write_text(tmp_path / "report.json", "x")
  assert e.value.filename == str(tmp_path / "report.json")
  assert os.listdir(tmp_path) == []
