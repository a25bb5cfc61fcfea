"""Your own generator and critic for gan_dist: a small ResNet-style generator and a
spectral-norm projection critic (the SNGAN / BigGAN family), conditional on the class.

The model contract (docs/models.md):
  generator(z [B, z_dim], onehot [B, K] or None) -> images [B, C, H, W] in [-1, 1]
  critic(images, onehot or None) -> scores [B]
  generator.z_dim and generator.num_classes (0: unconditional)
and a factory build(cfg, info) -> (generator, critic). Train it with
  PYTHONPATH=examples python -m gan_dist.train model.kind=own_models:build loss.kind=hinge
or from a script with gan_dist.fit (examples/train_own.py); prove it safe under DDP with
  PYTHONPATH=examples python -m gan_dist.check model.kind=own_models:build loss.kind=hinge
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class UpBlock(nn.Module):
    """x -> 2x: two 3x3 convolutions with a residual path. GroupNorm(1, c) normalizes each
    sample on its own, so ranks and batch sizes never change what a sample becomes."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(1, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(1, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        h = self.conv1(F.relu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.relu(self.norm2(h)))


class Generator(nn.Module):
    def __init__(self, z_dim: int, num_classes: int, channels: int, image_size: int, width: int):
        super().__init__()
        self.z_dim, self.num_classes = z_dim, num_classes
        self.width, blocks = width * 4, int(math.log2(image_size // 4))
        self.fc = nn.Linear(z_dim + num_classes, self.width * 16)
        self.blocks = nn.Sequential(*[UpBlock(self.width, self.width) for _ in range(blocks)])
        self.out = nn.Sequential(nn.GroupNorm(1, self.width), nn.ReLU(), nn.Conv2d(self.width, channels, 3, padding=1),
                                 nn.Tanh())

    def forward(self, z: torch.Tensor, onehot: Optional[torch.Tensor] = None) -> torch.Tensor:
        if onehot is not None:
            z = torch.cat([z, onehot], 1)
        return self.out(self.blocks(self.fc(z).view(-1, self.width, 4, 4)))


class DownBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = spectral_norm(nn.Conv2d(c_in, c_out, 3, padding=1))
        self.conv2 = spectral_norm(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = spectral_norm(nn.Conv2d(c_in, c_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.leaky_relu(self.conv1(F.leaky_relu(x, 0.2)), 0.2))
        return F.avg_pool2d(h + self.skip(x), 2)


class Critic(nn.Module):
    """Spectral norm on every layer (no batch statistics: the samples stay independent), and a
    projection of the class embedding onto the features (Miyato & Koyama 2018)."""

    def __init__(self, num_classes: int, channels: int, image_size: int, width: int):
        super().__init__()
        self.num_classes, c = num_classes, width * 4
        blocks = int(math.log2(image_size // 4))
        self.blocks = nn.Sequential(DownBlock(channels, c), *[DownBlock(c, c) for _ in range(blocks - 1)])
        self.score = spectral_norm(nn.Linear(c, 1))
        self.embed = spectral_norm(nn.Linear(num_classes, c, bias=False)) if num_classes else None

    def forward(self, x: torch.Tensor, onehot: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = F.leaky_relu(self.blocks(x), 0.2).sum((2, 3))  # global sum pooling
        score = self.score(h).flatten()
        if self.embed is not None and onehot is not None:
            score = score + (self.embed(onehot) * h).sum(1)
        return score


def build(cfg, info) -> tuple[nn.Module, nn.Module]:
    """The factory gan_dist calls (after seeding, on every rank): (generator, critic)."""
    k = info.num_classes if cfg.model.conditional else 0
    return (Generator(cfg.model.z_dim, k, info.channels, info.image_size, cfg.model.width),
            Critic(k, info.channels, info.image_size, cfg.model.width))
