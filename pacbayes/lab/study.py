"""The difficulty x size study: pretrain bases, fine-tune every grid cell, evaluate, certify."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from pacbayes import perturb, pipeline, shift
from pacbayes.data import synthetic
from pacbayes.data.dataset import Dataset
from pacbayes.lab import cache, subspace
from pacbayes.lab import evaluate as ev
from pacbayes.lab import train as tr
from pacbayes.models import ModelConfig, build_model

SCHEMA = "pacbayes.lab/1"
BASES = ("base", "strong")
STUDY_METHODS = ("sft", "dft")
_TRAIN_METHOD = {"sft": "ce", "dft": "dft"}
G_EXT_KIND = "certified under difficulty shift"
# Bumped whenever a change alters cached numbers, so stale cache entries are never reused.
_CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  """Every setting of one difficulty x size study (the defaults are the "quick" preset).

  name: the preset this config came from (recorded as "preset" in results.json).

  Task and data:
    modulus: arithmetic modulus of the synthetic task.
    buckets: (name, lo, hi) training buckets by operation count, ordered easy -> hard.
    test_ops: (lo, hi) op counts of the test set; every one is a slice.
    test_weight_power: the test mixture is p(k) proportional to k ** power over the test op
      counts (power > 0 leans harder than the easy bucket, as the paper's harder benchmarks).
    test_per_slice: test problems per op count.
    sizes: fine-tuning set sizes n.
    seeds: fine-tuning seeds (each gives its own training subset, order and MC draws).

  Model: hidden_size, intermediate_size, num_layers, num_heads of a Llama decoder.

  Pretraining ("base" and the stronger "strong"):
    pretrain_ops / strong_pretrain_ops: op-count ranges of the pretraining corpora.
    pretrain_steps / strong_pretrain_steps: optimiser steps.
    strong_from_base: the stronger base continues the base's pretraining (its steps are then
      extra steps, on its own op range) instead of starting from scratch.
    pretrain_examples: corpus size; pretrain_batch_size, pretrain_lr, pretrain_warmup.
    pretrain_loss: "full" (next-token loss over the whole sequence) or "completion".

  Fine-tuning:
    ft_batch_size, ft_lr, ft_warmup: optimiser settings.
    ft_epochs, ft_min_steps, ft_max_steps: steps = clip(ceil(epochs * n / batch), min, max).
      The presets set min = max: a fixed step budget for every n (as in the paper), so n is
      the only thing that changes along a row and small n means many epochs over S.
    ft_subspace_dim: d > 0 fine-tunes in a fixed random d-dimensional subspace of the weights
      (`pacbayes.lab.subspace`; prior and posterior then live in R^d); 0 fine-tunes every
      weight (the certificate then spans all weights and is usually vacuous).
    pad_to_test_length: pad every bucket to the test set's length (fewer compiled shapes,
      more compute per step); by default a bucket is padded to its own longest problem.
    dft_buckets, dft_sizes: where DFT runs besides SFT (None sizes = every size).
    strong_sizes: sizes of the SFT bucket sweep from the stronger base.

  Certificate and evaluation:
    delta: total failure probability of each certificate.
    sigma_prior_grid: prior scales fixed in advance (the bound pays ln k for the choice).
    sigma_q_grid: posterior scales tried (the certificate keeps the best; Q may depend on S).
      Taken from sigma_prior_grid, so the chosen Q has a prior of the same scale available
      and the KL pays no d/2 * (ratio - 1 - ln ratio) scale-mismatch term in R^d.
    mc_chunk_size: rows per posterior draw in the one-pass Monte-Carlo estimate of E_Q[R_S].
    sigma_subset: rows of S used to choose the posterior scale.
    test_draws: posterior draws for the measured E_Q[R_test].
    eval_batch_size, generate_batch_size: batch sizes of teacher-forced and greedy passes.
  """

  name: str = "quick"
  seed: int = 0
  modulus: int = 5
  buckets: tuple[tuple[str, int, int], ...] = (("easy", 1, 2), ("medium", 3, 4), ("hard", 5, 6))
  test_ops: tuple[int, int] = (1, 6)
  test_weight_power: float = 1.0
  test_per_slice: int = 256
  sizes: tuple[int, ...] = (200, 800, 3200)
  seeds: tuple[int, ...] = (0,)
  hidden_size: int = 64
  intermediate_size: int = 256
  num_layers: int = 2
  num_heads: int = 4
  pretrain_ops: tuple[int, int] = (1, 4)
  pretrain_steps: int = 3500
  strong_pretrain_ops: tuple[int, int] = (1, 5)
  strong_pretrain_steps: int = 1000
  strong_from_base: bool = True
  pretrain_examples: int = 20000
  pretrain_batch_size: int = 32
  pretrain_lr: float = 3e-3
  pretrain_warmup: int = 100
  pretrain_loss: str = "completion"
  ft_batch_size: int = 32
  ft_lr: float = 1e-2
  ft_warmup: int = 10
  ft_epochs: float = 3.0
  ft_min_steps: int = 250
  ft_max_steps: int = 250
  ft_subspace_dim: int = 4096
  pad_to_test_length: bool = False
  dft_buckets: tuple[str, ...] = ("easy", "medium", "hard")
  dft_sizes: tuple[int, ...] | None = (200, 3200)
  strong_sizes: tuple[int, ...] = (800,)
  delta: float = 0.05
  sigma_prior_grid: tuple[float, ...] = (0.0316, 0.0562, 0.1, 0.178, 0.316, 0.562, 1.0, 1.78,
                                         3.16)
  sigma_q_grid: tuple[float, ...] = (0.0316, 0.1, 0.178, 0.316, 0.562, 1.0)
  mc_chunk_size: int = 1
  sigma_subset: int = 128
  test_draws: int = 2
  eval_batch_size: int = 64
  generate_batch_size: int = 256

  def __post_init__(self):
    for name in ("buckets", "test_ops", "sizes", "seeds", "pretrain_ops", "strong_pretrain_ops",
                 "dft_buckets", "strong_sizes", "sigma_prior_grid", "sigma_q_grid"):
      value = getattr(self, name)
      if isinstance(value, list):
        object.__setattr__(self, name, tuple(value))
    object.__setattr__(self, "buckets", tuple(tuple(b) for b in self.buckets))
    if self.dft_sizes is not None:
      object.__setattr__(self, "dft_sizes", tuple(self.dft_sizes))
    if len(self.buckets) < 1:
      raise ValueError("StudyConfig.buckets: expected at least one (name, lo, hi) bucket")
    names = [b[0] for b in self.buckets]
    if len(set(names)) != len(names):
      raise ValueError(f"StudyConfig.buckets: bucket names must be distinct, got {names}")
    lo_t, hi_t = self.test_ops
    if not 1 <= lo_t <= hi_t <= synthetic.MAX_STATEMENTS:
      raise ValueError(f"StudyConfig.test_ops: expected 1 <= lo <= hi <= 26, got {self.test_ops}")
    prev_hi = 0
    for name, lo, hi in self.buckets:
      if not (lo <= hi and lo > prev_hi):
        raise ValueError(f"StudyConfig.buckets: bucket {name!r} ({lo}, {hi}) must be a range "
                         "above the previous bucket (ordered easy -> hard, disjoint)")
      if lo < lo_t or hi > hi_t:
        raise ValueError(f"StudyConfig.buckets: bucket {name!r} ({lo}, {hi}) lies outside "
                         f"test_ops {self.test_ops}")
      prev_hi = hi
    for name in ("pretrain_ops", "strong_pretrain_ops"):
      lo, hi = getattr(self, name)
      if not 1 <= lo <= hi <= synthetic.MAX_STATEMENTS:
        raise ValueError(f"StudyConfig.{name}: expected 1 <= lo <= hi <= 26, got ({lo}, {hi})")
    if not self.sizes or min(self.sizes) < 1 or list(self.sizes) != sorted(set(self.sizes)):
      raise ValueError(f"StudyConfig.sizes: expected increasing positive ints, got {self.sizes}")
    if not self.seeds:
      raise ValueError("StudyConfig.seeds: expected at least one seed")
    for name in ("dft_sizes", "strong_sizes"):
      value = getattr(self, name)
      if value is not None and not set(value) <= set(self.sizes):
        raise ValueError(f"StudyConfig.{name}: {value} must be a subset of sizes {self.sizes}")
    if not set(self.dft_buckets) <= set(names):
      raise ValueError(f"StudyConfig.dft_buckets: {self.dft_buckets} must name buckets {names}")
    if self.pretrain_loss not in ("full", "completion"):
      raise ValueError(f"StudyConfig.pretrain_loss: expected 'full' or 'completion', got "
                       f"{self.pretrain_loss!r}")
    if not 0 < self.delta < 1:
      raise ValueError(f"StudyConfig.delta: expected a value in (0, 1), got {self.delta}")
    for name in ("sigma_prior_grid", "sigma_q_grid"):
      grid = getattr(self, name)
      if not grid or min(grid) <= 0:
        raise ValueError(f"StudyConfig.{name}: expected positive scales, got {grid}")
    for name in ("test_per_slice", "pretrain_steps", "strong_pretrain_steps",
                 "pretrain_examples", "pretrain_batch_size", "ft_batch_size", "ft_min_steps",
                 "ft_max_steps", "mc_chunk_size", "sigma_subset", "test_draws", "eval_batch_size",
                 "generate_batch_size", "hidden_size", "intermediate_size", "num_layers",
                 "num_heads"):
      if getattr(self, name) < 1:
        raise ValueError(f"StudyConfig.{name}: expected a positive integer, got "
                         f"{getattr(self, name)}")
    if self.ft_subspace_dim < 0:
      raise ValueError(f"StudyConfig.ft_subspace_dim: expected >= 0, got {self.ft_subspace_dim}")
    if self.ft_min_steps > self.ft_max_steps:
      raise ValueError("StudyConfig.ft_min_steps must not exceed ft_max_steps")
    if self.test_weight_power < 0:
      raise ValueError("StudyConfig.test_weight_power: expected >= 0")

  @classmethod
  def preset(cls, name: str, **overrides: Any) -> StudyConfig:
    """A named preset ("quick" or "full"), with optional field overrides.

    "quick" fits in about 12 minutes on two CPU cores; "full" is about ten times the work
    (a wider model, more pretraining, larger n, two seeds).
    """
    if name not in PRESETS:
      raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {name!r}")
    fields = dict(PRESETS[name])
    fields.update(overrides)
    return cls(name=name, **fields)

  def to_dict(self) -> dict[str, Any]:
    """Every field, JSON-ready (tuples as lists)."""
    return {f.name: _listify(getattr(self, f.name)) for f in dataclasses.fields(self)}

  def replace(self, **changes: Any) -> StudyConfig:
    return dataclasses.replace(self, **changes)

  @property
  def bucket_names(self) -> list[str]:
    return [b[0] for b in self.buckets]

  def bucket(self, name: str) -> tuple[int, int]:
    for b, lo, hi in self.buckets:
      if b == name:
        return lo, hi
    raise ValueError(f"bucket: unknown bucket {name!r}; expected one of {self.bucket_names}")

  def ft_steps(self, n: int) -> int:
    steps = math.ceil(self.ft_epochs * n / self.ft_batch_size)
    return int(min(max(steps, self.ft_min_steps), self.ft_max_steps))


# How the quick preset was chosen (claim-neutral competence checks only, probes on 2 CPU
# cores, accuracy by op-count slice 1..6; the final numbers are in
# experiments/results/quick/run.log):
# - base: a 2-layer, 64-wide decoder (18 steps/s idle) pretrained with completion loss on
#   ops 1-4 at lr 3e-3. Accuracy grows with steps, then flattens: 1600 steps
#   [1.00 .67 .34 .31 .19 .12], 3000 [1.00 1.00 .73 .25 .22 .20], 4000
#   [1.00 1.00 .70 .31 .24 .20]. Alternatives were worse at equal cost: lr 1e-2 (3000 steps)
#   [.72 .47 .25 .27 ..], 3 layers at lr 5e-3 (2500) [1.00 .89 .55 .20 ..], pretraining on
#   ops 1-3 only (3000) [1.00 1.00 .48 .31 ..]. 3500 steps keeps the run within budget.
#   The base is then exact on ops 1-2, partial on 3-4 and at chance (1/5) on 5-6. The strong
#   base adds 1000 steps on ops 1-5.
# - fine-tuning: a 4096-dim random subspace, lr 1e-2, a fixed 250 steps for every n (the
#   paper's fixed step budget). Probes at 200 steps, n = 3200, on the 4000-step base: medium
#   slice 4 .31 -> .39; hard loss 1.44 -> 0.47 with slice 6 .20 -> .28. d = 1024 / 4096 /
#   16384 learned alike on an earlier base, lr 3e-2 at d = 16384 broke slice 1 (.74), so
#   lr 1e-2 and d = 4096 (||z||^2 ~ 10-100, KL in the tens to thousands of nats).
# - test_per_slice 256: binomial s.e. <= 0.031 per slice, <= 0.013 on the mixture; two
#   posterior draws over 1536 test rows for E_Q[R_test].
PRESETS: dict[str, dict[str, Any]] = {
  "quick": {},
  "full": {
    "buckets": (("easy", 1, 2), ("medium", 3, 5), ("hard", 6, 8)),
    "test_ops": (1, 8),
    "test_per_slice": 512,
    "sizes": (250, 1000, 4000, 16000),
    "seeds": (0, 1),
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_layers": 3,
    "pretrain_ops": (1, 5),
    "pretrain_steps": 8000,
    "strong_pretrain_ops": (1, 6),
    "strong_pretrain_steps": 2000,
    "ft_subspace_dim": 8192,
    "pretrain_examples": 100000,
    "pretrain_lr": 2e-3,
    "pretrain_warmup": 200,
    "ft_min_steps": 400,
    "ft_max_steps": 400,
    "dft_sizes": None,
    "strong_sizes": (1000, 4000),
    "test_draws": 4,
  },
}


def _listify(x: Any) -> Any:
  if isinstance(x, tuple | list):
    return [_listify(v) for v in x]
  return x


# --------------------------------------------------------------------------------- data


def test_mixture(config: StudyConfig) -> dict[int, float]:
  """The test distribution over op counts: p(k) proportional to k ** test_weight_power."""
  lo, hi = config.test_ops
  ks = np.arange(lo, hi + 1, dtype=np.float64)
  w = ks**config.test_weight_power
  w = w / w.sum()
  return {int(k): float(p) for k, p in zip(ks, w, strict=True)}


def bucket_mixture(lo: int, hi: int) -> dict[int, float]:
  """A bucket's training mixture: op counts drawn uniformly from [lo, hi] (by construction)."""
  return {k: 1.0 / (hi - lo + 1) for k in range(lo, hi + 1)}


