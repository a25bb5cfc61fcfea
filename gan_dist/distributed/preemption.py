"""Signals that end a run early without losing work.

SIGUSR2 (Slurm's warning before a time limit or a preemption; submitit's signal, since USR1
belongs to NCCL) and SIGTERM (scancel, `scontrol requeue`, torchrun forwarding) only set a
flag here, which only ever rises. The training loop combines the flags across ranks at each
step boundary (one all-reduce), every rank stops at the same step, rank 0 saves that step,
then, before any rank exits:
  - SIGUSR2 under submitit: submitit's own handler runs on rank 0 (it calls the job's
    checkpoint(), requeues and exits) -- the state it resumes from is already on disk;
  - SIGUSR2 under a plain sbatch script: rank 0 runs `scontrol requeue $SLURM_JOB_ID`;
  - SIGTERM (or a first Ctrl-C): exit; whoever sent it decides what comes next (a requeue
    resumes from the save).
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from typing import Any, Optional

from gan_dist.distributed.collectives import barrier, maxes_over_ranks
from gan_dist.distributed.world import World

log = logging.getLogger("gan_dist")
SIGNALS = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)
# Agreement across ranks takes the highest priority seen anywhere (a MAX all-reduce).
PRIORITY = {0: 0, signal.SIGINT: 1, signal.SIGTERM: 2, signal.SIGUSR2: 3}
BY_PRIORITY = {v: k for k, v in PRIORITY.items()}
SETTLE_S = 1.0


class Preemption:
    def __init__(self) -> None:
        self.signum = 0
        self.requeued = False
        self.time_up = False  # some rank's train.max_time_s is spent (agree's second value)
        self._previous: dict[int, Any] = {}

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    def install(self) -> "Preemption":
        """Early (before the process group and the data): a signal during start-up is kept."""
        for sig in SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the save
        self._raise_to(PRIORITY[signum])

    def _raise_to(self, priority: int) -> None:
        """The pending signal only ever rises (USR2 wins over TERM: Slurm's preemption and
        submitit's interrupt send both), never falls."""
        if priority > PRIORITY[self.signum]:
            self.signum = BY_PRIORITY[priority]

    @property
    def priority(self) -> int:
        return PRIORITY[self.signum]

    def agree(self, world: World, time_up: bool = False) -> int:
        """The highest signal any rank has seen, the same on every rank (one CPU all-reduce):
        what the ranks act on, all at the same step. The local flag is only raised to it, never
        overwritten: a signal that lands while the all-reduce runs stays pending and is agreed
        on at the next step boundary. time_up (this rank's clock has spent train.max_time_s)
        rides in the same all-reduce: self.time_up says whether any rank's has."""
        agreed, any_time_up = maxes_over_ranks([self.priority, int(time_up)], world)
        self._raise_to(agreed)
        self.time_up = self.time_up or bool(any_time_up)
        return agreed

    def settle(self, world: World, agreed: int) -> None:
        """At a stop on SIGTERM inside a Slurm job: wait a moment and agree again. Slurm's
        preemption sends USR2 and TERM milliseconds apart (submitit's test interrupt TERM
        first), and only USR2 means "requeue me": acting on TERM alone would end the job.
        Branches on `agreed` (what agree() returned, the same on every rank), never on this
        rank's own flag, which a signal may have raised since: ranks that branched on their
        own flags would not all enter the second agreement."""
        if agreed == PRIORITY[signal.SIGTERM] and os.environ.get("SLURM_JOB_ID"):
            time.sleep(SETTLE_S)
            self.agree(world)

    def stop(self, world: World) -> Optional[BaseException]:
        """At a stop, every rank here at the same step with that step saved: agree once more (a
        signal that came in meanwhile counts, and a USR2 that follows Slurm's TERM), then rank 0
        requeues (on USR2) while the others wait, so none exits before the requeue. Returns
        what submitit's handler raised, to be raised once the process group is gone."""
        self.settle(world, self.agree(world))
        deferred = self.requeue_if_asked(world.is_main)
        barrier(world)
        return deferred

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def requeue_if_asked(self, is_main: bool) -> Optional[BaseException]:
        """After the stop step is saved, while every rank still waits at a barrier (so srun's
        --kill-on-bad-exit cannot end rank 0 before it requeues): requeue on USR2, rank 0
        only, as submitit does. Returns what submitit's handler raised (its exit after a
        requeue, or its "not requeued" error), to be raised once the process group is gone."""
        if self.signum != signal.SIGUSR2 or not is_main or self.requeued:
            return None
        self.requeued = True
        previous = self._previous.get(signal.SIGUSR2)
        if callable(previous):  # submitit's checkpoint_and_try_requeue: requeues, then sys.exit
            try:
                previous(signal.SIGUSR2, None)
            except subprocess.SubprocessError as e:  # its scontrol requeue; Slurm may be requeuing already
                log.warning("requeue failed (%s)", e)
            except BaseException as e:  # noqa: B036 (SystemExit included: raised after teardown)
                return e
        elif os.environ.get("SLURM_JOB_ID"):
            job = os.environ["SLURM_JOB_ID"]
            try:
                r = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
                failed = r.stderr.strip() if r.returncode else ""
            except (OSError, subprocess.TimeoutExpired) as e:
                failed = str(e)
            if failed:
                log.warning("scontrol requeue %s failed: %s", job, failed)
            else:
                print(f"requeued Slurm job {job}", flush=True)
        return None
