"""Rank-0 atomic checkpoints: write a temporary file, fsync, os.replace; keep the last K.
Loads use weights_only=True (checkpoints hold only tensors, numbers, strings, lists, dicts).
An unreadable checkpoint is reported and the one before it is used; one written under an
incompatible config is a one-line error, never a crash inside load_state_dict."""
from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from gan_dist.config import ARCHITECTURE_KEYS, Config, get
from gan_dist.distributed import World, broadcast_object, raise_if_any
from gan_dist.errors import UserError, first_line
from gan_dist.runs.run_dir import RunDir

_NAME = re.compile(r"^step_(\d{8})\.pt$")
REQUIRED_KEYS = ("generator", "critic", "opt_generator", "opt_critic", "step", "config")
OPTIONAL_PARTS = ("divergence", "best", "augment")  # newer than some checkpoints, or ADA switched on


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Finished checkpoints, oldest first (temporary files of an interrupted write are ignored)."""
    d = RunDir(run_dir).checkpoints
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _NAME.match(p.name))


def _state_bytes(state: Any) -> int:
    """About what torch.save writes for a state: the tensors' bytes, and ~330 bytes of archive
    entry and alignment per tensor (measured: 89,750 bytes for 74,288 of 47 tensors)."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size() + 384
    if isinstance(state, dict):
        return sum(_state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_state_bytes(v) for v in state)
    return 0


def _os_error(e: BaseException) -> Optional[OSError]:
    """The OSError behind an error (torch.save wraps a failed write in a RuntimeError)."""
    while e is not None and not isinstance(e, OSError):
        e = e.__cause__ or e.__context__
    return e


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} kB"


def save(run_dir: str | Path, state: dict[str, Any], keep: int, name: str = "") -> Path:
    """Call on rank 0 only, holding the run directory's lock. A kill at any moment leaves the
    previous checkpoint intact; a full disk is a one-line error that leaves no partial file.
    `name` (best.pt) instead of step_N.pt: a file outside the rotation of the last `keep`."""
    d = RunDir(run_dir).checkpoints
    final = d / (name or f"step_{state['step']:08d}.pt")
    tmp = d / f".{final.name}.tmp.{socket.gethostname()}.{os.getpid()}"
    try:
        d.mkdir(parents=True, exist_ok=True)
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
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as either
        tmp.unlink(missing_ok=True)  # a partial file would keep the disk full for the restart too
        os_error = _os_error(e)
        if os_error is not None and os_error.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(d).free if d.is_dir() else 0
            raise UserError(f"checkpoint {final}: {os_error.strerror} (needs about {_size(_state_bytes(state))}, "
                            f"{_size(free)} free); removed the partial file, the earlier checkpoints are intact: "
                            "free space and run the same command to resume") from None
        cause = os_error.strerror if os_error is not None and os_error.strerror else first_line(e)
        raise UserError(f"checkpoint {final}: cannot write ({cause}); removed the partial file, "
                        "the earlier checkpoints are intact") from None
    # The new checkpoint is in place: what follows only tidies up, and a failure to remove a
    # file (permissions, a flaky NFS server) is a warning, never a stop.
    old = list_checkpoints(run_dir)[:-keep] if not name else []
    stale = list(d.glob(".*.pt.tmp.*"))  # left by a writer killed mid-write (only the lock holder saves)
    for path in old + stale:
        try:
            path.unlink(missing_ok=True)
        except OSError as e:
            logging.getLogger("gan_dist").warning(f"could not remove {path} ({e.strerror or e}); it stays")
    return final


def _read(path: Path) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError("not a gan_dist checkpoint (not a dict)")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"not a gan_dist checkpoint (missing {', '.join(missing)})")
    return state


def load_latest(run_dir: str | Path, warn: Callable[[str], None] = logging.getLogger("gan_dist").warning) -> Optional[tuple[dict, Path]]:
    """The newest readable checkpoint, or None when the run directory has none."""
    paths = list_checkpoints(run_dir)
    for path in reversed(paths):
        try:
            return _read(path), path
        except Exception as e:  # torch raises many types for truncated/corrupt files
            warn(f"checkpoint {path} is unreadable ({first_line(e)}); trying the one before it")
    if paths:
        raise UserError(f"no readable checkpoint in {RunDir(run_dir).checkpoints} ({len(paths)} unreadable); "
                        "move them away to start afresh")
    return None


