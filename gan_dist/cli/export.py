"""`python -m gan_dist.export SOURCE --out FILE.pt [--pt2] [--raw] [--best]`: the generator of a run
as TorchScript (+ FILE.json; --pt2: a torch.export program too). See gan_dist/export.py."""
from __future__ import annotations

import sys
from typing import Optional

from gan_dist import cli
from gan_dist.runs.export import export


def main(argv: Optional[list[str]] = None) -> int:
    p = cli.ArgumentParser(prog="python -m gan_dist.export", description=__doc__.split("\n")[0])
    p.add_argument("source", help="run directory or checkpoint file")
    p.add_argument("--out", required=True, help="TorchScript file to write (FILE.json goes beside it)")
    p.add_argument("--format", choices=("torchscript", "pt2", "both"), default="",
                   help="torchscript (FILE.pt, default), pt2 (a torch.export program FILE.pt2) or both")
    p.add_argument("--pt2", action="store_true", help="the same as --format both")
    p.add_argument("--raw", action="store_true", help="the raw generator, not its EMA")
    p.add_argument("--best", action="store_true", help="the run's best checkpoint (train.keep_best), not its latest")
    args = p.parse_args(argv)

    def run() -> int:
        result = export(args.source, args.out, args.pt2, ema=not args.raw, best=args.best, format=args.format)
        best = f" (best {result['best']['metric']} {result['best']['value']:.4g})" if args.best else ""
        print(f"exported step {result['step']}{best} {'EMA ' if result['ema'] else ''}generator: "
              f"{', '.join(result['files'])}")
        return 0
    return cli.run(run)


if __name__ == "__main__":
    sys.exit(main())
