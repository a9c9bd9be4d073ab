"""The certificate of one fine-tuned cell: the one certificate route with the study's settings.

Q = N(w_ft, sigma_q^2 I) and P = N(w_base, sigma_p^2 I) over every weight (full-parameter
fine-tuning); the loss is the sequence error (docs/THEORY.md §3.3: a bound on it bounds the
greedy answer error). Both mixtures are known by design, so the TV is exact and the
mixtures spend no delta; the delta plan pays for the weighted-loss and per-slice kinds
beside B_train. Everything else (the sigma rule, the certifiability check, the kinds) is
`pacbayes.certificate.route.certify_posterior`, the route `pacbayes bound` takes too: the
same inputs give the same certificate (`pacbayes bound --train-mixture --test-mixture`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from pacbayes.bounds import extrapolation as ext
from pacbayes.bounds import mixture as mixtures
from pacbayes.bounds.delta import DeltaPlan
from pacbayes.certificate.core import ShiftInputs
from pacbayes.certificate.route import CertifyPlan, certify_posterior
from pacbayes.posterior.montecarlo import MonteCarloOptions
from pacbayes.posterior.sigma import SearchOptions, SigmaPlan

__all__ = ["certify_cell", "cell_plan"]


def cell_plan(difficulty: np.ndarray, *, train_mixture: Mapping[int, float],
              test_mixture: Mapping[int, float], delta: float, sigma_grid,
              chunk_size: int, subset_size: int, batch_size: int) -> CertifyPlan:
  """The `CertifyPlan` of a study cell (the sequence error; both mixtures known by design).

  Args:
    difficulty: [n] op count of each row of S.
    train_mixture, test_mixture: op count -> probability, known by design.
    delta: total failure probability, split equally over the parts the kinds spend.
    sigma_grid: prior scales fixed in advance.
    chunk_size: rows per posterior draw (one-pass chunk scheme).
    subset_size: rows of S used to choose sigma_q.
    batch_size: rows per forward pass.
  """
  mix = mixtures.mixture_bounds(test_mixture={float(k): p for k, p in test_mixture.items()},
                           train_mixture={float(k): p for k, p in train_mixture.items()})
  return CertifyPlan(
      sigma=SigmaPlan(None, tuple(float(s) for s in sigma_grid), "sigma_grid"),
      deltas=DeltaPlan.for_kinds(delta, weighted=True, per_slice=True),
      mc=MonteCarloOptions(scheme="chunk", chunk_size=chunk_size, batch_size=batch_size),
      shift=ShiftInputs(g_ext=float(mix.tv), g_ext_kind=ext.KIND_TV, mixture=mix,
                        difficulty=np.asarray(difficulty, dtype=np.float64)),
      search=SearchOptions(subset_size=subset_size), loss_name="sequence_error")


def certify_cell(loss_fn: Callable, prior: Any, posterior: Any, data: Mapping[str, np.ndarray],
                 plan: CertifyPlan, *, key: jax.Array) -> dict[str, Any]:
  """Certificate of one cell as a JSON-ready dict (`Certificate.to_dict()` plus the choice).

  Args:
    loss_fn: sequence error `loss(params, batch) -> [B]` in the weight space.
    prior: the base's weights (prior mean); posterior: the fine-tuned weights.
    data: the training set S ([n, L] arrays).
    plan: the cell's `CertifyPlan` (`cell_plan`).
    key: PRNG key (split into the sigma-choice and the certificate keys).

  Returns:
    The certificate dict with "sigma_choice" ({sigma_q, sigma_p, how, subset_bound,
    grid_position}; subset_bound is the search's bound, or the best possible bound when the
    grid was futile and the search was skipped) and "sq_distance".
  """
  cert = certify_posterior(loss_fn, prior, posterior, data, plan, key=key)
  out = cert.to_dict()
  search = cert.extra.get("sigma_search", {})
  subset_bound = search.get("search_bound", cert.best_possible_bound)
  out["sigma_choice"] = {"sigma_q": cert.sigma_q, "sigma_p": cert.sigma_p,
                         "how": search.get("how", ""), "subset_bound": subset_bound,
                         "grid_position": cert.extra["grid_position"]}
  out["sq_distance"] = cert.extra["sq_distance"]
  return out