def resume_state(run_dir: str | Path, world: World, wait_s: float,
                 warn: Callable[[str], None] = logging.getLogger("gan_dist").warning) -> Optional[tuple[dict, Path]]:
    """What the run resumes from, the same on every rank: rank 0 picks the latest readable
    checkpoint and broadcasts its name and step; every rank loads exactly that file (waiting up
    to wait_s for a shared filesystem to show it) or all stop with one line. Ranks that each
    picked their own would start at different steps and hang at the first collective."""
    choice, error = None, None
    if world.is_main:
        try:
            found = load_latest(run_dir, warn)
            choice = None if found is None else (found[1].name, int(found[0]["step"]))
        except UserError as e:
            error = str(e)
    choice, error = broadcast_object((choice, error), world)
    if error:
        raise UserError(error)
    if choice is None:
        return None
    name, step = choice
    path = RunDir(run_dir).checkpoints / name
    state, error, deadline = (found[0] if world.is_main else None), None, time.monotonic() + wait_s
    while state is None and error is None:
        try:
            state = _read(path)
        except FileNotFoundError:
            if time.monotonic() > deadline:
                error = (f"rank {world.rank} on {socket.gethostname()}: {path}, the checkpoint rank 0 resumes from, "
                         f"is not there after {wait_s:g} s: run.dir must be one directory on a filesystem every node sees")
            time.sleep(0.2)
        except Exception as e:
            error = f"rank {world.rank} on {socket.gethostname()}: cannot read {path}, which rank 0 read ({first_line(e)})"
    if state is not None and int(state["step"]) != step:
        error = (f"rank {world.rank} on {socket.gethostname()}: {path} holds step {state['step']}, rank 0 read step "
                 f"{step}: run.dir must be one directory on a filesystem every node sees")
    raise_if_any(error, world)
    return state, path


def _old_data_position(state: dict[str, Any]) -> tuple[int, int]:
    """(epoch, samples seen in it) of older checkpoints: top-level keys, and before that the
    position in batches of the batch size they were written with."""
    if "samples_in_epoch" in state:
        return int(state["epoch"]), int(state["samples_in_epoch"])
    return int(state["epoch"]), int(state.get("position", 0)) * int(state["config"]["train"]["batch_size"])


def data_info(state: dict[str, Any], cfg: Config, path: Path):
    """The checkpoint's DataInfo (classes, channels, image size: what rebuilds the generator)."""
    from gan_dist.data.datasets import IDX_DATASETS, DataInfo

    info = state.get("data_info")
    try:
        return DataInfo(**info)
    except TypeError:  # missing (not written by gan_dist.train) or of another shape
        pass
    if cfg.data.name in ("digits", *IDX_DATASETS):  # fixed by the dataset: 10 classes, grayscale
        return DataInfo(10, 1, cfg.data.image_size)
    raise UserError(f"checkpoint {path} has no data_info (classes, channels, image size), which gan_dist.train "
                    f"writes: the generator of a {cfg.data.name} run cannot be rebuilt without it")


