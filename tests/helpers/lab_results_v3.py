"""Hand-made schema-3 lab results (pacbayes.lab/3) built from the schema-2 ones of
`tests.helpers.lab_results`: two test mixtures, two base replicas, main cells without
certificates, and a certified arm."""

import copy

from tests.helpers.lab_results import OPS, make_results


def to_v3(res, *, hard_power=2.0, bound=None):
  """`res` (schema 2) as schema 3: "test_mixtures" (uniform and k**hard_power), base replicas
  (replica 1 = replica 0 + 0.1 on every slice), certificates moved from the main cells into a
  certified arm at the largest n (one budget per bucket and seed: the main one; `bound`
  overrides its bound)."""
  res = copy.deepcopy(res)
  res["schema"] = "pacbayes.lab/3"
  w = [k**hard_power for k in OPS]
  res["test_mixtures"] = {"uniform": dict(res["test_mixture"]),
                          "hard": {str(k): wk / sum(w) for k, wk in zip(OPS, w, strict=True)}}
  for b in res["bases"].values():
    r0 = {k: v for k, v in b.items() if k != "replicas"}
    r1 = dict(r0, accuracy_by_slice={k: v + 0.1 for k, v in r0["accuracy_by_slice"].items()})
    b["replicas"] = [dict(r0, replica=0), dict(r1, replica=1)]
  n_max = max(res["sizes"])
  certified = []
  for c in res["cells"]:
    cert = c.pop("certificate")
    c["items"].pop("q_seq_error")
    q, by = c.pop("q_test_risk"), c.pop("q_risk_by_slice")
    c["base_replica"] = c["seed"] % 2
    if c["base"] == "base" and c["method"] == "sft" and c["n"] == n_max:
      b = cert["bound"] if bound is None else bound
      budget = {"steps": c["ft_steps"], "accuracy": c["accuracy"], "q_test_risk": q,
                "q_risk_by_slice": by, "b_train": b - 0.1, "bound": b, "subset_bound": b}
      certified.append({"arm": c["arm"], "bucket": c["bucket"], "n": c["n"], "seed": c["seed"],
                        "budgets": [budget], "chosen_steps": c["ft_steps"],
                        "accuracy": c["accuracy"], "accuracy_by_slice": c["accuracy_by_slice"],
                        "q_test_risk": q, "q_risk_by_slice": by, "b_train": b - 0.1, "bound": b,
                        "slices": cert["slices"]})
  res["certified"] = certified
  return res


def make_results_v3(*args, hard_power=2.0, bound=None, **kwargs):
  """`make_results(*args, **kwargs)` as schema 3 (`to_v3`)."""
  return to_v3(make_results(*args, **kwargs), hard_power=hard_power, bound=bound)
