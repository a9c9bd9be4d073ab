"""Periodic atomic checkpoints of a training run (orbax-checkpoint), and resumption."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from pacbayes.core.jsonio import read_json


def _stderr(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


class Checkpointer:
  """Periodic atomic checkpoints of a training run (orbax-checkpoint), and resumption.

  Each checkpoint holds the parameters, the optimiser state and the losses so far under the
  step it was taken after; orbax writes it to a temporary folder and renames it when
  complete, so a killed run leaves either a whole checkpoint or none. `fingerprint` (a JSON
  object describing the run: model, data, settings, seed) is stored beside them (`run.json`);
  resuming with another fingerprint is refused, so a folder never mixes two runs. A newest
  checkpoint that cannot be restored (damaged on disk) is skipped for the newest intact one,
  and `notify` says so.

  Args:
    directory: the checkpoint folder (created).
    every: save after every `every` steps (and never after the last one: the caller writes
      the final result itself).
    fingerprint: JSON-serialisable description of the run.
    keep: how many recent checkpoints to keep.
    notify: called with one line when a damaged checkpoint is skipped (default: stderr).
  """

  FINGERPRINT = "run.json"

  def __init__(self, directory: str, every: int, fingerprint: Mapping[str, Any], keep: int = 2,
               notify: Callable[[str], None] = _stderr):
    import orbax.checkpoint as ocp

    from pacbayes.core.atomic import write_text

    if every < 1:
      raise ValueError(f"checkpoint interval must be >= 1 step, got {every}")
    self.directory = os.path.abspath(directory)
    self.every = int(every)
    self.notify = notify
    text = json.dumps(fingerprint, sort_keys=True, indent=2) + "\n"
    file = os.path.join(self.directory, self.FINGERPRINT)
    if os.path.isfile(file):
      if read_json(file) != json.loads(text):  # strict: a truncated run.json names the file
        raise ValueError(f"{self.directory}: holds checkpoints of another run (different "
                         "model, data or settings); remove it or choose another output")
    else:
      os.makedirs(self.directory, exist_ok=True)
      write_text(file, text)
    self._ocp = ocp
    self._manager = ocp.CheckpointManager(
      os.path.join(self.directory, "steps"),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def restore(self, template: Mapping[str, Any]) -> tuple[int, dict[str, Any]] | None:
    """(step, state) of the newest intact checkpoint, restored with `template`'s shardings.

    Returns None when there is no checkpoint, or none that can be restored (each damaged one
    is reported through `notify`).
    """
    skipped = False
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        state = self._manager.restore(step, args=self._ocp.args.StandardRestore(template))
      except Exception as e:  # noqa: BLE001  (orbax/tensorstore raise many types)
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        self.notify(f"checkpoint {os.path.join(self.directory, 'steps', str(step))} cannot be "
                    f"read ({reason}); trying an older one")
        skipped = True
        continue
      if skipped:
        self.notify(f"resuming from step {step}, the newest intact checkpoint in "
                    f"{self.directory}")
      return step, state
    return None

  def save(self, step: int, state: Mapping[str, Any]) -> None:
    self._manager.save(step, args=self._ocp.args.StandardSave(state))
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
