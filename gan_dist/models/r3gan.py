"""An R3GAN-style generator and critic (Huang et al. 2024, "The GAN is dead; long live the GAN!"),
written here after the paper's design: no normalization layers; stages from 4x4 up to the image
size, each of residual blocks x + f(x) with f = 1x1 (expansion 2) -> grouped 3x3 -> 1x1, a leaky
ReLU with a bias after the first two; fix-up initialisation (each branch's last layer zero, the
others scaled by the number of blocks, so every block starts as the identity); resampling by a
[1, 2, 1] filter (bilinear), a 1x1 convolution where the width changes; a learned 4x4 basis at
the generator's start and a depthwise 4x4 at the critic's end. Labels: a linear embedding of the
float one-hot row (soft rows and label interpolation work), concatenated to z in the generator
and projected (a dot product with the critic's features) in the critic.

gan_dist's contract adds a tanh after the generator's last 1x1 (images in [-1, 1]); R3GAN's own
output is linear. Widths: model.widths / model.groups / model.blocks per stage (generator order,
4x4 first; the critic takes them reversed), else model.width x 2 at every stage, groups so that a
group holds 16 of the expanded channels, 2 blocks."""
from __future__ import annotations

import logging
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from gan_dist.errors import UserError

SLOPE = 0.2
GAIN = math.sqrt(2.0 / (1.0 + SLOPE ** 2))  # the leaky ReLU's variance-preserving gain
EXPANSION = 2


def _msr(layer: nn.Module, gain: float = 1.0) -> nn.Module:
    """He (MSR) initialisation at `gain`; gain 0 zeroes the layer (a branch's last one)."""
    fan_in = layer.weight[0].numel()
    with torch.no_grad():
        layer.weight.normal_(0.0, gain / math.sqrt(fan_in)) if gain else layer.weight.zero_()
    return layer


class BiasedLeakyReLU(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x + self.bias.view(1, -1, 1, 1).to(x.dtype), 0.2)  # SLOPE (TorchScript: a literal)


class ResidualBlock(nn.Module):
    """x + 1x1 -> act -> grouped 3x3 -> act -> 1x1 (zero at start). `total_blocks` scales the
    first two layers by total_blocks ** -1/4 (fix-up for a branch of three layers)."""

    def __init__(self, channels: int, groups: int, total_blocks: int):
        super().__init__()
        wide, gain = channels * EXPANSION, GAIN * total_blocks ** (-1.0 / 4.0)
        self.expand = _msr(nn.Conv2d(channels, wide, 1, bias=False), gain)
        self.act1 = BiasedLeakyReLU(wide)
        self.grouped = _msr(nn.Conv2d(wide, wide, 3, padding=1, groups=groups, bias=False), gain)
        self.act2 = BiasedLeakyReLU(wide)
        self.project = _msr(nn.Conv2d(wide, channels, 1, bias=False), 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.act2(self.grouped(self.act1(self.expand(x)))))


def _filter(channels: int) -> torch.Tensor:
    k = torch.tensor([1.0, 2.0, 1.0])
    return (torch.outer(k, k) / 16.0).expand(channels, 1, 3, 3).contiguous()


class Upsample(nn.Module):
    """1x1 to the new width (when it changes), then x2 by the [1, 2, 1] filter (zeros inserted,
    the filter x4: bilinear)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.width = _msr(nn.Conv2d(c_in, c_out, 1, bias=False)) if c_in != c_out else nn.Identity()
        self.register_buffer("kernel", _filter(c_out) * 4.0, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.width(x)
        return F.conv_transpose2d(x, self.kernel.to(x.dtype), stride=2, padding=1, output_padding=1,
                                  groups=x.shape[1])


class Downsample(nn.Module):
    """/2 by the [1, 2, 1] filter, then 1x1 to the new width (when it changes)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.register_buffer("kernel", _filter(c_in), persistent=False)
        self.width = _msr(nn.Conv2d(c_in, c_out, 1, bias=False)) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.width(F.conv2d(x, self.kernel.to(x.dtype), stride=2, padding=1, groups=x.shape[1]))


def stages(image_size: int) -> int:
    """4x4, 8x8, ..., image_size: one stage each."""
    return int(round(math.log2(image_size))) - 1


