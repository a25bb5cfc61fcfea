"""The start-up benchmark (`python -m gan_dist.bench --startup [--config FILE] [key=value ...]`):
what every rank of a job pays before its first training step, from the process start (the
kernel's clock: interpreter, imports, data, models, the evaluation's reference features,
resume), as `python -m gan_dist.train` reports it (startup_s, the first row of metrics.jsonl),
on 1 and 2 ranks; beside it the floor any torch program pays: `import torch`, and torch.optim,
whose first optimizer imports torch._dynamo. Each figure: `repeats` fresh processes, after one
warm-up process (the files in the page cache, as for a job's second start).
A benchmark to read, not a timed test."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from gan_dist.distributed import launch
from gan_dist.errors import UserError

# each prints its process's age once its work is done: the clock startup_s is read with
AGE = "from gan_dist.runs.clock import process_age; print(process_age())"
FLOOR = {"python -c 'import torch'": f"import torch; {AGE}",
         "+ torch.optim.Adam (imports torch._dynamo)":
             f"import torch; torch.optim.Adam([torch.zeros(1, requires_grad=True)]); {AGE}"}


def _summary(values: list[float]) -> dict:
    return {"median_s": statistics.median(values), "min_s": min(values), "max_s": max(values), "runs_s": values}


def _train_startup(cfg_args: list[str], ranks: int, tmp: Path, name: str, timeout: float) -> float:
    """One `python -m gan_dist.train` to its first step, then stop: rank 0's startup_s."""
    run = tmp / name
    cmd = [sys.executable, "-m", "gan_dist.train", *cfg_args, f"run.dir={run}", "train.steps=1", "train.log_every=1",
           "train.sample_every=1000000", "train.threads=1"]
    launch.run_ranks(cmd, ranks, tmp, name, timeout, env=launch.child_env())
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    if not rows or "startup_s" not in rows[0]:
        raise UserError(f"{name}: the run's metrics.jsonl has no startup_s")
    return float(rows[0]["startup_s"])


def run(config_file: Optional[str], overrides: list[str], repeats: int = 5, timeout: float = 300.0, log=print) -> dict:
    cfg_args = (["--config", config_file] if config_file else []) + list(overrides)
    out: dict = {"argv": sys.argv[1:], "repeats": repeats, "floor": {}, "train": {}}
    # one warm-up first: the figures are those of files in the page cache (a job's second start)
    subprocess.run([sys.executable, "-c", FLOOR[list(FLOOR)[-1]]], check=True, env=launch.child_env(), timeout=timeout)
    for label, code in FLOOR.items():
        times = [float(subprocess.run([sys.executable, "-c", code], check=True, env=launch.child_env(), timeout=timeout,
                                      capture_output=True, text=True).stdout) for _ in range(repeats)]
        out["floor"][label] = _summary(times)
        log(f"{label:45s} {statistics.median(times):6.2f} s (median of {repeats})")
    with tempfile.TemporaryDirectory(prefix="gan_dist_startup_") as t:
        for ranks in (1, 2):
            times = [_train_startup(cfg_args, ranks, Path(t), f"r{ranks}_{i}", timeout) for i in range(repeats)]
            out["train"][f"{ranks} rank(s)"] = _summary(times)
            log(f"{'python -m gan_dist.train, ' + str(ranks) + ' rank(s), to step 1':45s} "
                f"{statistics.median(times):6.2f} s (median of {repeats}; min {min(times):.2f}, max {max(times):.2f})")
    return out