def seq_length(max_ops: int) -> int:
  """Padded length that holds every problem with up to `max_ops` operations."""
  return synthetic.prompt_length(max_ops) + synthetic.completion_length(max_ops)


def _seed(config: StudyConfig, *parts: int) -> np.random.SeedSequence:
  return np.random.SeedSequence([config.seed, *parts])


def _rows(n: int, lo: int, hi: int, seed: np.random.SeedSequence, config: StudyConfig,
          exclude: set[str]) -> list[dict[str, Any]]:
  return synthetic.generate_dataset(n, list(range(lo, hi + 1)), seed=seed,
                                    modulus=config.modulus, exclude=exclude)


def _to_dataset(rows, max_ops: int, *, full_loss: bool, source: str) -> Dataset:
  ds = Dataset.from_rows(rows, pad_length=seq_length(max_ops), source=source)
  if full_loss:
    lm = ds.attention_mask.copy()
    lm[:, 0] = 0
    ds = dataclasses.replace(ds, loss_mask=lm)
  return ds


def _arrays(ds: Dataset) -> dict[str, np.ndarray]:
  return {"input_ids": ds.input_ids, "attention_mask": ds.attention_mask,
          "loss_mask": ds.loss_mask}


# ------------------------------------------------------------------------------- models


def model_config(config: StudyConfig) -> ModelConfig:
  """The Llama architecture of the study (tiny; the synthetic vocabulary)."""
  return ModelConfig(
    model_type="llama",
    vocab_size=synthetic.VOCAB_SIZE,
    hidden_size=config.hidden_size,
    intermediate_size=config.intermediate_size,
    num_hidden_layers=config.num_layers,
    num_attention_heads=config.num_heads,
    max_position_embeddings=synthetic.MODEL_MAX_LENGTH,
    dtype="float32",
    bos_token_id=synthetic.BOS_ID,
    eos_token_id=synthetic.EOS_ID,
    pad_token_id=synthetic.PAD_ID,
  )


