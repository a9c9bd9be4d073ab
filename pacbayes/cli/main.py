"""The ``pacbayes`` command: parses arguments, calls the library, prints one line on error.

Exit statuses: 0 success, 2 bad input or an output that cannot be written (one line on
stderr naming the file, key or flag), 130 interrupted (Ctrl-C; one line), 1 an unexpected
error (a bug: one line naming the exception; ``PACBAYES_TRACEBACK=1`` shows the traceback).
Every exception leaves through `main`'s one path to a message; none escapes as a traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from pacbayes.cli import exit_on_interrupt

# Run as a program (`python -m pacbayes.cli.main`, or the `pacbayes` console script): a Ctrl-C
# while the sub-commands are imported ends with one line and status 130, not a traceback.
if __name__ == "__main__" or os.path.basename(sys.argv[0] if sys.argv else "") == "pacbayes":
  signal.signal(signal.SIGINT, exit_on_interrupt)

from pacbayes.cli import bound, finetune, lab, plot, select, shift
from pacbayes.cli.common import CommandError
from pacbayes.core.precision import enable_x64_globally

COMMANDS = (bound, shift, finetune, lab, plot, select)
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 1
TRACEBACK_ENV = "PACBAYES_TRACEBACK"
__all__ = ["EXIT_BAD_INPUT", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "CommandError", "build_parser",
           "error_line", "main"]


class _Parser(argparse.ArgumentParser):
  """An argument parser whose errors are one line (no usage block), exit status 2."""

  def error(self, message):
    self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(
      prog="pacbayes",
      description="Two-gap PAC-Bayes bounds (Proposition 4.1 of arXiv 2605.12906) for "
      "fine-tuned checkpoints, and the difficulty study.")
  sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
  for command in COMMANDS:
    command.add_parser(sub)
  return parser


def _first_line(text: str) -> str:
  lines = [line for line in str(text).strip().splitlines() if line.strip()]
  return lines[0].strip() if lines else ""


def error_line(error: BaseException) -> str:
  """The one line shown for an error: the message, or the path and reason of an OSError."""
  if isinstance(error, OSError):
    names = [n for n in (error.filename, error.filename2) if n is not None]
    if names:
      reason = error.strerror or _first_line(error) or type(error).__name__
      return f"{' -> '.join(map(os.fsdecode, map(str, names)))}: {reason}"
  if isinstance(error, MemoryError):
    return "out of memory (MemoryError); use a smaller --batch-size or --max-length"
  if isinstance(error, KeyError) and error.args:
    return f"missing key {error.args[0]!r}"
  return _first_line(error) or type(error).__name__


def _leave(status: int, line: str) -> None:
  """Prints `line`, flushes, and ends the process at once.

  ``os._exit`` skips interpreter teardown: after an interrupt JAX/XLA threads may still run,
  and tearing the interpreter down under them segfaults (exit 139 instead of 130).
  """
  try:
    sys.stdout.flush()
  except Exception:  # noqa: BLE001  (a closed pipe must not hide the status)
    pass
  try:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
  except Exception:  # noqa: BLE001
    pass
  os._exit(status)


def _install_interrupt_handler(prog: list[str]) -> None:
  """Ctrl-C ends the process at once with one line and status 130, leaving no file behind.

  The handler does not raise KeyboardInterrupt: raised asynchronously inside the import of
  an extension module (numpy, jaxlib) it can crash the interpreter (seen: SIGSEGV, no
  output), and Python ignores it inside a garbage-collector callback, letting the work go
  on. Instead `atomic.stop_writes` removes the temporary files in flight and forbids any
  further commit, and the process leaves through `_leave` (no interpreter teardown).
  """
  from pacbayes.core import atomic

  def handler(signum, frame):
    atomic.stop_writes()
    _leave(EXIT_INTERRUPTED, f"{prog[0]}: interrupted")

  signal.signal(signal.SIGINT, handler)


def main(argv: Sequence[str] | None = None, *, hard_exit: bool | None = None) -> int:
  """Runs the command line.

  Args:
    argv: the arguments (default ``sys.argv[1:]``).
    hard_exit: end the process with ``os._exit`` after an interrupt (skipping interpreter
      teardown, see `_leave`); default: when ``argv`` is None, i.e. run as a program.

  Returns:
    The exit status: 0 success, 2 bad input, 130 interrupted. Argument errors raise
    ``SystemExit(2)`` after one line, as argparse does.
  """
  hard = argv is None if hard_exit is None else hard_exit
  enable_x64_globally()  # the bound arithmetic runs in float64 in this process
  prog = "pacbayes"
  shown = [prog]  # the name the interrupt handler prints, once the sub-command is known
  try:
    if hard:
      _install_interrupt_handler(shown)
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = shown[0] = f"pacbayes {args.command}"
    return args.func(args)
  except KeyboardInterrupt:
    if hard:
      _leave(EXIT_INTERRUPTED, f"{prog}: interrupted")
    print(f"{prog}: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED
  except (ValueError, OSError, KeyError, MemoryError) as e:
    print(f"{prog}: error: {error_line(e)}", file=sys.stderr)
    return EXIT_BAD_INPUT
  except Exception as e:  # noqa: BLE001  (a bug: one line, not a traceback)
    if os.environ.get(TRACEBACK_ENV):
      raise
    print(f"{prog}: internal error: {type(e).__name__}: {error_line(e)} (a bug; set "
          f"{TRACEBACK_ENV}=1 for the traceback)", file=sys.stderr)
    return EXIT_INTERNAL


if __name__ == "__main__":
  sys.exit(main())