def layout(m, image_size: int) -> tuple[list[int], list[int], list[int]]:
    """(widths, groups, blocks) per stage in generator order: model.widths / groups / blocks, or
    the defaults from model.width. A list of the wrong length, or groups that do not divide the
    expanded width: one line naming the key."""
    n = stages(image_size)
    if image_size < 4 or 2 ** (n + 1) != image_size:
        raise UserError(f"data.image_size: r3gan needs a power of two >= 4, got {image_size}")
    widths = list(m.widths) or [2 * m.width] * n
    groups = list(m.groups) or [max(1, w * EXPANSION // 16) for w in widths]
    blocks = list(m.blocks) or [2] * n
    for key, values in (("model.widths", widths), ("model.groups", groups), ("model.blocks", blocks)):
        if len(values) != n:
            raise UserError(f"{key}: r3gan at data.image_size={image_size} has {n} stages (4x4 to "
                            f"{image_size}x{image_size}), got {len(values)} values {values}")
        if any(v < (0 if key == "model.blocks" else 1) for v in values):
            raise UserError(f"{key}: expected positive values, got {values}")
    for w, g in zip(widths, groups):
        if (w * EXPANSION) % g:
            raise UserError(f"model.groups: {g} does not divide a block's expanded width {w * EXPANSION} "
                            f"(model.widths {widths}, expansion {EXPANSION})")
    return widths, groups, blocks


class Generator(nn.Module):
    def __init__(self, z_dim: int, num_classes: int, channels: int, image_size: int, widths: list[int],
                 groups: list[int], blocks: list[int]):
        super().__init__()
        self.z_dim, self.num_classes, self.channels, self.image_size = z_dim, num_classes, channels, image_size
        total = max(1, sum(blocks))
        embed = z_dim if num_classes else 0  # R3GAN: the label embedding as wide as the noise
        self.embed = _msr(nn.Linear(num_classes, embed, bias=False)) if num_classes else None
        self.to_basis = _msr(nn.Linear(z_dim + embed, widths[0], bias=False))
        self.basis = nn.Parameter(torch.randn(widths[0], 4, 4))
        layers: list[nn.Module] = []
        for i, (w, g, b) in enumerate(zip(widths, groups, blocks)):
            if i:
                layers.append(Upsample(widths[i - 1], w))
            layers += [ResidualBlock(w, g, total) for _ in range(b)]
        self.stages = nn.Sequential(*layers)
        self.to_image = _msr(nn.Conv2d(widths[-1], channels, 1))

    def forward(self, z: torch.Tensor, onehot: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.embed is not None and onehot is not None:
            z = torch.cat([z, self.embed(onehot)], 1)
        x = self.basis.unsqueeze(0) * self.to_basis(z).view(z.shape[0], -1, 1, 1)
        return torch.tanh(self.to_image(self.stages(x)))


class Critic(nn.Module):
    def __init__(self, num_classes: int, channels: int, image_size: int, widths: list[int], groups: list[int],
                 blocks: list[int]):
        super().__init__()
        self.num_classes = num_classes
        widths, groups, blocks = widths[::-1], groups[::-1], blocks[::-1]  # image_size first
        total = max(1, sum(blocks))
        self.from_image = _msr(nn.Conv2d(channels, widths[0], 1))
        layers: list[nn.Module] = []
        for i, (w, g, b) in enumerate(zip(widths, groups, blocks)):
            layers += [ResidualBlock(w, g, total) for _ in range(b)]
            if i + 1 < len(widths):
                layers.append(Downsample(w, widths[i + 1]))
        self.stages = nn.Sequential(*layers)
        self.basis = _msr(nn.Conv2d(widths[-1], widths[-1], 4, groups=widths[-1], bias=False))  # depthwise 4x4
        out = widths[-1] if num_classes else 1
        self.to_score = _msr(nn.Linear(widths[-1], out, bias=False))
        # the projection: the score is <features, embedding(label)>, at unit variance
        self.embed = _msr(nn.Linear(num_classes, out, bias=False), 1.0 / math.sqrt(out)) if num_classes else None

    def forward(self, x: torch.Tensor, onehot: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.to_score(self.basis(self.stages(self.from_image(x))).flatten(1))
        if self.embed is not None and onehot is not None:
            return (h * self.embed(onehot)).sum(1)
        return h.flatten()


_said: set = set()


def build(cfg, info) -> tuple[nn.Module, nn.Module]:
    """The registry's factory: (generator, critic) for the config and the dataset."""
    from gan_dist.config import is_set
    from gan_dist.models import with_spectral_norm

    m = cfg.model
    defaults = type(m)()
    for key in ("model.norm", "model.critic_norm"):  # a value chosen for it (not the DCGAN's default)
        name = key.split(".")[1]
        if is_set(cfg, key) and getattr(m, name) not in (getattr(defaults, name), "none") and key not in _said:
            _said.add(key)
            logging.getLogger("gan_dist").warning(f"{key} is ignored by model.kind=r3gan (no normalization layers)")
    k = info.num_classes if m.conditional else 0
    widths, groups, blocks = layout(m, info.image_size)
    critic = Critic(k, info.channels, info.image_size, widths, groups, blocks)
    return (Generator(m.z_dim, k, info.channels, info.image_size, widths, groups, blocks),
            with_spectral_norm(critic) if m.spectral_norm else critic)
