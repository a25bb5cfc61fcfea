"""The run's place in the world: rank, world size, device, backend; and the few collectives
the loop needs outside DDP (stats all-reduce, agreement on flags, consistency checks).

Environment detection: torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), else one
process. One process never initializes a process group: it runs the same loop on bare modules.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

import torch
import torch.distributed as dist

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

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def detect() -> World:
    """Read rank/world from the launcher's environment (torchrun), else a single process."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        try:
            world = World(rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]),
                          local_rank=int(env.get("LOCAL_RANK", 0)),
                          local_world_size=int(env.get("LOCAL_WORLD_SIZE", 1)))
        except ValueError as e:
            raise UserError(f"launcher environment: bad RANK/WORLD_SIZE/LOCAL_RANK ({e})") from None
    else:
        world = World()
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        if count == 1:  # one visible device per task (Slurm/submitit set CUDA_VISIBLE_DEVICES)
            world.device = torch.device("cuda", 0)
        elif world.local_rank < count:
            world.device = torch.device("cuda", world.local_rank)
        else:
            raise UserError(f"LOCAL_RANK {world.local_rank} but only {count} CUDA device(s) visible: "
                            "start at most one rank per GPU")
        world.backend = "nccl"
    else:
        world.backend = "gloo"
    return world


def default_threads(world: World) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // world.local_world_size)


def setup(world: World, threads: Optional[int], timeout_s: float = 600.0) -> World:
    """Set threads and device, and join the process group when there is more than one rank."""
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
        dist.init_process_group(world.backend, store=store, rank=world.rank, world_size=world.world_size,
                                timeout=timeout)
        world.cpu_group = dist.new_group(backend="gloo") if world.backend == "nccl" else dist.group.WORLD
    return world


def teardown(clean: bool = True) -> None:
    """Leave the process group. After a clean finish the ranks meet first, so none tears its
    connections down while a peer still uses them (gloo aborts the peer otherwise)."""
    if dist.is_available() and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier(group=world.cpu_group)


def all_reduce_mean(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """One all-reduce of a (stacked) stats tensor, averaged over ranks."""
    if world.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= world.world_size
    return tensor


def max_over_ranks(value: int, world: World) -> int:
    """The largest of every rank's value, on every rank: how ranks agree on a decision that
    may differ per rank (a signal arrived). A CPU all-reduce: no device sync under nccl."""
    if not world.distributed:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=world.cpu_group)
    return int(t.item())



def parameter_checksum(*modules: torch.nn.Module) -> float:
    """A cheap fingerprint of all parameters (float64 sums of x and |x|). Buffers are left out:
    on CPU each rank keeps its own BatchNorm statistics by design."""
    total = torch.zeros(2, dtype=torch.float64)
    for module in modules:
        for t in module.parameters():
            t64 = t.detach().to("cpu", torch.float64)
            total += torch.stack([t64.sum(), t64.abs().sum()])
    return float(total[0] + 1e-3 * total[1])


def gather_floats(value: float, world: World) -> list[float]:
    if not world.distributed:
        return [value]
    out = [torch.zeros(1, dtype=torch.float64) for _ in range(world.world_size)]
    dist.all_gather(out, torch.tensor([value], dtype=torch.float64), group=world.cpu_group)
    return [float(t.item()) for t in out]


def check_consistency(world: World, *modules: torch.nn.Module) -> None:
    """Fail loudly if ranks drifted apart (as stylegan2-ada's check_ddp_consistency)."""
    sums = gather_floats(parameter_checksum(*modules), world)
    if any(s != sums[0] for s in sums):
        raise RuntimeError(f"ranks hold different parameters (checksums per rank: {sums}); "
                           "the distributed update is broken")
