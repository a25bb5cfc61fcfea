"""Randomness as a function of (seed, step, phase): the equivalence principle's core.

Every draw of a step (noise, GP interpolation weights, sampled labels) is made for the whole
GLOBAL batch from a generator seeded by (seed, step, phase), and each rank keeps its rows.
So a W-rank run draws what a 1-rank run draws, and a resumed run what an uninterrupted one
drew, without saving any RNG state."""
from __future__ import annotations

import hashlib

import torch


def mix_seed(*parts: object) -> int:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seeded_generator(*parts: object, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(mix_seed(*parts))


def draw(seed: int, step: int, phase: str, batch: int, z_dim: int, num_classes: int, device):
    """(z, labels, alpha) for a GLOBAL batch: noise, sampled labels, GP interpolation weights.
    Drawn on the device itself (no host-to-device copy, no sync); the same numbers on every
    rank of one device type."""
    g = seeded_generator(seed, step, phase, device=device)
    return (torch.randn(batch, z_dim, generator=g, device=device),
            torch.randint(max(num_classes, 1), (batch,), generator=g, device=device),
            torch.rand(batch, 1, 1, 1, generator=g, device=device))
