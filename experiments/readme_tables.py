"""Markdown tables of a study run for the README and closing notes.

Usage: python experiments/readme_tables.py experiments/results/quick

Reads OUT/results.json and OUT/verdicts.txt (as `pacbayes lab` wrote them) and prints: the
bases, the mean accuracy over seeds per (arm, base, method, bucket, n) with its range, the
certified arm, the non-vacuous counts and the verdicts.
"""

import json
import os
import sys
from collections import defaultdict

import numpy as np


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
        f"{len(res['certified'])} certified-arm cells\n")
  print("| base | pretrained on ops | steps | accuracy | by op count 1..4 |\n|---|---|---|---|---|")
  for name, b in res["bases"].items():
    by = " ".join(f"{v:.2f}" for _, v in sorted(b["accuracy_by_slice"].items(),
                                                  key=lambda kv: int(kv[0])))
    print(f"| {name} | {b['pretrain_ops'][0]}-{b['pretrain_ops'][1]} | {b['steps']} | "
          f"{b['accuracy']:.3f} | {by} |")
  groups = defaultdict(list)
  for c in res["cells"]:
    groups[(c["arm"], c["base"], c["method"], c["bucket"], c["n"])].append(c)
  print("\n| arm | base | method | bucket | n | accuracy (mean over seeds) | seeds | "
        "E_Q seq error | B_train | bound |\n|---|---|---|---|---|---|---|---|---|---|")
  for key in sorted(groups, key=lambda k: (k[0], k[1], k[2], k[4],
                                           res["arms"][k[0]]["order"].index(k[3]))):
    cs = groups[key]
    acc = np.array([c["accuracy"] for c in cs])
    print(f"| {' | '.join(map(str, key))} | {acc.mean():.3f} | "
          f"{' '.join(f'{a:.3f}' for a in acc)} | "
          f"{np.mean([c['q_test_risk'] for c in cs]):.3f} | "
          f"{np.mean([c['certificate']['b_train'] for c in cs]):.3f} | "
          f"{np.mean([c['certificate']['bound'] for c in cs]):.3f} |")
  n_in = sum(c["certificate"]["b_train"] < 1 for c in res["cells"])
  n_mix = sum(c["certificate"]["bound"] < 1 for c in res["cells"])
  print(f"\nnon-vacuous certificates (sequence error): {n_in}/{len(res['cells'])} in-bucket "
        f"(B_train < 1), {n_mix}/{len(res['cells'])} test mixture (bound < 1)")
  for c in res["certified"]:
    print(f"certified arm {c['arm']} {c['bucket']} n={c['n']} seed {c['seed']}: "
          + "; ".join(f"{b['steps']} steps: acc {b['accuracy']:.3f}, E_Q {b['q_test_risk']:.3f}, "
                      f"B_train {b['b_train']:.3f}" for b in c["budgets"]))
  print("\n```")
  print("\n".join(verdicts))
  print("```")
  return 0


if __name__ == "__main__":
  sys.exit(main())
