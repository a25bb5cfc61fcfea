"""What a run trains, built the same on every rank: the two networks on the device (seeded,
the contract checked, rank 0's weights broadcast, channels_last; SyncBatchNorm across CUDA
ranks once the micro-batch probe has run), the device's speed switches, the micro-batch probe,
the optimizers, and the compiled wrappers."""
from __future__ import annotations

import os
from typing import Callable, Optional

import torch

from gan_dist import distributed
from gan_dist.config import Config
from gan_dist.data import DataInfo
from gan_dist.distributed import World
from gan_dist.models import build_models, check_contract, check_fits


def networks(cfg: Config, info: DataInfo, world: World, factory: Optional[Callable], per_forward: int):
    """(generator, critic) on world.device, identical on every rank; refused at start-up when
    `per_forward` images per forward cannot fit (models.check_fits). BatchNorm stays local here:
    sync_batch_norm converts it after the probe."""
    check_fits(cfg, info, per_forward, world.device, factory)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank and for any W
    generator, critic = build_models(cfg, info, factory)
    generator, critic = generator.to(world.device), critic.to(world.device)
    check_contract(generator, critic, info, cfg.model.kind, world.device)
    for net in (generator, critic):  # identical weights even if a factory's RNG is not ours
        distributed.broadcast_module(net, world)
    if cfg.train.channels_last:
        generator.to(memory_format=torch.channels_last)
        critic.to(memory_format=torch.channels_last)
    return generator, critic


def sync_batch_norm(generator: torch.nn.Module, world: World) -> torch.nn.Module:
    """The generator's BatchNorm as SyncBatchNorm across CUDA ranks: batch statistics over the
    global batch (CPU ranks keep per-rank statistics: DDP refuses SyncBatchNorm there)."""
    if world.distributed and world.device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(generator)
    return generator


def device_switches(cfg: Config, world: World) -> dict:
    """Set TF32, cuDNN benchmark and determinism on CUDA (before the first kernel runs); the
    autocast arguments (bf16 or off)."""
    if world.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.train.tf32
        torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark and not cfg.train.deterministic
        if cfg.train.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for repeatable matmuls
            torch.backends.cudnn.deterministic = True
            # warn_only: an op without a deterministic CUDA kernel warns once instead of stopping the run
            torch.use_deterministic_algorithms(True, warn_only=True)
    return dict(device_type=world.device.type, dtype=torch.bfloat16, enabled=cfg.train.precision == "bf16")


def optimizers(cfg: Config, generator: torch.nn.Module, critic: torch.nn.Module):
    """Adam for each network at its own settings (optim.generator / optim.critic, else the shared
    optim.*: the two time-scale rule of Heusel et al. 2017 when they differ). Every parameter is
    in it (a frozen one gets no gradient, so Adam leaves it alone), so freezing more or fewer
    layers later keeps checkpoints loadable."""
    return (torch.optim.Adam(generator.parameters(), **cfg.optim.of("generator")),
            torch.optim.Adam(critic.parameters(), **cfg.optim.of("critic")))


def wrapped(cfg: Config, world: World, loss, generator: torch.nn.Module, critic: torch.nn.Module):
    """The modules the loop calls: DDP when W > 1, then torch.compile when asked. A penalty's
    double backward (WGAN-GP, R1) does not go through torch.compile (docs/configuration.md, train.compile): such a critic
    stays eager; the generator is always compiled."""
    generator_ddp, critic_ddp = distributed.wrap(generator, world), distributed.wrap(critic, world)
    if cfg.train.compile:
        generator_ddp = torch.compile(generator_ddp)
        if not loss.needs_double_backward:
            critic_ddp = torch.compile(critic_ddp)
    return generator_ddp, critic_ddp


def per_forward(cfg: Config, world: World, saved: Optional[int]) -> int:
    """The images per forward that the start-up size estimate assumes: the checkpoint's or the
    given micro-batch, batch_size / W for 0, one for auto (the probe finds the largest)."""
    local = cfg.train.batch_size // world.world_size
    if cfg.train.micro_batch == "auto":
        return 1
    micro = int(cfg.train.micro_batch) or saved or local
    return min(micro, local)


def trial(n: int, loss, generator: torch.nn.Module, critic: torch.nn.Module, autocast: dict) -> None:
    """One critic update (penalty included) and one generator update's forwards and backwards on
    n random images: what a micro-batch of n costs. Run inside models.unchanged."""
    device, k = next(generator.parameters()).device, generator.num_classes
    z = torch.randn(n, generator.z_dim, device=device)
    onehot = torch.eye(k, device=device)[torch.arange(n, device=device) % k] if k else None
    with torch.autocast(**autocast):
        real = generator(z, onehot).detach().float()
        c_loss, _ = loss.critic_loss(critic, real, real.flip(0), onehot, torch.rand(n, 1, 1, 1, device=device))
    c_loss.backward()
    with torch.autocast(**autocast):
        g_loss = loss.generator_loss(critic, generator(z, onehot), onehot, real)
    g_loss.backward()


def probe(cfg: Config, world: World, loss, generator: torch.nn.Module, critic: torch.nn.Module, autocast: dict):
    """train.micro_batch=auto on CUDA: fits(n) runs trial(n) and says whether it stayed within
    the free memory, with 15% headroom; None elsewhere (the CPU keeps batch_size / W). Every rank
    runs it on its own GPU, before SyncBatchNorm (no collective inside), the networks left
    unchanged (layout.resolve)."""
    if world.device.type != "cuda" or cfg.train.micro_batch != "auto":
        return None
    device = world.device

    def fits_n(n: int) -> bool:
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            trial(n, loss, generator, critic, autocast)
            torch.cuda.synchronize(device)
            return torch.cuda.max_memory_allocated(device) - base < 0.85 * free
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            generator.zero_grad(set_to_none=True)
            critic.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    return fits_n


def layout_change(found, layout, generator: torch.nn.Module) -> list[str]:
    """A warning line when a resume changes how the batch is laid out and the generator has
    BatchNorm: its statistics are per micro-batch (SyncBatchNorm: over the ranks' micro-batches)."""
    if found is None:
        return []
    state = found[0]
    old = (state.get("world_size"), state.get("micro_batch"))
    batch_norm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in generator.modules())
    if old == (layout.world_size, layout.micro_batch) or not batch_norm:
        return []
    return [f"the generator's BatchNorm now normalizes micro-batches of {layout.micro_batch} on "
            f"{layout.world_size} rank(s) (the checkpoint: {old[1] or '?'} on {old[0]}): the same mathematics "
            "otherwise, but not bitwise the training before the resume"]
