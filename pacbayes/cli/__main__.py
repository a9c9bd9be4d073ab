"""`python -m pacbayes.cli`: the same as the `pacbayes` console script."""

import signal
import sys

from pacbayes.cli import exit_on_interrupt

signal.signal(signal.SIGINT, exit_on_interrupt)

from pacbayes.cli.main import main  # noqa: E402  (after the handler: a Ctrl-C during imports)

sys.exit(main())
