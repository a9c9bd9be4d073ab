"""The `pacbayes` command line: one module per sub-command (`main` parses and dispatches).

This file stays light (no JAX): `python -m pacbayes.cli` installs the Ctrl-C handler below
before the sub-commands, and JAX with them, are imported.
"""

import os
import sys


def exit_on_interrupt(signum, frame):
  """SIGINT handler until `main` runs (nothing to clean up yet): one line, exit status 130."""
  del signum, frame
  sys.stderr.write("pacbayes: interrupted\n")
  sys.stderr.flush()
  os._exit(130)
