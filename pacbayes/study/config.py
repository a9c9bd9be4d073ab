"""Settings of the difficulty x size study (`StudyConfig`) and its presets, with their provenance.

Difficulty is the operation count k of a synthetic problem. The test set is uniform (by
default) over the learnable range of op counts, with `test_per_slice` problems per k. Training
buckets are mixtures over the same op counts: in the "tilted" arm every bucket has full support
and leans easy or hard (weights 8,4,2,1 / uniform / 1,2,4,8), so the mixture-shift term is
finite and a bucket's data is learnable; the "disjoint" arm (the paper's design: easy, medium
and hard op ranges that do not overlap) is there for comparison.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from pacbayes.data import synthetic

Arm = tuple[str, tuple[tuple[str, tuple[float, ...]], ...]]

TILTED: Arm = ("tilted", (("easy", (8.0, 4.0, 2.0, 1.0)), ("medium", (1.0, 1.0, 1.0, 1.0)),
                          ("hard", (1.0, 2.0, 4.0, 8.0))))
DISJOINT: Arm = ("disjoint", (("easy", (1.0, 0.0, 0.0, 0.0)), ("medium", (0.0, 1.0, 1.0, 0.0)),
                              ("hard", (0.0, 0.0, 0.0, 1.0))))


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  """Every setting of one study (the defaults are the "quick" preset).

  Task and data:
    name: the preset this config came from.
    seed: master seed (test set, pools, initialisation, keys).
    modulus: arithmetic modulus of the synthetic task.
    test_ops: (lo, hi) op counts of the test set; every k is a slice.
    test_weight_power: test mixture p(k) proportional to k ** power (0: uniform).
    test_per_slice: test problems per op count.
    arms: (arm name, ((bucket, weights over test_ops), ...)) ordered easy -> hard; weights
      need not be normalised; zero weight leaves k out of the bucket's support.
    sizes: fine-tuning set sizes n; seeds: fine-tuning seeds (each its own subset of the pool,
      batch order and Monte-Carlo keys).

  Model: hidden_size, intermediate_size, num_layers, num_heads of a Llama decoder.

  Pretraining: pretrain_ops (base) and strong_pretrain_ops (the stronger base, which continues
    the base's pretraining when strong_from_base), their steps, corpus size, batch, lr, warmup.

  Fine-tuning (every weight, AdamW): ft_steps (fixed budget for every n), ft_batch_size,
    ft_lr, ft_warmup, ft_weight_decay; dft_buckets / dft_sizes: where DFT runs besides SFT;
    strong_sizes / strong_buckets: sizes and buckets of the sweep from the stronger base
      (main arm); the base x difficulty interaction needs the easiest and hardest bucket.

  Certificates (loss: sequence error; prior: the base): delta; sigma_grid (prior scales fixed in
    advance, ln k paid; the posterior scale is taken from the same grid); mc_chunk_size rows
    per posterior draw; sigma_subset rows of S to choose sigma; test_draws posterior draws per
    test item for the measured E_Q[R_test].
  Certified arm: certified_sizes / certified_steps: base/sft cells re-trained with shorter
    step budgets (early stopping), the certificate choosing among the budgets and the main
    run; reported beside the main cells.
  Verdicts: headroom_min: saturation is judged only in buckets where the base's accuracy on
    the bucket's mixture is at most 1 - headroom_min (decided before training).
  tuned: what was tuned, on what, and by which seed (declared in results.json).
  """

  name: str = "quick"
  seed: int = 0
  modulus: int = 5
  test_ops: tuple[int, int] = (1, 4)
  test_weight_power: float = 0.0
  test_per_slice: int = 256
  arms: tuple[Arm, ...] = (TILTED,)
  sizes: tuple[int, ...] = (200, 800, 3200)
  seeds: tuple[int, ...] = (0, 1)
  hidden_size: int = 64
  intermediate_size: int = 256
  num_layers: int = 2
  num_heads: int = 4
  pretrain_ops: tuple[int, int] = (1, 2)
  pretrain_steps: int = 1500
  strong_pretrain_ops: tuple[int, int] = (1, 3)
  strong_pretrain_steps: int = 500
  strong_from_base: bool = True
  pretrain_examples: int = 20000
  pretrain_batch_size: int = 32
  pretrain_lr: float = 3e-3
  pretrain_warmup: int = 100
  ft_steps: int = 600
  ft_batch_size: int = 32
  ft_lr: float = 3e-3
  ft_warmup: int = 20
  ft_weight_decay: float = 0.01
  dft_buckets: tuple[str, ...] = ("hard",)
  dft_sizes: tuple[int, ...] = (200, 3200)
  strong_sizes: tuple[int, ...] = (800,)
  strong_buckets: tuple[str, ...] = ("easy", "hard")
  delta: float = 0.05
  sigma_grid: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
  mc_chunk_size: int = 16
  sigma_subset: int = 128
  test_draws: int = 1
  eval_batch_size: int = 128
  generate_batch_size: int = 256
  certified_sizes: tuple[int, ...] = (3200,)
  certified_steps: tuple[int, ...] = (100,)
  headroom_min: float = 0.1
  tuned: str = ("nothing tuned on this study's seed (0): the base (ops 1-2), the tilted buckets "
                "and full-parameter AdamW at lr 3e-3 are issue 10's probe settings; the batch "
                "(32) and step budget were checked on master seed 7 only (hard bucket, "
                "n=3200: batch 16 x 400 steps left ops 3-4 at chance, acc 0.577; batch 32 x "
                "800 steps at lr 3e-3 reached 0.697, at lr 1e-3 0.605; base 0.597); the quick "
                "preset takes 600 steps to fit its 15-minute budget; pretraining steps were "
                "set on seed 0 by base accuracy alone (claim-neutral), see "
                "pacbayes/lab/config.py")

  def __post_init__(self):
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      if isinstance(v, list):
        object.__setattr__(self, f.name, _tuplify(v))
    object.__setattr__(self, "arms", _tuplify(self.arms))
    lo, hi = self.test_ops
    if not 1 <= lo <= hi <= synthetic.MAX_STATEMENTS:
      raise ValueError(f"StudyConfig.test_ops: expected 1 <= lo <= hi <= 26, got {self.test_ops}")
    k = hi - lo + 1
    if not self.arms:
      raise ValueError("StudyConfig.arms: expected at least one arm")
    for arm, buckets in self.arms:
      names = [b for b, _ in buckets]
      if len(names) < 1 or len(set(names)) != len(names):
        raise ValueError(f"StudyConfig.arms[{arm!r}]: bucket names must be distinct, got {names}")
      for b, w in buckets:
        if len(w) != k or min(w) < 0 or sum(w) <= 0:
          raise ValueError(f"StudyConfig.arms[{arm!r}].{b}: expected {k} non-negative weights "
                           f"(one per op count {lo}..{hi}), not all zero; got {w}")
    for name in ("pretrain_ops", "strong_pretrain_ops"):
      plo, phi = getattr(self, name)
      if not 1 <= plo <= phi <= synthetic.MAX_STATEMENTS:
        raise ValueError(f"StudyConfig.{name}: expected 1 <= lo <= hi <= 26, got ({plo}, {phi})")
    if not self.sizes or min(self.sizes) < 1 or list(self.sizes) != sorted(set(self.sizes)):
      raise ValueError(f"StudyConfig.sizes: expected increasing positive ints, got {self.sizes}")
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f"StudyConfig.seeds: expected distinct seeds, got {self.seeds}")
    for name in ("dft_sizes", "strong_sizes", "certified_sizes"):
      if not set(getattr(self, name)) <= set(self.sizes):
        raise ValueError(f"StudyConfig.{name}: {getattr(self, name)} must be a subset of sizes "
                         f"{self.sizes}")
    for name in ("dft_buckets", "strong_buckets"):
      if not set(getattr(self, name)) <= set(self.bucket_names):
        raise ValueError(f"StudyConfig.{name}: {getattr(self, name)} must name buckets "
                         f"{self.bucket_names}")
    if not 0 < self.delta < 1:
      raise ValueError(f"StudyConfig.delta: expected a value in (0, 1), got {self.delta}")
    if not self.sigma_grid or min(self.sigma_grid) <= 0:
      raise ValueError(f"StudyConfig.sigma_grid: expected positive scales, got {self.sigma_grid}")
    for name in ("test_per_slice", "pretrain_steps", "strong_pretrain_steps", "pretrain_examples",
                 "pretrain_batch_size", "ft_steps", "ft_batch_size", "mc_chunk_size",
                 "sigma_subset", "test_draws", "eval_batch_size", "generate_batch_size",
                 "hidden_size", "intermediate_size", "num_layers", "num_heads"):
      if getattr(self, name) < 1:
        raise ValueError(f"StudyConfig.{name}: expected a positive integer, got "
                         f"{getattr(self, name)}")
    if self.mc_chunk_size > min(self.sizes):
      raise ValueError(f"StudyConfig.mc_chunk_size: {self.mc_chunk_size} rows per posterior draw "
                       f"exceeds the smallest n={min(self.sizes)}")
    if any(s < 1 or s >= self.ft_steps for s in self.certified_steps):
      raise ValueError(f"StudyConfig.certified_steps: expected budgets in [1, ft_steps), got "
                       f"{self.certified_steps}")
    if self.test_weight_power < 0 or not 0 <= self.headroom_min < 1:
      raise ValueError("StudyConfig: test_weight_power must be >= 0, headroom_min in [0, 1)")
    if self.test_draws > 255:
      raise ValueError("StudyConfig.test_draws: at most 255 (stored per item as one byte)")

  @classmethod
  def preset(cls, name: str, **overrides: Any) -> StudyConfig:
    """A named preset ("quick" or "full") with optional field overrides.

    Raises:
      ValueError: unknown preset or field.
    """
    if name not in PRESETS:
      raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {name!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(overrides) - known)
    if bad:
      raise ValueError(f"preset: unknown StudyConfig field(s) {bad}")
    fields = dict(PRESETS[name])
    fields.update(overrides)
    return cls(name=name, **fields)

  def to_dict(self) -> dict[str, Any]:
    """Every field, JSON-ready (tuples as lists)."""
    return {f.name: _listify(getattr(self, f.name)) for f in dataclasses.fields(self)}

  def replace(self, **changes: Any) -> StudyConfig:
    return dataclasses.replace(self, **changes)

  @property
  def ops(self) -> list[int]:
    return list(range(self.test_ops[0], self.test_ops[1] + 1))

  @property
  def bucket_names(self) -> list[str]:
    """Bucket names of the first (main) arm, easy -> hard."""
    return [b for b, _ in self.arms[0][1]]

  def mixture(self, arm: str, bucket: str) -> dict[int, float]:
    """A bucket's training mixture: op count -> probability (zeros dropped)."""
    for a, buckets in self.arms:
      for b, w in buckets:
        if a == arm and b == bucket:
          total = sum(w)
          return {k: wk / total for k, wk in zip(self.ops, w, strict=True) if wk > 0}
    raise ValueError(f"mixture: unknown arm/bucket {arm!r}/{bucket!r}")

  def test_mixture(self) -> dict[int, float]:
    """The test distribution over op counts: p(k) proportional to k ** test_weight_power."""
    w = [k**self.test_weight_power for k in self.ops]
    return {k: wk / sum(w) for k, wk in zip(self.ops, w, strict=True)}


def _listify(x: Any) -> Any:
  if isinstance(x, tuple | list):
    return [_listify(v) for v in x]
  return x


def _tuplify(x: Any) -> Any:
  if isinstance(x, tuple | list):
    return tuple(_tuplify(v) for v in x)
  return x


def seq_length(max_ops: int) -> int:
  """Padded length that holds every problem with up to `max_ops` operations."""
  return synthetic.prompt_length(max_ops) + synthetic.completion_length(max_ops)


def is_close_mixture(a: dict[int, float], b: dict[int, float]) -> bool:
  return set(a) == set(b) and all(math.isclose(a[k], b[k]) for k in a)


# How the presets were chosen (claim-neutral checks only; the numbers are in run.log):
# - The design (base pretrained on ops 1-2, full-parameter AdamW at lr 3e-3 for 400 steps,
#   test uniform over ops 1-4, tilted buckets 8,4,2,1 / 1,1,1,1 / 1,2,4,8) is issue 10's probe,
#   taken as given, not re-tuned on this study's seeds.
# - pretrain_steps: checked once on seed 0 by the base's accuracy alone, before any
#   fine-tuning: 1500 steps on ops 1-2 gives [1.00, 1.00, 0.27, 0.22] by slice (mixture 0.62;
#   the probe base 0.598), exact where it was trained, headroom on ops 3-4.
# - Step budget (master seed 7, not a study seed; hard bucket, n=3200, accuracy on the test
#   mixture, base 0.597): batch 16 x 400 steps 0.577 (ops 3-4 at chance: nothing learnt);
#   batch 32 x 800 steps at lr 3e-3 0.697 (op 3: 0.57), at lr 1e-3 0.605. Quick: 600 steps
#   (runtime); full: 800.
# - Runtime: a batch-32 step of the study's decoder costs 32-100 ms on one core of the 2-core
#   build machine (the same step measured at different hours: the host's speed varies ~3x), and
#   a second process on the other core halves both (shared floating-point units), so the study
#   runs in one worker by default; the quick preset is sized for ~15 minutes at the fast rate.
PRESETS: dict[str, dict[str, Any]] = {
  "quick": {},
  # The same design scaled down ~10x for a machine shared by many jobs (short pretraining and
  # fine-tuning, 64 test problems per slice, batch 16): it exercises every output and
  # verdict, not the step budget, and its verdicts are expected to be INCONCLUSIVE.
  "smoke": {
    "test_per_slice": 64,
    "pretrain_steps": 400,
    "strong_pretrain_steps": 100,
    "pretrain_examples": 4000,
    "ft_steps": 60,
    "ft_batch_size": 16,
    "ft_warmup": 5,
    "certified_steps": (20,),
    "mc_chunk_size": 16,
    "sigma_subset": 32,
    "generate_batch_size": 64,
  },
  # The quick design plus a third seed and the paper's disjoint easy/medium/hard thirds. Every
  # per-cell setting equals quick's, so the quick cells are the same cells (same cache keys):
  # a full run may start from a copy of the quick run's cache and recompute nothing of it.
  # Larger budgets (800 steps, 512 test problems per slice, DFT and the stronger base on every
  # bucket, more op counts) cost 60-90 s per cell on the build machine: not run yet.
  "full": {
    "arms": (TILTED, DISJOINT),
    "seeds": (0, 1, 2),
  },
}