@dataclasses.dataclass(frozen=True, eq=False)
class FineTuneSpace:
  """Where one base is fine-tuned and certified.

  Attributes:
    prior: the prior mean (the base's weights, or z = 0 in the subspace).
    apply: apply(params, input_ids, attention_mask) -> logits for params in this space.
    loss_fn: token error of `apply`, for the certificate and the posterior test risk.
    to_weights: params in this space -> the model's weight pytree.
  """

  prior: Any
  apply: Any
  loss_fn: Any
  to_weights: Any


def fine_tune_space(study: _Study, base_params) -> FineTuneSpace:
  """The weight space (ft_subspace_dim = 0) or the random subspace around `base_params`."""
  if study.subspace is None:
    return FineTuneSpace(prior=base_params, apply=study.apply, loss_fn=study.loss_fn,
                         to_weights=lambda p: p)
  sub = study.subspace
  apply = subspace.subspace_apply(study.graphdef, study.rest, base_params, sub)
  return FineTuneSpace(prior=subspace.zeros(sub), apply=apply, loss_fn=ev.error_loss_fn(apply),
                       to_weights=lambda zp: subspace.expand(sub, base_params, zp["z"]))


class _Study:
  """State of one run: config, data, caches, split model and compiled loss."""

  def __init__(self, config: StudyConfig, out_dir: str, progress: bool):
    self.config = config
    self.out_dir = out_dir
    self.progress = progress
    self.cache_dir = os.path.join(out_dir, "cache")
    self.key = jax.random.key(config.seed)
    self.mcfg = model_config(config)
    model = build_model(self.mcfg, rngs=nnx.Rngs(config.seed))
    self.graphdef, self.init_params, self.rest = nnx.split(model, nnx.Param, ...)
    self.num_params = int(sum(np.size(x) for x in jax.tree.leaves(self.init_params)))
    self.apply = tr.model_apply(self.graphdef, self.rest)
    self.loss_fn = ev.error_loss_fn(self.apply)
    self.subspace = None
    if config.ft_subspace_dim > 0:
      self.subspace = subspace.make_subspace(self.init_params, config.ft_subspace_dim,
                                             key=jax.random.fold_in(self.key, 99))
    self.mixture = test_mixture(config)

  # --------------------------------------------------------------------------- utilities

  def log(self, msg: str) -> None:
    if self.progress:
      from tqdm.auto import tqdm

      tqdm.write(f"[lab] {msg}")

  def model(self, params) -> nnx.Module:
    return nnx.merge(self.graphdef, params, self.rest)

  def fkey(self, *parts: int) -> jax.Array:
    key = self.key
    for p in parts:
      key = jax.random.fold_in(key, p)
    return key

  def path(self, *parts: str) -> str:
    return os.path.join(self.cache_dir, *parts)

  # ------------------------------------------------------------------------------ data

  def build_data(self) -> None:
    c = self.config
    t = time.perf_counter()
    lo, hi = c.test_ops
    test_rows = []
    for k in range(lo, hi + 1):
      test_rows += synthetic.generate_dataset(c.test_per_slice, [k], seed=_seed(c, 1, k),
                                              modulus=c.modulus, unique=True)
    self.test_keys = {r["key"] for r in test_rows}
    self.test = ev.make_slice_set(test_rows, self.mixture, pad_length=seq_length(hi))
    self.pools: dict[tuple[str, int], Dataset] = {}
    for b_idx, (name, blo, bhi) in enumerate(c.buckets):
      for seed in c.seeds:
        # Fine-tuning pools are NOT deduplicated against the test set: g_ext certifies TV
        # only if train and test draw from the same per-difficulty distribution D(z|k).
        rows = _rows(max(c.sizes), blo, bhi, _seed(c, 2, b_idx, seed), c, set())
        pad_ops = hi if c.pad_to_test_length else bhi
        self.pools[(name, seed)] = _to_dataset(rows, pad_ops, full_loss=False,
                                               source=f"<bucket {name} seed {seed}>")
    self.log(f"data: test {len(test_rows)} rows over ops {lo}-{hi}, "
             f"{len(self.pools)} bucket pools of {max(c.sizes)} ({time.perf_counter() - t:.1f}s)")

  # ------------------------------------------------------------------------------ bases

  def base_fields(self, which: str) -> dict[str, Any]:
    c = self.config
    ops, steps = ((c.pretrain_ops, c.pretrain_steps) if which == "base"
                  else (c.strong_pretrain_ops, c.strong_pretrain_steps))
    fields = {"pad": True} if c.pad_to_test_length else {}  # absent when False: stable keys
    if which == "strong" and c.strong_from_base:
      fields["init"] = self.base_fields("base")
    return fields | {
      "v": _CACHE_VERSION, "which": which, "seed": c.seed, "modulus": c.modulus,
      "model": self.mcfg.to_hf_config(), "ops": list(ops), "steps": steps,
      "examples": c.pretrain_examples, "batch": c.pretrain_batch_size, "lr": c.pretrain_lr,
      "warmup": c.pretrain_warmup, "loss": c.pretrain_loss, "test_ops": list(c.test_ops),
      "test_per_slice": c.test_per_slice,
    }

  def pretrain(self, which: str, init_params=None) -> tuple[Any, dict[str, Any]]:
    c = self.config
    init_params = self.init_params if init_params is None else init_params
    fields = self.base_fields(which)
    tag = f"{which}-{cache.config_hash(fields)}"
    ckpt, info_path = self.path("bases", tag + ".npz"), self.path("bases", tag + ".json")
    params = cache.load_params(ckpt, self.init_params)
    info = cache.read_json(info_path)
    lo, hi = fields["ops"]
    if params is None:
      idx = BASES.index(which)
      rows = _rows(c.pretrain_examples, lo, hi, _seed(c, 3, idx), c, self.test_keys)
      pad_ops = max(hi, c.test_ops[1]) if c.pad_to_test_length else hi
      ds = _to_dataset(rows, pad_ops, full_loss=c.pretrain_loss == "full",
                       source=f"<pretraining {which}>")
      tcfg = tr.TrainConfig(steps=fields["steps"], batch_size=c.pretrain_batch_size,
                            learning_rate=c.pretrain_lr, warmup_steps=c.pretrain_warmup,
                            weight_decay=0.01, method="ce")
      res = tr.train(self.apply, init_params, _arrays(ds), tcfg,
                     key=self.fkey(10, idx), progress=self.progress,
                     desc=f"pretrain {which} (ops {lo}-{hi})")
      params = res.params
      cache.save_params(ckpt, params)
      info = None
      self.log(f"pretrained {which}: {fields['steps']} steps in {res.time_s:.1f}s, "
               f"final loss {res.losses[-10:].mean():.4f}")
    if info is None:
      t = time.perf_counter()
      evaluation = ev.evaluate_model(self.model(params), self.loss_fn, self.test,
                                     batch_size=c.eval_batch_size,
                                     generate_batch_size=c.generate_batch_size)
      total = fields["steps"] + (fields["init"]["steps"] if "init" in fields else 0)
      info = {
        "pretrain_ops": [lo, hi], "steps": total,
        "init": "base" if "init" in fields else "scratch",
        "accuracy": evaluation["accuracy"],
        "accuracy_by_slice": evaluation["accuracy_by_slice"],
        "test_risk": evaluation["test_risk_point"],
        "risk_by_slice": evaluation["risk_by_slice"],
      }
      cache.write_json(info_path, info)
      self.log(f"{which}: accuracy {info['accuracy']:.3f} "
               f"{_fmt_slices(info['accuracy_by_slice'])} ({time.perf_counter() - t:.1f}s)")
    return params, info

  # ------------------------------------------------------------------------------ cells

  def cell_fields(self, base: str, method: str, bucket: str, n: int, seed: int) -> dict:
    c = self.config
    return {
      "v": _CACHE_VERSION, "base": self.base_fields(base), "method": method,
      "bucket": list(c.bucket(bucket)), "n": n, "seed": seed,
      "ft": [c.ft_batch_size, c.ft_lr, c.ft_warmup, c.ft_steps(n), c.ft_subspace_dim],
      "cert": [c.delta, list(c.sigma_prior_grid), list(c.sigma_q_grid), c.mc_chunk_size,
               c.sigma_subset, c.test_draws],
      "test_weight_power": c.test_weight_power,
    }

  def run_cell(self, base: str, method: str, bucket: str, n: int, seed: int,
               space: FineTuneSpace) -> dict[str, Any]:
    c = self.config
    fields = self.cell_fields(base, method, bucket, n, seed)
    tag = f"{base}-{method}-{bucket}-n{n}-s{seed}-{cache.config_hash(fields)}"
    result_path, ckpt = self.path("cells", tag + ".json"), self.path("cells", tag + ".npz")
    cached = cache.read_json(result_path)
    if cached is not None:
      return cached
    lo, hi = c.bucket(bucket)
    train_ds = self.pools[(bucket, seed)].subset(np.arange(n))
    cell_id = (BASES.index(base), STUDY_METHODS.index(method), c.bucket_names.index(bucket),
               n, seed)
    params = cache.load_params(ckpt, space.prior)
    train_time = 0.0
    if params is None:
      tcfg = tr.TrainConfig(steps=c.ft_steps(n), batch_size=c.ft_batch_size,
                            learning_rate=c.ft_lr, warmup_steps=c.ft_warmup,
                            method=_TRAIN_METHOD[method])
      res = tr.train(space.apply, space.prior, _arrays(train_ds), tcfg,
                     key=self.fkey(20, *cell_id), progress=self.progress,
                     desc=f"{base}/{method}/{bucket}/n={n}")
      params, train_time = res.params, res.time_s
      cache.save_params(ckpt, params)
    t = time.perf_counter()
    weights = space.to_weights(params)
    evaluation = ev.evaluate_model(self.model(weights), self.loss_fn, self.test,
                                   batch_size=c.eval_batch_size,
                                   generate_batch_size=c.generate_batch_size)
    g_ext = shift.tv_discrete(None, None, c.delta / 3, train_probs=bucket_mixture(lo, hi),
                              test_probs=self.mixture)
    cert = certify_cell(self, space, params, train_ds, key=self.fkey(30, *cell_id),
                        g_ext=g_ext.upper)
    q_risk = ev.posterior_slice_risk(space.loss_fn, params, self.test,
                                     key=self.fkey(40, *cell_id), sigma=cert["sigma_q"],
                                     num_draws=c.test_draws, batch_size=c.eval_batch_size)
    sq_dist = float(sum(float(np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64))**2))
                        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(space.prior),
                                        strict=True)))
    result = {
      "base": base, "method": method, "bucket": bucket, "difficulty": float((lo + hi) / 2),
      "n": n, "seed": seed,
      "accuracy": evaluation["accuracy"],
      "accuracy_by_slice": evaluation["accuracy_by_slice"],
      "test_risk": self.test.weighted(q_risk),
      "test_risk_point": evaluation["test_risk_point"],
      "test_risk_by_slice": {str(k): v for k, v in q_risk.items()},
      "point_risk_by_slice": evaluation["risk_by_slice"],
      "certificate": cert,
      "sq_distance": sq_dist,
      "tv": g_ext.estimate,
      "train_time_s": train_time,
      "eval_time_s": time.perf_counter() - t,
      "ft_steps": c.ft_steps(n),
    }
    cache.write_json(result_path, result)
    return result


