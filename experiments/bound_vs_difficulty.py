"""Bound terms (G_gen, G_ext, bound vs measured risk) across difficulty and n, SFT on the base.

A thin variant of run_study.py: only the base model's SFT grid (no DFT, no strong-base sweep).
Usage: python experiments/bound_vs_difficulty.py --preset quick --out experiments/results/bounds
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_study import main  # noqa: E402

if __name__ == "__main__":
  sys.exit(main(extra_overrides={"dft_buckets": [], "strong_sizes": []}, description=__doc__))
