"""Generator EMA ("G_ema" of StyleGAN, StudioGAN): an exponential moving average of the
generator's weights, usually the better sampler. It follows the weights after each generator
update; those are identical on every rank (DDP), so the EMA is too, with no communication."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, generator: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(generator).eval().requires_grad_(False)

    def update(self, generator: nn.Module, step: int) -> None:
        # Warm-up: early weights are noise, so average over a short window first
        # ((1+t)/(10+t) -> decay; as TensorFlow's ExponentialMovingAverage num_updates).
        decay = min(self.decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            torch._foreach_lerp_(list(self.module.parameters()), list(generator.parameters()), 1.0 - decay)
            for ema_buffer, buffer in zip(self.module.buffers(), generator.buffers()):
                ema_buffer.copy_(buffer)  # BatchNorm statistics: copied, as StyleGAN does
