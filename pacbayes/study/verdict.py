"""A verdict on one claim (PASS, FAIL or INCONCLUSIVE) and the rules that turn contrasts into one.

A claim of the form "theta > 0" PASSes when the whole 95% interval of its contrast lies above 0
(a one-sided test at level 2.5%), FAILs when it lies wholly below, and is INCONCLUSIVE
otherwise. A claim made of several contrasts that must all hold PASSes only if each does (an
intersection-union test: its p is the largest of theirs) and FAILs if any one is significantly
reversed (Bonferroni over them); the line shows the binding contrast and its degrees of freedom
(docs/THEORY.md §8.3). Used by `pacbayes.study.theory` and `pacbayes.study.bound_verdicts`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from pacbayes.study.stats import Contrast

ALPHA = 0.05
PASS, INCONCLUSIVE, FAIL = 1, 0, -1
WORDS = {PASS: "PASS", INCONCLUSIVE: "INCONCLUSIVE", FAIL: "FAIL"}


@dataclasses.dataclass(frozen=True)
class Verdict:
  """One claim's verdict over R replicate studies.

  Attributes:
    claim: the claim, with its setting (e.g. "inverted U at n=800").
    outcome: [R] int: 1 PASS, 0 INCONCLUSIVE, -1 FAIL (Holm-adjusted for primary claims).
    estimate, lo, hi: [R] the reported (binding) contrast and its interval (NaN: not judged).
    test: the test used, in words, with the binding contrast's degrees of freedom.
    note: extra evidence (design facts, bootstrap distributions), one line.
    p_pass, p_fail: [R] one-sided p of the claim and of its reversal (None: not judged).
    holm: [R] Holm-adjusted two-sided p (None: secondary claim); holm_m: the family size.
    df: [R] degrees of freedom of the binding contrast (None: no t reference).
  """

  claim: str
  outcome: np.ndarray
  estimate: np.ndarray
  lo: np.ndarray
  hi: np.ndarray
  test: str
  note: str = ""
  p_pass: np.ndarray | None = None
  p_fail: np.ndarray | None = None
  holm: np.ndarray | None = None
  holm_m: int = 0
  df: np.ndarray | None = None

  @property
  def word(self) -> str:
    return WORDS[int(self.outcome[0])]

  @property
  def p_two_sided(self) -> np.ndarray | None:
    if self.p_pass is None:
      return None
    return np.minimum(1.0, 2 * np.minimum(self.p_pass, self.p_fail))

  def line(self, r: int = 0) -> str:
    """``PASS|FAIL|INCONCLUSIVE  <claim>: <estimate> [<lo>, <hi>] (<test>)`` for replicate r."""
    word = WORDS[int(self.outcome[r])]
    est = (f"{self.estimate[r]:+.4f} [{self.lo[r]:+.4f}, {self.hi[r]:+.4f}]"
           if np.isfinite(self.estimate[r]) else "not judged")
    test = self.test
    if self.p_pass is not None and np.isfinite(self.estimate[r]):
      test += f"; p {self.p_two_sided[r]:.2g} two-sided"
      if self.holm is not None:
        test += (f", Holm-adjusted {self.holm[r]:.2g} over {self.holm_m} primary tests "
                 f"at {ALPHA:g}")
    text = f"{word:<12}  {self.claim}: {est} ({test})"
    return text + (f"; {self.note}" if self.note else "")


def not_judged(replicates: int, claim: str, why: str) -> Verdict:
  """A verdict that could not be judged (INCONCLUSIVE, estimate NaN) and why."""
  nan = np.full(replicates, np.nan)
  return Verdict(claim, np.zeros(replicates, dtype=int), nan, nan, nan, why)


def decide(p_pass: np.ndarray, p_fail: np.ndarray, level: float = ALPHA) -> np.ndarray:
  """PASS where p_pass < level / 2, FAIL where p_fail < level / 2 (two one-sided tests)."""
  return np.where(p_pass < level / 2, PASS, np.where(p_fail < level / 2, FAIL, INCONCLUSIVE))


def single(claim: str, ct: Contrast, sign: int, note: str = "", null: float = 0.0) -> Verdict:
  """A one-contrast claim sign * (theta - null) > 0; the line shows theta itself."""
  t = ct.shifted(null)
  pp, pf = t.p_value(sign), t.p_value(-sign)
  null_txt = f"; H0 at {null:g}" if null else ""
  return Verdict(claim, decide(pp, pf), ct.estimate, ct.lo, ct.hi,
                 ct.test_name() + null_txt, note, pp, pf, df=ct.df)


def all_of(claim: str, cts: Sequence[Contrast], note: str, prefix: str) -> Verdict:
  """Intersection-union of "every contrast > 0": p_pass the largest one-sided p; FAIL if any
  is significantly < 0 (Bonferroni over them). The binding contrast (largest p_pass, or the
  most reversed one where the claim FAILs) is shown, with its df."""
  pps = np.stack([ct.p_value(+1) for ct in cts])  # [J, R]
  pfs = np.stack([ct.p_value(-1) for ct in cts])
  pp = pps.max(axis=0)
  pf = np.minimum(1.0, len(cts) * pfs.min(axis=0))
  out = decide(pp, pf)
  pick = np.where(out == FAIL, pfs.argmin(axis=0), pps.argmax(axis=0))  # [R]
  r = np.arange(pp.size)
  take = lambda f: np.stack([np.broadcast_to(getattr(ct, f), pp.shape)  # noqa: E731
                             for ct in cts])[pick, r]
  j0 = int(pick[0])
  test = f"{prefix}, binding one shown; " + cts[j0].test_name()
  return Verdict(claim, out, take("estimate"), take("lo"), take("hi"), test, note, pp, pf,
                 df=take("df"))
