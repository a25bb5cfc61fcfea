"""The benchmark's baseline: the loop a user writes from the book, the same models, Adam, batch,
n_critic and loss, the gradient penalty the straightforward way (three critic forwards), no
DDP, fp32, no EMA. gan_dist's Trainer is measured against it (gan_dist.tools.bench)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from gan_dist import config
from gan_dist.data.images import to_unit
from gan_dist.models import build_models

Step = Callable[[int], object]


def update(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def plain_step(cfg: config.Config, data, device: torch.device) -> Step:
    """The loop as written from the book: bare modules, draws straight on the device, three
    critic forwards with WGAN-GP, the critic left trainable in the generator update."""
    dataset, info = data
    torch.manual_seed(cfg.seed)
    gen, critic = (m.to(device) for m in build_models(cfg, info))
    adam = dict(lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
    opt_g, opt_c = torch.optim.Adam(gen.parameters(), **adam), torch.optim.Adam(critic.parameters(), **adam)
    b, k, z_dim, wgan = cfg.train.batch_size, gen.num_classes, cfg.model.z_dim, cfg.loss.kind == "wgan_gp"
    loader = DataLoader(dataset, batch_size=b, shuffle=True, drop_last=True)
    batches, bce = iter(loader), torch.nn.BCEWithLogitsLoss()

    def onehot(y):
        return F.one_hot(y, k).float() if k else None

    def next_batch():
        nonlocal batches
        try:
            x, y = next(batches)
        except StopIteration:  # a new epoch
            batches = iter(loader)
            x, y = next(batches)
        return to_unit(x.to(device)), y.to(device)

    def step(_: int) -> None:
        for i in range(cfg.loss.n_critic):
            if i == 0 or not cfg.loss.reuse_batch:
                real, y = next_batch()
                oh = onehot(y)
            with torch.no_grad():
                fake = gen(torch.randn(b, z_dim, device=device), oh)
            if wgan:
                alpha = torch.rand(b, 1, 1, 1, device=device)
                interp = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
                (grad,) = torch.autograd.grad(critic(interp, oh).sum(), interp, create_graph=True)
                gp = ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()
                loss = critic(fake, oh).mean() - critic(real, oh).mean() + cfg.loss.gp_lambda * gp
            else:
                s_real, s_fake = critic(real, oh), critic(fake, oh)
                loss = bce(s_real, torch.ones_like(s_real)) + bce(s_fake, torch.zeros_like(s_fake))
            update(opt_c, loss)
        oh = onehot(torch.randint(max(k, 1), (b,), device=device))
        scores = critic(gen(torch.randn(b, z_dim, device=device), oh), oh)
        update(opt_g, -scores.mean() if wgan else bce(scores, torch.ones_like(scores)))
    return step
