"""Schedules: the learning rates, R1/R2's gamma and Adam's beta2 as pure functions of the step k
(steps done), so a resume, a rollback or an elastic restart needs no state beyond the step and
T, the schedule's length (recorded in the checkpoint, as the micro-batch is). constant: the
start values; cosine: v(k) = end + (start - end) (1 + cos(pi min(k, T) / T)) / 2, from the
start value at k = 0 to the end value at k >= T. A value whose _end is unset stays constant."""
from __future__ import annotations

import math
from typing import Optional


def weight(kind: str, k: int, total: int) -> float:
    """The start value's share at step k: 1 throughout for constant, the cosine from 1 to 0."""
    if kind == "constant" or total <= 0:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(k, total) / total))


def value(start: float, end: Optional[float], w: float) -> float:
    return start if end is None else end + (start - end) * w


class Schedules:
    """What cfg.optim.schedule makes of the lr, gamma and beta2 at a step; applied in place to
    the optimizers' param groups (rollbacks' lr_scale on top) and to the loss's gamma."""

    def __init__(self, cfg, total_steps: int, loss):
        self.cfg, self.total = cfg, total_steps
        self.gamma_start = getattr(loss, "gamma", None)  # the loss's resolved default (ns_r1 10, rpgan 0.05)

    def at(self, k: int, lr_scale: float = 1.0) -> dict:
        o, w = self.cfg.optim, weight(self.cfg.optim.schedule, k, self.total)
        out = {}
        for network in ("generator", "critic"):
            own = o.of(network)
            beta1, beta2 = own["betas"]
            out[network] = {"lr": value(own["lr"], o.lr_end_of(network), w) * lr_scale,
                            "betas": (beta1, value(beta2, o.beta2_end, w))}
        if self.gamma_start is not None:
            out["gamma"] = value(self.gamma_start, self.cfg.loss.r1_gamma_end, w)
        return out

    def apply(self, k: int, optimizers: dict, loss, lr_scale: float = 1.0) -> None:
        """Before step k: every param group of each network's optimizer, and the loss's gamma."""
        now = self.at(k, lr_scale)
        for network, opt in optimizers.items():
            for group in opt.param_groups:
                group.update(now[network])
        if "gamma" in now:
            loss.gamma = now["gamma"]

    def metrics(self, k: int, lr_scale: float = 1.0) -> dict:
        now = self.at(k, lr_scale)
        return {"beta2": now["generator"]["betas"][1], "beta2_critic": now["critic"]["betas"][1],
                **({"gamma": now["gamma"]} if "gamma" in now else {})}


def resolve_total(cfg, state: Optional[dict]) -> tuple[int, list[str]]:
    """(T, what a resume changes of it): optim.schedule_steps when set (> 0), else the checkpoint's
    T, else train.steps at the run's first start (an older checkpoint: its config's train.steps)."""
    saved = None if state is None else state.get("schedule_steps",
                                                 state.get("config", {}).get("train", {}).get("steps"))
    asked = cfg.optim.schedule_steps
    if asked > 0:
        changes = [f"optim.schedule_steps {saved} -> {asked}"] if saved is not None and saved != asked else []
        return asked, changes
    return (int(saved) if saved is not None else cfg.train.steps), []
