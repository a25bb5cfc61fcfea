"""The collectives the loop needs outside DDP, each a step every rank takes together: the row
rule (rank r holds rows r, r+W, ... of every global set), gathers in global order, broadcasts,
agreement on what may differ per rank (a signal, a failure on one rank), consistency checks.
Control values travel over the CPU (gloo) group: no device sync under nccl."""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist

from gan_dist.distributed.world import World
from gan_dist.errors import UserError, first_line


def rows(world: World) -> slice:
    """THE row rule: of every global batch (or set of samples), rank r of W holds rows
    r, r+W, r+2W, ... -- DistributedSampler's layout, and what makes W ranks compute what one
    process computes."""
    return slice(world.rank, None, world.world_size)


def gather_rows(local: torch.Tensor, total: int, world: World) -> torch.Tensor:
    """Rows r, r+W, ... held by rank r -> all `total` rows in global order, on every rank.
    Shares differ by at most one row: pad to equal size for all_gather, drop the padding."""
    if not world.distributed:
        return local
    share = -(-total // world.world_size)
    padded = torch.zeros((share, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[:len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world.world_size)]
    # device tensors over the default group (nccl on GPU), CPU tensors over the gloo group
    dist.all_gather(parts, padded, group=None if local.is_cuda else world.cpu_group)
    return torch.stack(parts, 1).flatten(0, 1)[:total]  # row l*W + r = parts[r][l]


def broadcast_module(module: torch.nn.Module, world: World) -> None:
    """Rank 0's parameters and buffers on every rank (a start from identical weights even
    when a model factory draws from an RNG that the seed does not reach)."""
    if world.distributed:
        for t in list(module.parameters()) + list(module.buffers()):
            data = t.detach()
            dist.broadcast(data, src=0, group=None if data.is_cuda else world.cpu_group)


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
    return maxes_over_ranks([value], world)[0]


def maxes_over_ranks(values: list[int], world: World) -> list[int]:
    """max_over_ranks of several decisions in one all-reduce."""
    if not world.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=world.cpu_group)
    return t.tolist()


def parameter_checksum(*modules: torch.nn.Module, tensors=()) -> float:
    """A cheap fingerprint of all parameters (float64 sums of x and |x|), and of `tensors`.
    Buffers are left out: on CPU each rank keeps its own BatchNorm statistics by design."""
    total = torch.zeros(2, dtype=torch.float64)
    for t in [t for module in modules for t in module.parameters()] + list(tensors):
        t64 = t.detach().to("cpu", torch.float64)
        total += torch.stack([t64.sum(), t64.abs().sum()])
    return float(total[0] + 1e-3 * total[1])


def broadcast_object(obj: Any, world: World) -> Any:
    """Rank 0's `obj` on every rank (small picklable things: a path, a step, an error line)."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=world.cpu_group)
    return box[0]


def raise_if_any(error: Optional[str], world: World) -> None:
    """For steps that can fail on some ranks only (start-up checks, rank 0's save): every rank
    learns of the first failure and raises it, so none is left waiting in a collective. Every
    rank must call it; it is a barrier too."""
    errors = [error]
    if world.distributed:
        errors = [None] * world.world_size
        dist.all_gather_object(errors, error, group=world.cpu_group)
    first = next((e for e in errors if e), None)
    if first:
        raise UserError(first)


def on_main(fn, world: World, what: str) -> Any:
    """fn() on rank 0 alone (it may download, create a cache, write a checkpoint); its result on
    every rank, or its failure on every rank at once: a UserError's line, any other exception
    named in one line ("what: Type: message") on the others and re-raised with its traceback on
    rank 0. No rank is left waiting in a collective. Every rank must call it."""
    result, error, failure = None, None, None
    if world.is_main:
        try:
            result = fn()
        except Exception as e:
            failure, error = e, str(e) if isinstance(e, UserError) else f"{what}: {first_line(e)}"
    result, error = broadcast_object((result, error), world)
    if failure is not None:
        raise failure
    if error:
        raise UserError(error)
    return result


def on_every_rank(fn, world: World, what: str) -> Any:
    """fn() on every rank; the first failure anywhere stops every rank at once, with its line
    (naming the rank), before any rank goes on into a collective. Every rank must call it."""
    result, error, failure = None, None, None
    try:
        result = fn()
    except Exception as e:
        failure, error = e, str(e) if isinstance(e, UserError) else f"{what}: {first_line(e)}"
        if world.distributed:
            error = f"rank {world.rank}: {error}"
    try:
        raise_if_any(error, world)
    except UserError:
        if failure is not None and not isinstance(failure, UserError):
            raise failure from None  # this rank's own exception, with its traceback
        raise
    return result


def gather_floats(value: float, world: World) -> list[float]:
    if not world.distributed:
        return [value]
    out = [torch.zeros(1, dtype=torch.float64) for _ in range(world.world_size)]
    dist.all_gather(out, torch.tensor([value], dtype=torch.float64), group=world.cpu_group)
    return [float(t.item()) for t in out]


def check_consistency(world: World, *modules: torch.nn.Module, tensors=()) -> None:
    """Fail loudly if ranks drifted apart (as stylegan2-ada's check_ddp_consistency); tensors:
    other state every rank must hold alike (ADA's p)."""
    sums = gather_floats(parameter_checksum(*modules, tensors=tensors), world)
    if any(s != sums[0] for s in sums):
        raise RuntimeError(f"ranks hold different parameters (checksums per rank: {sums}); "
                           "the distributed update is broken")
