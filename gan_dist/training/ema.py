"""Generator EMA ("G_ema" of StyleGAN, StudioGAN): an exponential moving average of the
generator's weights, usually the better sampler. It follows the weights after each generator
update; those are identical on every rank (DDP), so the EMA is too, with no communication.

Two ways to set its memory: a fixed decay per step with a (1+t)/(10+t) warm-up
(train.ema_decay), or StyleGAN's half-life in images (train.ema_kimg) with its ramp
(train.ema_rampup: the half-life at most that fraction of the images seen). The second
depends on the global batch only, so it is the same for any world size and accumulation."""
from __future__ import annotations

import copy
import math
from typing import Optional

import torch
from torch import nn


class EMA:
    def __init__(self, generator: nn.Module, decay: float, kimg: float = 0.0, rampup: Optional[float] = None,
                 batch_size: int = 1):
        self.decay, self.kimg, self.rampup, self.batch = decay, kimg, rampup, batch_size
        self.module = copy.deepcopy(generator).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """The decay of the update after generator step `step` (0-based)."""
        if self.kimg > 0:
            nimg = self.kimg * 1000.0
            if self.rampup is not None:
                nimg = min(nimg, step * self.batch * self.rampup)  # the images seen before this step
            return 0.5 ** (self.batch / max(nimg, 1e-8))
        # Warm-up: early weights are noise, so average over a short window first
        # ((1+t)/(10+t) -> decay; as TensorFlow's ExponentialMovingAverage num_updates).
        return min(self.decay, (1.0 + step) / (10.0 + step))

    def halflife_kimg(self, step: int) -> float:
        """The current half-life in thousands of images (what the dashboard shows)."""
        decay = self.decay_at(step)
        if decay <= 0:  # no memory: the EMA is the generator
            return 0.0
        return self.batch * math.log(0.5) / math.log(decay) / 1000.0 if decay < 1 else math.inf

    def update(self, generator: nn.Module, step: int) -> None:
        decay = self.decay_at(step)
        with torch.no_grad():
            torch._foreach_lerp_(list(self.module.parameters()), list(generator.parameters()), 1.0 - decay)
            for ema_buffer, buffer in zip(self.module.buffers(), generator.buffers()):
                ema_buffer.copy_(buffer)  # BatchNorm statistics: copied, as StyleGAN does
