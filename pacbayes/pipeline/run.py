"""`pacbayes bound`: checkpoints and data in, a Certificate out, through the one route.

`run_bound` takes a `pacbayes.pipeline.config.BoundConfig`, checks every input before the
expensive work (`pacbayes.pipeline.inputs`, `pacbayes.pipeline.shift_terms`), loads the
weights and calls `pacbayes.certificate.route.certify_posterior`. `certify_params` is the same
route for parameters already in memory, with its plan given as one `CertifyPlan` (or built
from keywords, `plan_from_keywords`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from pacbayes.bounds import extrapolation as ex
from pacbayes.bounds.delta import DeltaPlan
from pacbayes.certificate.core import ShiftInputs
from pacbayes.certificate.report import Certificate
from pacbayes.certificate.route import CertifyPlan, certify_posterior, say
from pacbayes.core import sharding as shd
from pacbayes.pipeline.config import BoundConfig
from pacbayes.posterior import draws
from pacbayes.posterior.montecarlo import MonteCarloOptions
from pacbayes.posterior.sigma import DEFAULT_SIGMA_GRID, SearchOptions, plan_sigma

__all__ = ["KEYWORDS", "certify_params", "plan_from_keywords", "run_bound"]

# The keywords `plan_from_keywords` accepts (each a field of one of the plan's parts).
KEYWORDS = ("sigma_q", "sigma_grid", "sigma_prior", "mc_scheme", "num_draws", "chunk_size",
            "batch_size", "draws_per_step", "max_memory", "delta", "delta_parts", "g_ext",
            "g_ext_kind", "mixture", "difficulty", "progress", "loss_name", "loss_options",
            "method", "search_subset", "notes", "extra")


def _as_arrays(dataset: Any) -> dict[str, np.ndarray]:
  """A `pacbayes.data.dataset.Dataset` or a mapping of arrays -> mapping of arrays."""
  if isinstance(dataset, Mapping):
    return {k: np.asarray(v) for k, v in dataset.items() if k != "weight"}
  if all(hasattr(dataset, k) for k in ("input_ids", "attention_mask", "loss_mask")):
    return {k: np.asarray(getattr(dataset, k))
            for k in ("input_ids", "attention_mask", "loss_mask")}
  raise ValueError(f"dataset: expected a Dataset or a mapping of arrays, got {type(dataset)}")


def plan_from_keywords(**kw: Any) -> CertifyPlan:
  """A `CertifyPlan` from the keywords of `KEYWORDS` (the in-memory shorthand).

  sigma_q (a float, or a pytree of sigmas for a diagonal posterior), sigma_grid, sigma_prior:
  `posterior.sigma.plan_sigma` (default grid `DEFAULT_SIGMA_GRID`); mc_scheme, num_draws,
  chunk_size, batch_size (default 8), draws_per_step, max_memory: `MonteCarloOptions`;
  delta (default 0.05) or delta_parts (a `DeltaPlan` or a mapping of shares; without it,
  equal shares over "mc", "pb", "tv" with a g_ext kind and the per-slice parts with a
  difficulty); g_ext, g_ext_kind, mixture, difficulty: `ShiftInputs`; method, loss_name,
  loss_options, notes, extra, progress (default True), search_subset (default 256).

  Raises:
    TypeError: an unknown keyword. ValueError: bad values (naming the keyword).
  """
  unknown = sorted(set(kw) - set(KEYWORDS))
  if unknown:
    raise TypeError(f"unexpected keyword arguments {unknown}")
  sigma_q = kw.get("sigma_q")
  diagonal = sigma_q is not None and not jax.tree_util.treedef_is_leaf(
      jax.tree.structure(sigma_q))
  g_ext, kind = kw.get("g_ext", 0.0), kw.get("g_ext_kind", ex.KIND_NONE)
  if not (isinstance(g_ext, (int, float)) and not isinstance(g_ext, bool) and 0 <= g_ext <= 1):
    raise ValueError(f"g_ext: expected a number in [0, 1], got {g_ext!r}")
  parts = kw.get("delta_parts")
  if parts is None:
    from pacbayes.pipeline.inputs import check_delta

    deltas = DeltaPlan.for_kinds(check_delta(kw.get("delta", 0.05)), tv=kind != ex.KIND_NONE,
                                 per_slice=kw.get("difficulty") is not None)
  else:
    deltas = parts if isinstance(parts, DeltaPlan) else DeltaPlan(tuple(dict(parts).items()))
  mc = MonteCarloOptions(
      scheme=kw.get("mc_scheme", "chunk"), num_draws=kw.get("num_draws"),
      chunk_size=kw.get("chunk_size"), batch_size=kw.get("batch_size", 8),
      draws_per_step=kw.get("draws_per_step"), max_memory=kw.get("max_memory"))
  return CertifyPlan(
      sigma=plan_sigma(None if diagonal else sigma_q, kw.get("sigma_grid"),
                       kw.get("sigma_prior"), DEFAULT_SIGMA_GRID),
      deltas=deltas, mc=mc,
      shift=ShiftInputs(g_ext=float(g_ext), g_ext_kind=kind, mixture=kw.get("mixture"),
                        difficulty=kw.get("difficulty")),
      method=kw.get("method", "maurer"),
      search=SearchOptions(subset_size=kw.get("search_subset", 256)),
      loss_name=kw.get("loss_name", "custom"), loss_options=dict(kw.get("loss_options") or {}),
      notes=tuple(kw.get("notes", ())), extra=dict(kw.get("extra") or {}),
      diagonal_sigma=sigma_q if diagonal else None, progress=kw.get("progress", True))


def certify_params(loss_fn: draws.LossFn, prior_params: Any, posterior_params: Any,
                   dataset: Any, *, key: jax.Array, plan: CertifyPlan | None = None,
                   mask: Any = None, name_of: Callable[[str], str] | None = None,
                   mesh: Any = None, **keywords: Any) -> Certificate:
  """The two-gap certificate of in-memory prior and posterior parameters (the one route).

  Args:
    loss_fn: `(params, batch) -> [B]` losses in [0, 1].
    prior_params, posterior_params: the prior and posterior means (same structure).
    dataset: the training set S: a `Dataset` or a mapping of arrays (n rows).
    key: PRNG key.
    plan: the `CertifyPlan`; or None and the plan's settings as `**keywords`
      (`plan_from_keywords`), not both.
    mask: bool pytree of perturbed leaves (default every floating leaf); from leaf-path globs,
      `posterior.draws.perturbation_mask(posterior_params, include, exclude)`.
    name_of: maps a leaf path to the name shown in messages.
    mesh: optional ('data', 'fsdp') mesh.

  Returns:
    A `pacbayes.certificate.report.Certificate` (`certificate.route.certify_posterior`).
  """
  if plan is not None and keywords:
    raise ValueError(f"plan and {sorted(keywords)}: give the plan or its keywords, not both")
  plan = plan_from_keywords(**keywords) if plan is None else plan
  if mask is None:
    mask = draws.perturbation_mask(posterior_params)
  return certify_posterior(loss_fn, prior_params, posterior_params, _as_arrays(dataset), plan,
                           key=key, mask=mask, name_of=name_of, mesh=mesh)


# --------------------------------------------------------------------------- from files


def run_bound(config: BoundConfig) -> Certificate:
  """`pacbayes bound`: the two-gap certificate for a base checkpoint and a fine-tuned one.

  Order of work, cheapest first, so that a bad input costs seconds: the options
  (`BoundConfig.check`: delta, seed, sizes, method, the sigma plan), the loss options, the
  configs of both folders (same architecture; include / exclude matched against Hugging Face
  parameter names, `pacbayes.models.select_parameters`; each sigma in the model's dtype), the
  training rows (tokenised with the posterior folder's tokenizer, chat template, lengths), the
  shift plan and terms (`pacbayes.pipeline.shift_terms.shift_terms`) with the one-pool check;
  then the weights and the route (`certificate.route.certify_posterior`: certifiability before
  compute, the sigma search, the Monte-Carlo pass, every kind the delta plan pays for).

  g_ext: see `pacbayes.pipeline.shift_terms`. With a PEFT LoRA adapter folder as posterior the
  merged weights are certified (`pacbayes.pipeline.load.load_lora_pair`), or with space "lora"
  the LoRA parameters against their recorded initialisation (`load_lora_space`).

  Returns:
    A `pacbayes.certificate.report.Certificate`.

  Raises:
    ValueError: bad options, unreadable or mismatched checkpoints, bad data (naming the
      option, file, line or key).
  """
  from pacbayes.lora import adapter as lora
  from pacbayes.models import hf_name_of_path, parameter_mask, select_parameters
  from pacbayes.models.checkpoint import load_config
  from pacbayes.pipeline import holdout
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
  from pacbayes.posterior.sigma_checks import check_sigmas

  c = config
  progress = c.progress
  echo = functools.partial(say, progress)
  # 1. Options alone.
  c.check()
  options = loss_options(c.loss, c.alpha)
  plan = c.sigma_plan()

  # 2. Configs: architecture, parameter names, sigmas in the evaluation dtype.
  is_lora = lora.is_adapter_folder(c.posterior)
  if c.space == "lora" and not is_lora:
    raise ValueError(f"space: 'lora' needs a PEFT LoRA adapter folder as posterior; "
                     f"{c.posterior} is not one")
  if c.held_out:
    holdout.holdout_path(c.posterior)  # one line naming the folder and --held-out
  base_check = None
  if is_lora:
    cfg_q = load_config(c.prior, dtype=c.dtype)
    # Small files: checked before the base.
    base_check = lora.read_adapter(c.posterior, cfg_q, c.prior,
                                   accept_base=c.accept_base).base_check
  else:
    cfg_q = load_config(c.posterior, dtype=c.dtype)
    cfg_p = load_config(c.prior, dtype=cfg_q.dtype)
    check_same_architecture(cfg_p, cfg_q, c.prior, c.posterior)
  tokenizer_dir = c.prior if is_lora else c.posterior
  selected = select_parameters(cfg_q, c.include, c.exclude)
  check_sigmas({"sigma": plan.sigma_q,
                "sigma_prior" if plan.grid_source == "sigma_prior" else "sigma_grid": plan.grid},
               dtype=cfg_q.dtype)

  # 3. Data and the shift terms (no weights read yet).
  early_notes = []
  warning = holdout.check_row_format(c.posterior, c.chat_template)
  if warning:
    echo(warning)
    early_notes.append(warning)
  echo(f"reading {c.train} ...")
  read = functools.partial(load_training_set, tokenizer_dir=tokenizer_dir, config=cfg_q,
                           max_length=c.max_length, chat_template=c.chat_template)
  train = read(c.train)
  split = None
  if c.held_out:
    split = holdout.split_rows(c.posterior, c.train, train)
    train = split.train
    early_notes.append(
        f"--held-out: the PAC-Bayes part uses only the {len(split.train)} rows the fine-tune "
        f"was trained on; the {len(split.heldout)} held-out rows (holdout.json) are certified "
        "apart, on the unperturbed fine-tuned weights")
    echo(early_notes[-1])
  test = None
  if c.test is not None:
    try:
      test = read(c.test)
    except ValueError as e:  # DataError too: the risk on the test rows is then not measured
      early_notes.append(f"the risks on the test rows are not measured: {e}")
  terms = bound_shift.shift_terms(c, train.difficulty, say=echo)

  # 4. Weights.
  name_of = None
  if c.space == "lora":
    pair, loss_fn = load_lora_space(c.prior, c.posterior, dtype=cfg_q.dtype, loss=c.loss,
                                    options=options, say=echo, accept_base=c.accept_base)
  else:
    if is_lora:
      pair = load_lora_pair(c.prior, c.posterior, dtype=cfg_q.dtype, say=echo,
                            accept_base=c.accept_base)
    else:
      pair = load_pair(c.prior, c.posterior, dtype=cfg_q.dtype, say=echo, stream_prior=True)
    loss_fn = model_loss(pair.graphdef, pair.rest, c.loss, options)
    name_of = functools.partial(hf_name_of_path, pair.config)
  if pair.mask is not None and c.include is None and c.exclude is None:
    mask = pair.mask
  else:
    mask = parameter_mask(pair.config, pair.params_q, c.include, c.exclude)
  mesh = c.mesh
  if mesh == "auto":
    mesh = shd.make_mesh() if jax.device_count() > 1 else None
  extra = {"prior": c.prior, "posterior": c.posterior, "train": c.train, "seed": c.seed,
           "model_type": pair.config.model_type, "dtype": pair.config.dtype, "space": c.space,
           "storage": pair.storage, "max_length": c.max_length,
           "length_policy": ("truncate to max_length" if c.max_length is not None else
                             "refuse rows longer than the model's context"),
           "num_truncated": int(train.num_truncated), "chat_template": bool(c.chat_template),
           "parameters": {"include": _listed(c.include), "exclude": _listed(c.exclude),
                          "num_selected_tensors": (len(pair.storage["lora"]["adapted"])
                                                   if mask is pair.mask else len(selected))},
           "shift": {**terms.info, "delta_parts": terms.deltas.as_dict()}}
  if terms.check is not None:
    extra["shift_check"] = terms.check
  if is_lora:
    extra["adapter"] = {"base_check": base_check, "accept_base": c.accept_base}
  cplan = CertifyPlan(sigma=plan, deltas=terms.deltas, mc=c.mc_options(), shift=terms.inputs,
                      method=c.method, loss_name=c.loss, loss_options=options,
                      notes=(*pair.notes, *terms.notes, *early_notes), extra=extra,
                      progress=progress)
  # The route reads the prior before its Monte Carlo only: a full prior streamed one tensor at
  # a time (`ParameterReader`), a LoRA pair's base handed over and released (the LoRA
  # space's prior is the small adapter initialisation), so no prior copy sits beside the
  # posterior. The measures load it again only for the base's test risk.
  prior = pair.params_p if c.space == "lora" else _hand_over_prior(pair)
  cert = certify_posterior(loss_fn, prior, pair.params_q, _as_arrays(train), cplan,
                           key=jax.random.key(c.seed), mask=mask, name_of=name_of, mesh=mesh)
  # 5. The uncertified side (measures, risk estimates) and the held-out certificate.
  return _attach(cert, c, loss_fn, pair, mask, train, test, terms, split, echo)


def _hand_over_prior(pair: Any) -> Callable[[], Any]:
  """A function that returns the pair's prior parameters and drops the pair's reference."""

  def take() -> Any:
    params, pair.params_p = pair.params_p, None
    return params

  return take


def _attach(cert: Certificate, c: BoundConfig, loss_fn: Any, pair: Any, mask: Any, train: Any,
            test: Any, terms: Any, split: Any, echo: Callable[[str], None]) -> Certificate:
  """The certificate with ``extra["measures"]`` and, with --held-out, ``extra["heldout"]``."""
  from pacbayes.pipeline import holdout
  from pacbayes.pipeline.load import load_prior_params
  from pacbayes.pipeline.measures import MeasureInputs, compute_measures
  from pacbayes.posterior.montecarlo import row_losses

  known = None
  by_slice = cert.extra.get("unperturbed_by_slice") or {}
  if cert.extra.get("unperturbed_risk") is not None and (train.difficulty is None or by_slice):
    known = (float(cert.extra["unperturbed_risk"]), dict(by_slice))
  mixture = terms.inputs.mixture
  test_mixture = None
  if mixture is not None and mixture.test_exact:
    test_mixture = dict(zip(mixture.support, mixture.test_upper, strict=True))
  elif isinstance(terms.info.get("tv"), Mapping) and c.test_mixture is not None:
    test_mixture = _exact_test_mixture(c)
  params_p = pair.params_p
  if params_p is None:  # handed over to the route and released: read again if needed
    params_p = functools.partial(load_prior_params, c.prior, dtype=pair.config.dtype)
  inputs = MeasureInputs(
      loss_fn=loss_fn, params_q=pair.params_q, params_p=params_p, mask=mask,
      sq_distance=cert.extra.get("sq_distance"),
      train=_as_arrays(train), train_difficulty=train.difficulty,
      test=None if test is None else _as_arrays(test),
      test_difficulty=None if test is None else test.difficulty, test_mixture=test_mixture,
      train_risk=known, shift_info=terms.info, shift_check=terms.check)
  extra = dict(cert.extra)
  extra["measures"] = compute_measures(inputs, c, say=echo)
  if split is not None:
    echo(f"held-out certificate: the fine-tune's risk on the {len(split.heldout)} held-out "
         "rows, no noise ...")
    losses = row_losses(loss_fn, pair.params_q, _as_arrays(split.heldout),
                        batch_size=c.batch_size, progress=c.progress)
    extra["heldout"] = holdout.heldout_block(c, split, losses,
                                             None if test is None else test.difficulty)
  return dataclasses.replace(cert, extra=extra)


def _exact_test_mixture(c: BoundConfig) -> dict[float, float] | None:
  """The exact --test-mixture as {difficulty: p} (None for "uniform" without a support)."""
  from pacbayes.bounds import mixture as mixtures

  m = c.test_mixture
  if isinstance(m, str) and m == "uniform":
    return None if c.difficulty_support is None else mixtures.uniform_mixture(
        list(c.difficulty_support))
  if isinstance(m, (str, os.PathLike)):
    return mixtures.load_mixture(os.fspath(m), support=c.difficulty_support)
  return mixtures.check_mixture(m, name="test_mixture")


def _listed(patterns: Any) -> Any:
  return None if patterns is None else list(patterns)
