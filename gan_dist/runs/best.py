"""checkpoints/best.pt under train.keep_best: the best evaluation's checkpoint, and the value a
new evaluation must beat."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional

import torch

from gan_dist.distributed import World, broadcast_object
from gan_dist.errors import first_line

BEST = "best.pt"


class Best:
    """The best evaluation so far under train.keep_best: a stateful part, so a resumed run
    knows what checkpoints/best.pt holds and what a new evaluation must beat.

    The value to beat never goes backwards: a resume or a rollback loads a step checkpoint
    that can be older than best.pt, so after loading, the value is read from best.pt itself
    (sync). Rank 0 reads and judges, every rank takes its verdict (a broadcast): ranks that
    compared floats of their own could disagree and only some would save."""

    def __init__(self, metric: str, lower_is_better: bool):
        self.metric, self.lower_is_better = metric, lower_is_better
        self.value: Optional[float] = None
        self.step = -1

    def _better(self, value: float, than: Optional[float]) -> bool:
        if not math.isfinite(value):
            return False
        if than is None:
            return True
        return value < than if self.lower_is_better else value > than

    def improves(self, value: float, world: World) -> bool:
        """Rank 0's verdict, the same on every rank."""
        return bool(broadcast_object(self._better(value, self.value), world))

    def sync(self, path: Path, world: World) -> None:
        """The better of this value and the one best.pt holds (rank 0 reads it, memory-mapped:
        the weights are not read), on every rank."""
        best = (self.value, self.step)
        if world.is_main and path.is_file():
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("best") or {}
            except Exception as e:  # a damaged best.pt: judged from the step checkpoint, said once
                logging.getLogger("gan_dist").warning(f"{path} is unreadable ({first_line(e)}); the best value "
                                                      "to beat comes from the step checkpoint")
                saved = {}
            if saved.get("metric") == self.metric and saved.get("value") is not None and \
                    self._better(float(saved["value"]), self.value):
                best = (float(saved["value"]), int(saved["step"]))
        self.value, self.step = broadcast_object(best, world)

    def state_dict(self) -> dict:
        return {"metric": self.metric, "value": self.value, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        if state["metric"] == self.metric:  # another metric than before: start judging afresh
            self.value, self.step = state["value"], int(state["step"])
