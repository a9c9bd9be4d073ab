"""Certificate pipeline behind `pacbayes bound`: checkpoints and data in, a Certificate out."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from pacbayes import perturb
from pacbayes import sharding as shd

# Prior scales searched when neither `sigma_prior` nor `sigma_grid` is given. Fixed here, in
# advance of any data, as the union bound over the grid requires: 1e-5 .. 1e-1, four points
# per decade (ln 17 = 2.8 nats).
DEFAULT_SIGMA_GRID = tuple(float(s) for s in perturb.sigma_prior_grid(1e-5, 1e-1, 17))
DEFAULT_NUM_DRAWS = {"passes": 20}
# Config fields that do not change the function a checkpoint computes.
_IGNORED_CONFIG_FIELDS = ("dtype", "initializer_range", "bos_token_id", "eos_token_id",
                          "pad_token_id")


def _check_delta(delta: Any) -> float:
  if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
    raise ValueError(f"delta: expected a number in (0, 1), got {delta!r}")
  return float(delta)


def _check_sigma(value: Any, name: str) -> float | None:
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not (
      math.isfinite(value) and value > 0):
    raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
  return float(value)


def _check_grid(grid: Any) -> tuple[float, ...] | None:
  if grid is None:
    return None
  values = tuple(np.asarray(grid, dtype=np.float64).ravel().tolist())
  if not values:
    raise ValueError("sigma_grid: expected at least one prior sigma")
  for v in values:
    _check_sigma(v, "sigma_grid")
  if len(set(values)) != len(values):
    raise ValueError(f"sigma_grid: values must be distinct, got {values}")
  return values


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


def _check_unperturbed_equal(prior: Any, posterior: Any, mask: Any) -> None:
  """A parameter that moved but is not perturbed makes KL(Q || P) infinite."""
  names = perturb.leaf_paths(posterior)
  for name, a, b, m in zip(names, jax.tree.leaves(posterior), jax.tree.leaves(prior),
                           jax.tree.leaves(mask), strict=True):
    if not m and not np.array_equal(np.asarray(a), np.asarray(b)):
      raise ValueError(
          f"parameter {name!r} differs between prior and posterior but is excluded from the "
          "perturbation (include/exclude); its KL would be infinite. Perturb it, or keep it "
          "equal in both checkpoints")


def _masked(tree: Any, mask: Any) -> list[Any]:
  return [x for x, m in zip(jax.tree.leaves(tree), jax.tree.leaves(mask), strict=True) if m]


def certify_params(
    loss_fn: perturb.LossFn,
    prior_params: Any,
    posterior_params: Any,
    dataset: Any,
    *,
    key: jax.Array,
    sigma_q: float | Any | None = None,
    sigma_grid: Sequence[float] | None = None,
    sigma_prior: float | None = None,
    mc_scheme: str = "chunk",
    num_draws: int | None = None,
    chunk_size: int | None = None,
    batch_size: int = 8,
    draws_per_step: int = 8,
    delta: float = 0.05,
    g_ext: float = 0.0,
    g_ext_kind: str = "none",
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    mesh: Mesh | None = None,
    progress: bool = True,
    loss_name: str = "custom",
    method: str = "maurer",
    sigma_tolerance: float = 0.02,
    search_subset: int = 512,
    extra: Mapping[str, Any] | None = None,
) -> Any:
  """Two-gap certificate (DESIGN.md §1) for in-memory prior and posterior parameters.

  P = N(prior_params, sigma_p^2 I) and Q = N(posterior_params, sigma_q^2 I) on the leaves
  selected by `include` / `exclude`. Steps:

  1. sigma_q: given, or the largest sigma whose perturbed risk stays within
     `sigma_tolerance` of the unperturbed risk (`perturb.search_sigma` on a random
     `search_subset` of S; data-dependent, which the posterior may be).
  2. emp_risk, M: `perturb.mc_risk` with a key independent of the search, scheme
     `mc_scheme` (one draw per `chunk_size` rows, or `num_draws` full passes).
  3. sigma_p: `sigma_prior` (grid_size 1), else the point of `sigma_grid` (default
     `DEFAULT_SIGMA_GRID`, fixed in advance) with the smallest bound, paying ln k.
  4. KL by `pacbayes.kl.gaussian_kl`, then `pacbayes.certificate.certify`.

  Delta is split in halves (MC, PAC-Bayes) when `g_ext_kind` is "none", in thirds
  otherwise (the caller must have computed `g_ext` at confidence delta/3).

  Args:
    loss_fn: `(params, batch) -> [B]` losses in [0, 1].
    prior_params: prior mean (e.g. the base model's `nnx.Param` state).
    posterior_params: posterior mean (e.g. the fine-tuned model's), same structure.
    dataset: the training set S: a `Dataset` or a mapping of arrays (n rows).
    key: PRNG key (search and Monte Carlo use independent subkeys).
    sigma_q: posterior sigma: a number (isotropic), a pytree like the parameters
      (diagonal, e.g. `perturb.optimise_posterior(...).sigma` with the same include /
      exclude; certify with a key not used for the fit), or None to search it.
    sigma_grid: prior sigmas to choose from (fixed before seeing S).
    sigma_prior: a single prior sigma (overrides `sigma_grid`).
    mc_scheme: "chunk" or "passes".
    num_draws: M for "passes" (default 20); for "chunk", sets chunk_size = ceil(n / M).
    chunk_size: rows per draw for "chunk" (default 1: M = n).
    batch_size: rows per forward pass per draw.
    draws_per_step: draws evaluated in parallel.
    delta: total failure probability, in (0, 1).
    g_ext: extrapolation term in [0, 1].
    g_ext_kind: "none", "certified under difficulty shift" or "estimate".
    include, exclude: glob patterns selecting perturbed parameters (`perturbation_mask`).
    mesh: optional ('data', 'fsdp') mesh; numbers are the same with or without it.
    progress: tqdm progress bars.
    loss_name: name of the loss for the report.
    method: PAC-Bayes bound behind g_gen ("maurer" by default; see `certify`).
    sigma_tolerance: allowed risk increase in the sigma search.
    search_subset: rows used by the sigma search.
    extra: more JSON details for the report.

  Returns:
    A `pacbayes.certificate.Certificate`.

  Raises:
    ValueError: mismatched prior/posterior, a moved but excluded parameter, sigma <= 0,
      delta outside (0, 1), empty data, a loss outside [0, 1], and so on.
  """
  from pacbayes.certificate import certify
  from pacbayes.kl import gaussian_kl

  start = time.perf_counter()
  delta = _check_delta(delta)
  diagonal = sigma_q is not None and not jax.tree_util.treedef_is_leaf(
      jax.tree.structure(sigma_q))
  if not diagonal:
    sigma_q = _check_sigma(sigma_q, "sigma_q")
  sigma_prior = _check_sigma(sigma_prior, "sigma_prior")
  grid = _check_grid(sigma_grid)
  if mc_scheme not in perturb.SCHEMES:
    raise ValueError(f"mc_scheme: expected one of {perturb.SCHEMES}, got {mc_scheme!r}")
  if not (isinstance(g_ext, (int, float)) and 0 <= g_ext <= 1):
    raise ValueError(f"g_ext: expected a number in [0, 1], got {g_ext!r}")
  data = _as_arrays(dataset)
  data, n = perturb._check_data(data)
  _check_same_structure(prior_params, posterior_params)
  mask = perturb.perturbation_mask(posterior_params, include, exclude)
  _check_unperturbed_equal(prior_params, posterior_params, mask)
  if g_ext_kind == "none":
    d_mc = d_pb = delta / 2
    d_ext = 0.0
  else:
    d_mc = d_pb = d_ext = delta / 3
  if mc_scheme == "chunk" and chunk_size is None and num_draws is None:
    chunk_size = 1
  if mc_scheme == "passes" and num_draws is None:
    num_draws = DEFAULT_NUM_DRAWS["passes"]

  key_search, key_mc = jax.random.split(key)
  details: dict[str, Any] = {"mc_scheme": mc_scheme}
  if sigma_q is None:
    found = perturb.search_sigma(
        loss_fn, posterior_params, data, key=key_search, tolerance=sigma_tolerance,
        subset_size=search_subset, batch_size=batch_size, draws_per_step=draws_per_step,
        mask=mask, mesh=mesh)
    sigma_q = found.sigma
    details["sigma_search"] = {
        "tolerance": sigma_tolerance, "subset": min(search_subset, n),
        "unperturbed": found.unperturbed, "risk": found.risk, "steps": len(found.history)}

  if not diagonal:
    # Draws use sigma in float32; the KL must describe that same Q, so round once here.
    sigma_q = float(np.float32(sigma_q))
  mc = perturb.mc_risk(
      loss_fn, posterior_params, data, key=key_mc, sigma=sigma_q, scheme=mc_scheme,
      num_draws=num_draws, chunk_size=chunk_size, batch_size=batch_size,
      draws_per_step=draws_per_step, mask=mask, mesh=mesh, unperturbed=True,
      progress=progress)
  details.update(chunk_size=mc.chunk_size, num_fillers=mc.num_fillers,
                 unperturbed_risk=mc.unperturbed, mc_seconds=round(mc.seconds, 3))

  mu_q = _masked(posterior_params, mask)
  mu_p = _masked(prior_params, mask)
  s_q = _masked(sigma_q, mask) if diagonal else sigma_q
  if diagonal:
    details["sigma_q"] = "diagonal"
  num_params = int(sum(int(np.size(x)) for x in mu_q))
  candidates = (sigma_prior,) if sigma_prior is not None else (grid or DEFAULT_SIGMA_GRID)
  best = None
  for sp in candidates:
    kl = float(gaussian_kl(mu_q, mu_p, s_q, sp))
    cert = certify(
        mc.mean, mc.num_samples, kl, n, g_ext=float(g_ext), g_ext_kind=g_ext_kind,
        delta=delta, delta_mc=d_mc, delta_pb=d_pb, delta_ext=d_ext,
        grid_size=len(candidates), method=method, sigma_q=None if diagonal else sigma_q,
        sigma_p=sp,
        num_params=num_params, loss=loss_name,
        extra={**details, "sigma_grid": list(candidates), **dict(extra or {})})
    if best is None or cert.bound < best.bound:
      best = cert
  return dataclasses.replace(
      best, extra={**best.extra, "seconds": round(time.perf_counter() - start, 3)})


# --------------------------------------------------------------------------- from files


def _architecture(config: Any) -> dict[str, Any]:
  fields = dataclasses.asdict(config)
  return {k: v for k, v in fields.items() if k not in _IGNORED_CONFIG_FIELDS}


def _check_same_architecture(cfg_p: Any, cfg_q: Any, prior_dir: str, posterior_dir: str) -> None:
  a, b = _architecture(cfg_p), _architecture(cfg_q)
  diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
  if diff:
    k = diff[0]
    raise ValueError(
        f"prior {prior_dir} and posterior {posterior_dir} have different architectures: "
        f"{k} = {a.get(k)!r} vs {b.get(k)!r} (all differing fields: {diff})")


@functools.lru_cache(maxsize=8)
def _model_loss(graphdef: Any, loss: str) -> perturb.LossFn:
  """`losses.model_loss_fn` for a model without non-parameter state, cached by (graphdef,
  loss) so that repeated certificates in one process reuse the compiled perturbed step."""
  from pacbayes import losses

  return losses.model_loss_fn(graphdef, loss=loss)


def _has_difficulty(path: str) -> bool:
  from pacbayes.data.jsonl import read_jsonl

  rows = read_jsonl(path)
  return bool(rows) and all(
      isinstance(r.get("difficulty"), (int, float)) and not isinstance(r.get("difficulty"), bool)
      for r in rows)


def _extrapolation(train_path: str, test_path: str | None, train_has_difficulty: bool,
                   delta_ext: float, seed: int, support=None) -> tuple[float, str, dict[str, Any]]:
  if test_path is None:
    return 0.0, "none", {}
  from pacbayes import shift

  feature = "difficulty" if train_has_difficulty and _has_difficulty(test_path) else "ngram"
  extra = {"support": support} if feature == "difficulty" else {}
  report = shift.shift_report(train_path, test_path, feature=feature, delta=delta_ext, seed=seed,
                              **extra)
  g_ext = min(1.0, max(0.0, float(report["g_ext"])))
  info = {"feature": feature, "test_path": str(test_path), "delta_ext": delta_ext,
          "tv": report.get("tv"), "support": report.get("support")}
  return g_ext, report["g_ext_kind"], info


def run_bound(
    prior_dir: str | os.PathLike,
    posterior_dir: str | os.PathLike,
    train_path: str | os.PathLike,
    test_path: str | os.PathLike | None = None,
    *,
    loss: str = "token_error",
    sigma: float | None = None,
    sigma_grid: Sequence[float] | None = None,
    sigma_prior: float | None = None,
    mc_scheme: str = "chunk",
    num_draws: int | None = None,
    chunk_size: int | None = None,
    batch_size: int = 8,
    draws_per_step: int = 8,
    delta: float = 0.05,
    seed: int = 0,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    max_length: int | None = None,
    dtype: str | None = None,
    method: str = "maurer",
    sigma_tolerance: float = 0.02,
    mesh: Mesh | str | None = "auto",
    progress: bool = True,
    difficulty_support: Sequence[float] | None = None,
) -> Any:
  """`pacbayes bound`: the two-gap certificate for a base checkpoint and a fine-tuned one.

  Loads both Hugging Face folders (`pacbayes.models.load_pretrained`; the prior in the
  posterior's dtype), refuses different architectures or shapes, loads the training JSONL
  (`pacbayes.data.dataset.load_dataset`, tokenising text rows with the posterior folder's
  tokenizer), and calls `certify_params` with `loss` from `pacbayes.losses`. With a test
  file, g_ext comes from `pacbayes.shift.shift_report` at confidence delta/3: the
  certified upper value on the `difficulty` mixture when both files carry `difficulty`
  (kind "certified under difficulty shift"), else a domain classifier on hashed n-grams
  (kind "estimate"). Without one, g_ext = 0 and the bound is on the training distribution.

  Args:
    prior_dir: base checkpoint folder.
    posterior_dir: fine-tuned checkpoint folder (also the tokenizer folder).
    train_path: training-set JSONL (S).
    test_path: optional test-set JSONL for g_ext.
    difficulty_support: every value `difficulty` can take, fixed in advance (see
      `pacbayes.shift.shift_report`); without it the cells come from the data.
    loss: a name in `pacbayes.losses.LOSSES`.
    sigma: posterior sigma (None: searched).
    sigma_grid: prior sigmas to choose from (default `DEFAULT_SIGMA_GRID`).
    sigma_prior: a single prior sigma (no grid).
    mc_scheme: "chunk" or "passes".
    num_draws, chunk_size, batch_size, draws_per_step: see `certify_params`.
    delta: total failure probability.
    seed: seed of every random choice (jax.random.key(seed)).
    include, exclude: glob patterns of perturbed parameters.
    max_length: truncate longer rows.
    dtype: "float32" or "bfloat16" (default: the posterior's config).
    method: PAC-Bayes bound for g_gen.
    sigma_tolerance: risk tolerance of the sigma search.
    mesh: a Mesh, None, or "auto" (all local devices along 'data' when there are several).
    progress: tqdm bars.

  Returns:
    A `pacbayes.certificate.Certificate`.

  Raises:
    ValueError: bad arguments, unreadable or mismatched checkpoints, bad data.
  """
  from flax import nnx

  from pacbayes import losses
  from pacbayes.data.dataset import load_dataset
  from pacbayes.models import load_pretrained

  delta = _check_delta(delta)
  _check_sigma(sigma, "sigma")
  _check_sigma(sigma_prior, "sigma_prior")
  _check_grid(sigma_grid)
  if mc_scheme not in perturb.SCHEMES:
    raise ValueError(f"mc_scheme: expected one of {perturb.SCHEMES}, got {mc_scheme!r}")
  if loss not in losses.LOSSES:
    raise ValueError(f"loss: unknown name {loss!r}; expected one of {sorted(losses.LOSSES)}")
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise ValueError(f"seed: expected an integer, got {seed!r}")
  prior_dir, posterior_dir = os.fspath(prior_dir), os.fspath(posterior_dir)
  train_path = os.fspath(train_path)
  test_path = None if test_path is None else os.fspath(test_path)

  model_q, cfg_q = load_pretrained(posterior_dir, dtype=dtype)
  model_p, cfg_p = load_pretrained(prior_dir, dtype=cfg_q.dtype)
  _check_same_architecture(cfg_p, cfg_q, prior_dir, posterior_dir)
  graphdef, params_q, rest = nnx.split(model_q, nnx.Param, ...)
  _, params_p, _ = nnx.split(model_p, nnx.Param, ...)
  del model_p

  train = load_dataset(train_path, tokenizer_dir=posterior_dir, vocab_size=cfg_q.vocab_size,
                       max_length=max_length)
  d_ext = delta / 3 if test_path is not None else 0.0
  g_ext, kind, shift_info = _extrapolation(train_path, test_path, train.difficulty is not None,
                                           d_ext, seed, difficulty_support)
  if mesh == "auto":
    mesh = shd.make_mesh() if jax.device_count() > 1 else None
  loss_fn = _model_loss(graphdef, loss) if not jax.tree.leaves(rest) else (
      losses.model_loss_fn(graphdef, rest, loss=loss))
  extra = {"prior": prior_dir, "posterior": posterior_dir, "train": train_path, "seed": seed,
           "model_type": cfg_q.model_type, "dtype": cfg_q.dtype,
           "num_truncated": int(train.num_truncated)}
  if shift_info:
    extra["shift"] = shift_info
  return certify_params(
      loss_fn, params_p, params_q, train, key=jax.random.key(seed), sigma_q=sigma,
      sigma_grid=sigma_grid, sigma_prior=sigma_prior, mc_scheme=mc_scheme,
      num_draws=num_draws, chunk_size=chunk_size, batch_size=batch_size,
      draws_per_step=draws_per_step, delta=delta, g_ext=g_ext, g_ext_kind=kind,
      include=include, exclude=exclude, mesh=mesh, progress=progress, loss_name=loss,
      method=method, sigma_tolerance=sigma_tolerance, extra=extra)

