"""Signals that end a run early without losing work.

SIGUSR2 (Slurm's warning before a time limit or a preemption; submitit's signal, since USR1
belongs to NCCL) and SIGTERM (scancel, `scontrol requeue`, torchrun forwarding) only set a
flag here. The training loop combines the flag across ranks at each step boundary (one
all-reduce), every rank stops at the same step, rank 0 saves that step, then:
  - SIGUSR2 under submitit: submitit's own handler runs on rank 0 (it calls the job's
    checkpoint(), requeues and exits) -- the state it resumes from is already on disk;
  - SIGUSR2 under a plain sbatch script: rank 0 runs `scontrol requeue $SLURM_JOB_ID`;
  - SIGTERM (or a first Ctrl-C): exit; whoever sent it decides what comes next (a requeue
    resumes from the save).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

SIGNALS = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)
# Agreement across ranks takes the highest priority seen anywhere (a MAX all-reduce).
PRIORITY = {0: 0, signal.SIGINT: 1, signal.SIGTERM: 2, signal.SIGUSR2: 3}
BY_PRIORITY = {v: k for k, v in PRIORITY.items()}


class Preemption:
    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def install(self) -> "Preemption":
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
        # USR2 wins over TERM: submitit's interrupt sends TERM first, then USR2.
        if PRIORITY[signum] > PRIORITY[self.signum]:
            self.signum = signum

    @property
    def priority(self) -> int:
        return PRIORITY[self.signum]

    def agree(self, priority: int) -> None:
        """Adopt the signal the ranks agreed on (some ranks may not have received any)."""
        self.signum = BY_PRIORITY[priority]

    @property
    def requested(self) -> bool:
        return self.signum != 0

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def requeue_if_asked(self, is_main: bool) -> None:
        """After the stop step is saved and the process group is gone: requeue on USR2
        (rank 0 only, as submitit does)."""
        if self.signum != signal.SIGUSR2 or not is_main:
            return
        previous = self._previous.get(signal.SIGUSR2)
        if callable(previous):  # submitit's checkpoint_and_try_requeue: requeues, then exits
            try:
                previous(signal.SIGUSR2, None)
            except subprocess.SubprocessError as e:  # its scontrol requeue; Slurm may be requeuing already
                print(f"gan_dist: warning: requeue failed ({e})", file=sys.stderr, flush=True)
        elif os.environ.get("SLURM_JOB_ID"):
            job = os.environ["SLURM_JOB_ID"]
            r = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                print(f"gan_dist: warning: scontrol requeue {job} failed: {r.stderr.strip()}",
                      file=sys.stderr, flush=True)
