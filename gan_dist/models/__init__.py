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

from typing import Callable, Optional

import torch
from torch import nn

from gan_dist import registry
from gan_dist.config import Config
from gan_dist.datasets import DataInfo
from gan_dist.errors import UserError


def build_models(cfg: Config, info: DataInfo, factory: Optional[Callable] = None) -> tuple[nn.Module, nn.Module]:
    """(generator, critic) from model.kind's factory (a built-in name or an import path), or
    from `factory` (gan_dist.fit's models=)."""
    pair = (factory or registry.model_factory(cfg.model.kind))(cfg, info)
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(m, nn.Module) for m in pair)):
        raise UserError(f"model.kind={cfg.model.kind}: the factory must return (generator, critic), two "
                        f"nn.Modules; it returned {type(pair).__name__}")
    return pair[0], pair[1]


def with_spectral_norm(critic: nn.Module) -> nn.Module:
    """Spectral normalization (Miyato et al. 2018) of every conv and linear layer. Its power
    iteration runs in each forward from the weights alone, so it stays the same on every rank."""
    for module in list(critic.modules()):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            torch.nn.utils.parametrizations.spectral_norm(module)
    return critic


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
                                f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
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
                raise UserError(f"{who}: critic(images {list(want)}, onehot) failed: {type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''}") from None
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
    from gan_dist.datasets import memory_bytes

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
