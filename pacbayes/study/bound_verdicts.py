"""Verdicts on the certificates: the bound is at least the measured posterior risk.

Two sources: the cells of a `StudyView` that carry a certificate (schema ``pacbayes.lab/2``,
where every cell was certified, or a simulated view), and the certified arm of a schema-3
results file (``results["certified"]``: per (bucket, n, seed) every step budget's certificate
and its measured E_Q[R_test]; the main cells of schema 3 carry no certificate). A certificate
>= 1 holds for any loss in [0, 1] by construction, so it is counted as vacuous and not judged;
with no non-vacuous certificate the claim is not judged at all. Secondary claim (no Holm).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import stats as sps

from pacbayes.bounds.checks import VACUOUS_TOL
from pacbayes.study.verdict import ALPHA, FAIL, INCONCLUSIVE, PASS, Verdict, not_judged
from pacbayes.study.view import StudyView

CLAIM = "bound >= measured E_Q[R_test] (sequence error) in every non-vacuous cell"


def claim_bound_holds(view: StudyView, alpha: float = ALPHA) -> Verdict:
  """Certificate >= measured E_Q[R_test] in every non-vacuous cell and seed of a view
  (Bonferroni over them; the measured risk's interval is the normal one over test items)."""
  r = view.scalars["bound"].shape[0]
  bound = view.scalars["bound"]
  m_all = int(np.isfinite(bound[0]).sum())
  if m_all == 0:
    return not_judged(r, CLAIM, "no cell of this view carries a certificate")
  counts = np.bincount(view.slice_of, minlength=len(view.ops))
  w_i = view.p_test[view.slice_of] / counts[view.slice_of]
  x = view.items["q_seq_error"]
  mean = np.einsum("rcsn,n->rcs", x, w_i)  # NaN for a seed a cell does not have
  sq = np.zeros_like(mean)
  for k in range(len(view.ops)):
    xk = x[..., view.slice_of == k]
    sq += view.p_test[k] ** 2 * xk.var(axis=-1) / counts[k]
  with np.errstate(invalid="ignore"):
    judged = (bound < 1.0 - VACUOUS_TOL) & np.isfinite(mean)
  m = judged.sum(axis=(1, 2))  # [R] cells judged per replicate
  z = sps.norm.ppf(1 - alpha / (2 * np.maximum(m, 1)))[:, None, None]
  lo, hi = mean - z * np.sqrt(sq), mean + z * np.sqrt(sq)
  with np.errstate(invalid="ignore"):
    nonvac = int(np.sum(bound[0] < 1.0 - VACUOUS_TOL))
    nonvac_in = int(np.sum(view.scalars["b_train"][0] < 1.0 - VACUOUS_TOL))
  note = (f"non-vacuous: {nonvac_in}/{m_all} in-bucket (B_train < 1), {nonvac}/{m_all} test "
          f"mixture (bound < 1); only those are judged (a bound >= 1 holds by construction); "
          f"estimate = smallest slack bound - risk")
  with np.errstate(invalid="ignore"):
    slack = np.where(judged, bound - mean, np.inf).reshape(r, -1)
    holds = np.all((bound >= hi) | ~judged, axis=(1, 2))
    fails = np.any((bound < lo) & judged, axis=(1, 2))
  worst = np.argmin(slack, axis=1)
  take = lambda a: a.reshape(r, -1)[np.arange(r), worst]  # noqa: E731
  out = np.where(m == 0, INCONCLUSIVE, np.where(fails, FAIL, np.where(holds, PASS, INCONCLUSIVE)))
  nan = np.full(r, np.nan)
  bw = take(bound)
  est = np.where(m > 0, take(bound - mean), nan)
  test = (f"slack vs {100 * (1 - alpha):.0f}% Bonferroni interval of the measured risk over the "
          f"non-vacuous cell-seeds")
  return Verdict(CLAIM, out, est, np.where(m > 0, bw - take(hi), nan),
                 np.where(m > 0, bw - take(lo), nan), test, note)


def claim_certified_bound(results: Mapping[str, Any], alpha: float = ALPHA) -> Verdict:
  """The bound claim on the certified arm of a schema-3 results dict (every step budget).

  The measured E_Q[R_test] of a budget is a mixture-weighted mean of per-item sequence errors
  in [0, 1]; its variance is at most sum_k p_k^2 / (4 n_k) (Popoviciu: a [0, 1] value has
  variance <= 1/4), so the interval is conservative whatever the risk (an estimated variance
  r_k (1 - r_k) would be 0 on a slice measured at 0 or 1, which a few items often are).
  """
  claim = CLAIM.replace("cell", "certified-arm cell")
  entries = [(c, b) for c in results.get("certified", []) for b in c.get("budgets", [])]
  if not entries:
    return not_judged(1, claim, "no certified arm in the results")
  ops = [str(k) for k in results["test_items"]["ops"]]
  counts = dict(zip(ops, results["test_items"]["counts"], strict=True))
  p_test = {str(k): float(p) for k, p in results["test_mixture"].items()}
  rows = []  # (label, bound, b_train, risk, sd)
  for c, b in entries:
    risk = b.get("q_test_risk")
    sd = float(np.sqrt(sum(p ** 2 / (4 * counts[k]) for k, p in p_test.items())))
    rows.append((f"{c['bucket']} n={c['n']} s{c['seed']} t{b['steps']}", float(b["bound"]),
                 float(b["b_train"]), np.nan if risk is None else float(risk), sd))
  bound = np.array([x[1] for x in rows])
  risk = np.array([x[3] for x in rows])
  sd = np.array([x[4] for x in rows])
  judged = (bound < 1.0 - VACUOUS_TOL) & np.isfinite(risk) & np.isfinite(sd)
  in_bucket = int(np.sum(np.array([x[2] for x in rows]) < 1.0 - VACUOUS_TOL))
  note = (f"non-vacuous: {in_bucket}/{len(rows)} in-bucket (B_train < 1), "
          f"{int(np.sum(bound < 1.0 - VACUOUS_TOL))}/{len(rows)} test mixture "
          f"(bound < 1) over every budget of the certified arm; only those are judged; "
          f"estimate = smallest slack bound - risk")
  m = int(judged.sum())
  if m == 0:
    return not_judged(1, claim, "every certificate of the certified arm is vacuous; " + note)
  z = float(sps.norm.ppf(1 - alpha / (2 * m)))
  slack = np.where(judged, bound - risk, np.inf)
  j = int(np.argmin(slack))
  holds = bool(np.all((bound >= risk + z * sd) | ~judged))
  fails = bool(np.any((bound < risk - z * sd) & judged))
  out = FAIL if fails else PASS if holds else INCONCLUSIVE
  test = (f"slack vs {100 * (1 - alpha):.0f}% Bonferroni interval of the measured risk over "
          f"{m} non-vacuous budgets (variance <= 1/4 per item); tightest: {rows[j][0]}")
  one = lambda v: np.array([v])  # noqa: E731
  return Verdict(claim, one(out), one(slack[j]), one(slack[j] - z * sd[j]),
                 one(slack[j] + z * sd[j]), test, note)
