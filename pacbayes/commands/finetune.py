"""``pacbayes finetune``: SFT or DFT of a Hugging Face checkpoint (full or LoRA)."""

from __future__ import annotations

from pacbayes.commands.common import CommandError


def add_parser(sub) -> None:
  f = sub.add_parser("finetune", help="fine-tune a checkpoint (SFT or DFT, full or LoRA)")
  f.set_defaults(func=run)


def run(args) -> int:
  raise CommandError("finetune is not implemented yet")
