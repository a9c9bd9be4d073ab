"""Pretrains the bases and fine-tunes every cell of a preset into OUT/cache (a cache worker).

Usage: python experiments/warm_cache.py --preset quick --out experiments/results/quick

Without --certify it only trains; with it, it also evaluates every cell and certifies the
certified arm's (main cells are not certified). Several workers may share OUT (atomic
writes; at worst a cell is computed twice). A later `pacbayes lab --preset P --out OUT`
reuses these checkpoints and cell results (same cache keys); the training times stay recorded
beside each checkpoint and are summed into results.json ("timings_s").
"""

import argparse
import sys

from pacbayes.study.config import PRESETS, StudyConfig
from pacbayes.study.grid import BASES, certified_cells, grid_cells
from pacbayes.study.runner import Study


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
  parser.add_argument("--out", required=True)
  parser.add_argument("--reverse", action="store_true",
                      help="go through the cells in reverse order (a second worker)")
  parser.add_argument("--shard", default="0/1", metavar="I/K",
                      help="only the cells whose index is I modulo K (before --reverse)")
  parser.add_argument("--certify", action="store_true",
                      help="also evaluate and certify each cell (cached as `pacbayes lab` does)")
  args = parser.parse_args(argv)
  config = StudyConfig.preset(args.preset)
  study = Study(config, args.out, progress=False)
  for which in BASES:
    study.pretrain(which)
    if not study.base_info[which].get("unused"):
      print(f"{which}: {study.base_info[which]['accuracy_by_slice']}", flush=True)
  try:
    i_shard, k_shard = (int(x) for x in args.shard.split("/"))
    if not 0 <= i_shard < k_shard:
      raise ValueError
  except ValueError:
    parser.error(f"--shard: expected I/K with 0 <= I < K, got {args.shard!r}")
  todo = [c for j, c in enumerate(grid_cells(config) + certified_cells(config))
          if j % k_shard == i_shard]
  if args.reverse:
    todo = todo[::-1]
  for i, cell in enumerate(todo):
    _, info = study.train_cell(cell)
    line = f"[{i + 1}/{len(todo)}] {cell.tag}: {info['time_s']:.0f}s, loss {info['final_loss']:.4f}"
    if args.certify:
      res = study.run_cell(cell)
      line += f"; acc {res['accuracy']:.3f}"
      if "certificate" in res:
        line += (f" B_train {res['certificate']['b_train']:.3f} "
                 f"bound {res['certificate']['bound']:.3f}")
    print(line, flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
