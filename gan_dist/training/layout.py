"""How the global batch is laid out over the ranks and in time: W ranks x A micro-batches x
micro_batch images, W x A x micro_batch = train.batch_size. Gradient accumulation keeps the
mathematics of the global batch, so one config trains the same model on 1, 2, 4 or 8 GPUs; the
micro-batch (images per rank per forward: the memory per rank) is what a checkpoint keeps, so
a job requeued on fewer GPUs accumulates more instead of running out of memory."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

from gan_dist.config import Config, is_set
from gan_dist.distributed import World, max_over_ranks
from gan_dist.errors import UserError

log = logging.getLogger("gan_dist")


@dataclass(frozen=True)
class Layout:
    world_size: int
    accumulation: int  # A: micro-batches per rank per update
    micro_batch: int   # images per rank per forward

    def __str__(self) -> str:
        return f"{self.world_size} rank(s) x {self.accumulation} micro-batch(es) x {self.micro_batch}"


def largest_fitting(local: int, fits: Callable[[int], bool]) -> int:
    """The largest divisor of `local` for which fits(n) holds, trying from the largest down
    (1 when none does: the smallest that can run)."""
    for n in sorted((d for d in range(1, local + 1) if local % d == 0), reverse=True):
        if fits(n):
            return n
    return 1


def resolve(cfg: Config, world: World, saved: Optional[int], probe: Optional[Callable[[int], bool]] = None
            ) -> tuple[Layout, list[str]]:
    """(the layout, what to say about it). train.micro_batch: a number (given), 0 (batch_size / W
    at a fresh start; a resume keeps the checkpoint's `saved`), auto (probe(n): does a micro-batch
    of n fit this rank's device; every rank probes its own, they take the smallest: one
    all-reduce; without a probe (the CPU): batch_size / W). An explicit auto probes on a resume
    too (a requeue onto a smaller GPU)."""
    batch, w = cfg.train.batch_size, world.world_size
    local, notes = batch // w, []
    requested = cfg.train.micro_batch
    given = requested != "0" and is_set(cfg, "train.micro_batch") or saved is None
    if given and requested == "auto":
        micro = local if probe is None else -max_over_ranks(-largest_fitting(local, probe), world)
        notes.append(f"train.micro_batch=auto: {micro} images per forward on {world.device}")
    elif given:
        micro = local if requested == "0" else int(requested)
    else:
        micro = saved  # elastic: a resume keeps the memory per rank, the accumulation follows W
    if micro > local:
        notes.append(f"train.micro_batch {micro} x {w} rank(s) is more than train.batch_size {batch}: micro-batches "
                     f"of {local} (batch_size / world size)")
        micro = local
    if local % micro and not given:  # the checkpoint's value, not the user's: the nearest that divides
        fallback = max(d for d in range(1, micro + 1) if local % d == 0)
        notes.append(f"the checkpoint's micro-batch of {micro} does not divide the {local} images each of {w} rank(s) "
                     f"holds of train.batch_size {batch}: micro-batches of {fallback}")
        micro = fallback
    if local % micro:
        raise UserError(f"train.micro_batch: {micro} images per forward does not divide the {local} that each of "
                        f"{w} rank(s) holds of train.batch_size {batch} (batch_size / (world size x micro_batch) "
                        "micro-batches must be a whole number)")
    return Layout(w, local // micro, micro), notes
