"""Local ranks for the tools that run trials in subprocesses (bench, check): N processes of one
command on this machine with torchrun's variables (gloo over loopback, a free port), each in
its own session, waited for at most `timeout` seconds, and killed whatever happens."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from gan_dist.errors import UserError

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                      "TORCHELASTIC_RUN_ID")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(extra: Optional[dict] = None) -> dict:
    """This environment without a launcher's rank variables, one thread per process, and this
    checkout importable (the children may run from another folder)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])))
    for key in LAUNCHER_VARIABLES:
        env.pop(key, None)
    return {**env, **(extra or {})}


def run_ranks(cmd: list[str], world_size: int, log_dir: str | Path, name: str, timeout: float,
              env: Optional[dict] = None, cwd: Optional[str] = None, echo: bool = True) -> None:
    """Run `cmd` as ranks 0..world_size-1; logs in LOG_DIR/NAME.RANK.log. A rank that fails or
    a timeout is a UserError naming it (with `echo`, its log's tail goes to stderr first)."""
    env, port = env or child_env(), free_port()
    procs, logs = [], [Path(log_dir, f"{name}.{r}.log") for r in range(world_size)]
    try:
        for r in range(world_size):
            e = env if world_size == 1 else dict(env, RANK=str(r), WORLD_SIZE=str(world_size), LOCAL_RANK=str(r),
                                                 LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                                                 MASTER_PORT=str(port))
            with open(logs[r], "w") as log:
                procs.append(subprocess.Popen(cmd, env=e, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        deadline = time.monotonic() + timeout
        for r, p in enumerate(procs):
            try:
                rc = p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise UserError(f"{name}: no result within {timeout:g} s") from None
            if rc:
                if echo:
                    sys.stderr.write(logs[r].read_text()[-3000:])
                raise UserError(f"{name}: rank {r} exited with code {rc}: {last_line(log_dir, name, r)}")
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def last_line(log_dir: str | Path, name: str, rank: int = 0) -> str:
    """The error a failed rank ended with: its log's last "...Error: ..." line (or last line)."""
    lines = [ln for ln in Path(log_dir, f"{name}.{rank}.log").read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.search(r"(Error|Exception|error): ", ln)]
    line = (errors or lines or [""])[-1].strip()
    return line if len(line) <= 300 else line[:297] + "..."