def select_sigma_q(loss_fn, prior_params, posterior_params, data: Mapping[str, np.ndarray], *,
                   key: jax.Array, sigma_q_grid, sigma_prior_grid, chunk_size: int,
                   subset_size: int, delta: float, g_ext: float,
                   draws_per_step: int = 32) -> tuple[float, list[dict[str, float]]]:
  """Picks the posterior scale from a grid by the bound it would give, on a subset of S.

  Each candidate's E_Q[R_S] is estimated on `subset_size` rows with draws from `key`; the
  certificate then re-estimates it on all of S with an independent key, so the choice (which
  may depend on S, as a posterior may) does not bias the final Monte-Carlo term.

  Returns:
    (sigma_q, [{"sigma_q", "risk", "bound"} per candidate]).
  """
  from pacbayes.certificate import certify
  from pacbayes.kl import gaussian_kl

  n = int(np.shape(data["input_ids"])[0])
  key_sub, key_mc = jax.random.split(key)
  rows = np.sort(np.asarray(jax.random.permutation(key_sub, n))[:min(subset_size, n)])
  sub = {k: v[rows] for k, v in data.items()}
  num_mc = math.ceil(n / chunk_size)
  trials = []
  for s in sigma_q_grid:
    risk = perturb.mc_risk(loss_fn, posterior_params, sub, key=key_mc, sigma=float(s),
                           scheme="chunk", chunk_size=1, draws_per_step=draws_per_step).mean
    best = math.inf
    for sp in sigma_prior_grid:
      kl = float(gaussian_kl(posterior_params, prior_params, float(s), float(sp)))
      cert = certify(risk, num_mc, kl, n, g_ext=g_ext, g_ext_kind=G_EXT_KIND, delta=delta,
                     delta_mc=delta / 3, delta_pb=delta / 3, delta_ext=delta / 3,
                     grid_size=len(sigma_prior_grid))
      best = min(best, cert.bound)
    trials.append({"sigma_q": float(s), "risk": float(risk), "bound": float(best)})
  chosen = min(trials, key=lambda t: t["bound"])["sigma_q"]
  return chosen, trials


