"""Builders shared by the tests; import the module you need (nothing here runs on import).

- `tests.helpers.models`: tiny model configs, a compiled forward, a tiny Llama checkpoint.
- `tests.helpers.jsonl`: one JSONL writer for data files.
- `tests.helpers.bound_pairs`: the trained tiny-Llama prior/posterior pair of `pacbayes bound`.
- `tests.helpers.linear`: a linear classifier whose Gaussian-perturbed risk is exact.
- `tests.helpers.mp_reference`: 50-digit mpmath references for the binary kl and its inverses.
- `tests.helpers.lab_results`: hand-made lab results with per-item values.
"""