def read(path: str | Path) -> dict[str, Any]:
    """One named checkpoint, for export and sampling; one-line error if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        return _read(path)
    except Exception as e:
        raise UserError(f"checkpoint {path} is unreadable ({first_line(e)})") from None


def check_compatible(state: dict[str, Any], cfg: Config, path: Path, data: Optional[dict] = None) -> list[str]:
    """One line if the checkpoint cannot be resumed under cfg (another architecture); what
    changed that may. data: this run's dataset fingerprint (datasets.fingerprint): data.name
    may change (an ImageFolder and the zip made from it) when the fingerprints agree."""
    saved, defaults, notes = state["config"], Config(), []
    old_data = state.get("data_fingerprint")
    for key in ARCHITECTURE_KEYS:
        section, name = key.split(".")
        old = saved.get(section, {}).get(name, get(defaults, key))  # a key newer than the checkpoint: its default
        if old == get(cfg, key):
            continue
        if key == "data.name" and data is not None and _same_data(old_data, data):
            notes.append(f"data.name {old} -> {cfg.data.name} (the same {data['count']} images, labels, size and "
                         "pixels" + (")" if "pixels" in old_data else "; the checkpoint predates the pixel sample)"))
            continue
        why = ""
        if key == "data.name" and data is not None:
            why = (f" (a resume may switch datasets only to the same images: {_differ(old_data, data)})"
                   if old_data else " (the checkpoint has no dataset fingerprint to compare)")
        raise UserError(f"checkpoint {path} was written with {key}={old!r}, this run has "
                        f"{key}={get(cfg, key)!r}{why}: use the same setting or another run.dir")
    if old_data and data is not None and _differ(old_data, data) != "the same":
        logging.getLogger("gan_dist").warning(f"the dataset changed since {path.name} ({_differ(old_data, data)}); "
                                              "the epoch goes on at the saved position of the new data")
    return notes


def _same_data(old: Optional[dict], new: dict) -> bool:
    """The same images: every part of the fingerprints agrees, labels and pixels known (a
    checkpoint from before the pixel sample is compared on the rest)."""
    return bool(old) and _differ(old, new) == "the same" and bool(new.get("labels")) and \
        (new.get("pixels") is not None or "pixels" not in old)


def _differ(old: dict, new: dict) -> str:
    """The parts of the fingerprint that differ (those the older of the two records)."""
    parts = [f"{k} {old[k]} -> {new[k]}" if k != "pixels" else
             "the pixels of a sample of images differ (other channels, resize or files)"
             for k in new if k in old and old[k] != new[k]]
    return ", ".join(parts) or "the same"


def load_state(module: torch.nn.Module, state: dict[str, Any], what: str, path: Path) -> None:
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as e:
        raise UserError(f"checkpoint {path}: its {what} does not fit this model "
                        f"({first_line(e)})") from None


def restore(parts: dict[str, Any], state: dict[str, Any], path: Path) -> None:
    """Load every stateful part (modules, optimizers, the data position) from its entry."""
    for name, part in parts.items():
        if name == "generator_ema":  # a checkpoint from a run without EMA: the generator's weights
            saved = state.get(name, state["generator"])
        elif name == "data" and name not in state:  # written before the data position was a part
            saved = dict(zip(("epoch", "samples_in_epoch"), _old_data_position(state)))
        elif name in OPTIONAL_PARTS and name not in state:  # written before it existed: as new
            continue
        else:
            saved = state[name]
        load_state(part, saved, name.replace("_", " "), path)


def apply_optimizer_config(optimizers: dict, cfg: Config, state: dict[str, Any], world_size: int,
                           lr_scale: float = 1.0) -> list[str]:
    """load_state_dict restored the checkpoint's hyperparameters: the config's apply on top (a
    resumed run may lower its lr), each network's own (optim.generator / optim.critic, else the
    shared optim.*), the lr times lr_scale (what rollbacks did to it). optimizers: {"generator":
    opt, "critic": opt}. Returns what changed since the checkpoint, for the log."""
    changed = {}
    for network, opt in optimizers.items():
        old = state[f"opt_{network}"]["param_groups"][0]
        new = cfg.optim.of(network)
        new["lr"] *= lr_scale
        changed[network] = [(k, old[k], v) for k, v in new.items()
                            if k in old and (tuple(old[k]) if isinstance(old[k], (list, tuple)) else old[k]) != v]
        for group in opt.param_groups:
            group.update(new)
    same = len({repr(c) for c in changed.values()}) == 1  # both networks changed alike: say it once
    changes = [f"optim.{k} {a!r} -> {b!r}" for k, a, b in changed["generator"]] if same else \
        [f"optim.{n}.{k} {a!r} -> {b!r}" for n, c in changed.items() for k, a, b in c]
    batch, ranks = state["config"]["train"]["batch_size"], state.get("world_size", world_size)
    if (batch, ranks) != (cfg.train.batch_size, world_size):  # the data position is in samples: fine
        changes.append(f"global batch {batch} on {ranks} rank(s) -> {cfg.train.batch_size} on {world_size}")
    return changes


def load_state_equal(a: Path, b: Path) -> str:
    """"" when two checkpoints hold bitwise the same training state (models, optimizers, EMA,
    data position, step; not the config they were run with or the seconds they took), else the
    first key that differs."""
    def first_difference(x, y, where: str) -> str:
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            return "" if x.shape == y.shape and torch.equal(x, y) else where
        if isinstance(x, dict) and isinstance(y, dict):
            if x.keys() != y.keys():
                return where or "(keys)"
            return next((d for k in x for d in [first_difference(x[k], y[k], f"{where}.{k}".lstrip("."))] if d), "")
        if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
            if len(x) != len(y):
                return where
            return next((d for i, (u, v) in enumerate(zip(x, y)) for d in [first_difference(u, v, f"{where}[{i}]")] if d), "")
        return "" if x == y else where
    sa, sb = (_read(p) for p in (a, b))
    skip = ("config", "wandb_run_id", "train_seconds")  # how it was run, and how long: not the training state
    return first_difference({k: v for k, v in sa.items() if k not in skip}, {k: v for k, v in sb.items() if k not in skip}, "")
