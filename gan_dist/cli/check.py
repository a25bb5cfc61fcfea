"""`python -m gan_dist.check [--config FILE] [key=value ...] [--steps 4] [--tolerance 1e-4]`

Proves a config's generator and critic (a plugin pair included) safe under DDP on this
machine, in a minute or so: the contract, batch coupling in the critic, parameters without a
gradient, determinism, K steps on 1 process vs 2 gloo ranks (per module), buffers across
ranks, and K/2 + resume + K/2 == K bitwise. Prints a table; exit code 1 when a check fails
(naming the module), 2 on bad input. See gan_dist/check.py for why each rule exists.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from gan_dist import cli
from gan_dist.tools.check import Row, check, worker


def table(rows: list[Row]) -> str:
    width = max(len(r.check) for r in rows)
    lines = [f"{'check':{width}}  {'result':6}  detail"]
    for r in rows:
        lines.append(f"{r.check:{width}}  {r.result:6}  {r.detail}")
        lines += [f"{'':{width}}          {m:<40} {d:.2g}" for m, d in sorted(r.modules.items())]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = cli.ArgumentParser(prog="python -m gan_dist.check", description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--config", help="YAML file; model.kind / data.name may be package.module:factory")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, as for gan_dist.train")
    p.add_argument("--steps", type=int, default=4, help="generator steps of each trial (default 4)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest parameter difference 1 vs 2 ranks")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per trial")
    p.add_argument("--worker", metavar="OUT_DIR", help=argparse.SUPPRESS)
    args = p.parse_intermixed_args(argv)

    def run() -> int:
        if args.worker:
            from pathlib import Path

            from gan_dist import config

            worker(config.load(args.config, args.overrides), Path(args.worker))
            return 0
        rows = check(args.config, args.overrides, args.steps, args.tolerance, args.timeout)
        print(table(rows))
        failed = [r.check for r in rows if r.result == "FAIL"]
        print(f"\n{'FAILED: ' + '; '.join(failed) if failed else 'all checks passed'}")
        return 1 if failed else 0
    return cli.run(run)


if __name__ == "__main__":
    sys.exit(main())