def certify_cell(study: _Study, space: FineTuneSpace, posterior_params, train_ds: Dataset, *,
                 key: jax.Array, g_ext: float) -> dict[str, Any]:
  """The Proposition 4.1 certificate of one fine-tuned model (prior: its base), as a dict.

  Loss: token error on the completion. Posterior scale: `select_sigma_q` over the config's
  grid; prior scale: the config's fixed grid (ln k paid); E_Q[R_S] by the one-pass chunk
  scheme; g_ext: the exact TV between the test and bucket mixtures (both known by design).
  """
  c = study.config
  key_sel, key_cert = jax.random.split(key)
  data = _arrays(train_ds)
  sigma_q, trials = select_sigma_q(
    space.loss_fn, space.prior, posterior_params, data, key=key_sel,
    sigma_q_grid=c.sigma_q_grid, sigma_prior_grid=c.sigma_prior_grid,
    chunk_size=c.mc_chunk_size, subset_size=c.sigma_subset, delta=c.delta, g_ext=g_ext)
  cert = pipeline.certify_params(
    space.loss_fn, space.prior, posterior_params, data, key=key_cert, sigma_q=sigma_q,
    sigma_grid=c.sigma_prior_grid, mc_scheme="chunk", chunk_size=c.mc_chunk_size,
    batch_size=c.eval_batch_size, draws_per_step=32, delta=c.delta, g_ext=float(g_ext),
    g_ext_kind=G_EXT_KIND, progress=False, loss_name="token_error",
    extra={"sigma_q_selection": trials})
  return cert.to_dict()


