"""The run's place in the world: rank, world size, device, backend, threads; joining and
leaving the process group; the DDP wrap.

Environment detection: torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), else the
tasks of one srun (SLURM_PROCID, ...), else one process. One process initializes no process
group (unless dist.force_ddp): it runs the same loop on bare modules.
"""
from __future__ import annotations

import inspect
import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

import torch
import torch.distributed as dist

from gan_dist.distributed import slurm
from gan_dist.errors import UserError


@dataclass
class World:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None
    cpu_group: Any = None  # gloo group for small control tensors (no device sync under nccl)
    launcher: str = "none"  # torchrun | slurm (one srun task per rank: submitit, sbatch) | none
    force_ddp: bool = False  # dist.force_ddp: a process group and DDP on one rank too

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """A process group, DDP wrappers and collectives: more than one rank, or dist.force_ddp."""
        return self.world_size > 1 or self.force_ddp


def detect(backend: str = "auto", force_ddp: bool = False) -> World:
    """Read rank/world from the launcher's environment: torchrun (or variables an srun task
    exported: submitit, slurm/train.sbatch), else srun's own, else one process. backend:
    dist.backend (auto: nccl on CUDA, gloo on CPU); force_ddp: dist.force_ddp."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        try:
            world = World(rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]),
                          local_rank=int(env.get("LOCAL_RANK", 0)),
                          local_world_size=int(env.get("LOCAL_WORLD_SIZE", 1)),
                          launcher="torchrun" if "TORCHELASTIC_RUN_ID" in env or "SLURM_STEP_ID" not in env
                          else "slurm")
        except ValueError as e:
            raise UserError(f"launcher environment: bad RANK/WORLD_SIZE/LOCAL_RANK ({e})") from None
    else:
        ranks = slurm.srun_ranks(env)
        world = World(**ranks, launcher="slurm") if ranks else World()
    if backend not in ("auto", "nccl", "gloo"):
        raise UserError(f"dist.backend: unknown choice {backend!r} (choose from 'auto', 'nccl', 'gloo')")
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        # Ranks that torchrun started share its view of the node's GPUs: more local ranks than
        # GPUs share a GPU, which nccl refuses ("Duplicate GPU detected"); gloo allows it.
        # (srun tasks under per-task binding each see one GPU of their own: cuda:0.)
        shared = world.local_world_size > count and world.launcher != "slurm"
        if shared and backend != "gloo":
            raise UserError(f"{world.local_world_size} ranks on this node but {count} CUDA device(s) visible: nccl "
                            f"needs a GPU per rank; start at most {count} rank(s) per node, or set dist.backend=gloo "
                            "to let ranks share a GPU (all-reduces through host memory: for tests and debugging)")
        if count == 1:  # one visible device per task (Slurm's per-task binding), or one shared over gloo
            world.device = torch.device("cuda", 0)
        elif world.local_rank < count or backend == "gloo":
            world.device = torch.device("cuda", world.local_rank % count)
        else:
            raise UserError(f"LOCAL_RANK {world.local_rank} but only {count} CUDA device(s) visible: "
                            "start at most one rank per GPU (or set dist.backend=gloo to share)")
        world.backend = "gloo" if backend == "gloo" else "nccl"
    else:
        if backend == "nccl":
            raise UserError("dist.backend=nccl: CUDA sees no GPU (nccl runs on GPUs only; auto or gloo on CPU)")
        allocated = slurm.allocated_gpus(env)
        if allocated:  # never fall back to the CPU silently on a GPU allocation
            raise UserError(f"Slurm allocated GPUs ({allocated}) but CUDA sees none "
                            f"(CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '<unset>')!r}, torch "
                            f"{torch.__version__} {'with' if torch.backends.cuda.is_built() else 'without'} CUDA): "
                            "fix the job's GPU binding or the torch build; not training on the CPU")
        world.backend = "gloo"
    world.force_ddp = force_ddp
    return world


def _check_devices_distinct(world: World) -> None:
    """Under nccl no two ranks of a node may hold one GPU (srun tasks without per-task binding
    all see the node's first GPU): one line naming the switch, before nccl's first collective."""
    uuid = str(torch.cuda.get_device_properties(world.device).uuid)
    seen = [None] * world.world_size
    dist.all_gather_object(seen, (socket.gethostname(), uuid), group=world.cpu_group)
    mine = seen[world.rank]
    sharing = [r for r, s in enumerate(seen) if s == mine]
    if len(sharing) > 1:
        raise UserError(f"ranks {', '.join(map(str, sharing))} on {mine[0]} share one GPU ({world.device}): nccl needs "
                        "a GPU per rank; bind one GPU per task (srun --gpus-per-task=1) or set dist.backend=gloo")


def default_threads(world: World) -> int:
    """Torch threads for this rank when train.threads is unset. An explicit OMP_NUM_THREADS
    wins outside torchrun (under torchrun it cannot be told from the 1 torchrun sets itself when
    it is unset). An srun task has CPUs of its own (--cpus-per-task, and its affinity mask when
    Slurm binds tasks): use them as they are. Ranks that torchrun started share the launcher's
    CPUs: divide them."""
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if world.launcher != "torchrun" and omp.isdigit() and int(omp) > 0:
        return int(omp)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_task = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if world.launcher == "slurm" and per_task.isdigit():
        return max(1, min(cpus, int(per_task)))
    return max(1, cpus // world.local_world_size)


def setup(world: World, threads: Optional[int], timeout_s: float = 600.0) -> World:
    """Set threads and device, and join the process group when there is more than one rank
    (or dist.force_ddp)."""
    torch.set_num_threads(threads or default_threads(world))
    if world.device.type == "cuda":
        torch.cuda.set_device(world.device)
    if world.distributed:
        timeout = timedelta(seconds=timeout_s)
        store = None
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # torchrun's agent keeps one store across restarts of the worker group; keys of the
            # killed attempt stay there and a restarted rank can read a dead peer's address
            # (seen: "Gloo connectFullMesh failed ... Connection refused" after a restart).
            # A prefix per attempt gives every attempt its own keys.
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            agent = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                  world.world_size, is_master=False, timeout=timeout)
            store = dist.PrefixStore(f"gan_dist/attempt_{attempt}", agent)
        elif world.world_size == 1 and "MASTER_ADDR" not in os.environ:  # dist.force_ddp in a plain process
            store = dist.HashStore()
        dist.init_process_group(world.backend, store=store, rank=world.rank, world_size=world.world_size,
                                timeout=timeout)
        world.cpu_group = dist.new_group(backend="gloo") if world.backend == "nccl" else dist.group.WORLD
        if world.backend == "nccl":
            _check_devices_distinct(world)
    return world


def wrap(module: torch.nn.Module, world: World) -> torch.nn.Module:
    """DDP only when there is more than one rank (or dist.force_ddp); one process uses the bare module.
    forward_sync_buffers only for SyncBatchNorm: plain BatchNorm running stats only matter in
    eval, and broadcasting them between several forwards and one backward breaks autograd.
    Never static_graph=True: with the penalty's double backward it silently desynchronizes."""
    if not world.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    sync_bn = any(isinstance(m, torch.nn.SyncBatchNorm) for m in module.modules())
    # torch 2.13 renamed broadcast_buffers (deprecated since) to forward_sync_buffers; torch before
    # 2.13 (the GPU image's 2.11) knows the old name only
    buffers = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters \
        else "broadcast_buffers"
    return DDP(module, device_ids=[world.device.index] if world.device.type == "cuda" else None, **{buffers: sync_bn})


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def adopt(world: World) -> World:
    """Use a process group the caller already made (gan_dist.fit inside a user's script)."""
    if world.device.type == "cuda":
        torch.cuda.set_device(world.device)
    if world.distributed:
        if dist.get_world_size() != world.world_size or dist.get_rank() != world.rank:
            raise UserError(f"the process group has rank {dist.get_rank()} of {dist.get_world_size()}, the "
                            f"environment says {world.rank} of {world.world_size}")
        world.cpu_group = dist.new_group(backend="gloo") if dist.get_backend() == "nccl" else dist.group.WORLD
    return world


def teardown(clean: bool = True) -> None:
    """Leave the process group. After a clean finish the ranks meet first, so none tears its
    connections down while a peer still uses them (gloo aborts the peer otherwise)."""
    if dist.is_available() and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()
