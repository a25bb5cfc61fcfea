"""Rank-0 atomic checkpoints: write a temporary file, fsync, os.replace; keep the last K.
Loads use weights_only=True (checkpoints hold only tensors, numbers, strings, lists, dicts).
An unreadable checkpoint is reported and the one before it is used; one written under an
incompatible config is a one-line error, never a crash inside load_state_dict."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from gan_dist.config import ARCHITECTURE_KEYS, Config, get
from gan_dist.errors import UserError

_NAME = re.compile(r"^step_(\d{8})\.pt$")
REQUIRED_KEYS = ("generator", "critic", "opt_generator", "opt_critic", "step", "epoch", "position", "config")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Finished checkpoints, oldest first (temporary files of an interrupted write are ignored)."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _NAME.match(p.name))


def save(run_dir: str | Path, state: dict[str, Any], keep: int) -> Path:
    """Call on rank 0 only. A kill at any moment leaves the previous checkpoint intact."""
    d = checkpoint_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    final = d / f"step_{state['step']:08d}.pt"
    tmp = d / f".{final.name}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    dir_fd = os.open(d, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    for stale in d.glob(".step_*.tmp.*"):  # left by a writer killed mid-write
        stale.unlink(missing_ok=True)
    return final


def _read(path: Path) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError("not a gan_dist checkpoint (not a dict)")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"not a gan_dist checkpoint (missing {', '.join(missing)})")
    return state


def load_latest(run_dir: str | Path, warn: Callable[[str], None] = print) -> Optional[tuple[dict, Path]]:
    """The newest readable checkpoint, or None when the run directory has none."""
    paths = list_checkpoints(run_dir)
    for path in reversed(paths):
        try:
            return _read(path), path
        except Exception as e:  # torch raises many types for truncated/corrupt files
            warn(f"checkpoint {path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                 "trying the one before it")
    if paths:
        raise UserError(f"no readable checkpoint in {checkpoint_dir(run_dir)} ({len(paths)} unreadable); "
                        "move them away to start afresh")
    return None


def read(path: str | Path) -> dict[str, Any]:
    """One named checkpoint, for export and sampling; one-line error if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        return _read(path)
    except Exception as e:
        raise UserError(f"checkpoint {path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def check_compatible(state: dict[str, Any], cfg: Config, path: Path) -> None:
    saved = state["config"]
    for key in ARCHITECTURE_KEYS:
        section, name = key.split(".")
        old = saved.get(section, {}).get(name)
        if old != get(cfg, key):
            raise UserError(f"checkpoint {path} was written with {key}={old!r}, this run has "
                            f"{key}={get(cfg, key)!r}: use the same setting or another run.dir")


def load_state(module: torch.nn.Module, state: dict[str, Any], what: str, path: Path) -> None:
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as e:
        raise UserError(f"checkpoint {path}: its {what} does not fit this model "
                        f"({str(e).splitlines()[0]})") from None
