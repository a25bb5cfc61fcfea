"""The run directory: its layout in one object, and the lock that keeps it to one run.

Rank 0 holds an exclusive lock on RUN_DIR/.lock for the life of the run (a POSIX record lock:
it works across nodes on NFS, and the kernel, or the NFS server once the client's lease ends,
drops it when the holder dies, so a crash leaves no stale lock). A second run on the same
directory -- a resubmitted job beside its requeued self -- stops at start-up with one line
naming the directory and the holder, before it reads or writes anything there.

The lock file also proves the directory is shared: rank 0 writes a fresh token into it and
every other rank must read that token through its own path to run.dir. A node-local or
differently-resolved run.dir is refused at once instead of failing at the next resume.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Optional

from gan_dist.distributed import World, broadcast_object, raise_if_any
from gan_dist.errors import UserError


def _cause(e: OSError) -> str:
    return e.strerror or type(e).__name__


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_fd: Optional[int] = None

    # ---- layout -----------------------------------------------------------------------
    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def samples(self) -> Path:
        return self.path / "samples"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def eval(self) -> Path:
        """Cached reference features of the real set (gan_dist.evaluation)."""
        return self.path / "eval"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    @property
    def lock_file(self) -> Path:
        return self.path / ".lock"

    def write_config(self, text: str) -> None:
        """config.yaml, atomically (a temporary file of this process, then a rename)."""
        tmp = self.path / f".config.yaml.tmp.{socket.gethostname()}.{os.getpid()}"
        try:
            tmp.write_text(text)
            tmp.replace(self.config)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise UserError(f"run.dir: cannot write {self.config} ({_cause(e)})") from None

    # ---- start-up: create, lock, check that every rank sees it -------------------------
    def open(self, world: World, wait_s: float) -> None:
        """Every rank calls this first; it raises the same one-line error on every rank."""
        error, token = None, None
        if world.is_main:
            try:
                self._create()
                token = self._lock(wait_s)
            except UserError as e:
                error = str(e)
        error, token = broadcast_object((error, token), world)
        if error:
            raise UserError(error)
        raise_if_any(None if world.is_main else self._sees_token(token, wait_s, world), world)

    def _create(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"run.dir: {self.path} exists and is not a directory")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"run.dir: cannot create {self.path} ({_cause(e)})") from None

    def _lock(self, wait_s: float) -> str:
        try:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"run.dir: cannot write in {self.path} ({_cause(e)})") from None
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EACCES, errno.EAGAIN):  # no locks here (Lustre without -o flock...)
                    os.close(fd)
                    raise UserError(f"run.dir: cannot lock {self.lock_file} ({_cause(e)}); two runs on "
                                    "this directory could not be told apart: use a filesystem with locks") from None
                holder = self.holder()
                # Our own job's previous attempt (a requeue) may still be letting go, e.g. an NFS
                # lease of a node that died: wait for it; anyone else is an error at once.
                ours = holder.get("job") and holder.get("job") == os.environ.get("SLURM_JOB_ID")
                if not ours or time.monotonic() > deadline:
                    os.close(fd)
                    raise UserError(f"run.dir: {self.path} is in use by another gan_dist run ({describe(holder)}); "
                                    "wait for it to end or give this run another run.dir") from None
                time.sleep(0.5)
        token = uuid.uuid4().hex
        info = {"token": token, "host": socket.gethostname(), "pid": os.getpid(),
                "job": os.environ.get("SLURM_JOB_ID", ""), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        # Written through the locked descriptor: closing another descriptor of this file
        # would drop a POSIX lock.
        data = (json.dumps(info) + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        self._lock_fd = fd
        return token

    def holder(self) -> dict:
        """Who holds (or last held) the lock, as its file says; {} when unreadable."""
        try:
            info = json.loads(self.lock_file.read_text() or "{}")
            return info if isinstance(info, dict) else {}
        except (OSError, ValueError):
            return {}

    def _sees_token(self, token: str, wait_s: float, world: World) -> Optional[str]:
        deadline = time.monotonic() + wait_s
        while self.holder().get("token") != token:
            if time.monotonic() > deadline:
                return (f"run.dir: rank {world.rank} on {socket.gethostname()} does not see the lock file rank 0 "
                        f"wrote in {self.path} (resolved here to {self.path.resolve()}) after {wait_s:g} s: run.dir "
                        "must be one directory on a filesystem every node sees (give it as an absolute path on "
                        "shared storage, not a node-local or relative one)")
            time.sleep(0.2)
        return None

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the lock
            self._lock_fd = None


def describe(holder: dict) -> str:
    if not holder:
        return "holder unknown"
    parts = [f"host {holder.get('host', '?')}", f"pid {holder.get('pid', '?')}"]
    if holder.get("job"):
        parts.append(f"Slurm job {holder['job']}")
    if holder.get("since"):
        parts.append(f"since {holder['since']}")
    return ", ".join(parts)
