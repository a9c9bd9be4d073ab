"""Certificate pipeline behind `pacbayes bound`: checkpoints and data in, a Certificate out.

`certify_params` works on parameters in memory (any pytree and loss); `run_bound` loads two
Hugging Face folders and JSONL files, checks every input before the expensive work (see
`pacbayes.pipeline.inputs`, `pacbayes.pipeline.shift_terms`), and calls `certify_params`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from pacbayes.core import sharding as shd
from pacbayes.pipeline import inputs as bi
from pacbayes.pipeline.inputs import delta_plan
from pacbayes.posterior import perturb

# Prior scales used when neither `sigma_prior` nor `sigma_grid` is given. Fixed here, in
# advance of any data, as the union bound over the grid requires: 1e-5 .. 1e-1, four points
# per decade (ln 17 = 2.8 nats). Every report that uses it says so.
DEFAULT_SIGMA_GRID = tuple(float(s) for s in perturb.sigma_prior_grid(1e-5, 1e-1, 17))
DEFAULT_NUM_DRAWS = {"passes": 20}
# Rows of S the sigma search scores (a random subset; the certificate uses all of S).
SEARCH_SUBSET = 256

__all__ = ["DEFAULT_NUM_DRAWS", "DEFAULT_SIGMA_GRID", "certify_params", "delta_plan",
           "run_bound"]


def _as_arrays(dataset: Any) -> dict[str, np.ndarray]:
  """A `pacbayes.data.dataset.Dataset` or a mapping of arrays -> mapping of arrays."""
  if isinstance(dataset, Mapping):
    return {k: np.asarray(v) for k, v in dataset.items() if k != "weight"}
  if all(hasattr(dataset, k) for k in ("input_ids", "attention_mask", "loss_mask")):
    return {k: np.asarray(getattr(dataset, k))
            for k in ("input_ids", "attention_mask", "loss_mask")}
  raise ValueError(f"dataset: expected a Dataset or a mapping of arrays, got {type(dataset)}")


def _check_same_structure(prior: Any, posterior: Any) -> None:
  names_q = perturb.leaf_paths(posterior)
  names_p = perturb.leaf_paths(prior)
  if names_q != names_p:
    missing = sorted(set(names_q) ^ set(names_p))
    raise ValueError(
        "prior_params and posterior_params have different parameters"
        + (f" (e.g. {missing[0]!r} is in only one)" if missing else " (different order)"))
  for name, a, b in zip(names_q, jax.tree.leaves(posterior), jax.tree.leaves(prior), strict=True):
    if np.shape(a) != np.shape(b):
      raise ValueError(
          f"parameter {name!r}: posterior shape {np.shape(a)} differs from prior shape "
          f"{np.shape(b)}")


def _check_unperturbed_equal(prior: Any, posterior: Any, mask: Any,
                             name_of: Callable[[str], str] | None) -> None:
  """A parameter that moved but is not perturbed makes KL(Q || P) infinite."""
  names = perturb.leaf_paths(posterior)
  for name, a, b, m in zip(names, jax.tree.leaves(posterior), jax.tree.leaves(prior),
                           jax.tree.leaves(mask), strict=True):
    if not m and not np.array_equal(np.asarray(a), np.asarray(b)):
      shown = name_of(name) if name_of is not None else name
      raise ValueError(
          f"parameter {shown!r} differs between prior and posterior but is excluded from the "
          "perturbation (include/exclude); its KL would be infinite. Perturb it, or keep it "
          "equal in both checkpoints")


def _masked(tree: Any, mask: Any) -> list[Any]:
  return [x for x, m in zip(jax.tree.leaves(tree), jax.tree.leaves(mask), strict=True) if m]


def _say(progress: bool, text: str) -> None:
  """One progress line on stderr, kept in logs (no carriage returns)."""
  if progress:
    print(f"pacbayes bound: {text}", file=sys.stderr, flush=True)



def _choose_sigma(loss_fn, params, data, key, plan, details, *, sq_dist, num_params, num_mc, n,
                  delta_parts, method, search_subset, batch_size, draws_per_step, mask, mesh,
                  progress) -> tuple[float, list[str]]:
  """`perturb.choose_sigma` for the plan; returns (sigma_q, notes) and fills `details`.

  A fixed sigma_q is returned as given (float64). The search's own warnings become notes and
  one line each on stderr; its grid-edge warning is left to the final choice of sigma_p.
  """
  if plan.sigma_q is not None:
    details["sigma_search"] = {"how": "sigma_q fixed by the caller (no search)"}
    return plan.sigma_q, []
  _say(progress, f"choosing sigma on {min(search_subset, n)} of {n} rows ...")
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    choice = perturb.choose_sigma(
        loss_fn, params, data, key=key, sigma_grid=plan.grid, sq_distance=sq_dist,
        num_params=num_params, num_mc=num_mc, n=n, delta_mc=delta_parts["mc"],
        delta_pb=delta_parts["pb"],
        method=method if method in ("maurer", "mcallester", "fquad") else "maurer",
        subset_size=search_subset, batch_size=batch_size, draws_per_step=draws_per_step,
        mask=mask, mesh=mesh, progress=progress)
  notes = []
  for i, w in enumerate(caught):
    if choice.at_grid_edge and i == len(caught) - 1:
      continue
    notes.append(f"warning: {w.message}")
    _say(progress, f"warning: {w.message}")
  s_q = choice.sigma_q
  details["sigma_search"] = {
      "how": choice.how, "grid_position": choice.grid_position,
      "at_grid_edge": choice.at_grid_edge, "subset": choice.subset_size,
      "search_sigma_p": choice.sigma_p, "search_bound": choice.bound,
      "evaluations": len(choice.trace), "forward_rows": choice.forward_rows}
  _say(progress, f"sigma_q = {s_q:.6g} (searched; {choice.grid_position} of the grid)")
  return s_q, notes


def certify_params(
    loss_fn: perturb.LossFn,
    prior_params: Any,
    posterior_params: Any,
    dataset: Any,
    *,
    key: jax.Array,
    sigma_q: float | None = None,
    sigma_grid: Sequence[float] | None = None,
    sigma_prior: float | None = None,
    mc_scheme: str = "chunk",
    num_draws: int | None = None,
    chunk_size: int | None = None,
    batch_size: int = 8,
    draws_per_step: int | None = None,
    max_memory: int | None = None,
    delta: float = 0.05,
    delta_parts: Mapping[str, float] | None = None,
    g_ext: float = 0.0,
    g_ext_kind: str = "none",
    mixture: Any = None,
    difficulty: Any = None,
    mask: Any = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    name_of: Callable[[str], str] | None = None,
    mesh: Mesh | None = None,
    progress: bool = True,
    loss_name: str = "custom",
    loss_options: Mapping[str, Any] | None = None,
    method: str = "maurer",
    search_subset: int = SEARCH_SUBSET,
    notes: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> Any:
  """Two-gap certificate (DESIGN.md §1) for in-memory prior and posterior parameters.

  P = N(prior_params, sigma_p^2 I) and Q = N(posterior_params, sigma_q^2 I) on the leaves
  selected by `mask` (or the generic `include` / `exclude` leaf-path globs). Steps:

  1. sigma: `perturb.choose_sigma` on a random subset of `search_subset` rows of S with
     its own key: sigma_q free (or the given `sigma_q`), sigma_p from the grid, minimising
     B_train (the method's bound; Maurer for "catoni" / "flamb", which it does not search).
  2. emp_risk, M: `perturb.mc_risk` on all of S with a key independent of the search.
  3. For every grid point: KL (`pacbayes.posterior.kl.gaussian_kl`, float64) and the certificate
     (`pacbayes.certificate.core.certify`, all kinds, ln k paid); the grid point with the
     smallest full bound is reported (ties toward the smaller KL).

  Confidence: `delta_parts` ({"mc", "pb", "tv", "mixture", "slice_mc", "slice_pb"}, see
  `delta_plan`) or, without it, `delta_plan(delta, tv=g_ext_kind is certified or estimated,
  per_slice=difficulty is given)`. The caller computes `g_ext` (TV or an estimate) at the
  "tv" share and `mixture` at the "mixture" share.

  Args:
    loss_fn: `(params, batch) -> [B]` losses in [0, 1].
    prior_params: prior mean (e.g. the base model's `nnx.Param` state).
    posterior_params: posterior mean (e.g. the fine-tuned model's), same structure.
    dataset: the training set S: a `Dataset` or a mapping of arrays (n rows).
    key: PRNG key (search and Monte Carlo use independent subkeys).
    sigma_q: a fixed posterior sigma, reported as given (float64), or None to search it.
    sigma_grid: prior sigmas to choose from (fixed before seeing S); default
      `DEFAULT_SIGMA_GRID`, stated in the report.
    sigma_prior: one prior sigma (refused together with `sigma_grid`).
    mc_scheme: "chunk" or "passes".
    num_draws: M for "passes" (default 20); for "chunk", sets chunk_size = ceil(n / M).
    chunk_size: rows per draw for "chunk" (default 1: M = n).
    batch_size: rows per forward pass per draw.
    draws_per_step: draws evaluated together (memory: that many perturbed copies).
    max_memory: a memory budget in bytes that sets `draws_per_step` instead.
    delta: total failure probability, in (0, 1).
    delta_parts: the shares of `delta` (they must sum to it).
    g_ext: TV term in [0, 1] (certified upper value or estimate).
    g_ext_kind: `pacbayes.bounds.extrapolation.KIND_TV`, `KIND_ESTIMATE` or "none".
    mixture: `pacbayes.bounds.extrapolation.MixtureBounds` for the mixture-shift kind, or None.
    difficulty: [n] difficulty of each row of S, for per-slice bounds (needs `mixture`).
    mask: bool pytree of perturbed leaves (e.g. `pacbayes.models.parameter_mask`).
    include, exclude: leaf-path globs (`perturb.perturbation_mask`) when `mask` is None.
    name_of: maps a leaf path to the name shown in messages (e.g. its HF name).
    mesh: optional ('data', 'fsdp') mesh; numbers are the same with or without it.
    progress: progress bars and lines on stderr.
    loss_name: name of the loss for the report.
    loss_options: the loss's options (e.g. {"alpha": 0.01}), recorded in the report.
    method: PAC-Bayes bound behind g_gen ("maurer", "mcallester", "catoni", "fquad",
      "flamb").
    search_subset: rows of S the sigma search uses.
    notes: lines for the report's notes.
    extra: more JSON details for the report.

  Returns:
    A `pacbayes.certificate.core.Certificate`.

  Raises:
    ValueError: mismatched prior/posterior, a moved but excluded parameter, a bad sigma or
      delta, empty data, a loss outside [0, 1], and so on.
  """
  from pacbayes.bounds import extrapolation as ex
  from pacbayes.certificate.core import METHODS, certify
  from pacbayes.posterior.kl import gaussian_kl

  start = time.perf_counter()
  delta = bi.check_delta(delta)
  if method not in METHODS:
    raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
  diagonal = sigma_q is not None and not jax.tree_util.treedef_is_leaf(
      jax.tree.structure(sigma_q))
  plan = bi.plan_sigma(None if diagonal else sigma_q, sigma_grid, sigma_prior,
                       DEFAULT_SIGMA_GRID)
  if mc_scheme not in perturb.SCHEMES:
    raise ValueError(f"mc_scheme: expected one of {perturb.SCHEMES}, got {mc_scheme!r}")
  if not (isinstance(g_ext, (int, float)) and 0 <= g_ext <= 1):
    raise ValueError(f"g_ext: expected a number in [0, 1], got {g_ext!r}")
  if difficulty is not None and mixture is None:
    raise ValueError("difficulty: per-slice bounds need a mixture (MixtureBounds)")
  if delta_parts is None:
    delta_parts = delta_plan(delta, tv=g_ext_kind != "none", per_slice=difficulty is not None)
  delta_parts = dict(delta_parts)
  data, n = perturb.check_data(_as_arrays(dataset))
  _check_same_structure(prior_params, posterior_params)
  if mask is None:
    mask = perturb.perturbation_mask(posterior_params, include, exclude)
  _check_unperturbed_equal(prior_params, posterior_params, mask, name_of)
  if mc_scheme == "chunk" and chunk_size is None and num_draws is None:
    chunk_size = 1
  if mc_scheme == "passes" and num_draws is None:
    num_draws = DEFAULT_NUM_DRAWS["passes"]
  m_final = num_draws if mc_scheme == "passes" else -(-n // (chunk_size or -(-n // num_draws)))

  mu_q, mu_p = _masked(posterior_params, mask), _masked(prior_params, mask)
  num_params = int(sum(int(np.size(x)) for x in mu_q))
  sq_dist = perturb.sq_distance(posterior_params, prior_params, mask)
  key_search, key_mc = jax.random.split(key)
  details: dict[str, Any] = {"mc_scheme": mc_scheme, "sigma_choice": plan.describe()}
  if plan.grid_source == "default":
    notes = (*notes, f"prior sigma grid: the DEFAULT grid {DEFAULT_SIGMA_GRID[0]:g} .. "
             f"{DEFAULT_SIGMA_GRID[-1]:g} ({len(DEFAULT_SIGMA_GRID)} points, ln "
             f"{len(DEFAULT_SIGMA_GRID)} paid); give --sigma-grid or --sigma-prior to fix "
             "your own")
  if diagonal:
    s_q = sigma_q
    details["sigma_q"] = "diagonal"
  else:
    s_q, search_notes = _choose_sigma(
        loss_fn, posterior_params, data, key_search, plan, details, sq_dist=sq_dist,
        num_params=num_params, num_mc=m_final, n=n, delta_parts=delta_parts, method=method,
        search_subset=search_subset, batch_size=batch_size, draws_per_step=draws_per_step,
        mask=mask, mesh=mesh, progress=progress)
    notes = (*notes, *search_notes)
  _say(progress, f"Monte-Carlo risk on all {n} rows ...")
  mc = perturb.mc_risk(
      loss_fn, posterior_params, data, key=key_mc, sigma=s_q, scheme=mc_scheme,
      num_draws=num_draws if mc_scheme == "passes" or chunk_size is None else None,
      chunk_size=chunk_size, batch_size=batch_size, draws_per_step=draws_per_step,
      max_memory=max_memory, mask=mask, mesh=mesh, unperturbed=True, progress=progress)
  details.update(chunk_size=mc.chunk_size, num_fillers=mc.num_fillers,
                 draws_per_step=mc.draws_per_step, unperturbed_risk=mc.unperturbed,
                 mc_seconds=round(mc.seconds, 3))

  per_grid, best = [], None
  for sp in plan.grid:
    kl = float(gaussian_kl(mu_q, mu_p, _masked(s_q, mask) if diagonal else s_q, sp))
    kinds = []
    if difficulty is not None:
      kinds.append(ex.per_slice_bounds(
          mc.slot_losses, mc.slot_rows, difficulty, mixture, kl=kl, grid_size=len(plan.grid),
          delta_mc=delta_parts["slice_mc"], delta_pb=delta_parts["slice_pb"]))
    cert = certify(
        mc.mean, mc.num_samples, kl, n, g_ext=float(g_ext), g_ext_kind=g_ext_kind,
        delta=delta, delta_mc=delta_parts["mc"], delta_pb=delta_parts["pb"],
        delta_ext=delta_parts.get("tv", 0.0) if g_ext_kind != "none" else 0.0,
        grid_size=len(plan.grid), method=method, sigma_q=None if diagonal else s_q, sigma_p=sp,
        num_params=num_params, loss=loss_name, mixture=mixture, extrapolation=kinds,
        notes=notes, loss_options=dict(loss_options or {}),
        extra={**details, "sigma_grid": list(plan.grid), "sigma_grid_source": plan.grid_source,
               **dict(extra or {})})
    per_grid.append({"sigma_p": sp, "kl": kl, "b_train": cert.b_train, "bound": cert.bound})
    if best is None or cert.bound < best.bound or (cert.bound == best.bound and
                                                    cert.kl < best.kl):
      best = cert
  j = [g["sigma_p"] for g in per_grid].index(best.sigma_p)
  position = "single" if len(plan.grid) == 1 else (
      "lowest" if best.sigma_p == min(plan.grid) else
      "highest" if best.sigma_p == max(plan.grid) else "inside")
  how = details.get("sigma_search", {}).get("how") or "sigma_q given (diagonal posterior)"
  lines = [f"sigma: {how}; final choice sigma_p = {best.sigma_p:.6g}, the {position} point "
           f"of the {len(plan.grid)}-point grid (smallest full bound, ties to the smaller KL)"]
  if position in ("lowest", "highest"):
    lines.append(f"warning: sigma_p = {best.sigma_p:.6g} is the {position} point of the prior "
                 "grid; a grid reaching further (fixed before seeing the data) may give a "
                 "smaller bound")
    _say(progress, lines[-1])
  best = dataclasses.replace(best, notes=(*best.notes, *lines))
  return dataclasses.replace(best, extra={
      **best.extra, "per_grid": per_grid, "grid_index": j, "grid_position": position,
      "seconds": round(time.perf_counter() - start, 3)})


# --------------------------------------------------------------------------- from files


def run_bound(
    prior_dir: str | os.PathLike,
    posterior_dir: str | os.PathLike,
    train_path: str | os.PathLike,
    test_path: str | os.PathLike | None = None,
    *,
    loss: str = "token_error",
    alpha: float | None = None,
    sigma: float | None = None,
    sigma_grid: Sequence[float] | None = None,
    sigma_prior: float | None = None,
    mc_scheme: str = "chunk",
    num_draws: int | None = None,
    chunk_size: int | None = None,
    batch_size: int = 8,
    draws_per_step: int | None = None,
    max_memory: int | None = None,
    delta: float = 0.05,
    seed: int = 0,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    max_length: int | None = None,
    dtype: str | None = None,
    method: str = "maurer",
    test_mixture: str | os.PathLike | Mapping[Any, float] | None = None,
    shift_feature: str | None = None,
    difficulty_support: Sequence[float] | None = None,
    chat_template: bool = False,
    space: str = "weights",
    mesh: Mesh | str | None = "auto",
    progress: bool = True,
) -> Any:
  """`pacbayes bound`: the two-gap certificate for a base checkpoint and a fine-tuned one.

  Order of work, cheapest first, so that a bad input costs seconds: argument checks (delta,
  seed, sizes, loss and its options, method, the sigma plan and each sigma in the model's
  dtype), the configs of both folders (same architecture; `include` / `exclude` matched
  against Hugging Face parameter names, `pacbayes.models.select_parameters`), the training
  rows (tokenised with the posterior folder's tokenizer, chat template, lengths), the shift
  plan (`pacbayes.pipeline.shift_terms.plan_shift`: feature, test difficulties, test mixture), the
  shift terms and the one-pool check; then the weights, the sigma search and the
  Monte-Carlo pass (`certify_params`).

  g_ext: see `pacbayes.pipeline.shift_terms`. With the difficulty feature the certificate holds the
  TV kind (certified TV over difficulty) and, when a support is known in advance (from
  `difficulty_support`, or the keys of an exact test mixture that cover the training
  values), the mixture-shift and per-slice kinds; the tightest certified value is the bound.
  With the n-gram or embedding feature g_ext is a classifier estimate and the report says
  so. When the one-pool check refutes the assumption, the certified kinds are withdrawn,
  g_ext is the n-gram classifier's estimate, and `extra["shift_check"]["refuted"]` is True.

  Args:
    prior_dir: base checkpoint folder.
    posterior_dir: fine-tuned checkpoint folder (also the tokenizer folder), or a PEFT LoRA
      adapter folder of `prior_dir` (`pacbayes.pipeline.load.load_lora_pair`: weight space, the
      adapted matrices perturbed unless include / exclude say otherwise; the tokenizer is
      then the prior's).
    train_path: training-set JSONL (S).
    test_path: optional test-set JSONL for g_ext.
    loss: "token_error", "smoothed_nll" or "sequence_error" (`pacbayes.losses.LOSSES`).
    alpha: smoothing of "smoothed_nll" (default that of `pacbayes.losses.smoothed_nll`).
    sigma: posterior sigma (None: chosen to minimise the bound).
    sigma_grid: prior sigmas to choose from (default `DEFAULT_SIGMA_GRID`, stated).
    sigma_prior: a single prior sigma (refused with `sigma_grid`).
    mc_scheme, num_draws, chunk_size, batch_size, draws_per_step, max_memory: see
      `certify_params`.
    delta: total failure probability.
    seed: seed of every random choice, in [0, 2^32) (jax.random.key(seed)).
    include, exclude: Hugging Face parameter-name globs of perturbed / unperturbed
      parameters; a pattern that matches nothing is an error.
    max_length: truncate longer rows to this many tokens (None: refuse rows longer than the
      model's context).
    dtype: "float32" or "bfloat16" (default: the posterior's config); casts are stated.
    method: PAC-Bayes bound for g_gen.
    test_mixture: the test mixture over difficulty, exactly: "uniform", a JSON file or a
      mapping (see `pacbayes.pipeline.shift_terms.plan_shift`).
    shift_feature: "difficulty", "ngram" or "embedding" (None: the rule of
      `pacbayes.pipeline.inputs.choose_shift_feature`).
    difficulty_support: every value `difficulty` can take, fixed in advance.
    chat_template: render `prompt` with the posterior tokenizer's chat template.
    space: "weights", or "lora" for a LoRA adapter whose initialisation is recorded: the
      posterior in LoRA parameter space (`pacbayes.pipeline.load.load_lora_space`).
    mesh: a Mesh, None, or "auto" (all local devices along 'data' when there are several).
    progress: progress bars and lines on stderr.

  Returns:
    A `pacbayes.certificate.core.Certificate`.

  Raises:
    ValueError: bad arguments, unreadable or mismatched checkpoints, bad data (naming the
      argument, file, line or key).
  """
  from pacbayes.lora import adapter as lora
  from pacbayes.models import hf_name_of_path, parameter_mask, select_parameters
  from pacbayes.models.checkpoint import load_config
  from pacbayes.pipeline import shift_terms as bound_shift
  from pacbayes.pipeline.load import (
    check_same_architecture,
    load_lora_pair,
    load_lora_space,
    load_pair,
    load_training_set,
    loss_options,
    model_loss,
  )
  from pacbayes.posterior.kl import check_sigmas

  say = functools.partial(_say, progress)
  # 1. Arguments alone.
  delta = bi.check_delta(delta)
  seed = bi.check_seed(seed)
  batch_size = bi.check_batch_size(batch_size)
  bi.check_run_options(num_draws=num_draws, chunk_size=chunk_size,
                       draws_per_step=draws_per_step, max_memory=max_memory,
                       max_length=max_length, mc_scheme=mc_scheme, method=method, dtype=dtype,
                       space=space, include=include, exclude=exclude)
  options = loss_options(loss, alpha)
  plan = bi.plan_sigma(sigma, sigma_grid, sigma_prior, DEFAULT_SIGMA_GRID)
  prior_dir, posterior_dir = os.fspath(prior_dir), os.fspath(posterior_dir)
  train_path = os.fspath(train_path)
  test_path = None if test_path is None else os.fspath(test_path)

  # 2. Configs: architecture, parameter names, sigmas in the evaluation dtype.
  is_lora = lora.is_adapter_folder(posterior_dir)
  if space == "lora" and not is_lora:
    raise ValueError(f"space: 'lora' needs a PEFT LoRA adapter folder as posterior; "
                     f"{posterior_dir} is not one")
  if is_lora:
    cfg_q = load_config(prior_dir, dtype=dtype)
    lora.read_adapter(posterior_dir, cfg_q, prior_dir)  # small files: checked before the base
  else:
    cfg_q = load_config(posterior_dir, dtype=dtype)
    cfg_p = load_config(prior_dir, dtype=cfg_q.dtype)
    check_same_architecture(cfg_p, cfg_q, prior_dir, posterior_dir)
  tokenizer_dir = prior_dir if is_lora else posterior_dir
  selected = select_parameters(cfg_q, include, exclude)
  check_sigmas({"sigma": plan.sigma_q,
                "sigma_prior" if plan.grid_source == "sigma_prior" else "sigma_grid": plan.grid},
               dtype=cfg_q.dtype)

  # 3. Data and the shift plan (no weights read yet).
  say(f"reading {train_path} ...")
  train = load_training_set(train_path, tokenizer_dir=tokenizer_dir, config=cfg_q,
                            max_length=max_length, chat_template=chat_template)
  terms = bound_shift.shift_terms(
      train_path, test_path, train.difficulty, shift_feature=shift_feature,
      test_mixture=test_mixture, difficulty_support=difficulty_support, delta=delta,
      seed=seed, model_dir=prior_dir, max_length=max_length, say=say)
  parts, notes = terms.delta_parts, list(terms.notes)

  # 4. Weights.
  name_of = None
  if space == "lora":
    pair, loss_fn = load_lora_space(prior_dir, posterior_dir, dtype=cfg_q.dtype, loss=loss,
                                    options=options, say=say)
  else:
    load = load_lora_pair if is_lora else load_pair
    pair = load(prior_dir, posterior_dir, dtype=cfg_q.dtype, say=say)
    loss_fn = model_loss(pair.graphdef, pair.rest, loss, options)
    name_of = functools.partial(hf_name_of_path, pair.config)
  notes = pair.notes + notes
  if pair.mask is not None and include is None and exclude is None:
    mask = pair.mask
  else:
    mask = parameter_mask(pair.config, pair.params_q, include, exclude)
  if mesh == "auto":
    mesh = shd.make_mesh() if jax.device_count() > 1 else None
  extra = {"prior": prior_dir, "posterior": posterior_dir, "train": train_path, "seed": seed,
           "model_type": pair.config.model_type, "dtype": pair.config.dtype, "space": space,
           "storage": pair.storage, "max_length": max_length,
           "length_policy": ("truncate to max_length" if max_length is not None else
                             "refuse rows longer than the model's context"),
           "num_truncated": int(train.num_truncated), "chat_template": bool(chat_template),
           "parameters": {"include": include, "exclude": exclude,
                          "num_selected_tensors": (len(pair.storage["lora"]["adapted"])
                                                   if mask is pair.mask else len(selected))},
           "shift": {**terms.info, "delta_parts": parts}}
  if terms.check is not None:
    extra["shift_check"] = terms.check
  return certify_params(
      loss_fn, pair.params_p, pair.params_q, train, key=jax.random.key(seed),
      sigma_q=plan.sigma_q, sigma_grid=sigma_grid, sigma_prior=sigma_prior,
      mc_scheme=mc_scheme, num_draws=num_draws, chunk_size=chunk_size, batch_size=batch_size,
      draws_per_step=draws_per_step, max_memory=max_memory, delta=delta, delta_parts=parts,
      g_ext=terms.g_ext, g_ext_kind=terms.g_ext_kind, mixture=terms.mixture,
      difficulty=terms.difficulty, mask=mask,
      name_of=name_of, mesh=mesh, progress=progress,
      loss_name=loss, loss_options=options, method=method, notes=notes, extra=extra)
