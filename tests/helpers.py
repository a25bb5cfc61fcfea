"""Shared by the tests: real subprocesses (1 or 2 ranks, gloo, 1 thread each), free ports
chosen at run time, bounded waits, every spawned process killed on the way out."""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import zygote

# A tiny but real run: the digits at 8x8, narrow models, a few steps.
# the book's WGAN-GP settings (n_critic 5, lr 1e-4, which the tests' figures assume), no evaluation
TINY = ["data.image_size=8", "model.width=8", "model.z_dim=16", "train.batch_size=16", "eval.every=0",
        "loss.n_critic=5", "optim.lr=1e-4", "train.ema_decay=0.999",
        "train.threads=1", "train.log_every=2", "train.sample_every=4", "train.checkpoint_every=4"]


# The CUDA paths: a test parametrized over DEVICES runs its CUDA case where CUDA is (`make
# gpu-check` on a lent GPU) and its CPU twin everywhere, which proves the test's own logic.
CUDA = torch.cuda.is_available()
# (-m cuda selects the CUDA cases: tests/gpu_check.py)
NO_CUDA = [pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="no CUDA device here (its CPU twin ran); make "
                                                                "gpu-check runs it")]
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=NO_CUDA)]
# CUDA runs that tests compare bitwise take deterministic kernels; 2 ranks share the one GPU over gloo
ON_CUDA = ["train.deterministic=true", "train.tf32=false"]


def device_env(device: str, tmp: Path | None = None) -> dict:
    """base_env for a run on `device`: the CPU twin hides CUDA, so it runs on the CPU on a GPU machine too."""
    env = base_env(tmp)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def device_args(device: str, world_size: int = 1) -> list[str]:
    """The settings a test's run on `device` takes: none on the CPU; on CUDA deterministic kernels and
    fp32 without TF32 (bitwise comparisons), and gloo when 2 ranks share the one GPU."""
    if device == "cpu":
        return []
    return ON_CUDA + (["dist.backend=gloo"] if world_size > 1 and torch.cuda.device_count() < world_size else [])


@dataclass
class Proc:
    rc: int
    out: str
    err: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(tmp: Path | None = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", WANDB_MODE="offline",
               WANDB_SILENT="true")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    if tmp is not None:
        env["WANDB_DIR"] = str(tmp)
    return env


def start(cmd: list[str], world_size: int = 1, cwd=None, env=None) -> list:
    """Start `cmd` once per rank with torchrun's environment variables (each in its own
    session, so a test can signal its process group alone). gan_dist's own commands and test
    scripts start from a zygote (tests/zygote.py): real processes without the ~2.5 s of imports."""
    env = env or base_env()
    port = free_port()
    procs = []
    for rank in range(world_size):
        e = dict(env)
        if world_size > 1:
            e.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                     LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(popen(cmd, cwd=cwd, env=e, slot=rank))
    return procs


def popen(cmd: list[str], cwd=None, env=None, slot: int = 0):
    """subprocess.Popen(cmd, stdout/stderr piped, text, a session of its own), or the same from
    zygote `slot % 2` where it can start it (see forkable)."""
    env = base_env() if env is None else env
    if forkable(cmd):
        return zygote.ZygoteProcess(cmd, env, cwd, _zygote(slot % 2))
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def forkable(cmd: list[str]) -> bool:
    """`python -m gan_dist.X|jobs.X ...` and `python SCRIPT.py ...`; launchers (torchrun), `-c`,
    other programs, and everything under GAN_DIST_TEST_FRESH_PROCESSES=1 start fresh."""
    if os.environ.get("GAN_DIST_TEST_FRESH_PROCESSES") == "1" or len(cmd) < 2 or cmd[0] != sys.executable:
        return False
    if cmd[1] == "-m":
        return len(cmd) > 2 and cmd[2].split(".")[0] in ("gan_dist", "jobs")
    return cmd[1].endswith(".py")


_ZYGOTES: dict[int, tuple[subprocess.Popen, str]] = {}


def _zygote(slot: int) -> str:
    """The socket of zygote `slot`, both started on first use (each with its own hash seed)."""
    if slot not in _ZYGOTES:
        where = tempfile.mkdtemp(prefix="gan_dist_zygote_")
        env = base_env()
        env.pop("PYTHONHASHSEED", None)  # a random one each
        started = {}
        for s in (0, 1):
            path = os.path.join(where, f"z{s}.sock")
            started[s] = (subprocess.Popen([sys.executable, zygote.__file__, path], env=env, stdout=subprocess.PIPE,
                                           stdin=subprocess.DEVNULL, text=True, start_new_session=True), path)
        _ZYGOTES.update(started)
        for proc, path in started.values():
            if proc.stdout.readline().strip() != "ready":
                stop_zygotes()
                raise RuntimeError(f"the test zygote {path} did not start (exit {proc.wait()})")
        atexit.register(stop_zygotes)
    return _ZYGOTES[slot][1]


