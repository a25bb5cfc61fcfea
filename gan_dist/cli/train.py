"""`python -m gan_dist.train [--config FILE] [key=value ...]`

One process (debug run, or one GPU), torchrun (`torchrun --nproc_per_node=N -m gan_dist.train`),
or one task per rank under Slurm (`srun`, submitit): the same loop (gan_dist.fit). Bad input
ends in one line on stderr and exit code 2; nothing already saved is touched.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from gan_dist import cli


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    from gan_dist.config import help_text

    p = cli.ArgumentParser(prog="python -m gan_dist.train", description=__doc__.split("\n")[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="settings (key, default, meaning; set any as key=value):\n" + help_text())
    p.add_argument("--config", help="YAML file (configs/*.yaml); defaults: the embedded digits run")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (defaults, --config, overrides) as YAML and exit; nothing trains")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. train.steps=500 model.hidden=[1000,500,200]")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    """The exit code: 0 finished, 128+signal when a signal stopped it (state saved), 2 bad input."""
    args = parse_args(argv)

    def train() -> int:
        from gan_dist.api import fit

        if args.print_config:
            from gan_dist import config

            print(config.dump(config.load(args.config, args.overrides)), end="")
            return 0

        return fit(args.config, overrides=args.overrides).exit_code

    try:
        return cli.run(train)
    except KeyboardInterrupt:
        print("gan_dist: interrupted (a second Ctrl-C does not save)", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
