"""Which cells a study runs: the main grid and the certified (early-stopping) arm."""

from __future__ import annotations

import dataclasses

from pacbayes.study.config import StudyConfig

BASES = ("base", "strong")
METHOD_NAMES = ("sft", "dft")


@dataclasses.dataclass(frozen=True)
class Cell:
  """One fine-tuning run: (arm, base, method, bucket, n, seed) with a step budget.

  `certified` marks the certified arm: the same S as the main cell with a shorter budget.
  """

  arm: str
  base: str
  method: str
  bucket: str
  n: int
  seed: int
  steps: int
  certified: bool = False

  @property
  def tag(self) -> str:
    extra = f"-t{self.steps}" if self.certified else ""
    return f"{self.arm}-{self.base}-{self.method}-{self.bucket}-n{self.n}-s{self.seed}{extra}"

  def ids(self, config: StudyConfig) -> tuple[int, ...]:
    """Integers that name the cell in PRNG keys (every seed gets its own keys)."""
    arms = [a for a, _ in config.arms]
    buckets = [b for b, _ in dict(config.arms)[self.arm]]
    return (arms.index(self.arm), BASES.index(self.base), METHOD_NAMES.index(self.method),
            buckets.index(self.bucket), self.n, self.seed, self.steps)


def grid_cells(config: StudyConfig) -> list[Cell]:
  """Every main cell in run order: per seed, each arm's base/SFT sweep, DFT, the strong base."""
  cells = []
  main = config.arms[0][0]
  t = config.ft_steps
  for seed in config.seeds:
    for arm, buckets in config.arms:
      for n in config.sizes:
        for b, _ in buckets:
          cells.append(Cell(arm, "base", "sft", b, n, seed, t))
    for n in config.dft_sizes:
      for b in config.dft_buckets:
        cells.append(Cell(main, "base", "dft", b, n, seed, t))
    for n in config.strong_sizes:
      for b in config.strong_buckets:
        cells.append(Cell(main, "strong", "sft", b, n, seed, t))
  return cells


def certified_cells(config: StudyConfig) -> list[Cell]:
  """The certified arm: main-arm base/SFT cells at `certified_sizes`, each shorter budget."""
  main = config.arms[0][0]
  return [Cell(main, "base", "sft", b, n, seed, steps, certified=True)
          for seed in config.seeds for n in config.certified_sizes
          for b in config.bucket_names for steps in config.certified_steps]
