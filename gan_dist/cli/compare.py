"""`python -m gan_dist.compare RUN_DIR... [--sort fid] [--plot OUT.png] [--metric fid]`: runs side by
side (gan_dist/tools/compare.py): the settings that differ and each run's final and best quality
metrics with the real-vs-real line, and one plot of a metric against images seen."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from gan_dist import cli


def main(argv: Optional[list[str]] = None) -> int:
    p = cli.ArgumentParser(prog="python -m gan_dist.compare",
                           description="Runs side by side: the settings that differ, final and best metrics.")
    p.add_argument("run_dirs", nargs="+", help="run directories (finished or still training)")
    p.add_argument("--sort", default="fid", help="the metric the table is sorted by (default: fid)")
    p.add_argument("--plot", metavar="OUT.png", help="also plot --metric against images seen for every run")
    p.add_argument("--metric", default=None, help="the plotted metric (default: --sort)")
    args = p.parse_args(argv)

    def run() -> int:
        from gan_dist.tools.compare import compare, load_run, plot, table

        runs = [load_run(Path(d)) for d in args.run_dirs]  # each read once, for the table and the plot
        differ, rows = compare(runs, args.sort)
        print(table(differ, rows))
        if args.plot:
            path = plot(runs, args.metric or args.sort, Path(args.plot))
            print(f"wrote {path}" if path else f"no run has {args.metric or args.sort} yet: no plot")
        return 0
    return cli.run(run)


if __name__ == "__main__":
    sys.exit(main())
