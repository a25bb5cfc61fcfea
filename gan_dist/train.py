"""`python -m gan_dist.train [--config FILE] [key=value ...]`

One process (debug run, or one GPU), torchrun (`torchrun --nproc_per_node=N -m gan_dist.train`),
or one task per rank under Slurm (`srun`, submitit): the same loop. Bad input ends in one line
on stderr and exit code 2; nothing already saved is touched.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from gan_dist import cli, config
from gan_dist.errors import UserError


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = cli.ArgumentParser(prog="python -m gan_dist.train", description=__doc__.split("\n")[0])
    p.add_argument("--config", help="YAML file (configs/*.yaml); defaults: the embedded digits run")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. train.steps=500 model.hidden=[1000,500,200]")
    return p.parse_args(argv)


def run(cfg: config.Config) -> int:
    """Train; the exit code: 0 finished, 128+signal when a signal stopped it (state saved)."""
    from gan_dist import distributed
    from gan_dist.preemption import Preemption
    from gan_dist.trainer import Trainer

    world = distributed.detect()
    config.check_world(cfg, world.world_size)
    # Signals are caught from here on: one that arrives while the ranks meet or the data
    # loads is acted on at the first step boundary, not lost (nor fatal, as USR2 is by default).
    preemption = Preemption().install()
    trainer = late = None
    try:
        distributed.setup(world, cfg.train.threads)
        trainer = Trainer(cfg, world, preemption=preemption)
        status = trainer.fit()
        trainer.close()
        distributed.teardown()
        # Rank 0 requeued before the others left; a USR2 that landed only after that still
        # requeues (the handler stays installed until here, so it is not fatal either).
        late = preemption.requeue_if_asked(world.is_main) if status == "stopped" else None
    except BaseException:
        if trainer is not None:
            trainer.close()
        distributed.teardown(clean=False)
        raise
    finally:
        preemption.uninstall()
    if trainer.deferred_exit or late:  # submitit's exit after its requeue (rank 0)
        raise trainer.deferred_exit or late
    return 0 if status == "finished" else 128 + preemption.signum


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        return run(config.load(args.config, args.overrides))
    except UserError as e:
        rank = int(os.environ.get("RANK", "0"))
        where = f"[rank {rank}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 and rank else ""
        return cli.print_error(f"{where}{e}")
    except KeyboardInterrupt:
        print("gan_dist: interrupted (a second Ctrl-C does not save)", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
