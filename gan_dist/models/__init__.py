"""Model families: the MLP GAN (book chapter 4) and the conditional DCGAN (chapter 5)."""
from __future__ import annotations

import torch
from torch import nn

from gan_dist.config import Config
from gan_dist.datasets import DataInfo
from gan_dist.errors import UserError
from gan_dist.models import dcgan, mlp


def build_models(cfg: Config, info: DataInfo) -> tuple[nn.Module, nn.Module]:
    """(generator, critic). Both expose num_classes (0: unconditional); the generator also
    z_dim, channels and image_size, which export and sampling read."""
    m = cfg.model
    k = info.num_classes if m.conditional else 0
    c, size = info.channels, info.image_size
    if m.kind == "dcgan":
        return (dcgan.Generator(m.z_dim, k, c, size, m.width, m.norm),
                dcgan.Critic(k, c, size, m.width, m.critic_norm))
    return (mlp.Generator(m.z_dim, k, c, size, m.hidden, m.norm),
            mlp.Critic(k, c, size, m.hidden, m.dropout))


def estimate_bytes(cfg: Config, info: DataInfo, local_batch: int) -> tuple[int, int]:
    """(parameter bytes, activation bytes for one forward of both networks at this batch),
    from a build and a forward on the meta device: nothing is allocated."""
    activations = 0

    def count(module: nn.Module, inputs, output) -> None:
        nonlocal activations
        if isinstance(output, torch.Tensor) and not getattr(module, "inplace", False):  # in-place: no new memory
            activations += output.numel() * output.element_size()

    with torch.device("meta"):
        generator, critic = build_models(cfg, info)
        hooks = [m.register_forward_hook(count) for net in (generator, critic) for m in net.modules()
                 if not list(m.children())]
        k = generator.num_classes
        onehot = torch.zeros(local_batch, k) if k else None
        critic(generator(torch.zeros(local_batch, generator.z_dim), onehot), onehot)
        for h in hooks:
            h.remove()
    params = sum(p.numel() * p.element_size() for net in (generator, critic) for p in net.parameters())
    return params, activations


def check_fits(cfg: Config, info: DataInfo, local_batch: int, device: torch.device) -> None:
    """Refuse at start-up a model that cannot fit the device (a typo'd image size needing
    terabytes), with the estimate, instead of an allocator crash. The estimate is a lower
    bound: weights, gradients and Adam's two moments (4x the parameters), the generator EMA,
    and the activations a critic update keeps (real, fake and interpolates: ~3 forwards)."""
    from gan_dist.datasets import memory_bytes

    params, activations = estimate_bytes(cfg, info, local_batch)
    need = 5 * params + 3 * activations
    total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else memory_bytes()
    if need > total:
        gib = lambda b: f"{b / 2**30:,.1f} GiB"  # noqa: E731
        raise UserError(f"data.image_size={info.image_size}: this {cfg.model.kind} generator and critic need at least "
                        f"{gib(need)} ({gib(params)} of parameters, {gib(activations)} of activations per forward at "
                        f"{local_batch} images per rank), more than the {gib(total)} of {device}: lower "
                        "data.image_size, the model's width or train.batch_size")
