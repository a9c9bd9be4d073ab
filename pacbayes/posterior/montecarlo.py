"""Monte-Carlo risk E_Q[R_S] under a Gaussian posterior, with bounded memory.

Randomness: the draw with index m uses `jax.random.fold_in(key_draws, m)` and within a draw
each leaf gets its own key (`pacbayes.posterior.draws.perturb_leaves`). The noise is made on the
device inside the compiled step, so no weight-sized array crosses the host, and the numbers do
not depend on how many devices share the work or how draws are grouped into steps. For a
model's loss the noise is made inside the forward pass, one stage at a time, so no perturbed
copy of the whole model exists; otherwise at most `draws_per_step` perturbed copies exist at
a time (the compiled steps: `pacbayes.posterior.steps`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from pacbayes.core import sharding as shd
from pacbayes.core.memory import release_free_memory
from pacbayes.posterior.draws import (
    LossFn,
    check_data,
    check_range,
    gather,
    leaf_paths,
    mask_leaves,
    positive_int,
    progress_bar,
    sigma_leaves,
)
from pacbayes.posterior.steps import (
    draw_step,
    forward_draw_step,
    forward_noise_supported,
    perturbed_copy,
    plain_step,
)

SCHEMES = ("chunk", "passes")
# Where a draw's noise is made (`MonteCarloOptions.noise`).
NOISE = ("auto", "forward", "copy")
# Posterior draws of the "passes" scheme when none are given.
DEFAULT_PASSES = 20


# ------------------------------------------------------------------------------ options


@dataclasses.dataclass(frozen=True)
class MonteCarloOptions:
  """How a Monte-Carlo risk is estimated: one value shared by every function that runs one.

  Attributes:
    scheme: "chunk" (one posterior draw per `chunk_size` rows, one pass over S) or "passes"
      (`num_draws` full passes); see `mc_risk`.
    num_draws: M for "passes"; for "chunk", sets chunk_size = ceil(n / M).
    chunk_size: rows per draw for "chunk" (refused with "passes" by `mc_risk`).
    batch_size: rows per forward pass per draw.
    draws_per_step: draws evaluated together (memory: that many perturbed copies).
    max_memory: memory budget in bytes that sets `draws_per_step` instead.
    noise: where a draw's noise is made: "forward" inside the model's forward pass, one
      stage at a time (`pacbayes.posterior.steps.forward_draw_step`; no whole perturbed
      copy), "copy" as a whole perturbed copy, "auto" (default) "forward" when the loss
      supports it (`forward_noise_supported`) and "copy" otherwise; see `mc_risk`.
  """

  scheme: str = "chunk"
  num_draws: int | None = None
  chunk_size: int | None = None
  batch_size: int = 32
  draws_per_step: int | None = None
  max_memory: int | None = None
  noise: str = "auto"

  def __post_init__(self):
    if self.scheme not in SCHEMES:
      raise ValueError(f"scheme: expected one of {SCHEMES}, got {self.scheme!r}")
    if self.noise not in NOISE:
      raise ValueError(f"noise: expected one of {NOISE}, got {self.noise!r}")
    positive_int(self.batch_size, "batch_size")
    for name in ("num_draws", "chunk_size", "draws_per_step", "max_memory"):
      if getattr(self, name) is not None:
        positive_int(getattr(self, name), name)
    if self.draws_per_step is not None and self.max_memory is not None:
      raise ValueError("draws_per_step, max_memory: give one of them, not both")

  @classmethod
  def of(cls, options: MonteCarloOptions | None, fields: Mapping[str, Any]) -> MonteCarloOptions:
    """``options``, or the options built from keyword ``fields`` (one of the two)."""
    if fields:
      if options is not None:
        raise ValueError(f"options and {sorted(fields)}: give the options object or its "
                         "fields as keywords, not both")
      unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
      if unknown:
        raise TypeError(f"unexpected keyword arguments {unknown}")
      return cls(**fields)
    return cls() if options is None else options

  def with_defaults(self) -> MonteCarloOptions:
    """The certificate's defaults: "chunk" with one row per draw (M = n) when neither size
    is given, "passes" with 20 draws."""
    if self.scheme == "chunk" and self.chunk_size is None and self.num_draws is None:
      return dataclasses.replace(self, chunk_size=1)
    if self.scheme == "passes" and self.num_draws is None:
      return dataclasses.replace(self, num_draws=DEFAULT_PASSES)
    return self

  def num_samples(self, n: int) -> int:
    """M, the independent draws behind the estimate on n rows (after `with_defaults`)."""
    o = self.with_defaults()
    if o.scheme == "passes":
      return int(o.num_draws)
    return -(-n // (o.chunk_size or -(-n // o.num_draws)))


# ------------------------------------------------------------------------------ MC risk


@dataclasses.dataclass(frozen=True)
class MCRisk:
  """Monte-Carlo estimate of E_Q[R_S].

  Attributes:
    mean: the estimate (average of `draws`).
    draws: [M] float64, the independent [0, 1] variables whose average is `mean` (one per
      posterior draw: a full-pass risk, or a chunk mean); draws[m] = mean(slot_losses[m]).
    num_samples: M, to pass to `pacbayes.bounds.pac.mc_sample_bound` / the certificate.
    scheme: "chunk" or "passes".
    num_examples: n = |S|.
    slot_losses: [M, K] float64, the loss of each scored slot under draw m (chunk: K = C,
      the chunk size, fillers included; passes: K = n).
    slot_rows: [M, K] int64, the row of S scored in each slot (chunk: row m*C + k, or for
      the last chunk's fillers the uniformly drawn row; passes: arange(n) in every row).
    chunk_size: examples per draw in the chunk scheme (None for "passes").
    num_fillers: rows drawn uniformly from S to complete the last chunk (chunk scheme).
    draws_per_step: draws evaluated together per compiled step (memory: that many
      perturbed copies at most).
    unperturbed: R_S at the posterior mean, when asked for.
    seconds: wall time of the estimate.
    unperturbed_rows: [n] float64 loss of each row at the posterior mean, when asked for.
    noise: where the noise was made, "forward" (in the forward pass) or "copy".
  """

  mean: float
  draws: np.ndarray
  num_samples: int
  scheme: str
  num_examples: int
  slot_losses: np.ndarray
  slot_rows: np.ndarray
  chunk_size: int | None = None
  num_fillers: int = 0
  draws_per_step: int = 1
  unperturbed: float | None = None
  seconds: float = 0.0
  unperturbed_rows: np.ndarray | None = None
  noise: str = "copy"

  def upper(self, delta: float) -> float:
    """kl-inverse upper confidence bound on E_Q[R_S] at level 1 - delta."""
    from pacbayes.bounds import pac as bounds

    return float(bounds.mc_sample_bound(self.mean, self.num_samples, delta))


def _slots(scheme: str, n: int, num_draws: int | None, chunk_size: int | None,
           key_fill: jax.Array) -> tuple[np.ndarray, int, int | None]:
  """(slot_rows [M, K], fillers, chunk size) for a scheme; see `mc_risk`."""
  if scheme == "passes":
    if num_draws is None:
      raise ValueError("num_draws: required for scheme='passes'")
    m_total = positive_int(num_draws, "num_draws")
    if chunk_size is not None:
      raise ValueError("chunk_size: applies to scheme='chunk' only, not 'passes'")
    return np.tile(np.arange(n, dtype=np.int64), (m_total, 1)), 0, None
  if chunk_size is None:
    if num_draws is None:
      raise ValueError("chunk_size: required for scheme='chunk' (or give num_draws)")
    chunk_size = math.ceil(n / positive_int(num_draws, "num_draws"))
  elif num_draws is not None:
    raise ValueError("num_draws, chunk_size: give one of them for scheme='chunk' "
                     "(num_draws only sets chunk_size = ceil(n / num_draws))")
  csize = positive_int(chunk_size, "chunk_size")
  if csize > n:
    raise ValueError(f"chunk_size: {csize} exceeds the number of examples n={n}")
  m_total = math.ceil(n / csize)
  fillers = m_total * csize - n
  fill_idx = (np.asarray(jax.random.randint(key_fill, (fillers,), 0, n), np.int64) if fillers
              else np.zeros((0,), np.int64))
  rows = np.concatenate([np.arange(n, dtype=np.int64), fill_idx]).reshape(m_total, csize)
  return rows, fillers, csize


def draws_per_step_for_memory(
    loss_fn: LossFn, params: Any, batch: Mapping[str, Any], max_memory: int, num_draws: int,
    mask: Any = None) -> int:
  """Largest G <= num_draws whose estimated memory fits `max_memory` bytes.

  The estimate comes from XLA's own accounting of the unperturbed step on one batch
  (`Compiled.memory_analysis()`): `base` = argument bytes (parameters and batch), and each
  draw in flight adds one perturbed copy of the masked leaves plus the step's temporaries
  and outputs (its activations); G draws are taken to need base + G * per_draw. It is an
  estimate of device memory, not a guarantee (the host process adds its own overhead), and
  a cautious one when the noise is made in the forward pass (one stage, not a whole copy).

  Args:
    loss_fn: the loss.
    params: the posterior mean.
    batch: one batch of rows as the step sees it (with 'weight').
    max_memory: budget in bytes.
    num_draws: M (G never exceeds it).
    mask: perturbation mask (default all floating leaves).

  Raises:
    ValueError: `max_memory` is below base + per_draw (even one draw does not fit).
  """
  stats = plain_step(loss_fn).lower(params, batch).compile().memory_analysis()
  base = int(stats.argument_size_in_bytes)
  copy = sum(int(np.size(x)) * np.dtype(x.dtype).itemsize
             for x, m in zip(jax.tree.leaves(params), mask_leaves(mask, params), strict=True)
             if m)
  per_draw = max(1, copy + int(stats.temp_size_in_bytes) + int(stats.output_size_in_bytes))
  if max_memory < base + per_draw:
    raise ValueError(
        f"max_memory: {max_memory} bytes is below the estimated need of one draw "
        f"({base} bytes of parameters and batch + {per_draw} bytes per draw)")
  return max(1, min(num_draws, (max_memory - base) // per_draw))


def mc_risk(
    loss_fn: LossFn,
    params: Any,
    data: Mapping[str, Any],
    *,
    key: jax.Array,
    sigma: Any,
    options: MonteCarloOptions | None = None,
    mask: Any = None,
    mesh: Mesh | None = None,
    unperturbed: bool = False,
    progress: bool | str = False,
    **fields: Any,
) -> MCRisk:
  r"""Monte-Carlo estimate of E_{theta~Q}[R_S(theta)] for Q = N(params, diag(sigma^2)).

  Two schemes give M independent [0, 1] variables X_1..X_M whose average means are
  exactly E_Q[R_S], so that `kl_inv_upper(mean X, ln(1/delta)/M)` bounds E_Q[R_S]
  (Langford & Caruana 2001):

  * "passes": X_m = R_S(theta_m), a full pass over S per draw; M = `num_draws`. The X_m
    are i.i.d. with mean E_Q[R_S].
  * "chunk": S is cut, in its given order, into M = ceil(n / C) chunks of exactly
    C = `chunk_size` rows and chunk j is scored under its own draw theta_j;
    X_j = mean loss of chunk j. When C does not divide n, the r = M*C - n missing rows of
    the last chunk are indices drawn uniformly at random from S (independently of
    everything else). Then E[X_j] = R_{chunk j}(Q) (for the last chunk the fillers add
    r * R_S(Q) to its sum in expectation), so (1/M) sum_j E[X_j] = (n R_S(Q) + r R_S(Q)) /
    (M C) = E_Q[R_S] exactly. The X_j are independent (fresh theta_j and fillers per chunk)
    but not identically distributed. The kl-Chernoff bound still holds for them: for
    X_j in [0, 1], convexity gives E exp(l X_j) <= 1 - mu_j + mu_j e^l, and concavity of
    log(1 - mu + mu e^l) in mu gives prod_j (...) <= (1 - mu + mu e^l)^M with mu the
    average mean (Hoeffding 1963, Thm 1 and its proof; Maurer 2004 uses the same step),
    which is the moment generating function bound of M i.i.d. Bernoulli(mu) variables.
    Equal chunk sizes matter: unequal chunks would average means with the wrong weights.
    This scheme costs one pass over S (plus r < C rows) for M = ceil(n / C) draws.

  Exactly the M draws asked for are computed. Where the noise is made (`options.noise`):
  "auto" (default) is "forward" when `loss_fn` comes from a model whose forward pass takes a
  stage runner (`pacbayes.posterior.steps.forward_noise_supported`: a
  `pacbayes.losses.model_loss_fn` of a `pacbayes.models.Decoder`, which is what `pacbayes
  bound` passes for full checkpoints) and "copy" for any other loss function. Memory and time:
  * "forward": draws go in groups of G = `draws_per_step` (default 1) through one
    `jax.vmap` of the model's staged forward pass (`forward_draw_step`): each stage
    (embedding, block, final norm, head) is a compiled program that makes that stage's
    noise and runs it, so memory is the mean, G perturbed copies of one stage (the largest
    is the embedding table) and G batches of activations, never a whole perturbed copy, and
    one compiled program serves all blocks. The noise is made again in every forward pass:
    once per draw in "chunk" with C <= `batch_size`, once per batch otherwise.
  * "copy", G = 1: draws one after another. Each draw's perturbed copy is made once, one
    leaf at a time (`perturbed_copy`), and every batch of that draw runs the same compiled
    program as the unperturbed pass (`plain_step`): memory is the mean, one perturbed copy
    and one batch of activations, whatever M; the extra time is the noise, once per draw.
  * "copy", G > 1: draws go in groups of G through one `jax.jit(jax.vmap(...))` step that
    perturbs every leaf of its G draws first (`draw_step`): up to G perturbed copies and G
    batches of activations; in "passes", and in "chunk" when C > `batch_size`, a draw's
    noise is made again in each of its steps.
  The last group is smaller when G does not divide M (it compiles once more). Draw m always
  uses fold_in(key_draws, m) and the same key per leaf (`leaf_keys`) on every path, so the
  result is the same on one device or many, for any G and (to float round-off) either noise.

  Args:
    loss_fn: `loss_fn(params, batch) -> [B]` losses in [0, 1] (checked on the host).
    params: posterior mean pytree.
    data: mapping of NumPy arrays with a shared leading axis (n rows).
    key: PRNG key; split into (draw key, filler key).
    sigma: positive scalar or pytree like params (diagonal posterior).
    options: the scheme and sizes (`MonteCarloOptions`; default ``MonteCarloOptions()``).
    **fields: the same fields as keywords (``scheme="passes", num_draws=4``), a shorthand
      for ``options=MonteCarloOptions(...)``; not together with ``options``.
    mask: pytree of bools (`perturbation_mask`); default all floating leaves.
    mesh: optional ('data', 'fsdp') mesh: draws (or rows) along 'data', params on 'fsdp'.
    unperturbed: also compute R_S at `params` (one extra pass).
    progress: show a tqdm bar (examples scored, examples/s), left in the log when done; a
      string shows it with that label (default "MC risk (scheme, M=...)").

  Returns:
    An `MCRisk`.

  Raises:
    ValueError: bad scheme, sizes, sigma, data, a loss outside [0, 1], options that do not
      apply to the scheme, a `max_memory` too small for one draw, or noise="forward" for a
      loss that does not support it.

  References:
    Langford & Caruana, "(Not) Bounding the True Error", NeurIPS 2001.
    Hoeffding, "Probability inequalities for sums of bounded random variables", JASA 1963.
    Maurer, "A note on the PAC Bayesian theorem", arXiv cs/0411099, 2004.
  """
  opts = MonteCarloOptions.of(options, fields)
  scheme, num_draws, chunk_size = opts.scheme, opts.num_draws, opts.chunk_size
  batch_size, draws_per_step, max_memory = opts.batch_size, opts.draws_per_step, opts.max_memory
  arrays, n = check_data(data)
  forward = forward_noise_supported(loss_fn)
  if opts.noise == "forward" and not forward:
    raise ValueError("noise: 'forward' needs a loss from pacbayes.losses.model_loss_fn of a "
                     "model whose forward pass takes a stage runner; use 'copy' or 'auto'")
  forward = forward and opts.noise != "copy"
  mask_t = mask_leaves(mask, params)
  leaves, treedef = jax.tree.flatten(params)
  sigmas = sigma_leaves(sigma, params, mask_t)
  key_draws, key_fill = jax.random.split(key)
  start = time.perf_counter()
  slot_rows, fillers, csize = _slots(scheme, n, num_draws, chunk_size, key_fill)
  m_total, k_slots = slot_rows.shape
  shared = scheme == "passes"
  b = batch_size if shared else min(batch_size, k_slots)
  steps = math.ceil(k_slots / b)
  cols = np.full((m_total, steps * b), -1, np.int64)
  cols[:, :k_slots] = slot_rows

  leaves = shd.shard_params(leaves, mesh)
  sigmas = [shd.put(s, mesh, shd.param_spec(s.shape, mesh)) if mesh is not None else s
            for s in sigmas]
  key_dev = shd.put(key_draws, mesh) if mesh is not None else key_draws

  def run(first: int, group: int, s: int):
    """Step s (batch of columns) for draws first..first+group-1: (device losses, weight)."""
    draw_idx = np.arange(first, first + group, dtype=np.int32)
    draw_spec = shd.leading_axis_spec((group,), mesh)
    idx_dev = shd.put(draw_idx, mesh, draw_spec) if mesh is not None else draw_idx
    rows = cols[first:first + group, s * b:(s + 1) * b]
    batch = gather(arrays, rows[0] if shared else rows)
    if mesh is not None:
      axes = (() if draw_spec != P() else (0,)) if shared else (
          (0,) if draw_spec != P() else (1,))
      batch = shd.shard_batch(batch, mesh, axes)
    return (key_dev, idx_dev, batch), rows

  if max_memory is not None:
    draws_per_step = draws_per_step_for_memory(
        loss_fn, jax.tree.unflatten(treedef, leaves), gather(arrays, cols[0, :b]), max_memory,
        m_total, mask)
  group = positive_int(1 if draws_per_step is None else draws_per_step, "draws_per_step")
  group = min(group, m_total)

  slot_losses = np.zeros((m_total, steps * b), np.float64)
  label = progress if isinstance(progress, str) else f"MC risk ({scheme}, M={m_total})"
  bar = progress_bar(m_total * k_slots, label, bool(progress))

  def collect(first: int, pending: list) -> None:
    for s, out, rows in pending:
      losses = shd.to_host(out).astype(np.float64).reshape(-1, b)
      weight = (rows >= 0).astype(np.float64).reshape(-1, b)
      check_range(losses, weight)
      slot_losses[first:first + losses.shape[0], s * b:(s + 1) * b] = losses * weight
      bar.update(int(weight.sum()))

  if group == 1 and not forward:
    # One perturbed copy at a time, made once per draw and reused by all its batches.
    pstep = plain_step(loss_fn)
    for m in range(m_total):
      theta = jax.tree.unflatten(treedef, perturbed_copy(key_dev, m, leaves, sigmas, mask_t))
      pending = []
      for s in range(steps):
        rows = cols[m, s * b:(s + 1) * b]
        batch = gather(arrays, rows)
        if mesh is not None:
          batch = shd.shard_batch(batch, mesh)
        pending.append((s, pstep(theta, batch), rows))
      collect(m, pending)
      del theta
      if m == 0:
        release_free_memory()  # the compiler's freed scratch, once the programs exist
  else:
    step = (forward_draw_step(loss_fn, treedef, tuple(leaf_paths(params)), mask_t, shared)
            if forward else draw_step(loss_fn, treedef, mask_t, shared))
    for first in range(0, m_total, group):
      g = min(group, m_total - first)
      pending = []
      for s in range(steps):
        args, rows = run(first, g, s)
        pending.append((s, step(leaves, sigmas, *args), rows))
      collect(first, pending)
      if first == 0:
        release_free_memory()  # the compiler's freed scratch, once the programs exist
  bar.close()

  slot_losses = slot_losses[:, :k_slots]
  draws = slot_losses.mean(axis=1)
  base = rows_base = None
  if unperturbed:
    rows_base = row_losses(loss_fn, params, arrays, batch_size=batch_size, mesh=mesh,
                           progress=bool(progress))
    base = float(rows_base.sum() / n)
  return MCRisk(
      mean=float(draws.mean()), draws=draws, num_samples=m_total, scheme=scheme,
      num_examples=n, slot_losses=slot_losses, slot_rows=slot_rows, chunk_size=csize,
      num_fillers=fillers, draws_per_step=group, unperturbed=base,
      seconds=time.perf_counter() - start, unperturbed_rows=rows_base,
      noise="forward" if forward else "copy")


def empirical_risk(
    loss_fn: LossFn, params: Any, data: Mapping[str, Any], *, batch_size: int = 32,
    mesh: Mesh | None = None, progress: bool = False) -> float:
  """R_S(params): mean loss over the data set, no perturbation (float64 accumulation).

  Raises:
    ValueError: bad data or batch size, or a loss outside [0, 1].
  """
  losses = row_losses(loss_fn, params, data, batch_size=batch_size, mesh=mesh,
                      progress=progress)
  return float(losses.sum() / losses.size)


def row_losses(
    loss_fn: LossFn, params: Any, data: Mapping[str, Any], *, batch_size: int = 32,
    mesh: Mesh | None = None, progress: bool = False) -> np.ndarray:
  """[n] float64 loss of each row at `params` (no perturbation), in the order of the data.

  Raises:
    ValueError: bad data or batch size, or a loss outside [0, 1].
  """
  arrays, n = check_data(data)
  b = positive_int(batch_size, "batch_size")
  step = plain_step(loss_fn)
  params = shd.shard_params(params, mesh)
  pending = []
  for j in range(math.ceil(n / b)):
    idx = np.arange(j * b, (j + 1) * b)
    idx[idx >= n] = -1
    batch = gather(arrays, idx)
    dev = shd.shard_batch(batch, mesh) if mesh is not None else batch
    pending.append((step(params, dev), batch["weight"]))
    if j == 0:
      release_free_memory()  # the compiler's freed scratch, once the program exists
  bar = progress_bar(n, "risk at the posterior mean (no noise)", progress)
  out = []
  for out_dev, w in pending:
    losses = shd.to_host(out_dev).astype(np.float64)
    check_range(losses, w)
    out.append(losses[w > 0])
    bar.update(int(w.sum()))
  bar.close()
  return np.concatenate(out)
