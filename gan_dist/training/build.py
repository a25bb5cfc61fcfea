"""What a run trains, built the same on every rank: the two networks on the device (seeded,
SyncBatchNorm across CUDA ranks, the contract checked, rank 0's weights broadcast,
channels_last), the device's speed switches, the optimizers, and the compiled wrappers."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from gan_dist import distributed
from gan_dist.config import Config
from gan_dist.data import DataInfo
from gan_dist.distributed import World
from gan_dist.models import build_models, check_contract, check_fits


def networks(cfg: Config, info: DataInfo, world: World, factory: Optional[Callable]):
    """(generator, critic) on world.device, identical on every rank."""
    check_fits(cfg, info, cfg.train.batch_size // world.world_size, world.device, factory)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank and for any W
    generator, critic = build_models(cfg, info, factory)
    if world.distributed and world.device.type == "cuda":  # batch statistics over all ranks
        generator = torch.nn.SyncBatchNorm.convert_sync_batchnorm(generator)
    generator, critic = generator.to(world.device), critic.to(world.device)
    check_contract(generator, critic, info, cfg.model.kind, world.device)
    for net in (generator, critic):  # identical weights even if a factory's RNG is not ours
        distributed.broadcast_module(net, world)
    if cfg.train.channels_last:
        generator.to(memory_format=torch.channels_last)
        critic.to(memory_format=torch.channels_last)
    return generator, critic


def device_switches(cfg: Config, world: World) -> dict:
    """Set TF32 and cuDNN benchmark on CUDA; the autocast arguments (bf16 or off)."""
    if world.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.train.tf32
        torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark
    return dict(device_type=world.device.type, dtype=torch.bfloat16, enabled=cfg.train.precision == "bf16")


def optimizers(cfg: Config, generator: torch.nn.Module, critic: torch.nn.Module):
    """Adam for each network; every parameter is in it (a frozen one gets no gradient, so Adam
    leaves it alone), so freezing more or fewer layers later keeps checkpoints loadable."""
    adam = dict(lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
    return torch.optim.Adam(generator.parameters(), **adam), torch.optim.Adam(critic.parameters(), **adam)


def wrapped(cfg: Config, world: World, loss, generator: torch.nn.Module, critic: torch.nn.Module):
    """The modules the loop calls: DDP when W > 1, then torch.compile when asked. A penalty's
    double backward (WGAN-GP, R1) does not go through torch.compile (README): such a critic
    stays eager; the generator is always compiled."""
    generator_ddp, critic_ddp = distributed.wrap(generator, world), distributed.wrap(critic, world)
    if cfg.train.compile:
        generator_ddp = torch.compile(generator_ddp)
        if not loss.needs_double_backward:
            critic_ddp = torch.compile(critic_ddp)
    return generator_ddp, critic_ddp
