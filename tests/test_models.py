import pytest
import torch
from torch import nn

from gan_dist import config
from gan_dist.data import DataInfo
from gan_dist.models import build_models


@pytest.mark.parametrize("size", [8, 16, 32, 64])
def test_dcgan_depth_follows_image_size(size):
    cfg = config.load(None, [f"data.image_size={size}", "model.width=4"])
    g, c = build_models(cfg, DataInfo(num_classes=2, channels=3, image_size=size))
    z, onehot = torch.randn(5, cfg.model.z_dim), torch.eye(2)[[0, 1, 0, 1, 1]]
    x = g(z, onehot)
    assert x.shape == (5, 3, size, size) and x.abs().max() <= 1
    assert c(x, onehot).shape == (5,)
    ups = sum(isinstance(m, nn.ConvTranspose2d) for m in g.modules())
    assert ups == size.bit_length() - 3 + 1  # 1x1->4x4, then one per doubling


def test_labels_enter_as_channels_and_change_the_output():
    cfg = config.load(None, ["data.image_size=16"])
    g, c = build_models(cfg, DataInfo(10, 1, 16))
    assert c.net[0].in_channels == 1 + 10
    assert g.net[0].in_channels == cfg.model.z_dim + 10
    g.eval()
    z = torch.randn(1, cfg.model.z_dim).repeat(2, 1)
    x = g(z, torch.eye(10)[[3, 7]])
    assert not torch.allclose(x[0], x[1])
    soft = g(z[:1], 0.5 * torch.eye(10)[[3]] + 0.5 * torch.eye(10)[[7]])  # label interpolation
    assert soft.shape == (1, 1, 16, 16)


def test_wgan_gp_critic_has_no_batchnorm():
    for norm in ("instance", "none"):
        cfg = config.load(None, [f"model.critic_norm={norm}", "data.image_size=32"])
        _, c = build_models(cfg, DataInfo(10, 1, 32))
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in c.modules())
        assert any(isinstance(m, nn.InstanceNorm2d) for m in c.modules()) == (norm == "instance")


def test_generator_norm_switch():
    g, _ = build_models(config.load(None, ["model.norm=none"]), DataInfo(10, 1, 16))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in g.modules())
    g, _ = build_models(config.load(None, ["model.norm=batch"]), DataInfo(10, 1, 16))
    assert any(isinstance(m, nn.BatchNorm2d) for m in g.modules())


def test_mlp_book_shapes_and_exercise_widths():
    cfg = config.load(None, ["model.kind=mlp", "model.conditional=false", "model.z_dim=100",
                             "data.image_size=28", "model.norm=none"])
    g, c = build_models(cfg, DataInfo(10, 1, 28))
    linear_g = [m.out_features for m in g.modules() if isinstance(m, nn.Linear)]
    linear_c = [m.out_features for m in c.modules() if isinstance(m, nn.Linear)]
    assert linear_g == [256, 512, 1024, 784] and linear_c == [1024, 512, 256, 1]
    assert sum(isinstance(m, nn.Dropout) for m in c.modules()) == 3
    x = g(torch.randn(4, 100))
    assert x.shape == (4, 1, 28, 28) and c(x).shape == (4,)
    cfg.model.hidden = [1000, 500, 200]
    g, c = build_models(cfg, DataInfo(10, 1, 28))
    assert [m.out_features for m in c.modules() if isinstance(m, nn.Linear)] == [1000, 500, 200, 1]
