"""Markdown tables of a study run for the README and closing notes.

Usage: python experiments/readme_tables.py experiments/results/quick

Reads OUT/results.json and OUT/verdicts.txt (as `pacbayes lab` wrote them) and prints: the
protocol, the bases, the mean accuracy over seeds per (arm, base, method, bucket, n) with
each seed's, the hard-tilted test accuracy, per-slice gains and forgetting against the base,
the certified arm, its non-vacuous counts and the verdicts.
"""

import json
import os
import sys
from collections import defaultdict

import numpy as np

from pacbayes.bounds.checks import is_vacuous


def _by_slice(cells, field: str) -> str:
  """Mean over seeds of a per-slice record, as "k:value" pairs ("-" when absent)."""
  if any(field not in c for c in cells):
    return "-"
  keys = sorted(cells[0][field], key=int)
  return " ".join(f"{k}:{np.mean([c[field][k] for c in cells]):+.2f}" for k in keys)


def _num(x) -> str:
  """A number to 3 decimals, "-" for null (no posterior measured)."""
  return "-" if x is None else f"{x:.3f}"


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 1:
    print(__doc__.splitlines()[2], file=sys.stderr)
    return 2
  out = argv[0]
  with open(os.path.join(out, "results.json")) as f:
    res = json.load(f)
  with open(os.path.join(out, "verdicts.txt")) as f:
    verdicts = [line.rstrip("\n") for line in f if line.strip()]
  t = res["timings_s"]
  print(f"preset {res['preset']}: runtime {res['runtime_s']:.0f} s (stages when computed: "
        f"pretrain {t['pretrain_s']:.0f} s, fine-tune {t['fine_tune_s']:.0f} s, evaluate + "
        f"certify {t['evaluate_certify_s']:.0f} s); {len(res['cells'])} cells + "
        f"{len(res['certified'])} certified-arm groups\n")
  proto = res.get("protocol")
  if proto:
    print(f"protocol: {proto['rule']} (epochs {proto['ft_epochs']}, min steps "
          f"{proto['ft_min_steps']}, lr {proto['ft_lr']}); steps by n: "
          + ", ".join(f"{n}: {s} ({proto['epochs'][n]:.1f} epochs)"
                      for n, s in proto["steps"].items()) + "\n")
  print("| base | pretrained on ops | steps | replicas | accuracy | by op count |\n"
        "|---|---|---|---|---|---|")
  for name, b in res["bases"].items():
    by = " ".join(f"{v:.2f}" for _, v in sorted(b["accuracy_by_slice"].items(),
                                                  key=lambda kv: int(kv[0])))
    print(f"| {name} | {b['pretrain_ops'][0]}-{b['pretrain_ops'][1]} | {b['steps']} | "
          f"{len(b.get('replicas', [b]))} | {b['accuracy']:.3f} | {by} |")
  groups = defaultdict(list)
  for c in res["cells"]:
    groups[(c["arm"], c["base"], c["method"], c["bucket"], c["n"])].append(c)
  base_acc = [r["accuracy"] for r in res["bases"]["base"].get("replicas", [res["bases"]["base"]])]
  print("\n| arm | base | method | bucket | n | accuracy (mean over seeds) | minus its base | "
        "seeds | hard-tilted test | kept step / budget (median) | gain vs base by op count | "
        "forgot by op count |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
  for key in sorted(groups, key=lambda k: (k[0], k[1], k[2], k[4],
                                           res["arms"][k[0]]["order"].index(k[3]))):
    cs = groups[key]
    acc = np.array([c["accuracy"] for c in cs])
    hard = np.mean([c.get("accuracy_by_mixture", {}).get("hard", np.nan) for c in cs])
    own = np.mean([c["accuracy"] - base_acc[c.get("base_replica", 0) % len(base_acc)]
                   for c in cs]) if key[1] == "base" else np.nan
    kept = np.median([c.get("stopped_at", c["ft_steps"]) for c in cs])
    print(f"| {' | '.join(map(str, key))} | {acc.mean():.3f} | {own:+.3f} | "
          f"{' '.join(f'{a:.3f}' for a in acc)} | {hard:.3f} | {kept:.0f} / {cs[0]['ft_steps']} | "
          f"{_by_slice(cs, 'gain_by_slice')} | {_by_slice(cs, 'forgot_by_slice')} |")
  certs = [b for c in res["certified"] for b in c["budgets"]]
  print(f"\nnon-vacuous certificates (sequence error, certified arm): "
        f"{sum(not is_vacuous(b['b_train']) for b in certs)}/{len(certs)} in-bucket "
        f"(B_train < 1), {sum(not is_vacuous(b['bound']) for b in certs)}/{len(certs)} test "
        f"mixture (bound < 1)")
  for c in res["certified"]:
    print(f"certified arm {c['arm']} {c['bucket']} n={c['n']} seed {c['seed']}: "
          + "; ".join(f"{b['steps']} steps: acc {b['accuracy']:.3f}, E_Q {_num(b['q_test_risk'])}, "
                      f"B_train {b['b_train']:.3f}, bound {b['bound']:.3f}"
                      for b in c["budgets"]))
  block = res.get("power", {})
  if block.get("power"):
    print(f"\npower at this run's own estimates ({block['reps']} simulated studies, "
          f"Holm over the primary claims):")
    for claim, p in block["power"].items():
      print(f"- {claim}: P(PASS) {p['pass']:.2f}, P(FAIL) {p['fail']:.2f}")
  print("\n```")
  print("\n".join(verdicts))
  print("```")
  return 0


if __name__ == "__main__":
  sys.exit(main())
