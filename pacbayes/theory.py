"""Verdicts on the paper's claims from a lab results file: one PASS or FAIL per claim."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pacbayes.plots import bucket_order, select_cells

# Differences smaller than this count as ties; everything else is compared as measured.
_TIE = 1e-9


@dataclasses.dataclass(frozen=True)
class Verdict:
  """One claim's verdict.

  Attributes:
    claim: short name of the claim.
    passed: whether the measured numbers agree with the claim.
    judged: False when the results lack the cells the claim needs (then ``passed`` is False).
    evidence: the numbers behind the verdict, one short line.
  """

  claim: str
  passed: bool
  judged: bool
  evidence: str

  def line(self) -> str:
    word = "PASS" if self.passed else "FAIL"
    if not self.judged:
      return f"FAIL  {self.claim}: not judged ({self.evidence})"
    return f"{word}  {self.claim}: {self.evidence}"


def _fmt(xs: Sequence[float]) -> str:
  return "[" + ", ".join(f"{x:.3f}" for x in xs) + "]"


def _not_judged(claim: str, why: str) -> Verdict:
  return Verdict(claim, False, False, why)


def _rows(results, base="base", method="sft"):
  """Accuracy/terms as {n: [cell per bucket in easy->hard order]} keeping complete rows."""
  cells = select_cells(results, base=base, method=method)
  buckets = bucket_order(results)
  sizes = sorted({n for (_, n) in cells})
  rows = {n: [cells.get((b, n)) for b in buckets] for n in sizes}
  return {n: r for n, r in rows.items() if all(c is not None for c in r)}, buckets


def _argmax(xs: Sequence[float]) -> int:
  # ties resolve to the easier bucket, so "moves harder" needs a real gain
  return int(np.argmax(np.asarray(xs) + 0.0))


def claim_shape(results) -> Verdict:
  """At fixed n, accuracy against difficulty is inverted-U or monotone (unimodal)."""
  name = "at fixed n, accuracy vs difficulty is inverted-U or monotone"
  rows, buckets = _rows(results)
  if not rows or len(buckets) < 3:
    return _not_judged(name, "needs SFT cells for >= 3 buckets at some n")
  bad, parts = [], []
  for n, row in rows.items():
    acc = [c["accuracy"] for c in row]
    peak = _argmax(acc)
    up = all(acc[i + 1] >= acc[i] - _TIE for i in range(peak))
    down = all(acc[i + 1] <= acc[i] + _TIE for i in range(peak, len(acc) - 1))
    shape = ("increasing" if peak == len(acc) - 1 else "decreasing" if peak == 0
             else "inverted-U")
    if not (up and down):
      shape, bad = "not unimodal", bad + [n]
    parts.append(f"n={n}: {_fmt(acc)} {shape}")
  return Verdict(name, not bad, True, "; ".join(parts))


def claim_best_moves_harder(results) -> Verdict:
  """The best training difficulty is non-decreasing in n."""
  name = "best difficulty is non-decreasing in n"
  rows, buckets = _rows(results)
  if len(rows) < 2:
    return _not_judged(name, "needs complete SFT bucket rows at >= 2 sizes")
  best = {n: _argmax([c["accuracy"] for c in row]) for n, row in rows.items()}
  seq = [best[n] for n in sorted(best)]
  ok = all(b >= a for a, b in zip(seq, seq[1:], strict=False))
  ev = ", ".join(f"n={n}: {buckets[best[n]]}" for n in sorted(best))
  return Verdict(name, ok, True, ev)


def claim_g_gen_difficulty(results) -> Verdict:
  """G_gen rises with training difficulty at every n."""
  name = "G_gen rises with difficulty"
  rows, _ = _rows(results)
  if not rows:
    return _not_judged(name, "needs complete SFT bucket rows")
  bad, parts = [], []
  for n, row in rows.items():
    g = [c["certificate"]["g_gen"] for c in row]
    if not (all(b >= a - _TIE for a, b in zip(g, g[1:], strict=False)) and g[-1] > g[0]):
      bad.append(n)
    parts.append(f"n={n}: {_fmt(g)}")
  return Verdict(name, not bad, True, "; ".join(parts))


def claim_g_gen_size(results) -> Verdict:
  """G_gen falls with n in every bucket."""
  name = "G_gen falls with n"
  cells = select_cells(results, base="base", method="sft")
  buckets = bucket_order(results)
  bad, parts, judged = [], [], False
  for b in buckets:
    ns = sorted(n for (bb, n) in cells if bb == b)
    if len(ns) < 2:
      continue
    judged = True
    g = [cells[(b, n)]["certificate"]["g_gen"] for n in ns]
    if not (all(y <= x + _TIE for x, y in zip(g, g[1:], strict=False)) and g[-1] < g[0]):
      bad.append(b)
    parts.append(f"{b} n={ns}: {_fmt(g)}")
  if not judged:
    return _not_judged(name, "needs SFT cells at >= 2 sizes in some bucket")
  return Verdict(name, not bad, True, "; ".join(parts))


def claim_g_ext_difficulty(results) -> Verdict:
  """G_ext falls with training difficulty."""
  name = "G_ext falls with difficulty"
  rows, _ = _rows(results)
  if not rows:
    return _not_judged(name, "needs complete SFT bucket rows")
  bad, parts = [], []
  for n, row in rows.items():
    g = [c["certificate"]["g_ext"] for c in row]
    if not (all(b <= a + _TIE for a, b in zip(g, g[1:], strict=False)) and g[-1] < g[0]):
      bad.append(n)
    parts.append(f"n={n}: {_fmt(g)}")
  return Verdict(name, not bad, True, "; ".join(parts))


def claim_bound_holds(results) -> Verdict:
  """The bound is at or above the measured test risk in every cell."""
  name = "bound >= measured test risk in every cell"
  cells = results["cells"]
  if not cells:
    return _not_judged(name, "no cells")
  viol = [c for c in cells if c["certificate"]["bound"] < c["test_risk"]]
  slack = [c["certificate"]["bound"] - c["test_risk"] for c in cells]
  nonvac = sum(c["certificate"]["bound"] < 1.0 for c in cells)
  ev = (f"{len(cells) - len(viol)}/{len(cells)} cells hold; min slack {min(slack):.3f}; "
        f"{nonvac} non-vacuous (bound < 1)")
  if viol:
    worst = min(viol, key=lambda c: c["certificate"]["bound"] - c["test_risk"])
    ev += (f"; worst {worst['base']}/{worst['method']}/{worst['bucket']}/n={worst['n']}: "
           f"bound {worst['certificate']['bound']:.3f} < risk {worst['test_risk']:.3f}")
  return Verdict(name, not viol, True, ev)


def claim_stronger_base(results) -> Verdict:
  """A stronger base moves the best training difficulty harder."""
  name = "a stronger base moves the best difficulty harder"
  weak, buckets = _rows(results, base="base")
  strong, _ = _rows(results, base="strong")
  common = sorted(set(weak) & set(strong))
  if not common:
    return _not_judged(name, "needs complete SFT bucket rows for 'base' and 'strong' at one n")
  parts, oks = [], []
  for n in common:
    bw = _argmax([c["accuracy"] for c in weak[n]])
    bs = _argmax([c["accuracy"] for c in strong[n]])
    oks.append(bs > bw)
    parts.append(
        f"n={n}: base best {buckets[bw]} {_fmt([c['accuracy'] for c in weak[n]])}, "
        f"strong best {buckets[bs]} {_fmt([c['accuracy'] for c in strong[n]])}")
  return Verdict(name, all(oks), True, "; ".join(parts))


def claim_dft(results) -> Verdict:
  """DFT beats SFT at small n on hard data, and SFT wins at large n."""
  name = "DFT beats SFT at small n on hard data, SFT wins at large n"
  hard = bucket_order(results)[-1]
  sft = select_cells(results, base="base", method="sft")
  dft = select_cells(results, base="base", method="dft")
  ns = sorted(n for (b, n) in dft if b == hard and (b, n) in sft)
  if len(ns) < 2:
    return _not_judged(name, f"needs SFT and DFT cells on bucket {hard!r} at >= 2 sizes")
  lo, hi = ns[0], ns[-1]
  a = {(m, n): c[(hard, n)]["accuracy"] for m, c in (("sft", sft), ("dft", dft))
       for n in (lo, hi)}
  ok = a[("dft", lo)] > a[("sft", lo)] and a[("sft", hi)] > a[("dft", hi)]
  ev = (f"{hard}, n={lo}: DFT {a[('dft', lo)]:.3f} vs SFT {a[('sft', lo)]:.3f}; "
        f"n={hi}: DFT {a[('dft', hi)]:.3f} vs SFT {a[('sft', hi)]:.3f}")
  return Verdict(name, ok, True, ev)


def claim_saturation(results) -> Verdict:
  """At fixed difficulty, accuracy rises with n and saturates (diminishing gains per log n)."""
  name = "at fixed difficulty, accuracy rises with n and saturates"
  cells = select_cells(results, base="base", method="sft")
  bad, parts, judged = [], [], False
  for b in bucket_order(results):
    ns = sorted(n for (bb, n) in cells if bb == b)
    if len(ns) < 3:
      continue
    judged = True
    acc = [cells[(b, n)]["accuracy"] for n in ns]
    slope = [(y - x) / np.log(n2 / n1) for x, y, n1, n2 in
             zip(acc, acc[1:], ns, ns[1:], strict=False)]
    rising = acc[-1] > acc[0]
    saturating = all(s2 <= s1 + _TIE for s1, s2 in zip(slope, slope[1:], strict=False))
    if not (rising and saturating):
      bad.append(b)
    parts.append(f"{b}: {_fmt(acc)} gain/ln n {_fmt(slope)}")
  if not judged:
    return _not_judged(name, "needs SFT cells at >= 3 sizes in some bucket")
  return Verdict(name, not bad, True, "; ".join(parts))


CLAIMS = (
    claim_shape,
    claim_best_moves_harder,
    claim_saturation,
    claim_g_gen_difficulty,
    claim_g_gen_size,
    claim_g_ext_difficulty,
    claim_bound_holds,
    claim_stronger_base,
    claim_dft,
)


def judge(results: Mapping[str, Any]) -> list[Verdict]:
  """Judges every claim on a lab results dict (schema ``pacbayes.lab/1``)."""
  return [claim(results) for claim in CLAIMS]
