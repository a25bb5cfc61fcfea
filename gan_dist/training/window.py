"""What the loop measures between two log steps: each step's stats summed on the device (no
host sync per step), the first step whose stats were not finite, the wall time; at a log step
the means over steps and ranks (one all-reduce) and the gradient norms of the last update."""
from __future__ import annotations

import math
import time
from typing import Optional

import torch

from gan_dist.distributed import World, all_reduce_mean


class Window:
    def __init__(self, names: tuple[str, ...], device: torch.device):
        self.names, self.device = names, device
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(len(self.names), device=self.device)
        self.first_bad = torch.full((1,), float("inf"), device=self.device)
        self.start, self.steps = time.perf_counter(), 0

    def add(self, stats: torch.Tensor, step: int) -> None:
        """One step's stats (device tensor in `names` order); the first non-finite step kept on device."""
        self.first_bad = torch.minimum(self.first_bad, torch.where(torch.isfinite(stats).all(), float("inf"),
                                                                   float(step)))
        self.sums += stats
        self.steps += 1

    def reduce(self, world: World) -> tuple[dict, Optional[int]]:
        """(means over the window's steps and every rank, the first non-finite step (1-based) on
        any rank or None): the same on every rank."""
        means = all_reduce_mean(self.sums / self.steps, world).tolist()
        if world.distributed:
            torch.distributed.all_reduce(self.first_bad, op=torch.distributed.ReduceOp.MIN)
        first_bad = self.first_bad.item()
        return dict(zip(self.names, means)), (int(first_bad) + 1 if math.isfinite(first_bad) else None)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def grad_norms(**modules: torch.nn.Module) -> dict:
    """grad_norm_NAME of each module's last update (gradients already all-reduced: the same on
    every rank)."""
    out = {}
    for name, module in modules.items():
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        out[f"grad_norm_{name}"] = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g) for g in grads])).item() if grads else 0.0
    return out
