"""The certificate of one fine-tuned cell: sequence error, prior at the base, every shift kind.

Q = N(w_ft, sigma_q^2 I) and P = N(w_base, sigma_p^2 I) over every weight (full-parameter
fine-tuning); sigma_p comes from the config's grid fixed in advance (ln k paid) and sigma_q is
free (`pacbayes.posterior.perturb.choose_sigma`, on a random subset of S with its own key, so the final
Monte-Carlo estimate on all of S is independent of the choice). The loss is the sequence error
(DESIGN.md §1, "Tighter, still honest"): a bound on it bounds the greedy answer error.

`pacbayes.certificate.shift.certify_with_shift` then assembles B_train (in-bucket), the TV term and
the mixture-shift, weighted-loss and per-slice kinds from the mixtures known by design (no
delta spent on them) and reports the tightest certified one; every part's delta is listed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from pacbayes.posterior import perturb
from pacbayes.posterior.kl import isotropic_kl

# The parts of delta a study certificate spends (mixtures are known exactly: no "tv" share).
DELTA_PARTS = ("mc", "pb", "weighted_mc", "weighted_pb", "slice_mc", "slice_pb")


def certify_cell(loss_fn: Callable, prior: Any, posterior: Any, data: Mapping[str, np.ndarray],
                 difficulty: np.ndarray, *, train_mixture: Mapping[int, float],
                 test_mixture: Mapping[int, float], key: jax.Array, delta: float,
                 sigma_grid, chunk_size: int, subset_size: int,
                 batch_size: int) -> dict[str, Any]:
  """Certificate of one cell as a JSON-ready dict (`Certificate.to_dict()` plus the choice).

  Args:
    loss_fn: sequence error `loss(params, batch) -> [B]` in the weight space.
    prior: the base's weights (prior mean); posterior: the fine-tuned weights.
    data: the training set S ([n, L] arrays); difficulty: [n] op count of each row.
    train_mixture, test_mixture: op count -> probability, known by design.
    key: PRNG key (split into the sigma-choice and the certificate keys).
    delta: total failure probability, split equally over `DELTA_PARTS`.
    sigma_grid: prior scales fixed in advance.
    chunk_size: rows per posterior draw (one-pass chunk scheme).
    subset_size: rows of S used to choose sigma_q.
    batch_size: rows per forward pass.

  Returns:
    The certificate dict with "sigma_choice" ({sigma_q, sigma_p, how, subset bound}) and
    "sq_distance".
  """
  from pacbayes.bounds.extrapolation import mixture_bounds, split_delta
  from pacbayes.certificate.shift import certify_with_shift

  n = int(np.shape(data["input_ids"])[0])
  shares = split_delta(delta, DELTA_PARTS)
  sq = perturb.sq_distance(posterior, prior)
  d = perturb.count_perturbed(posterior)
  k_choose, k_mc = jax.random.split(key)
  num_mc = math.ceil(n / chunk_size)
  choice = perturb.choose_sigma(
    loss_fn, posterior, data, key=k_choose, sigma_grid=tuple(sigma_grid), sq_distance=sq,
    num_params=d, num_mc=num_mc, n=n, delta_mc=shares["mc"], delta_pb=shares["pb"],
    subset_size=min(subset_size, n), batch_size=batch_size)
  mc = perturb.mc_risk(loss_fn, posterior, data, key=k_mc, sigma=choice.sigma_q,
                       scheme="chunk", chunk_size=chunk_size, batch_size=batch_size)
  kl = float(isotropic_kl(sq, d, choice.sigma_q, choice.sigma_p))
  mix = mixture_bounds(test_mixture={float(k): p for k, p in test_mixture.items()},
                       train_mixture={float(k): p for k, p in train_mixture.items()})
  cert = certify_with_shift(
    mc.mean, mc.num_samples, kl, n, slot_losses=mc.slot_losses, slot_rows=mc.slot_rows,
    difficulty=np.asarray(difficulty, dtype=np.float64), mixture=mix, delta=delta,
    grid_size=len(sigma_grid), sigma_q=choice.sigma_q, sigma_p=choice.sigma_p, num_params=d,
    loss="sequence_error")
  out = cert.to_dict()
  out["sigma_choice"] = {"sigma_q": choice.sigma_q, "sigma_p": choice.sigma_p,
                         "how": choice.how, "subset_bound": choice.bound,
                         "grid_position": choice.grid_position}
  out["sq_distance"] = sq
  return out
