"""Model families: the MLP GAN (book chapter 4) and the conditional DCGAN (chapter 5)."""
from __future__ import annotations

from torch import nn

from gan_dist.config import Config
from gan_dist.data import DataInfo
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
