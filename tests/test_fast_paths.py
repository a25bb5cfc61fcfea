"""Every speed switch is a config switch with a correctness check on CPU where the path exists
here (TF32 and cudnn.benchmark are CUDA-only and only set flags), and on CUDA where there is a
GPU (helpers.DEVICES: the CUDA case skips elsewhere, its CPU twin runs)."""
import pytest
import torch

from gan_dist import config
from gan_dist.data import DataInfo
from gan_dist.models import build_models
from gan_dist.training.losses import WGANGP, gradient_penalty
from helpers import DEVICES, TINY, assert_same_state, device_args, device_env, latest_ckpt, metrics_rows, ok, train


def _critic_grads(device: str, channels_last: bool, bf16: bool = False):
    torch.manual_seed(0)
    cfg = config.load(None, ["data.image_size=16", "model.width=8"])
    _, critic = build_models(cfg, DataInfo(10, 1, 16))
    g = torch.Generator().manual_seed(1)
    real, fake = torch.rand(6, 1, 16, 16, generator=g) * 2 - 1, torch.rand(6, 1, 16, 16, generator=g) * 2 - 1
    onehot, alpha = torch.eye(10)[:6], torch.rand(6, 1, 1, 1, generator=g)
    critic, real, fake, onehot, alpha = (t.to(device) for t in (critic, real, fake, onehot, alpha))
    if channels_last:
        critic.to(memory_format=torch.channels_last)
        real, fake = real.contiguous(memory_format=torch.channels_last), fake.contiguous(memory_format=torch.channels_last)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False), \
            torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):  # fp32 means fp32 on CUDA too
        loss, stats = WGANGP(10.0).critic_loss(critic, real, fake, onehot, alpha)
    loss.backward()
    return stats.cpu(), [p.grad.cpu() for p in critic.parameters()]


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_critic_step_matches_nchw(device):
    (s1, g1), (s2, g2) = _critic_grads(device, False), _critic_grads(device, True)
    assert torch.allclose(s1, s2, rtol=1e-4, atol=1e-5)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_gradient_penalty_is_stable_and_close_to_fp32(device):
    (s32, _), (s16, g16) = _critic_grads(device, False), _critic_grads(device, False, bf16=True)
    assert torch.isfinite(s16).all() and all(torch.isfinite(g).all() for g in g16)
    assert torch.allclose(s16, s32, rtol=5e-2, atol=5e-2), (s16, s32)  # bf16 has 8 mantissa bits
    x = torch.randn(4, 3, 8, 8, device=device, requires_grad=True)
    w = torch.randn(3, 8, 8, device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        gp = gradient_penalty((x * w).flatten(1).sum(1), x)
    assert gp.dtype == torch.float32 and torch.allclose(gp, (w.norm() - 1) ** 2, rtol=1e-2)


def test_the_losses_that_differentiate_a_gradient_say_so():
    from gan_dist.training.losses import build_loss

    kinds = ("wgan_gp", "ns_r1", "bce", "hinge", "rpgan")
    assert {k: build_loss(config.load(None, [f"loss.kind={k}"]).loss).needs_double_backward for k in kinds} == \
        {"wgan_gp": True, "ns_r1": True, "bce": False, "hinge": False, "rpgan": True}


def test_lazy_regularization_every_k_scaled_by_k():
    torch.manual_seed(0)
    _, critic = build_models(config.load(None, ["data.image_size=8", "model.width=4"]), DataInfo(10, 1, 8))
    real, fake, onehot, alpha = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8), torch.eye(10)[:4], torch.rand(4, 1, 1, 1)
    full = WGANGP(10.0, gp_every=1).critic_loss(critic, real, fake, onehot, alpha)[1]
    lazy_on = WGANGP(10.0, gp_every=3).critic_loss(critic, real, fake, onehot, alpha, update=6)[1]
    lazy_off = WGANGP(10.0, gp_every=3).critic_loss(critic, real, fake, onehot, alpha, update=7)
    assert torch.allclose(lazy_on[1], 3 * full[1]) and torch.allclose(lazy_on[2], full[2])
    assert lazy_off[1][1] == 0 and torch.allclose(lazy_off[0], -full[2])


@pytest.mark.parametrize("device", DEVICES)
def test_dataset_on_device_and_loader_workers_give_bitwise_the_same_run(tmp_path, device):
    args, env = TINY + ["train.steps=4", *device_args(device, 2)], device_env(device)
    ok(train(args + [f"run.dir={tmp_path}/loader"], env=env))
    ok(train(args + ["data.on_device=true", f"run.dir={tmp_path}/on_device"], env=env))
    ok(train(args + ["data.num_workers=2", f"run.dir={tmp_path}/workers"], env=env))
    ref = latest_ckpt(tmp_path / "loader")
    assert_same_state(ref, latest_ckpt(tmp_path / "on_device"))
    assert_same_state(ref, latest_ckpt(tmp_path / "workers"))
    # on 2 ranks each rank slices its own shard of the on-device data
    ok(train(args + [f"run.dir={tmp_path}/loader2"], world_size=2, env=env))
    ok(train(args + ["data.on_device=true", f"run.dir={tmp_path}/on_device2"], world_size=2, env=env))
    assert_same_state(latest_ckpt(tmp_path / "loader2"), latest_ckpt(tmp_path / "on_device2"))


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_channels_last_lazy_gp_run_trains_on_two_ranks(tmp_path, device):
    ok(train(TINY + ["train.steps=4", "train.precision=bf16", "train.channels_last=true", "loss.gp_every=4",
                     *device_args(device, 2), f"run.dir={tmp_path}"], world_size=2, env=device_env(device)))
    rows = metrics_rows(tmp_path)
    assert rows and all(torch.isfinite(torch.tensor([r["loss_critic"], r["gp"], r["loss_gen"]])).all() for r in rows)
    assert latest_ckpt(tmp_path)["step"] == 4


@pytest.mark.parametrize("device", DEVICES)
def test_compile_trains_the_generator_compiled(tmp_path, device):
    # ns_r1: R1's double backward keeps the critic eager, as WGAN-GP's (it crashed compiled)
    args = TINY + ["train.steps=2", "optim.eps=1e-6", "loss.kind=ns_r1", "loss.n_critic=1", *device_args(device)]
    ok(train(args + ["train.compile=true", f"run.dir={tmp_path}/compiled"], timeout=400, env=device_env(device)))
    ok(train(args + [f"run.dir={tmp_path}/eager"], env=device_env(device)))
    a, b = latest_ckpt(tmp_path / "compiled"), latest_ckpt(tmp_path / "eager")
    for net in ("generator", "critic"):
        for k, v in a[net].items():
            assert torch.allclose(v, b[net][k], atol=1e-4), (net, k)
