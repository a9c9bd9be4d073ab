"""The ``pacbayes`` command: parses arguments, calls the library, prints one line on error."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pacbayes.commands import bound, finetune, lab, plot, shift
from pacbayes.commands.common import CommandError

COMMANDS = (bound, shift, finetune, lab, plot)
__all__ = ["CommandError", "build_parser", "main"]


class _Parser(argparse.ArgumentParser):
  """An argument parser whose errors are one line (no usage block), exit status 2."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(
      prog="pacbayes",
      description="Two-gap PAC-Bayes bounds (Proposition 4.1 of arXiv 2605.12906) for "
      "fine-tuned checkpoints, and the difficulty study.")
  sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
  for command in COMMANDS:
    command.add_parser(sub)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line; returns the exit status (0 on success, 2 on bad input)."""
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    return args.func(args)
  except (ValueError, FileNotFoundError, KeyError) as e:
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    print(f"pacbayes {args.command}: error: {message}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"pacbayes {args.command}: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