def _fmt_slices(by_slice: Mapping[str, float]) -> str:
  return "[" + " ".join(f"{k}:{v:.2f}" for k, v in sorted(by_slice.items(),
                                                          key=lambda kv: int(kv[0]))) + "]"


def grid_cells(config: StudyConfig) -> list[tuple[str, str, str, int, int]]:
  """(base, method, bucket, n, seed) for every cell the study runs, in run order."""
  cells = []
  dft_sizes = config.sizes if config.dft_sizes is None else config.dft_sizes
  for seed in config.seeds:
    for n in config.sizes:
      for b in config.bucket_names:
        cells.append(("base", "sft", b, n, seed))
    for n in dft_sizes:
      for b in config.dft_buckets:
        cells.append(("base", "dft", b, n, seed))
    for n in config.strong_sizes:
      for b in config.bucket_names:
        cells.append(("strong", "sft", b, n, seed))
  return cells


def run_study(config: StudyConfig, out_dir: str | os.PathLike, *,
              progress: bool = True) -> dict[str, Any]:
  """Runs (or resumes) the whole study and writes ``out_dir/results.json``.

  Steps: build the test slices and the bucket pools; pretrain the base and the stronger base;
  fine-tune every (base, method, bucket, n, seed) cell of `grid_cells`; evaluate answer
  accuracy by slice (greedy decoding) and the teacher-forced token error; certify each cell
  with the base as prior (Proposition 4.1 with g_ext the exact TV between the test mixture
  and the bucket's mixture) and measure E_Q[R_test] under the same posterior.

  Checkpoints and per-cell results are cached under ``out_dir/cache`` keyed by a hash of the
  settings they depend on, so an interrupted run resumes where it stopped.

  Args:
    config: the study settings (`StudyConfig.preset("quick")` for the default).
    out_dir: output folder (created).
    progress: show progress bars and one log line per stage.

  Returns:
    The results dict (schema "pacbayes.lab/1"), as written to ``results.json``.
  """
  start = time.perf_counter()
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  study = _Study(config, out_dir, progress)
  study.build_data()
  bases = {}
  base_params = {}
  spaces = {}
  for which in BASES:
    init = base_params["base"] if which == "strong" and config.strong_from_base else None
    base_params[which], bases[which] = study.pretrain(which, init)
    spaces[which] = fine_tune_space(study, base_params[which])
  cells = []
  todo = grid_cells(config)
  bar = None
  if progress:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc="cells", unit="cell", dynamic_ncols=True)
  for base, method, bucket, n, seed in todo:
    result = study.run_cell(base, method, bucket, n, seed, spaces[base])
    cells.append(result)
    if bar is not None:
      cert = result["certificate"]
      bar.update(1)
      study.log(f"{base}/{method}/{bucket}/n={n}: acc {result['accuracy']:.3f} "
                f"{_fmt_slices(result['accuracy_by_slice'])} risk {result['test_risk']:.3f} "
                f"bound {cert['bound']:.3f} (g_gen {cert['g_gen']:.3f}, "
                f"g_ext {cert['g_ext']:.3f})")
  if bar is not None:
    bar.close()
  results = {
    "schema": SCHEMA,
    "preset": config.name,
    "config": config.to_dict(),
    "runtime_s": time.perf_counter() - start,
    "test_mixture": {str(k): p for k, p in study.mixture.items()},
    "buckets": {name: [lo, hi] for name, lo, hi in config.buckets},
    "sizes": list(config.sizes),
    "num_params": study.num_params,
    "fine_tune_space": ("weights" if config.ft_subspace_dim == 0 else
                        f"random subspace of dimension {config.ft_subspace_dim}"),
    "bases": bases,
    "cells": cells,
  }
  cache.write_json(os.path.join(out_dir, "results.json"), results)
  return results


