"""Divergence: a loss that went non-finite, or a critic whose Wasserstein estimate or gradient
norm exploded past train.divergence_factor times its running median.

The verdict is taken at log steps on the window's means and gradient norms, which are already
all-reduced and so the same on every rank: every rank reaches the same verdict at the same
step with no extra collective. A Monitor is a stateful part of the trainer (its history and
rollback count are in every checkpoint), so a resumed run judges exactly as the uninterrupted
one would, and keeps the learning rates its rollbacks lowered.
"""
from __future__ import annotations

import statistics
from typing import Optional

from gan_dist.errors import UserError

WATCHED = ("wasserstein", "grad_norm_critic")  # what explodes first when a critic blows up
HISTORY = 20  # log windows in the running median
WARMUP = 5    # windows seen before a median is trusted


class Monitor:
    def __init__(self, factor: float):
        self.factor = factor
        self.history: dict[str, list[float]] = {name: [] for name in WATCHED}
        self.rollbacks = 0

    def check(self, metrics: dict, first_bad_step: Optional[int]) -> Optional[str]:
        """Why the window diverged, or None (then its values join the history)."""
        if first_bad_step is not None:
            return f"loss is not finite at step {first_bad_step}"
        reasons = []
        for name in WATCHED:
            if name not in metrics:  # a loss without a Wasserstein estimate
                continue
            value, past = abs(float(metrics[name])), self.history[name]
            median = statistics.median(past) if len(past) >= WARMUP else None
            if self.factor and median and value > self.factor * median:
                reasons.append(f"{name} {value:.4g} is {value / median:.0f}x its running median {median:.4g} "
                               f"(train.divergence_factor={self.factor:g})")
        if reasons:
            return "; ".join(reasons)
        for name in WATCHED:
            if name in metrics:
                self.history[name] = (self.history[name] + [abs(float(metrics[name]))])[-HISTORY:]
        return None

    def allow_rollback(self, reason: str, train) -> None:
        """Return when train.on_divergence allows a rollback now, else raise the stop line."""
        if train.on_divergence == "stop":
            raise UserError(f"{reason}; stopped, checkpoints kept as they were "
                            "(train.on_divergence=rollback returns to the last checkpoint instead)")
        if self.rollbacks >= train.max_rollbacks:
            raise UserError(f"{reason}; stopped after {self.rollbacks} rollback(s) "
                            f"(train.max_rollbacks={train.max_rollbacks}), checkpoints kept as they were")

    def state_dict(self) -> dict:
        return {"history": {k: list(v) for k, v in self.history.items()}, "rollbacks": self.rollbacks}

    def load_state_dict(self, state: dict) -> None:
        self.history = {name: [float(v) for v in state["history"].get(name, [])] for name in WATCHED}
        self.rollbacks = int(state["rollbacks"])
