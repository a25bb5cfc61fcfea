"""The model contract (gan_dist.models' docstring), checked at start-up by a dry forward with one
line naming what is wrong; and the start-up estimate that refuses a model the device cannot
hold, before an allocator crash."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from gan_dist.config import Config
from gan_dist.data.datasets import DataInfo
from gan_dist.errors import UserError, first_line


def check_contract(generator: nn.Module, critic: nn.Module, info: DataInfo, kind: str,
                   device: torch.device) -> None:
    """A dry forward of two samples (eval mode, no gradient, no global RNG): the attributes,
    shapes and range the training loop relies on, or one line naming what is wrong."""
    who = f"model.kind={kind}"
    for attr, ok in (("z_dim", lambda v: v > 0), ("num_classes", lambda v: v >= 0)):
        value = getattr(generator, attr, None)
        if not isinstance(value, int) or isinstance(value, bool) or not ok(value):
            raise UserError(f"{who}: the generator needs an int attribute {attr} ({'> 0' if attr == 'z_dim' else '>= 0'}), "
                            f"got {value!r}")
    k = generator.num_classes
    if k and k != info.num_classes:
        raise UserError(f"{who}: the generator has num_classes={k}, the dataset {info.num_classes} classes")
    if getattr(critic, "num_classes", k) != k:
        raise UserError(f"{who}: generator.num_classes={k} but critic.num_classes={critic.num_classes}")
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, generator.z_dim, generator=g).to(device)
    onehot = torch.eye(k)[:2].to(device) if k else None
    if onehot is not None and k == 1:
        onehot = torch.ones(2, 1, device=device)
    modes = generator.training, critic.training
    generator.eval(), critic.eval()
    try:
        with torch.no_grad():
            try:
                images = generator(z, onehot)
            except Exception as e:
                raise UserError(f"{who}: generator(z [2, {generator.z_dim}], onehot {'[2, %d]' % k if k else 'None'}) "
                                f"failed: {first_line(e)}") from None
            want = (2, info.channels, info.image_size, info.image_size)
            if not isinstance(images, torch.Tensor) or tuple(images.shape) != want:
                raise UserError(f"{who}: the generator returned {_shape(images)} for 2 samples, expected {list(want)} "
                                "(channels and size of the dataset)")
            if not torch.isfinite(images).all() or images.abs().max() > 1.0 + 1e-3:
                raise UserError(f"{who}: the generator's images must be finite and in [-1, 1] (end with tanh), got "
                                f"values in [{images.min().item():.3g}, {images.max().item():.3g}]")
            try:
                scores = critic(images, onehot)
            except Exception as e:
                raise UserError(f"{who}: critic(images {list(want)}, onehot) failed: {first_line(e)}") from None
            if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != (2,):
                raise UserError(f"{who}: the critic returned {_shape(scores)} for 2 samples, expected [2] "
                                "(one score per sample: flatten it)")
    finally:
        generator.train(modes[0]), critic.train(modes[1])


def _shape(x) -> str:
    return f"shape {list(x.shape)}" if isinstance(x, torch.Tensor) else f"a {type(x).__name__}"


def estimate_bytes(cfg: Config, info: DataInfo, local_batch: int, factory: Optional[Callable] = None
                   ) -> tuple[int, int]:
    """(parameter bytes, activation bytes for one forward of both networks at this batch),
    from a build and a forward on the meta device: nothing is allocated."""
    activations = 0

    def count(module: nn.Module, inputs, output) -> None:
        nonlocal activations
        if isinstance(output, torch.Tensor) and not getattr(module, "inplace", False):  # in-place: no new memory
            activations += output.numel() * output.element_size()

    with torch.device("meta"):
        from gan_dist.models import build_models

        generator, critic = build_models(cfg, info, factory)  # may raise: check_fits skips the estimate
        hooks = [m.register_forward_hook(count) for net in (generator, critic) for m in net.modules()
                 if not list(m.children())]
        try:  # a pair of live modules (fit(models=(G, C))) fails here: its hooks must go too
            k = generator.num_classes
            onehot = torch.zeros(local_batch, k) if k else None
            critic(generator(torch.zeros(local_batch, generator.z_dim), onehot), onehot)
        finally:
            for h in hooks:
                h.remove()
    params = sum(p.numel() * p.element_size() for net in (generator, critic) for p in net.parameters())
    return params, activations


def check_fits(cfg: Config, info: DataInfo, local_batch: int, device: torch.device,
               factory: Optional[Callable] = None) -> None:
    """Refuse at start-up a model that cannot fit the device (a typo'd image size needing
    terabytes), with the estimate, instead of an allocator crash. The estimate is a lower
    bound: weights, gradients and Adam's two moments (4x the parameters), the generator EMA,
    and the activations a critic update keeps (real, fake and interpolates: ~3 forwards)."""
    from gan_dist.data.datasets import memory_bytes

    try:
        params, activations = estimate_bytes(cfg, info, local_batch, factory)
    except UserError:
        raise
    except Exception:  # a user's factory that cannot build on the meta device: no estimate
        return
    need = 5 * params + 3 * activations
    total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else memory_bytes()
    if need > total:
        gib = lambda b: f"{b / 2**30:,.1f} GiB"  # noqa: E731
        raise UserError(f"data.image_size={info.image_size}: this {cfg.model.kind} generator and critic need at least "
                        f"{gib(need)} ({gib(params)} of parameters, {gib(activations)} of activations per forward at "
                        f"{local_batch} images per rank), more than the {gib(total)} of {device}: lower "
                        "data.image_size, the model's width or train.batch_size")
