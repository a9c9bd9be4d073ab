"""Does a stronger base move the best training difficulty harder? SFT bucket sweeps, both bases.

A thin variant of run_study.py: the stronger base is swept at every n, DFT is left out.
Usage: python experiments/base_strength.py --preset quick --out experiments/results/strength
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_study import main  # noqa: E402

from pacbayes.study.runner import StudyConfig


def _all_sizes(argv):
  preset = "quick"
  if "--preset" in argv:
    preset = argv[argv.index("--preset") + 1]
  return list(StudyConfig.preset(preset).sizes) if preset in ("quick", "smoke", "full") else []


if __name__ == "__main__":
  sys.exit(main(extra_overrides={"dft_buckets": [], "strong_sizes": _all_sizes(sys.argv)},
                description=__doc__))
