"""The records of a study: per-slice gains against the base, base replicas, the certified
arm's summary and the plain-text table of a results dict."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pacbayes.study.stats import decode_u8


def fmt_slices(by_slice: Mapping[str, float]) -> str:
  return "[" + " ".join(f"{k}:{v:.2f}" for k, v in sorted(by_slice.items(),
                                                          key=lambda kv: int(kv[0]))) + "]"


def against_base(correct_u8: str, base_items: Mapping[str, np.ndarray], ops: list[int],
                 counts: list[int]) -> dict[str, dict[str, float]]:
  """Per-slice gain, learning and forgetting of a cell against its own base replica.

  gain = acc_cell - acc_base; learned = share of the slice's items the base got wrong and the
  cell right; forgot = share the base got right and the cell wrong (gain = learned - forgot).
  """
  cell = decode_u8(correct_u8, sum(counts)).astype(bool)
  base = np.asarray(base_items["correct"]).astype(bool)
  bounds = np.cumsum([0, *counts])
  out: dict[str, dict[str, float]] = {"gain_by_slice": {}, "learned_by_slice": {},
                                      "forgot_by_slice": {}}
  for j, k in enumerate(ops):
    sl = slice(bounds[j], bounds[j + 1])
    learned, forgot = float(np.mean(cell[sl] & ~base[sl])), float(np.mean(~cell[sl] & base[sl]))
    out["gain_by_slice"][str(k)] = learned - forgot
    out["learned_by_slice"][str(k)] = learned
    out["forgot_by_slice"][str(k)] = forgot
  return out


def combine_replicas(infos: list[dict[str, Any]]) -> dict[str, Any]:
  """One base's record over its replicas: the means (what a figure's base line shows) and
  every replica's own record (without its per-item strings, kept in the cache)."""
  first = infos[0]
  mean = lambda f: float(np.mean([i[f] for i in infos]))  # noqa: E731
  by = lambda f: {k: float(np.mean([i[f][k] for i in infos])) for k in first[f]}  # noqa: E731
  times = [i["train_time_s"] for i in infos]
  return {
    "pretrain_ops": first["pretrain_ops"], "steps": first["steps"], "init": first["init"],
    "accuracy": mean("accuracy"), "accuracy_by_mixture": by("accuracy_by_mixture"),
    "accuracy_by_slice": by("accuracy_by_slice"), "test_seq_error": mean("test_seq_error"),
    "seq_error_by_slice": by("seq_error_by_slice"),
    "train_time_s": None if any(t is None for t in times) else float(sum(times)),
    "replicas": [{k: v for k, v in i.items() if k != "items"} for i in infos],
  }


def certified_arm(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The certified arm: per (bucket, n, seed), every budget's certificate and accuracy, and the
  budget chosen by the subset bound of the sigma search (computed with its own key on a subset
  of S, so the final Monte-Carlo term is independent of the choice; the PAC-Bayes term holds
  for every posterior at once).

  A budget's "q_test_risk" / "q_risk_by_slice" (E_Q of the sequence error on the test mixture
  and by slice) are null where the certificate route found no sigma worth searching (sigma_q
  null: nothing certifies below 0.99); the chosen budget also carries the certificate's
  per-slice bounds ("slices": difficulty, bound) and its accuracy by slice, for the figures.
  """
  groups: dict[tuple, list[dict[str, Any]]] = {}
  for c in cells:
    if c["base"] == "base" and c["method"] == "sft" and "certificate" in c:
      groups.setdefault((c["arm"], c["bucket"], c["n"], c["seed"]), []).append(c)
  out = []
  for (arm, bucket, n, seed), group in groups.items():
    if not any(c["certified_arm"] for c in group):
      continue
    group = sorted(group, key=lambda c: c["ft_steps"])
    chosen = min(group, key=_subset_bound)
    cert = chosen["certificate"]
    out.append({
      "arm": arm, "bucket": bucket, "n": n, "seed": seed,
      "budgets": [{"steps": c["ft_steps"], "accuracy": c["accuracy"],
                   "q_test_risk": c.get("q_test_risk"),
                   "q_risk_by_slice": c.get("q_risk_by_slice"),
                   "b_train": c["certificate"]["b_train"], "bound": c["certificate"]["bound"],
                   "subset_bound": c["certificate"]["sigma_choice"]["subset_bound"]}
                  for c in group],
      "chosen_steps": chosen["ft_steps"], "accuracy": chosen["accuracy"],
      "accuracy_by_slice": chosen["accuracy_by_slice"],
      "q_test_risk": chosen.get("q_test_risk"), "q_risk_by_slice": chosen.get("q_risk_by_slice"),
      "b_train": cert["b_train"], "bound": cert["bound"],
      "slices": [{"difficulty": s["difficulty"], "bound": s["bound"]}
                 for s in cert.get("slices") or []],
    })
  return out


def _subset_bound(cell: Mapping[str, Any]) -> float:
  value = cell["certificate"]["sigma_choice"]["subset_bound"]
  return float("inf") if value is None else float(value)


def summary_table(results: Mapping[str, Any]) -> str:
  """Plain text: bases, then one line per cell (the step early stopping kept out of the
  budget, accuracy, risks, per-slice gains), then the certified arm."""
  lines = [f"preset {results['preset']}: {len(results['cells'])} cells + "
           f"{len(results.get('certified', []))} certified-arm cells in "
           f"{results['runtime_s']:.0f}s; test mixture "
           + " ".join(f"{k}:{v:.3f}" for k, v in results["test_mixture"].items())]
  for name, b in results["bases"].items():
    lines.append(f"{name:>6} (pretrain ops {b['pretrain_ops'][0]}-{b['pretrain_ops'][1]}, "
                 f"{b['steps']} steps): acc {b['accuracy']:.3f} "
                 f"{fmt_slices(b['accuracy_by_slice'])} seq error {b['test_seq_error']:.3f}")
  lines.append(f"{'arm':>12} {'base':>6} {'meth':>4} {'bucket':>7} {'n':>5} {'s':>2} "
               f"{'kept/budget':>11} {'acc':>6} {'accHrd':>6} {'seqErr':>6} {'R_S':>6}  "
               "accuracy by slice; gain against the base replica by slice")
  for c in results["cells"]:
    gain = c.get("gain_by_slice", {})
    lines.append(
      f"{c['arm']:>12} {c['base']:>6} {c['method']:>4} {c['bucket']:>7} {c['n']:>5} "
      f"{c['seed']:>2} {str(c.get('stopped_at', c['ft_steps'])) + '/' + str(c['ft_steps']):>11} "
      f"{c['accuracy']:6.3f} "
      f"{c.get('accuracy_by_mixture', {}).get('hard', float('nan')):6.3f} "
      f"{c['test_seq_error']:6.3f} {c['train_seq_error']:6.3f}  "
      f"{fmt_slices(c['accuracy_by_slice'])}; "
      + " ".join(f"{k}:{v:+.2f}" for k, v in sorted(gain.items(), key=lambda kv: int(kv[0]))))
  for c in results.get("certified", []):
    lines.append(f"certified arm {c['bucket']:>7} n={c['n']} seed {c['seed']}: chosen "
                 f"{c['chosen_steps']} steps, acc {c['accuracy']:.3f}, B_train {c['b_train']:.3f}, "
                 f"bound {c['bound']:.3f}; budgets "
                 + ", ".join(f"{b['steps']}: acc {b['accuracy']:.3f} bound {b['bound']:.3f}"
                             for b in c["budgets"]))
  return "\n".join(lines)
