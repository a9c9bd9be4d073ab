"""The extrapolation side of `pacbayes bound`: which g_ext, its inputs, and the one-pool check.

Two stages. `plan_shift` runs before any model is loaded: it fixes the feature behind g_ext
(by the rule of `bound_inputs.choose_shift_feature`), reads the test difficulties strictly
(file and line for a bad row), and reads the test mixture. `measure_shift` then computes what
the certificate needs: the difficulty mixtures (`pacbayes.bounds.mixture.mixture_bounds`), the
certified TV over difficulty, or a domain-classifier estimate; and, whenever a certified kind
rests on the one-pool assumption and test rows exist, the cross-check below.

One-pool cross-check. The certified kinds assume that train and test draw from one pool and
differ only in the mixture over difficulty; then TV(D_test, D_train) = TV(p_test(d),
p_train(d)) <= U, the certified upper value over difficulty. A domain classifier on hashed
n-grams gives a lower bound L on TV(D_test, D_train) that needs no assumption (HPLB,
`pacbayes.shift.tv_classifier`). If L > U, both cannot hold: with probability >= 1 - delta
(delta/2 for L, delta/2 for U) the assumption is false, and the term is reported REFUTED. The
check only ever withdraws a claim, so its confidence is not taken from the certificate's
delta.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from pacbayes.pipeline import inputs as bi

__all__ = ["ShiftMeasure", "ShiftPlan", "ShiftTerms", "check_one_pool", "measure_shift",
           "plan_shift", "shift_terms"]


@dataclasses.dataclass(frozen=True)
class ShiftPlan:
  """What g_ext will be, decided from the arguments and the cheap parts of the files.

  Attributes:
    feature: "difficulty", "ngram", "embedding", or None (no test side: g_ext = 0).
    rule: how the feature was chosen, in words.
    test_path: the test JSONL, or None.
    test_difficulty: float64 [N_test] difficulties of the test rows (difficulty feature with
      a test file), else None.
    mixture: the test mixture given exactly ({difficulty: probability}), or None.
    mixture_source: where the mixture came from, in words ("" without one).
    support: the difficulty support fixed in advance (sorted floats), or None.
  """

  feature: str | None
  rule: str
  test_path: str | None
  test_difficulty: np.ndarray | None
  mixture: dict[float, float] | None
  mixture_source: str
  support: tuple[float, ...] | None


def _check_support(support: Any) -> tuple[float, ...] | None:
  if support is None:
    return None
  try:
    values = tuple(float(v) for v in support)
  except (TypeError, ValueError):
    raise ValueError(f"difficulty_support: expected numbers, got {support!r}") from None
  if not values or not all(np.isfinite(values)):
    raise ValueError(f"difficulty_support: expected finite numbers, got {list(support)!r}")
  if len(set(values)) != len(values):
    raise ValueError(f"difficulty_support: values must be distinct, got {list(values)}")
  return tuple(sorted(values))


def plan_shift(train_path: str, test_path: str | None, *, train_difficulty: np.ndarray | None,
               shift_feature: str | None, test_mixture: Any, difficulty_support: Any
               ) -> ShiftPlan:
  """Decides the feature behind g_ext and reads its cheap inputs (before any model loads).

  Args:
    train_path: the training JSONL (for messages).
    test_path: the test JSONL, or None.
    train_difficulty: the training rows' difficulties ([n] float64), or None when the rows
      carry none (as `pacbayes.data.dataset.Dataset.difficulty`).
    shift_feature: "difficulty", "ngram", "embedding", or None (the rule decides).
    test_mixture: None, "uniform", a JSON file path, or a mapping difficulty -> probability.
    difficulty_support: every value difficulty can take, or None.

  Returns:
    A `ShiftPlan`.

  Raises:
    ValueError: naming the argument, file and line (see `bound_inputs.choose_shift_feature`,
      `bound_inputs.read_difficulty`, `pacbayes.bounds.mixture.load_mixture`); a test
      difficulty outside the support or with no mass under the given mixture.
  """
  from pacbayes.bounds import mixture as mixtures

  support = _check_support(difficulty_support)
  feature = bi.choose_shift_feature(
      shift_feature, train_has_difficulty=train_difficulty is not None,
      test_given=test_path is not None, mixture_given=test_mixture is not None,
      support_given=support is not None)
  if feature is None:
    return ShiftPlan(None, "no test side: g_ext = 0 (the bound is on the training "
                     "distribution)", None, None, None, "", None)
  rule = (f"chosen by --shift-feature {shift_feature}" if shift_feature is not None else
          "difficulty: the training rows carry difficulty" if feature == "difficulty" else
          "ngram: the training rows carry no difficulty")
  if feature != "difficulty":
    return ShiftPlan(feature, rule, test_path, None, None, "", None)
  if support is not None:
    outside = sorted({float(v) for v in train_difficulty} - set(support))
    if outside:
      raise ValueError(f"{train_path}: difficulty {outside[0]:g} is not in difficulty_support")
  test_values = None
  if test_path is not None:
    test_values, lines = bi.read_difficulty(test_path)
    if test_values is None:
      raise ValueError(f"{test_path}:{lines[0] if lines else 1}: the test rows carry no "
                       "'difficulty', but the difficulty feature is in use ("
                       f"{rule}); give --shift-feature ngram or add difficulty to every row")
    if support is not None:
      bad = [i for i, v in enumerate(test_values) if float(v) not in support]
      if bad:
        raise ValueError(f"{test_path}:{lines[bad[0]]}: difficulty {test_values[bad[0]]:g} is "
                         "not in difficulty_support")
  mixture, source = None, ""
  if test_mixture is not None:
    if isinstance(test_mixture, str) and test_mixture == "uniform":
      if support is not None:
        mixture = mixtures.uniform_mixture(list(support))
        source = f"uniform over the given difficulty support ({len(support)} values)"
      elif test_values is not None:
        seen = sorted({float(v) for v in test_values})
        mixture = mixtures.uniform_mixture(seen)
        source = (f"uniform over the {len(seen)} difficulty values seen in {test_path} (the "
                  "observed support, not fixed in advance)")
      else:
        raise ValueError("test_mixture: 'uniform' needs difficulty_support or a test file "
                         "whose rows carry difficulty, to fix the values it spreads over")
    elif isinstance(test_mixture, (str, os.PathLike)):
      mixture = mixtures.load_mixture(os.fspath(test_mixture), support=support)
      source = f"given exactly in {os.fspath(test_mixture)}"
    else:
      mixture = mixtures.check_mixture(test_mixture, name="test_mixture")
      source = "given exactly (a mapping)"
    if support is not None:
      outside = sorted(d for d, p in mixture.items() if p > 0 and d not in support)
      if outside:
        raise ValueError(f"test_mixture: difficulty {outside[0]:g} has mass but is not in "
                         "difficulty_support")
    if test_values is not None:
      bad = [i for i, v in enumerate(test_values) if mixture.get(float(v), 0.0) <= 0]
      if bad:
        raise ValueError(f"{test_path}:{lines[bad[0]]}: difficulty {test_values[bad[0]]:g} has "
                         "no mass under the given test mixture; the file contradicts it")
  return ShiftPlan(feature, rule, test_path, test_values, mixture, source, support)


def _train_rows(train_path: str) -> list[dict[str, Any]]:
  from pacbayes.data.jsonl import read_jsonl

  return read_jsonl(train_path)


def check_one_pool(train_path: str, test_path: str, tv_upper: float, *, delta: float,
                   seed: int) -> dict[str, Any]:
  """The one-pool cross-check of the module docstring, on hashed n-gram features.

  Args:
    train_path, test_path: the JSONL files.
    tv_upper: the certified upper value of TV over difficulty, at confidence delta / 2.
    delta: confidence of the check (delta / 2 for the classifier's lower bound).
    seed: the classifier's seed.

  Returns:
    A JSON-ready dict: `feature`, `tv_lower` (None when the check could not run), `tv_upper`,
    `delta`, `refuted` (bool), `reason` (one sentence).
  """
  from pacbayes import shift
  from pacbayes.shift import features

  out: dict[str, Any] = {"feature": "ngram", "tv_upper": float(tv_upper), "delta": delta,
                         "tv_lower": None, "refuted": False}
  rows_tr, lines_tr = features.read_rows(train_path)
  rows_te, lines_te = features.read_rows(test_path)
  try:
    x_tr = features.hashed_ngrams(rows_tr, source=train_path, lines=lines_tr)
    x_te = features.hashed_ngrams(rows_te, source=test_path, lines=lines_te)
    res = shift.tv_classifier(x_tr, x_te, delta / 2, seed)
  except ValueError as e:
    out["reason"] = f"not checked: the n-gram classifier could not run ({e})"
    return out
  out["tv_lower"] = float(res.lower)
  out["tv_estimate"] = float(res.estimate)
  if res.lower > tv_upper:
    out["refuted"] = True
    out["reason"] = (
        f"the n-gram classifier's lower bound on TV(D_test, D_train), {res.lower:.4f}, exceeds "
        f"the certified TV over difficulty, {tv_upper:.4f}: train and test do not come from "
        "one pool, so the difficulty/mixture-shift terms are not certificates")
  else:
    out["reason"] = (f"consistent: n-gram lower bound on TV {res.lower:.4f} <= certified TV "
                     f"over difficulty {tv_upper:.4f}")
  return out


@dataclasses.dataclass(frozen=True)
class ShiftMeasure:
  """What the certificate needs from the shift side.

  Attributes:
    mixture: `pacbayes.bounds.mixture.MixtureBounds` (difficulty feature), else None.
    tv: the TV term's value (certified upper value over difficulty, or a classifier
      estimate), or None without a test side.
    tv_kind: the kind word of `tv` (`pacbayes.bounds.extrapolation.KIND_TV` or `KIND_ESTIMATE`).
    tv_delta: the confidence `tv` spent (its share of the certificate's delta).
    check: the one-pool cross-check (`check_one_pool`), or None when it did not apply.
    refuted: True when the check refuted the one-pool assumption.
    info: JSON-ready details for the report.
  """

  mixture: Any
  tv: float | None
  tv_kind: str
  tv_delta: float
  check: dict[str, Any] | None
  refuted: bool
  info: dict[str, Any]


def measure_shift(plan: ShiftPlan, train_path: str, train_difficulty: np.ndarray | None, *,
                  delta_tv: float, delta_mixture: float, delta: float, seed: int,
                  model_dir: str | None = None, max_length: int | None = None
                  ) -> ShiftMeasure:
  """Computes the shift inputs of the certificate for a `ShiftPlan`.

  Args:
    plan: from `plan_shift`.
    train_path: the training JSONL.
    train_difficulty: [n] float64 difficulties of S (difficulty feature).
    delta_tv: the certificate's share for the TV term (or the classifier estimate).
    delta_mixture: the share for the mixture confidence values (sampled sides).
    delta: the user's total delta (the confidence of the cross-check).
    seed: seed for the classifiers.
    model_dir: checkpoint for the embedding feature.
    max_length: truncation for the embedding feature.

  Returns:
    A `ShiftMeasure`.
  """
  from pacbayes import shift
  from pacbayes.bounds import extrapolation as ex
  from pacbayes.bounds import mixture as mixtures

  info: dict[str, Any] = {"feature": plan.feature, "rule": plan.rule}
  if plan.feature is None:
    return ShiftMeasure(None, None, ex.KIND_NONE, 0.0, None, False, info)
  if plan.test_path is not None:
    info["test"] = plan.test_path
  if plan.feature != "difficulty":
    extra = {}
    if plan.feature == "embedding":
      extra = {"model_dir": model_dir, "features": shift.FeatureOptions(max_length=max_length)}
    report = shift.shift_report(train_path, plan.test_path, feature=plan.feature,
                                delta=delta_tv, seed=seed, **extra)
    tv = min(1.0, max(0.0, float(report["g_ext"])))
    info.update(tv=report["tv"], assumption=report["assumption"], delta_tv=delta_tv)
    return ShiftMeasure(None, tv, ex.KIND_ESTIMATE, delta_tv, None, False, info)

  support = list(plan.support) if plan.support is not None else None
  # Mixture confidence values need a support fixed in advance (values never seen still get
  # an upper value); without one only the TV kind is available.
  mix = None if support is None else mixtures.mixture_bounds(
      test_mixture=plan.mixture, test_difficulty=None if plan.mixture else plan.test_difficulty,
      train_difficulty=train_difficulty, support=support, delta=delta_mixture)
  res = shift.tv_discrete(
      train_difficulty.tolist(), None if plan.mixture else plan.test_difficulty.tolist(),
      delta_tv, test_probs=plan.mixture, support=support)
  info.update(
      mixture_source=plan.mixture_source or f"estimated from the test rows of {plan.test_path}",
      support=(list(plan.support) if plan.support is not None else
               "chosen from the data: the values seen, plus one cell for the rest"),
      tv={"estimate": res.estimate, "upper": res.upper, "lower": res.lower,
          "delta": delta_tv, "histogram": res.histogram()},
      assumption=("train and test come from one pool and differ only in the mixture over "
                  "difficulty"))
  check = None
  if plan.test_path is not None:
    # The check needs U at delta/2 on its own event (the certificate's U uses delta_tv).
    check_u = shift.tv_discrete(
        train_difficulty.tolist(), None if plan.mixture else plan.test_difficulty.tolist(),
        delta / 2, test_probs=plan.mixture, support=support).upper
    check = check_one_pool(train_path, plan.test_path, check_u, delta=delta, seed=seed)
  else:
    check = {"refuted": False, "tv_lower": None,
             "reason": "not checked: no test rows (the test mixture is given exactly)"}
  refuted = bool(check["refuted"])
  return ShiftMeasure(mix, float(res.upper), ex.KIND_TV, delta_tv, check, refuted, info)



@dataclasses.dataclass(frozen=True)
class ShiftTerms:
  """The shift inputs of the certificate route, and what the report says about them.

  Attributes:
    inputs: `pacbayes.certificate.core.ShiftInputs` (g_ext and its kind, the mixtures, the
      difficulty of S for the slot kinds).
    deltas: the `pacbayes.bounds.delta.DeltaPlan` (summing to delta; it decides the kinds).
    notes: lines for the report.
    info: JSON-ready details (feature, rule, TV, mixture source).
    check: the one-pool cross-check, or None.
  """

  inputs: Any
  deltas: Any
  notes: tuple[str, ...]
  info: dict[str, Any]
  check: dict[str, Any] | None

  @property
  def g_ext(self) -> float:
    return self.inputs.g_ext

  @property
  def g_ext_kind(self) -> str:
    return self.inputs.g_ext_kind


def exact_train_mixture(config: Any, support: Any, train_difficulty: Any) -> dict[float, float]:
  """The exact training mixture `config.train_mixture` (a file or a mapping), checked.

  One reader for the PAC-Bayes side (`shift_terms`) and the held-out certificate
  (`pacbayes.pipeline.holdout`).

  Raises:
    ValueError: a bad mixture, or a difficulty of the training file (`train_difficulty`, [n])
      with no mass under it, naming the file.
  """
  from pacbayes.bounds import mixture as mixtures

  source = config.train_mixture
  train = (mixtures.load_mixture(os.fspath(source), support=support)
           if isinstance(source, (str, os.PathLike))
           else mixtures.check_mixture(source, name="train_mixture"))
  off = sorted({float(v) for v in train_difficulty} - {d for d, p in train.items() if p > 0})
  if off:
    raise ValueError(f"{config.train}: difficulty {off[0]:g} has no mass under the given "
                     "training mixture (train_mixture)")
  return train


def _exact_train(config: Any, plan: ShiftPlan, train_difficulty: np.ndarray | None):
  """(MixtureBounds, support) when the training mixture is given exactly, else (None, None)."""
  from pacbayes.bounds import mixture as mixtures

  if config.train_mixture is None:
    return None, None
  if plan.feature != "difficulty" or plan.mixture is None:
    raise ValueError("train_mixture: needs the difficulty feature and an exact test mixture")
  train = exact_train_mixture(config, plan.support, train_difficulty)
  mix = mixtures.mixture_bounds(test_mixture=plan.mixture, train_mixture=train,
                                support=plan.support)
  return mix, tuple(mix.support)


def shift_terms(config: Any, train_difficulty: np.ndarray | None, *,
                say=lambda text: None) -> ShiftTerms:
  """Plans, measures and checks the extrapolation side of `pacbayes bound`.

  Kinds: with the difficulty feature, the TV kind always; the mixture-shift and per-slice
  kinds when the support is fixed in advance (`difficulty_support`, or the keys of an exact
  test mixture when they cover every training value). With an exact training mixture
  (`train_mixture`, with an exact test mixture) the TV is exact and spends nothing, the
  mixtures spend nothing, and the weighted-loss kind is added: the setting of the study's
  cells. The delta plan is fixed from the arguments alone (`DeltaPlan.for_kinds`). When the
  one-pool check refutes the assumption, the certified kinds are withdrawn: g_ext is the
  n-gram classifier's estimate (kind "estimate"), and the shares of the withdrawn kinds stay
  unspent (booked under "tv").

  Args:
    config: a `pacbayes.pipeline.config.BoundConfig` (train, test, shift_feature,
      test_mixture, train_mixture, difficulty_support, delta, seed, prior, max_length).
    train_difficulty: [n] float64 difficulties of S, or None.
    say: one progress line.

  Raises:
    ValueError: see `plan_shift` and `measure_shift`.
  """
  from pacbayes.bounds import extrapolation as ex
  from pacbayes.bounds.delta import DeltaPlan
  from pacbayes.certificate.core import ShiftInputs

  c = config
  plan = plan_shift(c.train, c.test, train_difficulty=train_difficulty,
                    shift_feature=c.shift_feature, test_mixture=c.test_mixture,
                    difficulty_support=c.difficulty_support)
  exact, exact_support = _exact_train(c, plan, train_difficulty)
  if exact is not None:
    deltas = DeltaPlan.for_kinds(c.delta, weighted=True, per_slice=True)
    info = {"feature": plan.feature, "rule": plan.rule, "support": list(exact_support),
            "mixture_source": plan.mixture_source + "; training mixture given exactly",
            "tv": {"exact": exact.tv}}
    check = None
    if plan.test_path is not None:
      check = check_one_pool(c.train, plan.test_path, float(exact.tv), delta=c.delta,
                             seed=c.seed)
    inputs = ShiftInputs(g_ext=float(exact.tv), g_ext_kind=ex.KIND_TV, mixture=exact,
                         difficulty=train_difficulty)
    if check is not None and check["refuted"]:
      raise ValueError(f"train_mixture: refuted: {check['reason']}")
    return ShiftTerms(inputs, deltas, (), info, check)
  support = plan.support
  if plan.feature == "difficulty" and support is None and plan.mixture:
    keys = {float(d) for d in plan.mixture}
    if {float(v) for v in train_difficulty} <= keys:
      support = tuple(sorted(keys))
  use_mixture = plan.feature == "difficulty" and support is not None
  deltas = DeltaPlan.for_kinds(c.delta, tv=plan.feature is not None, mixture=use_mixture,
                               per_slice=use_mixture)
  notes = []
  if plan.feature == "difficulty" and not use_mixture:
    notes.append("mixture-shift and per-slice kinds not computed: they need the difficulty "
                 "support fixed in advance (--difficulty-support); only the TV kind is used")
  if plan.feature == "difficulty":
    notes.append("weighted-loss kind not computed: it needs the training mixture known "
                 "exactly (--train-mixture), and bound estimates it from S")
  say(f"extrapolation: {plan.rule} ...")
  measure = measure_shift(
      dataclasses.replace(plan, support=support), c.train, train_difficulty,
      delta_tv=deltas.get("tv"), delta_mixture=deltas.get("mixture"), delta=c.delta,
      seed=c.seed, model_dir=c.prior, max_length=c.max_length)
  g_ext, kind, mixture, difficulty = 0.0, ex.KIND_NONE, None, None
  if measure.tv is not None:
    g_ext, kind = measure.tv, measure.tv_kind
  if use_mixture and not measure.refuted:
    mixture, difficulty = measure.mixture, train_difficulty
  if measure.refuted:
    g_ext, kind = float(measure.check["tv_estimate"]), ex.KIND_ESTIMATE
    notes.append(f"REFUTED: {measure.check['reason']}; g_ext is the n-gram classifier's "
                 "estimate of TV, and the total is an estimate, not a guarantee")
    if use_mixture:
      deltas = deltas.merged(("mixture", "slice_mc", "slice_pb"), into="tv")
  inputs = ShiftInputs(g_ext=g_ext, g_ext_kind=kind, mixture=mixture, difficulty=difficulty)
  return ShiftTerms(inputs, deltas, tuple(notes), measure.info, measure.check)
