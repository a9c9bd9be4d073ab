"""Verdicts on the paper's claims as statistical tests: PASS, FAIL or INCONCLUSIVE.

Each claim is one or more linear contrasts of per-cell quantities (`pacbayes.study.stats.contrast`),
paired over the same test items and combined with the seed effect (the between-seed variance in
excess of the item flips). A claim of the form "theta > 0" PASSes when the whole 95% interval
lies above 0 (a one-sided test at level 2.5%), FAILs when it lies wholly below, and is
INCONCLUSIVE otherwise. A claim made of several contrasts that must all hold (the inverted U)
PASSes only if each does (an intersection-union test: its p is the largest of theirs) and FAILs
if any one is significantly reversed (Bonferroni over them); the line shows the binding
contrast and its degrees of freedom. The primary claims (1: best difficulty moves harder with
n; 2: the inverted U; 3: the G_gen and G_ext lines; the stronger base; DFT) are one family:
their decisions are Holm's step-down at 5% (two-sided p; Holm 1979) over the family's lines of
one arm, and each of their lines gives its raw p and the Holm-adjusted one. Saturation and the
bound are secondary (no correction). Every claim also works on simulated studies with R
replicates (tests/study/test_stats.py, pacbayes/study/power.py).

Which buckets: "hard - easy" below is `claim_pair`: the buckets named "hard" and "easy" when the
arm has them (the paper's two ends; the full preset's "easiest" bucket exists so that claim 2
has an interior, and comparing it instead would change claim 1 between presets), else the
arm's last and first; each such contrast uses the sizes where both buckets have cells
(`pair_sizes`). The inverted U compares the middle bucket with the first and last (with
easiest/easy/medium/hard: medium against easiest and hard). Cells may have unequal seeds (NaN
padding) and no certificate (NaN bound: the bound claim then reads the certified arm).

Claims (arXiv 2605.12906, Section 5 and Proposition 4.1; quantities and their losses), with what
makes each FAIL:
  inverted U at fixed n         accuracy: middle - first > 0 and middle - last > 0; FAIL:
                                either significantly < 0
  best moves harder with n      accuracy: slope of (hard - easy) on ln n > 0; FAIL: slope < 0
  saturation                    accuracy in buckets with headroom grows log-linearly in n: slope
                                on ln n > 0 and no lack of fit toward faster-than-log growth;
                                FAIL: slope < 0, or the curvature in ln n significantly > 0
                                (an exactly logarithmic curve PASSes)
  G_gen rises with difficulty   ln ||w - w_base||^2 (ln KL at one fixed sigma, up to a constant)
                                and the measured in-bucket gap R_bucket - R_S (sequence error):
                                hard - easy > 0; FAIL: < 0
  G_gen falls with n            the paper's term is sqrt(KL / n): slope of ln KL on ln n < 1
                                (FAIL: > 1, KL grows faster than n); the measured gap: slope on
                                ln n < 0 (FAIL: > 0); each bucket's slope over its own sizes
  G_ext falls with difficulty   measured gap R_test - R_bucket (sequence error), hard - easy,
                                minus the base's own contrast < 0; FAIL: > 0. Judged on the
                                primary (uniform) test mixture and, where the results have it,
                                on the hard-tilted one, where TV(bucket, test) differs between
                                the buckets. Where the two TVs are equal (a uniform test over
                                symmetric tilts) the paper predicts no difference: the line
                                prints its numbers, is not judged and is not in Holm's family.
                                The mixture terms (TV, w_max, m_out) are printed, not judged
  bound holds                   certificate >= measured E_Q[R_test] in every non-vacuous cell
                                and seed, or every budget of the certified arm (Bonferroni),
                                with non-vacuous counts (`pacbayes.study.bound_verdicts`)
  stronger base                 (strong: hard - easy) - (base: hard - easy) > 0
  DFT vs SFT                    on the hardest bucket: DFT - SFT at the smallest n > 0, at the
                                largest n < 0, and their difference (interaction) > 0
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pacbayes.study.bound_verdicts import claim_bound_holds, claim_certified_bound
from pacbayes.study.distance_verdicts import ln_distance_line
from pacbayes.study.stats import (
  Contrast,
  ItemStats,
  bootstrap_argmax,
  contrast,
  item_stats,
  lack_of_fit_weights,
  slope_weights,
)
from pacbayes.study.verdict import (
  ALPHA,
  FAIL,
  INCONCLUSIVE,
  PASS,
  Verdict,
  all_of,
  decide,
  not_judged,
  single,
)
from pacbayes.study.view import StudyView, study_view

__all__ = ["ALPHA", "FAIL", "INCONCLUSIVE", "PASS", "PRIMARY", "Verdict", "claim_pair",
           "claim_bound_holds", "claim_certified_bound", "family_of", "holm", "judge",
           "judge_all", "judge_view", "pair_sizes"]

# Families of primary claims (Holm across all their lines); other verdicts are secondary.
PRIMARY = {"claim 1": ("best difficulty",), "claim 2": ("inverted U",),
           "claim 3": ("G_gen", "G_ext"), "stronger base": ("stronger base",), "DFT": ("DFT",)}
# The buckets claim 1 (and every hard-vs-easy contrast) compares when the arm has them: the
# paper's easy and hard ends. The easier bucket ("easiest") exists to give claim 2 an interior;
# comparing it instead would change the claim between presets (quick has easy and hard only).
CLAIM_PAIR = ("hard", "easy")


def _not_judged(view: StudyView, claim: str, why: str) -> Verdict:
  return not_judged(view.replicates, claim, why)


def _item_contrast(view: StudyView, terms: Sequence[tuple[tuple, float, np.ndarray]],
                   field: str, scalar: str | None = None, scalar_sign: float = 1.0,
                   alpha: float = ALPHA) -> Contrast:
  """sum over terms (key, a, weights_K) of a * [sum_k w_k mean_k items[field] + sign*scalar]."""
  idx = [view.index(k) for k, _, _ in terms]
  a = np.array([t[1] for t in terms])
  W = np.stack([t[2] for t in terms])
  B = None if scalar is None else scalar_sign * view.scalars[scalar][:, idx]
  st = _item_stats(view, field).take(idx)
  return contrast(a, W=W, slice_of=view.slice_of, B=B, alpha=alpha, stats=st)


# Per-cell item summaries of the views being judged, (id of the items array, field) -> (the
# array, its ItemStats): each claim reuses them instead of re-reading [R, C, S, N] values.
_STATS_CACHE: dict[tuple[int, str], tuple[np.ndarray, ItemStats]] = {}


def _item_stats(view: StudyView, field: str) -> ItemStats:
  arr = view.items[field]
  key = (id(arr), field)
  hit = _STATS_CACHE.get(key)
  if hit is not None and hit[0] is arr:
    return hit[1]
  if len(_STATS_CACHE) >= 4:
    _STATS_CACHE.clear()
  st = item_stats(arr, view.slice_of)
  _STATS_CACHE[key] = (arr, st)
  return st


def claim_pair(view: StudyView) -> tuple[str, str]:
  """(hard, easy): the two buckets claim 1 and the other hard-vs-easy contrasts compare.

  `CLAIM_PAIR` ("hard", "easy") when the arm has both, else its last and first buckets (e.g.
  the disjoint arm's or a simulated design's own names).
  """
  h, e = CLAIM_PAIR
  if h in view.buckets and e in view.buckets:
    return h, e
  return view.buckets[-1], view.buckets[0]


def pair_sizes(view: StudyView, buckets: Sequence[str], base: str = "base",
               method: str = "sft") -> list[int]:
  """Sizes n at which every one of `buckets` has a (base, method) cell, ascending (other
  buckets may be missing there, e.g. an easier bucket run at small n only)."""
  return [n for n in view.sizes(base, method)
          if all((base, method, b, n) in view.keys for b in buckets)]


# --------------------------------------------------------------------------------- accuracy


def claim_inverted_u(view: StudyView, n: int) -> Verdict:
  """Inverted U at fixed n: medium beats both easy and hard (intersection-union test)."""
  claim = f"inverted U at n={n} (medium > easy and medium > hard)"
  e, h = view.buckets[0], view.buckets[-1]
  mids = view.buckets[1:-1]
  if not mids or n not in pair_sizes(view, (e, mids[len(mids) // 2], h)):
    return _not_judged(view, claim, "needs base/sft cells for >= 3 buckets at this n")
  mid = mids[len(mids) // 2]
  claim = f"inverted U at n={n} ({mid} > {e} and {mid} > {h})"
  p = view.p_test
  up = _item_contrast(view, [(("base", "sft", mid, n), 1.0, p), (("base", "sft", e, n), -1.0, p)],
                      "correct")
  down = _item_contrast(view, [(("base", "sft", mid, n), 1.0, p),
                               (("base", "sft", h, n), -1.0, p)], "correct")
  note = (f"{mid}-{e} {up.estimate[0]:+.4f} [{up.lo[0]:+.4f}, {up.hi[0]:+.4f}], "
          f"{mid}-{h} {down.estimate[0]:+.4f} [{down.lo[0]:+.4f}, {down.hi[0]:+.4f}]")
  return all_of(claim, [up, down], note, "IUT of 2 one-sided contrasts")

def argmax_note(view: StudyView, sizes: Sequence[int], num: int = 1000) -> str:
  """Bootstrap distribution of the best bucket at each n (replicate 0), as text."""
  keys = [("base", "sft", b, n) for n in sizes for b in view.buckets]
  idx = [view.index(k) for k in keys]
  X = view.items["correct"][0, idx]
  W = np.tile(view.p_test, (len(idx), 1))
  nb = len(view.buckets)
  groups = [list(range(j * nb, (j + 1) * nb)) for j in range(len(sizes))]
  freq = bootstrap_argmax(X, W, view.slice_of, groups, num=num, seed=0)
  parts = [f"n={n}: " + "/".join(f"{b[0]}{freq[j, i]:.2f}" for i, b in enumerate(view.buckets))
           for j, n in enumerate(sizes)]
  return "P(best) " + ", ".join(parts)


def claim_best_moves_harder(view: StudyView, *, with_bootstrap: bool = True) -> Verdict:
  """The best difficulty moves harder with n: slope of (acc_hard - acc_easy) on ln n > 0."""
  h, e = claim_pair(view)
  claim = f"best difficulty moves harder with n (slope of acc_{h} - acc_{e} on ln n)"
  sizes = pair_sizes(view, (h, e))
  if len(sizes) < 2:
    return _not_judged(view, claim, f"needs base/sft cells of {e} and {h} at >= 2 sizes")
  c = slope_weights(np.log(sizes))
  terms = []
  for n, cj in zip(sizes, c, strict=True):
    terms += [(("base", "sft", h, n), cj, view.p_test), (("base", "sft", e, n), -cj, view.p_test)]
  ct = _item_contrast(view, terms, "correct")
  full = [n for n in sizes if n in view.complete_sizes()]
  note = f"buckets {h} vs {e} at n in {sizes}"
  if with_bootstrap and view.replicates == 1 and full:
    note += "; " + argmax_note(view, full)
  return single(claim, ct, +1, note)


def claim_saturation(view: StudyView, bucket: str) -> Verdict:
  """In a bucket with headroom, accuracy grows log-linearly in n: slope on ln n > 0, and no
  lack of fit toward faster-than-logarithmic growth (FAIL: slope < 0, or the curvature in
  ln n significantly > 0; an exactly logarithmic curve PASSes)."""
  claim = f"saturation in {bucket} (log-linear in n: slope on ln n > 0, no convex lack of fit)"
  sizes = view.sizes(bucket=bucket)
  if len(sizes) < 3:
    return _not_judged(view, claim, "needs base/sft cells at >= 3 sizes (lack of fit)")
  base_on_bucket = float(view.base_acc["base"] @ view.p_bucket[bucket])
  if base_on_bucket > 1 - view.headroom_min:
    return _not_judged(view, claim, f"no headroom: base accuracy {base_on_bucket:.3f} on the "
                       f"bucket > {1 - view.headroom_min:.2f} (decided before training)")
  p = view.p_test
  ln_n = np.log(sizes)
  cells = [("base", "sft", bucket, n) for n in sizes]
  slope = _item_contrast(view, [(k, c, p) for k, c in zip(cells, slope_weights(ln_n), strict=True)],
                         "correct")
  curve = _item_contrast(view, [(k, c, p) for k, c in
                                zip(cells, lack_of_fit_weights(ln_n), strict=True)], "correct")
  pp = slope.p_value(+1)
  pf = np.minimum(1.0, 2 * np.minimum(slope.p_value(-1), curve.p_value(+1)))
  out = np.where(pf < ALPHA / 2, FAIL, decide(pp, np.ones_like(pf)))  # a rise that is too
  # fast (convex in ln n) FAILs even though the slope is > 0
  show_curve = (out == FAIL) & (curve.p_value(+1) < slope.p_value(-1))
  pick = lambda f: np.where(show_curve, getattr(curve, f), getattr(slope, f))  # noqa: E731
  note = (f"slope per ln n {slope.estimate[0]:+.4f} [{slope.lo[0]:+.4f}, {slope.hi[0]:+.4f}], "
          f"curvature (lack of fit, > 0 convex) {curve.estimate[0]:+.4f} "
          f"[{curve.lo[0]:+.4f}, {curve.hi[0]:+.4f}]; base on bucket {base_on_bucket:.3f}")
  binding = curve if show_curve[0] else slope
  test = ("slope > 0; FAIL on slope < 0 or convexity > 0 (Bonferroni), binding one shown; "
          + binding.test_name())
  return Verdict(claim, out, pick("estimate"), pick("lo"), pick("hi"), test, note, pp, pf,
                 df=pick("df"))


# ------------------------------------------------------------------------------------ gaps


def _gen_gap_terms(view: StudyView, pairs):
  return [(key, a, view.p_bucket[key[2]]) for key, a in pairs]


def claim_g_gen_difficulty(view: StudyView) -> list[Verdict]:
  """G_gen rises with difficulty: hard - easy, averaged over the complete sizes, > 0."""
  h, e = claim_pair(view)
  sizes = pair_sizes(view, (h, e))
  c1 = f"G_gen rises with difficulty: ln ||w - w_base||^2 (KL at one fixed sigma), {h} - {e}"
  c2 = f"G_gen rises with difficulty: measured in-bucket gap R_bucket - R_S, {h} - {e}"
  if not sizes:
    return [_not_judged(view, c, f"needs base/sft cells of {e} and {h}") for c in (c1, c2)]
  pairs = []
  for n in sizes:
    pairs += [(("base", "sft", h, n), 1 / len(sizes)), (("base", "sft", e, n), -1 / len(sizes))]
  gap = _item_contrast(view, _gen_gap_terms(view, pairs), "seq_error", "train_seq_error", -1.0)
  at = f"n in {sizes}"
  return [ln_distance_line(view, c1, pairs, +1, at),
          single(c2, gap, +1, f"loss: sequence error of the weights; {at}")]


def claim_g_gen_size(view: StudyView) -> list[Verdict]:
  """G_gen falls with n. The paper's term is sqrt(KL / n): it falls iff KL grows slower than n,
  i.e. the slope of ln KL on ln n is < 1 (KL = ||w - w_base||^2 / (2 sigma^2) at one sigma fixed
  in advance, so ln KL = ln ||w - w_base||^2 + const); and the measured in-bucket gap falls:
  its slope on ln n < 0. Slopes averaged over the buckets."""
  c1 = ("G_gen falls with n: slope of ln KL (ln ||w - w_base||^2 at a fixed sigma) on ln n "
        "< 1, i.e. KL/n falls")
  c2 = "G_gen falls with n: slope of measured in-bucket gap R_bucket - R_S on ln n"
  buckets = [b for b in view.buckets if len(view.sizes(bucket=b)) >= 2]
  if not buckets:
    return [_not_judged(view, c, "needs base/sft cells at >= 2 sizes") for c in (c1, c2)]
  pairs = []  # each bucket's own slope over its own sizes, averaged over the buckets
  for b in buckets:
    ns = view.sizes(bucket=b)
    pairs += [(("base", "sft", b, n), cj / len(buckets))
              for n, cj in zip(ns, slope_weights(np.log(ns)), strict=True)]
  gap = _item_contrast(view, _gen_gap_terms(view, pairs), "seq_error", "train_seq_error", -1.0)
  return [ln_distance_line(view, c1, pairs, -1, "slopes averaged over the buckets", null=1.0),
          single(c2, gap, -1, "loss: sequence error of the weights")]


def mixture_facts(view: StudyView, buckets: Sequence[str] | None = None) -> str:
  """TV, m_out and w_max of each bucket against the test mixture (design facts)."""
  parts = []
  for b in buckets or view.buckets:
    pb, pt = view.p_bucket[b], view.p_test
    tv = 0.5 * float(np.abs(pb - pt).sum())
    out = float(pt[pb == 0].sum())
    w = float(np.max(pt[pb > 0] / pb[pb > 0])) if out == 0 else math.inf
    parts.append(f"{b}: TV {tv:.3f} m_out {out:.3f} w_max {w:.2f}")
  return "design facts (not judged): " + "; ".join(parts)


def claim_g_ext_difficulty(view: StudyView, test_name: str = "") -> Verdict:
  """G_ext falls with difficulty: measured R_test - R_bucket, hard - easy (averaged) < 0.

  The raw contrast has a part fixed by the design: with slices of unequal difficulty, any model,
  the base included, shows R_test - R_bucket shifted by sum_k (p_easy - p_hard)(k) R(k). When
  the results carry the base's sequence error by slice, that part is removed: the judged
  quantity is the fine-tuned contrast minus the base's (difference in differences: how much
  less a bucket's gains carry over to the test mixture than to the bucket itself). The base's
  value is taken as fixed (one model on the same test items: its item variance is not added).
  """
  h, e = claim_pair(view)
  claim = f"G_ext falls with difficulty: measured gap R_test - R_bucket, {h} - {e}"
  if test_name:
    claim += f", {test_name} test mixture"
  sizes = pair_sizes(view, (h, e))
  if not sizes:
    return _not_judged(view, claim, f"needs base/sft cells of {e} and {h}")
  terms = []
  for n in sizes:
    for b, a in ((h, 1 / len(sizes)), (e, -1 / len(sizes))):
      terms.append((("base", "sft", b, n), a, view.p_test - view.p_bucket[b]))
  ct = _item_contrast(view, terms, "seq_error")
  note = "loss: sequence error; " + mixture_facts(view, (e, h))
  base_err = view.base_seq_error.get("base")
  if base_err is None:
    v = single(claim, ct, -1, note)
  else:
    shift = float(np.dot(view.p_bucket[e] - view.p_bucket[h], base_err))
    claim += ", minus the base's own contrast"
    note = (f"raw contrast {ct.estimate[0]:+.4f} [{ct.lo[0]:+.4f}, {ct.hi[0]:+.4f}], the "
            f"base's {shift:+.4f} (design: the slices' unequal risk); " + note)
    v = single(claim, ct.shifted(shift), -1, note)
    v = dataclasses.replace(v, test=v.test + "; base value fixed")
  tv = [0.5 * float(np.abs(view.p_bucket[b] - view.p_test).sum()) for b in (e, h)]
  if math.isclose(tv[0], tv[1], rel_tol=0.0, abs_tol=1e-9):
    # G_ext = O(TV(D_test, D_train)) predicts no difference at equal TV: such a line cannot
    # fail (or pass) the claim, so it is printed with its numbers and kept out of Holm.
    return _not_judged(view, claim, (
      f"not a test of the claim: TV({e}, test) = TV({h}, test) = {tv[0]:.3f}, where the paper "
      f"predicts no difference; measured {v.estimate[0]:+.4f} [{v.lo[0]:+.4f}, "
      f"{v.hi[0]:+.4f}] (what the fine-tunes gain or forget on the test slices, not "
      f"extrapolation); {v.note}"))
  return v


# ------------------------------------------------------------------------------ base, DFT


def claim_stronger_base(view: StudyView) -> Verdict:
  """Interaction: (strong hard - strong easy) - (base hard - base easy) > 0, averaged over n."""
  h, e = claim_pair(view)
  claim = f"stronger base favours harder data (interaction of base x difficulty, {h} - {e})"
  sizes = [n for n in view.sizes("strong") if all((base, "sft", b, n) in view.keys
                                                  for base in ("strong", "base") for b in (h, e))]
  if not sizes:
    return _not_judged(view, claim, f"needs {e} and {h} cells from both bases at a common n")
  terms = []
  for n in sizes:
    for base, sign in (("strong", 1.0), ("base", -1.0)):
      terms += [((base, "sft", h, n), sign / len(sizes), view.p_test),
                ((base, "sft", e, n), -sign / len(sizes), view.p_test)]
  return single(claim, _item_contrast(view, terms, "correct"), +1, f"n in {sizes}")


def claim_dft(view: StudyView) -> list[Verdict]:
  """DFT - SFT on the hardest DFT bucket: > 0 at the smallest n, < 0 at the largest, interaction."""
  dft_buckets = [b for b in view.buckets if view.sizes("base", "dft", b)]
  names = ("DFT - SFT at small n", "DFT - SFT at large n", "DFT - SFT interaction small - large n")
  if not dft_buckets:
    return [_not_judged(view, c, "needs DFT cells") for c in names]
  b = dft_buckets[-1]
  ns = [n for n in view.sizes("base", "dft", b) if ("base", "sft", b, n) in view.keys]
  if len(ns) < 2:
    return [_not_judged(view, c, f"needs DFT and SFT on {b} at >= 2 sizes") for c in names]
  lo, hi = ns[0], ns[-1]
  p = view.p_test
  d = lambda n, a: [(("base", "dft", b, n), a, p), (("base", "sft", b, n), -a, p)]  # noqa: E731
  small = _item_contrast(view, d(lo, 1.0), "correct")
  large = _item_contrast(view, d(hi, 1.0), "correct")
  inter = _item_contrast(view, d(lo, 1.0) + d(hi, -1.0), "correct")
  return [single(f"DFT - SFT on {b} at n={lo} (> 0)", small, +1),
          single(f"DFT - SFT on {b} at n={hi} (< 0)", large, -1),
          single(f"DFT - SFT on {b} interaction n={lo} minus n={hi} (> 0)", inter, +1)]


# ---------------------------------------------------------------------------------- judge


def family_of(claim: str) -> str | None:
  """The primary family a verdict line belongs to (`PRIMARY`), or None (secondary)."""
  for name, prefixes in PRIMARY.items():
    if claim.startswith(prefixes):
      return name
  return None


def holm(verdicts: Sequence[Verdict], alpha: float = ALPHA) -> list[Verdict]:
  """Holm's step-down over the judged primary lines (two-sided p), replicate by replicate.

  A primary line's outcome becomes PASS or FAIL (by the side of its smaller one-sided p) where
  its Holm-adjusted p is <= alpha, INCONCLUSIVE otherwise; other lines are returned unchanged.
  Adjusted p of the j-th smallest of m: max over i <= j of min(1, (m - i + 1) p_(i)) (Holm 1979).
  """
  fam = [i for i, v in enumerate(verdicts) if v.p_pass is not None
         and family_of(v.claim) is not None and np.isfinite(v.estimate).all()]
  out = list(verdicts)
  if not fam:
    return out
  p = np.stack([verdicts[i].p_two_sided for i in fam])  # [M, R]
  m = p.shape[0]
  order = np.argsort(p, axis=0, kind="stable")
  sorted_p = np.take_along_axis(p, order, axis=0)
  factors = (m - np.arange(m))[:, None]
  adj_sorted = np.maximum.accumulate(np.minimum(1.0, factors * sorted_p), axis=0)
  adj = np.empty_like(p)
  np.put_along_axis(adj, order, adj_sorted, axis=0)
  for j, i in enumerate(fam):
    v = verdicts[i]
    side = np.where(v.p_pass <= v.p_fail, PASS, FAIL)
    outcome = np.where(adj[j] <= alpha, side, INCONCLUSIVE)
    out[i] = dataclasses.replace(v, outcome=outcome, holm=adj[j], holm_m=m)
  return out


def _u_sizes(view: StudyView) -> list[int]:
  """The sizes an inverted U is judged at: where easiest, middle and hardest buckets exist."""
  b = view.buckets
  if len(b) < 3:
    return view.complete_sizes()
  return pair_sizes(view, (b[0], b[1:-1][len(b[1:-1]) // 2], b[-1]))


def judge_view(view: StudyView, *, with_bootstrap: bool = True,
               certified: Mapping[str, Any] | None = None) -> list[Verdict]:
  """Every verdict of a study view, in a fixed order; Holm over the primary lines.

  When the view has a hard-tilted test mixture (`p_tests["hard"]`, schema 3) that differs from
  its primary one, claim 3's G_ext is judged on it too (a primary line: there the buckets' TV
  to the test differs, so the paper predicts a difference). `certified`: a schema-3 results dict
  whose certified arm replaces the main cells in the bound claim (its main cells carry no
  certificate).
  """
  out = [claim_inverted_u(view, n) for n in _u_sizes(view)]
  out.append(claim_best_moves_harder(view, with_bootstrap=with_bootstrap))
  out += [claim_saturation(view, b) for b in view.buckets]
  out += claim_g_gen_difficulty(view)
  out += claim_g_gen_size(view)
  out.append(claim_g_ext_difficulty(view))
  hard = view.p_tests.get("hard")
  if hard is not None and not np.allclose(hard, view.p_test):
    out.append(claim_g_ext_difficulty(dataclasses.replace(view, p_test=hard), "hard-tilted"))
  bound = claim_bound_holds(view)
  no_cert = np.isnan(view.scalars["bound"]).all()
  if certified is not None and certified.get("certified") and no_cert:
    bound = claim_certified_bound(certified)
  out.append(bound)
  out.append(claim_stronger_base(view))
  out += claim_dft(view)
  _STATS_CACHE.clear()
  return holm(out)


def judge(results: Mapping[str, Any], *, arm: str = "tilted") -> list[Verdict]:
  """Judges every claim on one arm of a lab results dict (schema ``pacbayes.lab/3`` or /2);
  the bound claim reads the certified arm where the main cells carry no certificate."""
  main = arm == next(iter(results["arms"]))
  return judge_view(study_view(results, arm=arm), certified=results if main else None)


# Claims whose cells (the stronger base, DFT) only the main arm has.
MAIN_ARM_ONLY = ("stronger base", "DFT")


def judge_all(results: Mapping[str, Any]) -> list[Verdict]:
  """Every arm's verdicts: the main arm's as `judge`, then each other arm's (e.g. the full
  preset's disjoint thirds) with its claims prefixed "<arm> arm: " and the claims that arm
  has no cells for (stronger base, DFT) left out."""
  arms = list(results["arms"])
  out = judge(results, arm=arms[0])
  for arm in arms[1:]:
    out += [dataclasses.replace(v, claim=f"{arm} arm: {v.claim}")
            for v in judge(results, arm=arm)
            if not v.claim.startswith(MAIN_ARM_ONLY)]
  return out
