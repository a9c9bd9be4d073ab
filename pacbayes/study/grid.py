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
  """Every main cell in run order: per seed, each arm's base/SFT sweep, DFT, the strong base.

  A (bucket, n) corner runs the seeds `config.seeds_for(bucket, n)` (possibly none), each
  for `config.ft_steps_for(n)` steps (fixed epochs).
  """
  cells = []
  main = config.arms[0][0]
  for seed in config.all_seeds:
    def add(arm, base, method, b, n, seed=seed):
      if seed in config.seeds_for(b, n):
        cells.append(Cell(arm, base, method, b, n, seed, config.ft_steps_for(n)))

    for arm, buckets in config.arms:
      for n in config.sizes:
        for b, _ in buckets:
          add(arm, "base", "sft", b, n)
    for n in config.dft_sizes:
      for b in config.dft_buckets:
        add(main, "base", "dft", b, n)
    for n in config.strong_sizes:
      for b in config.strong_buckets:
        add(main, "strong", "sft", b, n)
  return cells


def certified_cells(config: StudyConfig) -> list[Cell]:
  """The certified arm: main-arm base/SFT cells at `certified_sizes` (their main budget and
  each shorter one), certified; the main grid's cells are not (unless `certify_main`)."""
  main = config.arms[0][0]
  out = []
  for seed in config.all_seeds:
    for n in config.certified_sizes:
      for b in config.bucket_names:
        if seed not in config.seeds_for(b, n) or (config.certified_seeds
                                                   and seed not in config.certified_seeds):
          continue
        budgets = list(config.certified_steps)
        if not config.certify_main:
          budgets.append(config.ft_steps_for(n))
        out += [Cell(main, "base", "sft", b, n, seed, t, certified=True) for t in budgets]
  return out


def bases_needed(cells: list[Cell]) -> tuple[str, ...]:
  """The bases ("base", and "strong" when a cell starts from it) the cells need."""
  used = {c.base for c in cells} | {"base"}
  return tuple(b for b in BASES if b in used)