def summary_table(results: Mapping[str, Any]) -> str:
  """A plain-text summary of a results dict: bases, then one line per cell."""
  lines = [f"preset {results['preset']}: {len(results['cells'])} cells in "
           f"{results['runtime_s']:.0f}s; test mixture "
           + " ".join(f"{k}:{v:.3f}" for k, v in results["test_mixture"].items())]
  for name, b in results["bases"].items():
    lines.append(f"{name:>6} (pretrain ops {b['pretrain_ops'][0]}-{b['pretrain_ops'][1]}, "
                 f"{b['steps']} steps): acc {b['accuracy']:.3f} "
                 f"{_fmt_slices(b['accuracy_by_slice'])} token error {b['test_risk']:.3f}")
  lines.append(f"{'base':>6} {'meth':>4} {'bucket':>7} {'n':>6} {'acc':>6} {'risk_Q':>6} "
               f"{'emp':>6} {'eps':>6} {'g_gen':>6} {'g_ext':>6} {'bound':>6} {'kl':>9}  "
               "accuracy by slice")
  for c in results["cells"]:
    cert = c["certificate"]
    lines.append(
      f"{c['base']:>6} {c['method']:>4} {c['bucket']:>7} {c['n']:>6} {c['accuracy']:6.3f} "
      f"{c['test_risk']:6.3f} {cert['emp_risk']:6.3f} {cert['epsilon']:6.3f} "
      f"{cert['g_gen']:6.3f} {cert['g_ext']:6.3f} {cert['bound']:6.3f} {cert['kl']:9.1f}  "
      f"{_fmt_slices(c['accuracy_by_slice'])}")
  return "\n".join(lines)
