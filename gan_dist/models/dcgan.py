"""Conditional DCGAN generator and critic (book chapter 5): labels enter the critic as
one-hot channels and the generator concatenated to the noise. Depth follows image_size:
4x4 up to image_size by stride-2 transposed convolutions, channels halving as resolution
doubles (capped at 8x width, as StyleGAN caps channel counts)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn.utils import parametrize


def _channels(res: int, image_size: int, width: int) -> int:
    return min(8 * width, width * image_size // (2 * res))


class Generator(nn.Module):
    def __init__(self, z_dim: int, num_classes: int, channels: int, image_size: int,
                 width: int, norm: str = "batch"):
        super().__init__()
        self.z_dim, self.num_classes, self.channels, self.image_size = z_dim, num_classes, channels, image_size
        batch = norm == "batch"

        def block(c_in: int, c_out: int, stride: int, padding: int) -> list[nn.Module]:
            return [nn.ConvTranspose2d(c_in, c_out, 4, stride, padding, bias=not batch),
                    nn.BatchNorm2d(c_out) if batch else nn.Identity(), nn.ReLU(inplace=True)]

        c = _channels(4, image_size, width)
        layers = block(z_dim + num_classes, c, 1, 0)  # 1x1 -> 4x4
        res = 4
        while res * 2 < image_size:
            c_next = _channels(res * 2, image_size, width)
            layers += block(c, c_next, 2, 1)
            c, res = c_next, res * 2
        layers += [nn.ConvTranspose2d(c, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, onehot: Optional[torch.Tensor] = None) -> torch.Tensor:
        if onehot is not None:
            z = torch.cat([z, onehot], 1)
        return self.net(z[:, :, None, None])


class Critic(nn.Module):
    """No BatchNorm: the gradient penalty is per sample, so normalization must be too."""

    def __init__(self, num_classes: int, channels: int, image_size: int, width: int,
                 norm: str = "instance"):
        super().__init__()
        self.num_classes = num_classes
        instance = norm == "instance"
        res = image_size // 2
        c = _channels(res, image_size, width)
        layers: list[nn.Module] = [nn.Conv2d(channels + num_classes, c, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        while res > 4:
            c_next = _channels(res // 2, image_size, width)
            layers += [nn.Conv2d(c, c_next, 4, 2, 1, bias=not instance),
                       nn.InstanceNorm2d(c_next, affine=True) if instance else nn.Identity(),
                       nn.LeakyReLU(0.2, inplace=True)]
            c, res = c_next, res // 2
        layers += [nn.Conv2d(c, 1, 4, 1, 0)]  # 4x4 -> one score
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, onehot: Optional[torch.Tensor] = None) -> torch.Tensor:
        if onehot is not None:
            x = torch.cat([x, onehot[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])], 1)
            if _channels_last(self.net[0]):  # the cat with the expanded labels comes back NCHW
                x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x).flatten()


def _channels_last(conv: nn.Conv2d) -> bool:
    """Are the conv's weights NHWC (train.channels_last)? Read from the stored tensor: the
    spectral-norm weight would run a power iteration when read."""
    stored = conv.parametrizations.weight.original if parametrize.is_parametrized(conv, "weight") else conv.weight
    return stored.is_contiguous(memory_format=torch.channels_last)


def build(cfg, info) -> tuple[nn.Module, nn.Module]:
    """The registry's factory: (generator, critic) for the config and the dataset."""
    from gan_dist.models import with_spectral_norm

    m = cfg.model
    k = info.num_classes if m.conditional else 0
    critic = Critic(k, info.channels, info.image_size, m.width, m.critic_norm)
    return (Generator(m.z_dim, k, info.channels, info.image_size, m.width, m.norm),
            with_spectral_norm(critic) if m.spectral_norm else critic)
