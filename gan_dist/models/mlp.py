"""The MLP GAN of book chapter 4 (Fashion-MNIST): discriminator hidden widths `hidden`
(book: 1024-512-256) with dropout, generator the reverse (256-512-1024), tanh output.
The critic returns logits (BCEWithLogitsLoss), not probabilities. Optionally conditional:
the one-hot label is concatenated to the input of both networks."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class Generator(nn.Module):
    def __init__(self, z_dim: int, num_classes: int, channels: int, image_size: int,
                 hidden: list[int], norm: str = "none"):
        super().__init__()
        self.z_dim, self.num_classes, self.channels, self.image_size = z_dim, num_classes, channels, image_size
        layers: list[nn.Module] = []
        width = z_dim + num_classes
        for h in reversed(hidden):
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h) if norm == "batch" else nn.Identity(), nn.ReLU()]
            width = h
        layers += [nn.Linear(width, channels * image_size * image_size), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, onehot: Optional[torch.Tensor] = None) -> torch.Tensor:
        if onehot is not None:
            z = torch.cat([z, onehot], 1)
        return self.net(z).view(z.shape[0], self.channels, self.image_size, self.image_size)


class Critic(nn.Module):
    def __init__(self, num_classes: int, channels: int, image_size: int, hidden: list[int],
                 dropout: float = 0.3):
        super().__init__()
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        width = channels * image_size * image_size + num_classes
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers += [nn.Linear(width, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, onehot: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x.flatten(1)
        if onehot is not None:
            x = torch.cat([x, onehot], 1)
        return self.net(x).flatten()


def build(cfg, info) -> tuple[nn.Module, nn.Module]:
    """The registry's factory: (generator, critic) for the config and the dataset."""
    from gan_dist.models import with_spectral_norm

    m = cfg.model
    k = info.num_classes if m.conditional else 0
    critic = Critic(k, info.channels, info.image_size, m.hidden, m.dropout)
    return (Generator(m.z_dim, k, info.channels, info.image_size, m.hidden, m.norm),
            with_spectral_norm(critic) if m.spectral_norm else critic)
