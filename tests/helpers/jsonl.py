"""One JSONL writer for the tests' data files."""

import json


def write_jsonl(path, rows, *, blank_first=False):
  """Writes one line per row: a dict as JSON, a str as it is (for malformed lines).

  Args:
    path: file to write (str or Path).
    rows: dicts or raw strings.
    blank_first: start the file with an empty line (readers must skip it).

  Returns:
    str(path), ready for an argv list.
  """
  lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
  with open(path, "w", encoding="utf-8") as f:
    if blank_first:
      f.write("\n")
    f.write("".join(line + "\n" for line in lines))
  return str(path)
