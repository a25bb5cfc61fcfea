"""`python -m gan_dist.plot RUN_DIR [--out DIR]`: PNG plots of a run's metrics and samples
(see gan_dist/plot.py), usable while the run is training."""
from __future__ import annotations

import sys
from typing import Optional

from gan_dist import cli
from gan_dist.tools.plot import plot


def main(argv: Optional[list[str]] = None) -> int:
    p = cli.ArgumentParser(prog="python -m gan_dist.plot", description="PNG plots of a run's metrics and samples.")
    p.add_argument("run_dir", help="run directory (holds metrics.jsonl and samples/)")
    p.add_argument("--out", help="folder for the PNGs (default RUN_DIR/plots)")
    args = p.parse_args(argv)

    def run() -> int:
        for path in plot(args.run_dir, args.out):
            print(f"wrote {path}")
        return 0
    return cli.run(run)


if __name__ == "__main__":
    sys.exit(main())