def stop_zygotes() -> None:
    for proc, path in _ZYGOTES.values():
        kill([proc])  # its group: the zygote and the supervisors waiting for their processes
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)
    _ZYGOTES.clear()


def finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[Proc]:
    """Wait for every process (bounded); kill whatever is left, whatever happens."""
    try:
        results = []
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            results.append(Proc(p.returncode, out, err))
        return results
    finally:
        kill(procs)


def kill(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def spawn(cmd: list[str], world_size: int = 1, timeout: float = 240, cwd=None, env=None) -> list[Proc]:
    procs = start(cmd, world_size, cwd, env)
    return finish(procs, timeout)


def wait_for(predicate, timeout: float, what: str, procs=()) -> None:
    """Poll (bounded); fail early if one of `procs` already exited."""
    deadline = time.monotonic() + timeout
    while not predicate():
        for p in procs:
            if p.poll() is not None:
                out, err = p.communicate()
                raise AssertionError(f"process exited ({p.returncode}) before {what}:\n{out[-2000:]}\n{err[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def metrics_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


def assert_same_state(a: dict, b: dict) -> None:
    """Bitwise-equal generator and critic parameters (and step)."""
    assert a["step"] == b["step"]
    for net in ("generator", "critic"):
        for name, t in a[net].items():
            assert torch.equal(t, b[net][name]), f"{net}.{name} differs by {(t - b[net][name]).abs().max()}"


def train(args: list[str], world_size: int = 1, **kw) -> list[Proc]:
    return spawn([sys.executable, "-m", "gan_dist.train", *args], world_size, **kw)


INJECT = str(Path(__file__).with_name("workers") / "inject.py")


def train_injected(args: list[str], world_size: int = 1, env_extra: dict | None = None, **kw) -> list[Proc]:
    """gan_dist.train with a fault placed by tests/workers/inject.py (see there)."""
    return spawn([sys.executable, INJECT, *args], world_size, env=dict(base_env(), **(env_extra or {})), **kw)


def ok(results: list[Proc]) -> list[Proc]:
    for r in results:
        assert r.rc == 0, f"exit {r.rc}\nstdout:\n{r.out[-3000:]}\nstderr:\n{r.err[-3000:]}"
    return results


def one_line_error(result: Proc, *needles: str) -> str:
    """The bad-input contract: exit 2, exactly one line on stderr, no traceback."""
    assert result.rc == 2, f"exit {result.rc}; stderr:\n{result.err}"
    assert "Traceback" not in result.err, result.err
    lines = [ln for ln in result.err.splitlines() if ln.strip() and "warning" not in ln.lower()]
    assert len(lines) == 1 and lines[0].startswith("gan_dist: error:"), result.err
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def latest_ckpt(run_dir: Path) -> dict:
    paths = sorted((run_dir / "checkpoints").glob("step_*.pt"))
    assert paths, f"no checkpoint in {run_dir}"
    return load_ckpt(paths[-1])


def write_fashion_mnist(root: Path, n: int = 64, seed: int = 0, folder: str = "FashionMNIST",
                        splits=("train", "t10k")) -> Path:
    """A Fashion-MNIST raw folder (root/`folder`/raw; folder=MNIST for MNIST) in the IDX format
    torchvision reads, with the `splits` asked for."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for split, count in (("train", n), ("t10k", n // 4)):
        if split not in splits:
            continue
        images = torch.randint(0, 256, (count, 28, 28), generator=g, dtype=torch.uint8)
        labels = torch.arange(count, dtype=torch.uint8) % 10
        (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, count, 28, 28) + images.numpy().tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, count) + labels.numpy().tobytes())
    return root


def write_image_folder(root: Path, classes=("G", "NoG"), per_class: int = 6, size=(20, 24)) -> Path:
    """An ImageFolder tree of small RGB PNGs, one subfolder per class."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(root / c / f"{i}.png")
    return root


def tool_here(capsys, *args):
    """The tool's main in this process (a refusal is decided before any work: no process to start)."""
    from gan_dist.cli.dataset_tool import main

    try:
        rc = main(list(map(str, args)))
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return Proc(rc, out, err)
