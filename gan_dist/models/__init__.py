"""Models: the registry's factories (mlp.py: book chapter 4, dcgan.py: chapter 5, or a user's
own), and what every pair must satisfy.

THE MODEL CONTRACT (checked at start-up by a dry forward, one line naming what is wrong):
  generator(z [B, z_dim], onehot [B, num_classes] float or None) -> images [B, C, H, W] in [-1, 1]
  critic(images [B, C, H, W], onehot or None) -> scores [B] (logits for BCE-type losses)
  generator.z_dim: int > 0; generator.num_classes: int >= 0 (0: unconditional; otherwise the
  dataset's class count); C, H = W: the dataset's DataInfo.
Labels reach both networks as one-hot rows (soft rows when sampling interpolates labels).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Optional

import torch
from torch import nn

from gan_dist import registry
from gan_dist.config import Config
from gan_dist.data.datasets import DataInfo
from gan_dist.errors import UserError


def build_models(cfg: Config, info: DataInfo, factory: Optional[Callable] = None) -> tuple[nn.Module, nn.Module]:
    """(generator, critic) from model.kind's factory (a built-in name or an import path), or
    from `factory` (gan_dist.fit's models=)."""
    pair = (factory or registry.model_factory(cfg.model.kind))(cfg, info)
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(m, nn.Module) for m in pair)):
        raise UserError(f"model.kind={cfg.model.kind}: the factory must return (generator, critic), two "
                        f"nn.Modules; it returned {type(pair).__name__}")
    return pair[0], pair[1]


@contextmanager
def frozen(module: torch.nn.Module):
    """No parameter of `module` requires grad inside; afterwards exactly the flags there were
    (a part the user froze stays frozen: DDP left it out of its reduction when it wrapped the
    module, so training it would let each rank update it from its own data)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def power_iteration_buffers(*modules: nn.Module) -> list[torch.Tensor]:
    """Spectral norm's u and v (torch.nn.utils.parametrizations.spectral_norm's, and the older
    hook's weight_u / weight_v): what a training forward changes that does not depend on the
    data (one power iteration per forward)."""
    from torch.nn.utils.parametrizations import _SpectralNorm
    from torch.nn.utils.spectral_norm import SpectralNorm as HookSpectralNorm

    found = []
    for module in modules:
        for m in module.modules():
            if isinstance(m, _SpectralNorm):
                found += [m._u, m._v]
            for hook in m._forward_pre_hooks.values():
                if isinstance(hook, HookSpectralNorm):
                    found += [getattr(m, hook.name + "_u"), getattr(m, hook.name + "_v")]
    return found


class MicroBatchStart:
    """Every micro-batch of an update starts from the power-iteration state the first one
    started from (saved at micro-batch 0, restored before each next): A micro-batches then run
    the iterations and differentiate through the sigmas of one forward of the whole batch, so
    (W, A) never changes the update. Nothing to do without spectral norm, or with A = 1."""

    def __init__(self, *modules: nn.Module, accumulation: int = 1):
        self.buffers = power_iteration_buffers(*modules) if accumulation > 1 else []
        self.saved: list[torch.Tensor] = []

    @torch.no_grad()
    def begin(self, m: int) -> None:
        if not self.buffers:
            return
        if m == 0:
            self.saved = [b.clone() for b in self.buffers]
        else:
            for b, s in zip(self.buffers, self.saved):
                b.copy_(s)


@contextmanager
def unchanged(*modules: nn.Module):
    """Forwards and backwards inside leave no trace on the modules: their buffers (BatchNorm's
    statistics, spectral norm's u and v) restored, gradients cleared, the RNG state kept."""
    buffers = [b for m in modules for b in m.buffers()]
    saved = [b.detach().clone() for b in buffers]
    devices = sorted({b.device.index for b in buffers if b.is_cuda})
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        with torch.no_grad():
            for b, s in zip(buffers, saved):
                b.copy_(s)
        for m in modules:
            m.zero_grad(set_to_none=True)


def with_spectral_norm(critic: nn.Module) -> nn.Module:
    """Spectral normalization (Miyato et al. 2018) of every conv and linear layer. Its power
    iteration runs in each forward from the weights alone, so it stays the same on every rank."""
    for module in list(critic.modules()):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            torch.nn.utils.parametrizations.spectral_norm(module)
    return critic


from gan_dist.models.contract import check_contract, check_fits, estimate_bytes  # noqa: E402,F401
