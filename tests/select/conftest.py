"""The `cli` fixture of the select tests: `pacbayes select ARGS` in this process, its status."""

import pytest

from pacbayes.cli import main as cli_main
from pacbayes.cli import select as select_command


@pytest.fixture
def cli(monkeypatch):
  if select_command not in cli_main.COMMANDS:
    monkeypatch.setattr(cli_main, "COMMANDS", cli_main.COMMANDS + (select_command,))

  def run(*argv):
    try:
      return cli_main.main(["select", *map(str, argv)])
    except SystemExit as e:  # argparse's refusals
      return e.code
  return run
