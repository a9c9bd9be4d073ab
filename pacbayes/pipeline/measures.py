"""The uncertified side of `pacbayes bound`: the paper's terms as measures, and risk estimates.

Beside the certificate every report carries (issue 18, docs/THEORY.md §7.1):

* measures of the paper's two gaps, none of which holds with a stated probability:
  ``g_gen_sharpness``, the PAC-Bayes sharpness measure of Jiang et al. (ICLR 2020;
  `pacbayes.posterior.sharpness`) on a random subset of S: the largest sigma at which the
  training risk rises by at most 0.1, the KL at that sigma and ``sqrt(KL / (2 n))``;
  ``g_ext_tv_difficulty``, the plug-in TV between the training and test mixtures over
  difficulty; ``g_ext_classifier``, the n-gram domain classifier's estimate of TV(D_test,
  D_train) (both computed by the shift stage, `pacbayes.pipeline.shift_terms`);
* estimates of risks (measured, no guarantee beyond the rows scored): the fine-tune's own
  (unperturbed) risk on S and per slice; with --test, the fine-tune's and the base's risk on
  the test rows (and per slice); with a test mixture, the plug-in estimate
  ``sum_d p_test(d) R_S,d(w_ft)`` from the per-slice training risk.

Everything goes to ``extra["measures"]`` (``{name: {"value", "group", "kind", ...}}``, read by
`pacbayes plot`); the report writes the groups "measure" and "estimate" at its top level.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["ESTIMATE", "MEASURE", "MeasureInputs", "by_slice", "compute_measures",
           "plugin_estimate"]

MEASURE = "measure (uncertified)"
ESTIMATE = "estimate (measured on the rows named; not certified)"


def by_slice(losses: np.ndarray, difficulty: Any) -> dict[str, float]:
  """Mean of [n] per-row losses by difficulty value (keys like "2"), or {} without one."""
  if difficulty is None:
    return {}
  d = np.asarray(difficulty, np.float64).reshape(-1)
  return {f"{v:g}": float(losses[d == v].mean()) for v in np.unique(d)}


def plugin_estimate(train_by_slice: Mapping[str, float],
                    mixture: Mapping[float, float]) -> dict[str, Any]:
  """``sum_d p_test(d) R_S,d`` over the test mixture, from the per-slice training risk.

  Returns {"value": float or None, "uncovered_mass": mass of test difficulties without a
  training row (the value is None when it is > 0), "formula"}.
  """
  total, uncovered = 0.0, 0.0
  for d, p in mixture.items():
    key = f"{float(d):g}"
    if key in train_by_slice:
      total += float(p) * train_by_slice[key]
    else:
      uncovered += float(p)
  return {"value": None if uncovered > 0 else total, "uncovered_mass": uncovered,
          "formula": "sum_d p_test(d) * (fine-tune's risk on the training rows of slice d)"}


@dataclasses.dataclass(frozen=True)
class MeasureInputs:
  """What `compute_measures` needs.

  Attributes:
    loss_fn: ``(params, batch) -> [B]`` losses in [0, 1].
    params_q, params_p: the fine-tuned and base parameters (the route's posterior and prior);
      params_p may be a function of no arguments that loads them, called only when the
      base's risk on the test rows is measured.
    mask: the perturbed leaves.
    train: mapping of arrays of S (n rows); train_difficulty: [n] or None.
    test: mapping of arrays of the --test rows, or None; test_difficulty: [N_test] or None.
    test_mixture: the exact test mixture {difficulty: p}, or None.
    train_risk: (mean, {slice: mean}) of the fine-tune's own risk on S when the certificate
      already measured it (with its per-slice values, or without difficulty), else None.
    shift_info, shift_check: the shift stage's details (`extra["shift"]`, the one-pool check).
    sq_distance: ||w_q - w_p||^2 on the perturbed leaves when already known (the
      certificate's); the sharpness measure then does not read params_p.
  """

  loss_fn: Callable
  params_q: Any
  params_p: Any
  mask: Any
  train: Mapping[str, np.ndarray]
  train_difficulty: Any = None
  test: Mapping[str, np.ndarray] | None = None
  test_difficulty: Any = None
  test_mixture: Mapping[float, float] | None = None
  train_risk: tuple[float, dict[str, float]] | None = None
  shift_info: Mapping[str, Any] | None = None
  shift_check: Mapping[str, Any] | None = None
  sq_distance: float | None = None


def _base_params(inputs: MeasureInputs) -> Any:
  return inputs.params_p() if callable(inputs.params_p) else inputs.params_p


def _risk(inputs: MeasureInputs, params: Any, data: Mapping[str, Any], config: Any,
          say, what: str) -> np.ndarray:
  from pacbayes.posterior.montecarlo import row_losses

  rows = int(np.shape(data["input_ids"])[0])
  say(f"{what}: {rows} rows, no noise ...")
  return row_losses(inputs.loss_fn, params, data, batch_size=config.batch_size,
                    progress=config.progress)


def _subset(data: Mapping[str, np.ndarray], rows: int, seed: int) -> Mapping[str, np.ndarray]:
  n = int(np.shape(data["input_ids"])[0])
  if rows >= n:
    return data
  idx = np.sort(np.random.default_rng([seed, 0x5348]).choice(n, size=rows, replace=False))
  return {k: np.asarray(v)[idx] for k, v in data.items()}


def _sharpness(inputs: MeasureInputs, config: Any, say) -> dict[str, Any]:
  import jax

  from pacbayes.posterior.montecarlo import MonteCarloOptions
  from pacbayes.posterior.sharpness import SharpnessOptions, sharpness_measure

  n = int(np.shape(inputs.train["input_ids"])[0])
  rows = min(config.measure_rows, n)
  opts = SharpnessOptions(num_steps=config.measure_steps, monte_carlo=MonteCarloOptions(
      scheme="chunk", chunk_size=1, batch_size=config.batch_size,
      draws_per_step=config.draws_per_step, max_memory=config.max_memory))
  say(f"G_gen sharpness measure (uncertified): {rows} of the {n} rows of S, one posterior "
      f"draw per row, at most {2 + opts.num_steps} risk evaluations (sigma {opts.sigma_low:g} "
      f".. {opts.sigma_high:g}, rise <= {opts.max_rise:g}) ...")
  known = inputs.sq_distance
  m = sharpness_measure(inputs.loss_fn, inputs.params_q,
                        None if known is not None else _base_params(inputs),
                        _subset(inputs.train, rows, config.seed),
                        key=jax.random.fold_in(jax.random.key(config.seed), 0x5348),
                        options=opts, mask=inputs.mask, n=n, progress=config.progress,
                        sq_dist=known)
  out = {**m.to_dict(), "group": "measure", "kind": MEASURE, "subset_rows": rows,
         "what": f"sqrt(KL / (2n)) at the largest sigma whose training risk (on {rows} rows) "
                 f"rises by <= {opts.max_rise:g}; sigma {m.sigma:.4g}, KL {m.kl:.4g} nats"}
  say(f"sharpness: sigma* = {m.sigma:.4g} ({m.at}), KL = {m.kl:.4g} nats, sqrt(KL/(2n)) = "
      f"{m.value:.4g}")
  return out


def _number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shift_measures(inputs: MeasureInputs) -> dict[str, dict[str, Any]]:
  """The G_ext measures the shift stage computed (plug-in TV, classifier estimate)."""
  out: dict[str, dict[str, Any]] = {}
  info = inputs.shift_info or {}
  feature, tv = info.get("feature"), info.get("tv")
  tv = tv if isinstance(tv, Mapping) else {}
  if feature == "difficulty" and _number(tv.get("estimate")):
    out["g_ext_tv_difficulty"] = {
        "value": float(tv["estimate"]), "group": "measure", "kind": MEASURE,
        "what": "plug-in TV between the training and test mixtures over difficulty (the TV "
                f"kind of the certificate uses its upper value {tv.get('upper')!r})"}
  elif feature == "difficulty" and _number(tv.get("exact")):
    out["g_ext_tv_difficulty"] = {"value": float(tv["exact"]), "group": "measure",
                                  "kind": "exact (both mixtures given)",
                                  "what": "TV between the given mixtures over difficulty"}
  elif feature is not None and _number(tv.get("estimate")):
    out["g_ext_classifier"] = {"value": float(tv["estimate"]), "group": "measure",
                               "kind": MEASURE,
                               "what": f"{feature} domain classifier's estimate of TV"}
  check = inputs.shift_check or {}
  if _number(check.get("tv_estimate")):
    out["g_ext_classifier"] = {
        "value": float(check["tv_estimate"]), "group": "measure", "kind": MEASURE,
        "what": "n-gram domain classifier's estimate of TV(D_test, D_train)",
        "lower": check.get("tv_lower")}
  return out


def compute_measures(inputs: MeasureInputs, config: Any, say=lambda text: None
                     ) -> dict[str, dict[str, Any]]:
  """Every measure and estimate of the module docstring, as ``{name: {...}}``.

  Args:
    inputs: `MeasureInputs`.
    config: the `BoundConfig` (batch_size, draws_per_step, max_memory, seed, progress,
      measure_rows (0: no sharpness measure), measure_steps, test).
    say: one progress line.

  Returns:
    JSON-ready ``{name: {"value": float or None, "group": "measure" | "estimate", "kind",
    "what", ...}}``.
  """
  out: dict[str, dict[str, Any]] = {}
  n = int(np.shape(inputs.train["input_ids"])[0])
  if inputs.train_risk is not None:
    mean, train_slices = inputs.train_risk
  else:
    rows = _risk(inputs, inputs.params_q, inputs.train, config, say,
                 "the fine-tune's own risk on S per slice")
    mean, train_slices = float(rows.mean()), by_slice(rows, inputs.train_difficulty)
  out["finetune_risk_train"] = {"value": float(mean), "by_slice": dict(train_slices),
                                "rows": n, "group": "estimate", "kind": ESTIMATE,
                                "what": "the fine-tune's (unperturbed) risk on S"}
  if inputs.test is not None:
    test_name = os.path.basename(str(config.test))
    for name, base, who in (("finetune_risk_test", False, "fine-tune"),
                            ("base_risk_test", True, "base (--prior)")):
      r = _risk(inputs, _base_params(inputs) if base else inputs.params_q, inputs.test, config,
                say, f"the {who}'s risk on {test_name}")
      out[name] = {"value": float(r.mean()), "by_slice": by_slice(r, inputs.test_difficulty),
                   "rows": int(r.size), "group": "estimate", "kind": ESTIMATE,
                   "what": f"the {who}'s risk on the {r.size} rows of {test_name}"}
  if inputs.test_mixture is not None and train_slices:
    est = plugin_estimate(train_slices, inputs.test_mixture)
    out["finetune_risk_test_plugin"] = {
        **est, "group": "estimate", "kind": ESTIMATE,
        "what": "plug-in test-mixture risk of the fine-tune from its per-slice risk on S"
                + ("" if est["value"] is not None else
                   f" (not estimable: {est['uncovered_mass']:g} of the test mass has no "
                   "training rows)")}
  out.update(_shift_measures(inputs))
  if config.measure_rows > 0:
    out["g_gen_sharpness"] = _sharpness(inputs, config, say)
  for v in out.values():
    value = v.get("value")
    if value is not None and not math.isfinite(value):
      v["value"] = None
  return out
