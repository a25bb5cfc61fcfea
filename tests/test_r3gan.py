"""model.kind=r3gan: shapes from 16 to 256 pixels, 1 and 3 channels, conditional or not; every
residual branch starts as the identity; per-stage lists of the wrong length are one line;
`gan_dist check` passes it under rpgan; the export (TorchScript and pt2) loads in a Python
without gan_dist and gives the generator's images; a resume is bitwise. (1 rank vs 2 ranks and
accumulation: tests/test_accumulation.py, "r3gan-rpgan".)"""
import subprocess
import sys

import pytest
import torch
from test_own_models import _check

from gan_dist import config
from gan_dist.data import DataInfo
from gan_dist.errors import UserError
from gan_dist.models import build_models
from gan_dist.models.r3gan import ResidualBlock
from gan_dist.runs.export import load_generator
from helpers import TINY, assert_same_state, latest_ckpt, ok, spawn, train

R3 = ["model.kind=r3gan", "loss.kind=rpgan", "loss.n_critic=1", "loss.r1_gamma=0.5"]


@pytest.mark.parametrize("size", [16, 32, 64, 128, 256])
def test_shapes_and_gradients_at_every_size_channels_and_conditioning(size):
    for channels, classes in ((1, 10), (3, 0)):
        cfg = config.load(None, ["model.kind=r3gan", "model.width=2", f"model.blocks=[{','.join(['1'] * (len(bin(size)) - 4))}]",
                                 f"data.image_size={size}", f"model.conditional={str(bool(classes)).lower()}"])
        generator, critic = build_models(cfg, DataInfo(classes, channels, size))
        onehot = torch.eye(10)[[1, 7]] if classes else None
        images = generator(torch.randn(2, cfg.model.z_dim), onehot)
        assert images.shape == (2, channels, size, size) and images.abs().max() <= 1
        scores = critic(images, onehot)
        assert scores.shape == (2,)
        scores.sum().backward()
        assert all(p.grad is not None for p in generator.parameters())
        if classes:  # soft labels (interpolation) go through the embeddings
            soft = 0.5 * torch.eye(10)[[1]] + 0.5 * torch.eye(10)[[7]]
            assert critic(generator(torch.randn(1, cfg.model.z_dim), soft), soft).shape == (1,)


def test_every_residual_branch_starts_as_the_identity_and_bad_lists_are_one_line():
    cfg = config.load(None, ["model.kind=r3gan", "model.width=4", "data.image_size=16"])
    generator, critic = build_models(cfg, DataInfo(10, 1, 16))
    blocks = [m for net in (generator, critic) for m in net.modules() if isinstance(m, ResidualBlock)]
    assert len(blocks) == 2 * 3 * 2  # 3 stages (4, 8, 16) of 2 blocks, in each network
    x = torch.randn(2, 8, 8, 8)
    assert all(torch.equal(b(x), x) for b in blocks if b.expand.in_channels == 8)
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d, torch.nn.GroupNorm))
                   for net in (generator, critic) for m in net.modules())
    for override, needle in (("model.widths=[8,8]", "model.widths: r3gan at data.image_size=16 has 3 stages"),
                             ("model.groups=[3,3,3]", "model.groups: 3 does not divide")):
        with pytest.raises(UserError, match=needle.replace("[", r"\[")):
            build_models(config.load(None, ["model.kind=r3gan", "model.width=4", "data.image_size=16", override]),
                         DataInfo(10, 1, 16))


def test_gan_dist_check_passes_r3gan_under_rpgan():
    r = _check(*R3, "model.width=4")
    assert r.rc == 0 and "all checks passed" in r.out, r.out + r.err


def test_r3gan_resumes_bitwise_and_exports_to_a_python_without_gan_dist(tmp_path):
    args = TINY + R3 + ["train.checkpoint_every=2", "model.width=4"]
    ok(train(args + ["train.steps=2", f"run.dir={tmp_path}/run"]))
    ok(train(args + ["train.steps=4", f"run.dir={tmp_path}/run"]))
    ok(train(args + ["train.steps=4", f"run.dir={tmp_path}/straight"]))
    assert_same_state(latest_ckpt(tmp_path / "run"), latest_ckpt(tmp_path / "straight"))
    r = spawn([sys.executable, "-m", "gan_dist.export", str(tmp_path / "run"), "--out", str(tmp_path / "g.pt"),
               "--format", "both"])[0]
    assert r.rc == 0 and "traced" not in r.err, r.err  # it scripts
    generator, _ = load_generator(tmp_path / "run")
    z, hard = torch.randn(3, 16), torch.eye(10)[[0, 4, 9]]
    with torch.no_grad():
        torch.save({"z": z, "onehot": hard, "images": generator(z, hard)}, tmp_path / "want.pt")
    # -I: no PYTHONPATH, no user site, not the checkout's folder; the files load with torch alone
    code = ("import sys, torch; w = torch.load(sys.argv[1]); "
            "a = torch.jit.load(sys.argv[2])(w['z'], w['onehot']); "
            "b = torch.export.load(sys.argv[3]).module()(w['z'], w['onehot']); "
            "assert not any(m.startswith('gan_dist') for m in sys.modules), 'loading imported gan_dist'; "
            "print(float((a - w['images']).abs().max()), float((b - w['images']).abs().max()))")
    out = subprocess.run([sys.executable, "-I", "-c", code, str(tmp_path / "want.pt"), str(tmp_path / "g.pt"),
                          str(tmp_path / "g.pt2")], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert all(float(d) < 1e-5 for d in out.stdout.split()), out.stdout
