"""Power of the verdicts for a study design, by simulation through the real verdict code.

A design (buckets, sizes n, seeds per cell, test items per slice) and assumed effects and
variances (per cell: accuracy by test slice, item flip variance by slice, seed-effect sd; the
log squared distance ||w - w_base||^2 and its seed sd) give simulated studies as a `StudyView`
with R replicates; `pacbayes.study.theory.judge_view` judges them, and the power of a claim is
the share of replicates where it PASSes (FAIL is counted too). The assumptions are read from a
measured study (`assume_from_view`), so a power computation is recorded beside the numbers it
rests on.

Item model (docs/THEORY.md §8.1): item i of slice k in cell c with seed s is right when
v < m[c, k] + u[c, s], with u ~ N(0, tau_c^2) the seed effect, and v uniform: for a share
lam[c, k] = 1 - phi[c, k] / (m (1 - m)) of the items ("stable" items) v is fixed across seeds
(shared by every cell with probability `rho`, the pairing), for the others it is drawn afresh for
every seed, so the item-by-seed flip variance is phi[c, k] and the slice's accuracy m + u.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from pacbayes.study import theory
from pacbayes.study.stats import slice_matrix
from pacbayes.study.view import CellKey, StudyView

# Item-value budget of one simulated chunk (replicates x cells x seeds x items), ~64 MiB float64.
_CHUNK_VALUES = 8_000_000


@dataclasses.dataclass(frozen=True)
class Assumptions:
  """Assumed truth per cell, for simulation.

  Attributes:
    keys: cell keys (base, method, bucket, n).
    acc_CxK: accuracy of each cell on each test slice (mean over seeds and items).
    flip_CxK: item-by-seed flip variance of one item of each slice (phi, docs/THEORY.md §8.1).
    seed_sd_C: sd of the seed effect on accuracy (the excess over the flips).
    log_dist_C: mean of ln ||w - w_base||^2; log_dist_sd_C: its sd between seeds.
    p_test: [K] test mixture; p_bucket: bucket -> [K] training mixture; buckets: easy -> hard.
    base_acc: base name -> [K] accuracy of the base by slice.
    rho: probability that a stable item's latent value is shared by all cells (pairing).
    source: where the numbers come from (a results file, or "stated constants").
    gap_C: the in-bucket gap R_bucket - R_S of each cell (None: 0 everywhere).
    p_tests: every named test mixture of the study ([K] each; the simulated views carry them,
      so the verdicts judged on a second test mixture are simulated too).
  """

  keys: tuple[CellKey, ...]
  acc_CxK: np.ndarray
  flip_CxK: np.ndarray
  seed_sd_C: np.ndarray
  log_dist_C: np.ndarray
  log_dist_sd_C: np.ndarray
  p_test: np.ndarray
  p_bucket: Mapping[str, np.ndarray]
  buckets: tuple[str, ...]
  base_acc: Mapping[str, np.ndarray]
  rho: float = 0.5
  source: str = "stated constants"
  gap_C: np.ndarray | None = None
  p_tests: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def index(self, key: CellKey) -> int:
    return self.keys.index(key)

  def with_cells(self, extra: Mapping[CellKey, Mapping[str, object]], *,
                 bucket_mixtures: Mapping[str, Sequence[float]] | None = None,
                 order: Sequence[str] | None = None) -> Assumptions:
    """These assumptions plus cells not measured (e.g. an easier bucket), each given as
    {"acc": [K], "flip": [K], "seed_sd": float, "log_dist": float, "log_dist_sd": float}.

    Args:
      extra: the new cells.
      bucket_mixtures: training mixtures of new buckets (bucket -> [K]).
      order: the bucket order, easy -> hard (default: the old order, new buckets first).
    """
    keys = list(self.keys)
    acc, flip = list(self.acc_CxK), list(self.flip_CxK)
    sd, ld, lds = list(self.seed_sd_C), list(self.log_dist_C), list(self.log_dist_sd_C)
    for key, cell in extra.items():
      keys.append(key)
      acc.append(np.asarray(cell["acc"], dtype=np.float64))
      flip.append(np.asarray(cell["flip"], dtype=np.float64))
      sd.append(float(cell["seed_sd"]))
      ld.append(float(cell["log_dist"]))
      lds.append(float(cell["log_dist_sd"]))
    p_bucket = dict(self.p_bucket)
    for b, w in (bucket_mixtures or {}).items():
      p_bucket[b] = np.asarray(w, dtype=np.float64) / float(np.sum(w))
    new = [b for b in p_bucket if b not in self.buckets]
    buckets = tuple(order) if order is not None else tuple(new) + tuple(self.buckets)
    gap = None if self.gap_C is None else np.concatenate([self.gap_C, np.zeros(len(extra))])
    return dataclasses.replace(self, keys=tuple(keys), acc_CxK=np.array(acc), gap_C=gap,
                               flip_CxK=np.array(flip), seed_sd_C=np.array(sd),
                               log_dist_C=np.array(ld), log_dist_sd_C=np.array(lds),
                               p_bucket=p_bucket, buckets=buckets)


@dataclasses.dataclass(frozen=True)
class Design:
  """A study design to simulate.

  Attributes:
    name: a label.
    buckets: buckets in the design, easy -> hard (a subset of the assumptions').
    sizes: training-set sizes n.
    seeds: seeds per cell by default.
    seeds_at: overrides, (bucket, n) -> seeds, or ("*", n) -> seeds for every bucket at n.
    items_per_slice: test items per slice.
    extra_cells: include the stronger-base and DFT cells of the assumptions (at the sizes they
      have there, if in `sizes`).
  """

  name: str
  buckets: tuple[str, ...]
  sizes: tuple[int, ...]
  seeds: int = 2
  seeds_at: Mapping[tuple[str, int], int] = dataclasses.field(default_factory=dict)
  items_per_slice: int = 256
  extra_cells: bool = True

  def seeds_for(self, key: CellKey) -> int:
    _, _, bucket, n = key
    return int(self.seeds_at.get((bucket, n), self.seeds_at.get(("*", n), self.seeds)))

  def cells(self, assume: Assumptions) -> list[CellKey]:
    """The assumptions' cells this design trains, in the assumptions' order."""
    out = []
    for key in assume.keys:
      base, method, bucket, n = key
      main = base == "base" and method == "sft"
      if bucket in self.buckets and n in self.sizes and (main or self.extra_cells):
        out.append(key)
    return out

  def cost(self, assume: Assumptions) -> dict[str, float]:
    """Cell trainings and their training examples summed (steps scale with them under a
    fixed-epoch protocol), and evaluated test items."""
    cells = self.cells(assume)
    runs = sum(self.seeds_for(k) for k in cells)
    examples = sum(self.seeds_for(k) * k[3] for k in cells)
    return {"trainings": runs, "train_examples": examples,
            "test_items": runs * self.items_per_slice * assume.p_test.size}

  def describe(self) -> dict[str, object]:
    return {"name": self.name, "buckets": list(self.buckets), "sizes": list(self.sizes),
            "seeds": self.seeds, "items_per_slice": self.items_per_slice,
            "seeds_at": {f"{b}@{n}": s for (b, n), s in self.seeds_at.items()},
            "extra_cells": self.extra_cells}


def _flip_per_item(x_CxSxN: np.ndarray, slice_of: np.ndarray, k: int) -> np.ndarray:
  """[C, K] residual mean square of the seeds x items table of every cell and slice."""
  out = np.zeros((x_CxSxN.shape[0], k))
  for j in range(k):
    xs = x_CxSxN[..., slice_of == j]
    s, n = xs.shape[1], xs.shape[2]
    res = xs - xs.mean(2, keepdims=True) - xs.mean(1, keepdims=True) + xs.mean((1, 2),
                                                                                keepdims=True)
    out[:, j] = (res**2).sum(axis=(1, 2)) / ((s - 1) * (n - 1))
  return out


def assume_from_view(view: StudyView, source: str, rho: float = 0.5) -> Assumptions:
  """Assumptions measured on a real study (replicate 0; every cell needs >= 2 seeds).

  acc: per-slice accuracy; flip: the seeds x items residual mean square per slice; seed sd:
  sqrt(max(0, s^2 - F)) of the test-mixture accuracy (the excess over the flips, as in
  `pacbayes.study.stats`); log distance: mean and sd over seeds of ln ||w - w_base||^2.

  Raises:
    ValueError: a cell with fewer than 2 seeds.
  """
  x = view.items["correct"][0]  # [C, S, N]
  k = len(view.ops)
  m_NxK, counts = slice_matrix(view.slice_of)
  acc, flip, sd, ld, lds = [], [], [], [], []
  for c, key in enumerate(view.keys):
    xc = x[c][np.isfinite(x[c, :, 0])]
    if xc.shape[0] < 2:
      raise ValueError(f"{source}: cell {key} has {xc.shape[0]} seed(s); the variances need 2")
    per_slice = xc @ m_NxK  # [S, K]
    phi = _flip_per_item(xc[None], view.slice_of, k)[0]
    q = per_slice @ view.p_test
    f = float(np.sum(view.p_test**2 * phi / counts))
    acc.append(per_slice.mean(axis=0))
    flip.append(phi)
    sd.append(float(np.sqrt(max(0.0, q.var(ddof=1) - f))))
    dist = view.scalars["sq_distance"][0, c]
    moved = dist[np.isfinite(dist) & (dist > 0)]  # seeds that kept their base have no ln
    lnd = np.log(moved)
    ld.append(float(lnd.mean()) if lnd.size else float("nan"))
    lds.append(float(lnd.std(ddof=1)) if lnd.size >= 2 else float("nan"))
  return Assumptions(keys=tuple(view.keys), acc_CxK=np.array(acc), flip_CxK=np.array(flip),
                     seed_sd_C=np.array(sd), log_dist_C=np.array(ld),
                     log_dist_sd_C=np.array(lds), p_test=np.asarray(view.p_test),
                     p_bucket=dict(view.p_bucket), buckets=tuple(view.buckets),
                     base_acc=dict(view.base_acc), rho=rho, source=source,
                     p_tests=dict(view.p_tests))


def simulate(assume: Assumptions, design: Design, reps: int,
             rng: np.random.Generator) -> StudyView:
  """`reps` simulated studies of `design` under `assume`, as one `StudyView` (NaN-padded seeds).

  Fields: items "correct" (the item model of the module docstring), "seq_error" and
  "q_seq_error" = 1 - correct (sequence error stands in as 1 - accuracy); scalars
  "sq_distance" = exp(log_dist + N(0, log_dist_sd^2)), "train_seq_error" = the expected
  in-bucket error less gap_C, "bound" = "b_train" = 1 (vacuous: the bound claim is not judged
  in simulations); the bases' sequence error by slice is 1 - their accuracy.
  """
  keys = design.cells(assume)
  if not keys:
    raise ValueError(f"design {design.name!r}: no cell of the assumptions is in it")
  idx = [assume.index(k) for k in keys]
  k_sl = assume.p_test.size
  n_per = design.items_per_slice
  slice_of = np.repeat(np.arange(k_sl), n_per)
  c, n = len(keys), k_sl * n_per
  seeds_C = np.array([design.seeds_for(key) for key in keys])
  s_max = int(seeds_C.max())
  m = np.clip(assume.acc_CxK[idx], 1e-3, 1 - 1e-3)  # [C, K]
  lam = np.clip(1.0 - assume.flip_CxK[idx] / (m * (1 - m)), 0.0, 1.0)
  m_N = m[:, slice_of][None, :, None, :]  # [1, C, 1, N]
  lam_N = lam[:, slice_of][None, :, None, :]
  tau = assume.seed_sd_C[idx][None, :, None, None]
  u = rng.normal(size=(reps, c, s_max, 1)) * tau
  h = rng.random((reps, 1, 1, n))  # which items are stable (shared by the cells)
  shared = rng.random((reps, 1, 1, n))
  own = rng.random((reps, c, 1, n))
  stable_v = np.where(rng.random((reps, 1, 1, n)) < assume.rho, shared, own)
  fresh = rng.random((reps, c, s_max, n))
  v = np.where(h < lam_N, stable_v, fresh)
  correct = (v < m_N + u).astype(np.float64)
  missing = np.arange(s_max)[None, None, :] >= seeds_C[None, :, None]  # [1, C, S]
  correct[np.broadcast_to(missing, (reps, c, s_max))] = np.nan
  seq = 1.0 - correct
  ld = assume.log_dist_C[idx][None, :, None]
  lds = assume.log_dist_sd_C[idx][None, :, None]
  dist = np.exp(ld + lds * rng.normal(size=(reps, c, s_max)))
  pad = lambda a: np.where(missing, np.nan, a)  # noqa: E731
  gap = np.zeros(c) if assume.gap_C is None else np.asarray(assume.gap_C)[idx]
  r_bucket = np.array([(1 - m[j]) @ assume.p_bucket[key[2]] for j, key in enumerate(keys)])
  train = np.broadcast_to((r_bucket - gap)[None, :, None], (reps, c, s_max))
  scalars = {"sq_distance": pad(dist), "train_seq_error": pad(train),
             "bound": pad(np.ones((reps, c, s_max))), "b_train": pad(np.ones((reps, c, s_max)))}
  buckets = tuple(b for b in assume.buckets if b in design.buckets)
  return StudyView(keys=tuple(keys), seeds=tuple(range(s_max)), ops=np.arange(1, k_sl + 1),
                   slice_of=slice_of, p_test=assume.p_test,
                   p_bucket={b: assume.p_bucket[b] for b in buckets}, buckets=buckets,
                   base_acc=assume.base_acc,
                   base_seq_error={b: 1.0 - a for b, a in assume.base_acc.items()},
                   items={"correct": correct, "seq_error": seq, "q_seq_error": seq},
                   scalars=scalars, p_tests=dict(assume.p_tests))


@dataclasses.dataclass(frozen=True)
class PowerOptions:
  """reps: simulated studies; seed: NumPy seed; judge: view -> verdicts (default: every claim
  of `theory.judge_view`, Holm over the primary ones, no bootstrap)."""

  reps: int = 2000
  seed: int = 0
  judge: Callable[[StudyView], list[theory.Verdict]] | None = None


def power(assume: Assumptions, design: Design,
          options: PowerOptions = PowerOptions()) -> dict[str, dict[str, float]]:
  """Claim -> {"pass": P(PASS), "fail": P(FAIL), "se": Monte-Carlo s.e. of P(PASS)}.

  The replicates are simulated in chunks of about 8e6 item values, each judged by the real
  verdict code; claims that are not judged in a design are left out.
  """
  judge = options.judge or (lambda view: theory.judge_view(view, with_bootstrap=False))
  rng = np.random.default_rng(options.seed)
  keys = design.cells(assume)
  per_rep = len(keys) * max(design.seeds_for(k) for k in keys) * design.items_per_slice * \
      assume.p_test.size
  chunk = max(1, min(options.reps, _CHUNK_VALUES // max(per_rep, 1)))
  passes: dict[str, float] = {}
  fails: dict[str, float] = {}
  done = 0
  while done < options.reps:
    r = min(chunk, options.reps - done)
    for v in judge(simulate(assume, design, r, rng)):
      if np.isnan(v.estimate).all():
        continue
      passes[v.claim] = passes.get(v.claim, 0.0) + float(np.sum(v.outcome == theory.PASS))
      fails[v.claim] = fails.get(v.claim, 0.0) + float(np.sum(v.outcome == theory.FAIL))
    done += r
  out = {}
  for claim, p in passes.items():
    rate = p / options.reps
    out[claim] = {"pass": rate, "fail": fails[claim] / options.reps,
                  "se": float(np.sqrt(max(rate * (1 - rate), 1e-12) / options.reps))}
  return out


def design_of_view(view: StudyView, name: str) -> Design:
  """The design a study view was run with: its buckets, sizes, seeds per (bucket, n) (of its
  base/SFT cells, else any cell) and test items per slice (the smallest slice)."""
  seeds_at: dict[tuple[str, int], int] = {}
  valid = np.isfinite(view.items["correct"][0, :, :, 0])  # [C, S]
  for c, (base, method, bucket, n) in enumerate(view.keys):
    if (bucket, n) not in seeds_at or (base, method) == ("base", "sft"):
      seeds_at[(bucket, n)] = int(valid[c].sum())
  counts = np.bincount(view.slice_of)
  return Design(name, tuple(view.buckets), tuple(sorted({k[3] for k in view.keys})),
                seeds=max(seeds_at.values()), seeds_at=seeds_at,
                items_per_slice=int(counts.min()))


def _or_null(x: np.ndarray) -> list[float | None]:
  return [float(v) if np.isfinite(v) else None for v in np.asarray(x, dtype=np.float64)]


def power_block(view: StudyView, name: str, options: PowerOptions) -> dict[str, object]:
  """results.json's "power" block: the run's own design, its measured per-cell effects and
  variances as the assumed truth (`assume_from_view`), and the power per claim of that design
  by simulation through the verdict code (`power`). This is the power at the effects the run
  measured (observed power), recorded with the assumptions it rests on; the design power of
  the presets (at the pilot's and the committed runs' effects) is in
  experiments/results/power. A view with a cell of fewer than 2 seeds gives {"skipped": why}.
  """
  try:
    assume = assume_from_view(view, source="this run")
  except ValueError as e:
    return {"skipped": str(e)}
  design = design_of_view(view, name)
  table = power(assume, design, options)
  measured = {v.claim: {"estimate": float(v.estimate[0]), "lo": float(v.lo[0]),
                        "hi": float(v.hi[0]), "verdict": v.word}
              for v in theory.judge_view(view, with_bootstrap=False)
              if np.isfinite(v.estimate[0])}
  return {
    "method": ("simulation through pacbayes.study.theory.judge_view (Holm over the primary "
               "claims), item model of pacbayes.study.power; assumed truth = this run's own "
               "per-cell estimates (observed power)"),
    "reps": options.reps, "seed": options.seed, "alpha": theory.ALPHA,
    "design": design.describe(), "cost": design.cost(assume),
    "assumed": {"keys": [list(k) for k in assume.keys], "acc_by_slice": assume.acc_CxK.tolist(),
                "flip_by_slice": assume.flip_CxK.tolist(), "seed_sd": assume.seed_sd_C.tolist(),
                # null: every seed (or all but one) of the cell kept its base
                "log_sq_distance": _or_null(assume.log_dist_C),
                "log_sq_distance_sd": _or_null(assume.log_dist_sd_C), "rho": assume.rho},
    "measured_effects": measured,
    "power": table,
  }
