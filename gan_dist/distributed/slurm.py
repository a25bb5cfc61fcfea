"""What Slurm tells a task: its rank among the tasks of an srun step, the rendezvous host,
and whether GPUs were allocated to it. Nothing here imports submitit unless a node list has to
be parsed without scontrol."""
from __future__ import annotations

import subprocess
from typing import Optional

from gan_dist.distributed.seeding import mix_seed
from gan_dist.errors import UserError


def srun_ranks(env) -> Optional[dict]:
    """When srun started this process as one of several tasks, with no torchrun in between:
    rank, local_rank, world_size, local_world_size from Slurm's variables (else N tasks would
    each train as rank 0 of 1 in one run.dir), and MASTER_ADDR/PORT exported; else None."""
    tasks = env.get("SLURM_STEP_NUM_TASKS", "")
    if "SLURM_STEP_ID" not in env or not tasks.isdigit() or int(tasks) <= 1:
        return None
    try:
        per_node = [int(n) for group in env["SLURM_STEP_TASKS_PER_NODE"].split(",")
                    for n in _expand_count(group)]
        node = int(env.get("SLURM_NODEID", "0"))
        ranks = dict(rank=int(env["SLURM_PROCID"]), local_rank=int(env["SLURM_LOCALID"]), world_size=int(tasks),
                     local_world_size=per_node[min(node, len(per_node) - 1)])
        job, step = env["SLURM_JOB_ID"], env["SLURM_STEP_ID"]
    except (KeyError, ValueError) as e:
        raise UserError(f"srun started {tasks} tasks but Slurm's variables do not say this task's rank ({e}); "
                        "start with torchrun, or run one task") from None
    env.setdefault("MASTER_ADDR", _first_host(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "")))
    # The same port on every task of this step, another for another step of the job.
    env.setdefault("MASTER_PORT", str(20000 + mix_seed(job, step) % 20000))
    env.update({key.upper(): str(value) for key, value in ranks.items()})
    return ranks


def _expand_count(group: str) -> list[str]:
    """Slurm's "2(x3)" -> ["2", "2", "2"]."""
    count, _, times = group.partition("(x")
    return [count] * (int(times.rstrip(")")) if times else 1)


def _first_host(nodelist: str) -> str:
    """The first host of a Slurm node list ("gpu[003-006,9],cpu1" -> "gpu003"), as
    `scontrol show hostnames` gives it; submitit's parser when scontrol is not there."""
    try:
        r = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30)
        if r.returncode == 0 and r.stdout.split():
            return r.stdout.split()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    from submitit.slurm.slurm import _parse_node_list

    try:
        return _parse_node_list(nodelist)[0]
    except Exception:
        raise UserError(f"cannot find the first host of SLURM_STEP_NODELIST={nodelist!r} "
                        "(set MASTER_ADDR, or start with torchrun)") from None


GPU_INDICES = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS")  # lists of GPU indices: "0" is GPU 0
GPU_COUNTS = ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_TASK", "SLURM_GPUS_PER_NODE", "SLURM_GPUS")  # "4", "a100:4"


def allocated_gpus(env) -> str:
    """"NAME=value" of the first Slurm variable saying GPUs were allocated to this job, or ""."""
    for name in GPU_INDICES + GPU_COUNTS:
        value = env.get(name, "").strip()
        if value in ("", "(null)", "N/A", "none"):
            continue
        count = value.rsplit(":", 1)[-1]
        if name in GPU_INDICES or (count.isdigit() and int(count) > 0):
            return f"{name}={value}"
    return ""
