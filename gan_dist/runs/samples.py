"""Sample grids from a FIXED noise and label set, and label interpolation (book chapter 5:
a soft label w*onehot(a) + (1-w)*onehot(b) fed to a conditional generator)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from gan_dist.distributed.seeding import seeded_generator


def fixed_inputs(z_dim: int, num_classes: int, seed: int, per_class: int = 8):
    """(z, onehot, nrow): one row per class (conditional), or an 8x8 grid (unconditional)."""
    g = seeded_generator(seed, "sample_grid")
    if num_classes:
        labels = torch.arange(num_classes).repeat_interleave(per_class)
        onehot = torch.nn.functional.one_hot(labels, num_classes).float()
    else:
        labels, onehot = torch.zeros(64, dtype=torch.long), None
    return torch.randn(len(labels), z_dim, generator=g), onehot, per_class


def interpolate_labels(a: int, b: int, steps: int, num_classes: int) -> torch.Tensor:
    """Soft one-hot labels going from class a (w=1) to class b (w=0)."""
    w = torch.linspace(1.0, 0.0, steps).unsqueeze(1)
    eye = torch.eye(num_classes)
    return w * eye[a] + (1.0 - w) * eye[b]


@torch.no_grad()
def generate(generator: nn.Module, z: torch.Tensor, onehot: Optional[torch.Tensor]) -> torch.Tensor:
    """Images in [-1, 1], in eval mode (BatchNorm running statistics), mode restored after."""
    was_training = generator.training
    generator.eval()
    device = next(generator.parameters()).device
    try:
        return generator(z.to(device), None if onehot is None else onehot.to(device)).float().cpu()
    finally:
        generator.train(was_training)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of rows a, b [R, D] at weights t [S] -> [R, S, D]. Midpoints of a
    linear path between two Gaussian z's have a smaller norm than the generator ever saw."""
    omega = torch.acos((a / a.norm(dim=1, keepdim=True) * b / b.norm(dim=1, keepdim=True))
                       .sum(1).clamp(-1, 1))[:, None, None]
    t = t[None, :, None]
    so = torch.sin(omega)
    lerp = (1 - t) * a[:, None] + t * b[:, None]
    out = (torch.sin((1 - t) * omega) * a[:, None] + torch.sin(t * omega) * b[:, None]) / so.clamp_min(1e-8)
    return torch.where(so.abs() < 1e-6, lerp, out)  # (anti)parallel rows: slerp is undefined


def cpu_copy(generator: nn.Module) -> nn.Module:
    """A copy of the generator on the CPU in eval mode (to hand back to a caller)."""
    import copy

    return copy.deepcopy(generator).cpu().eval()


def to_uint8_grid(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """[3, H, W] uint8 in [0, 255] (dashboards cast floats straight to uint8)."""
    from torchvision.utils import make_grid  # torchvision's import is 2.3 s: only where a grid is made

    grid = make_grid(images, nrow=nrow, normalize=True, value_range=(-1, 1), padding=2)
    return (grid * 255).round().clamp(0, 255).to(torch.uint8)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int) -> None:
    from torchvision.utils import save_image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_image(images, str(path), nrow=nrow, normalize=True, value_range=(-1, 1), padding=2)
