"""Augmentation (augment.kind=diffaug|ada): the operations per sample and differentiable, every
draw for the global batch (W ranks = 1 process), ADA's p the same on every rank, exact across
a resume in the middle of an interval and a rollback."""
import shutil

import pytest
import torch

from gan_dist import config
from gan_dist.distributed import World
from gan_dist.errors import UserError
from gan_dist.training.augment import DRAWS, Augment, AugmentedCritic, apply
from helpers import TINY, latest_ckpt, metrics_rows, ok, train, train_injected

ALL = ("translation", "scale", "rotation", "cutout", "brightness", "contrast", "saturation", "xflip")
ADA = ["augment.kind=ada", "augment.speed_kimg=2", "augment.interval=2", "augment.p=0.2"]  # p moves by 0.048+ per adjustment


def _draws(n: int, ops=ALL, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, sum(1 + DRAWS[o] for o in ops), generator=torch.Generator().manual_seed(seed))


def test_each_operation_changes_images_per_sample_differentiably_and_p_0_is_the_identity():
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    for op in ALL:
        d, inp = _draws(8, (op,)), x.clone().requires_grad_(True)
        out = apply(inp, (op,), d, torch.tensor(1.0))
        assert not torch.equal(out, x), op
        out.square().sum().backward()
        assert inp.grad.abs().sum() > 0, f"{op}: no gradient reaches the input"
        assert torch.equal(apply(x, (op,), d, torch.tensor(0.0)), x), f"{op} at p=0"
        # per sample: any subset of rows gets what those rows get in the whole batch
        assert torch.equal(apply(x[1::2], (op,), d[1::2], torch.tensor(1.0)), out.detach()[1::2]), op
    gray = x[:, :1]
    assert torch.equal(apply(gray, ("saturation",), _draws(8, ("saturation",)), torch.tensor(1.0)), gray)
    # translation moves whole pixels: every value of the result is a pixel of the input or the padding
    shifted = apply(x, ("translation",), _draws(8, ("translation",)), torch.tensor(1.0))
    assert set(shifted.unique().tolist()) <= set(x.unique().tolist()) | {0.0}
    # p is per sample: at 0.5 some images change and some do not
    d = _draws(64, ("cutout",))
    half = apply(x.repeat(8, 1, 1, 1), ("cutout",), d, torch.tensor(0.5))
    changed = (half != x.repeat(8, 1, 1, 1)).flatten(1).any(1)
    assert torch.equal(changed, d[:, 0] < 0.5)


def _pipe(kind: str, rank: int, world_size: int, batch: int = 8) -> Augment:
    cfg = config.load(None, [f"augment.kind={kind}", "augment.policy=translation,rotation,cutout,color",
                             "augment.p=0.7", f"train.batch_size={batch}", "loss.n_critic=1"])
    return Augment(cfg, World(rank=rank, world_size=world_size))


def test_each_rank_and_micro_batch_gets_its_rows_of_the_global_draw():
    x = torch.rand(8, 1, 8, 8) * 2 - 1
    fake = torch.rand(8, 1, 8, 8) * 2 - 1
    one = _pipe("diffaug", 0, 1)
    one.begin(3, "critic0", slice(None))
    whole = one(torch.cat([x, fake]))  # two segments: real rows, then fake rows
    again = one(x)  # the second call of the same evaluation: its own draw
    assert not torch.equal(again, whole[:8])
    for rank in range(2):
        pipe = _pipe("diffaug", rank, 2)
        rows = torch.arange(8)[rank::2]
        for part in (slice(0, 2), slice(2, 4)):  # micro-batches of 2 of the rank's 4 rows
            pipe.begin(3, "critic0", part)
            out = pipe(torch.cat([x[rows[part]], fake[rows[part]]]))
            assert torch.equal(out, torch.cat([whole[:8][rows[part]], whole[8:][rows[part]]]))
    other = _pipe("diffaug", 0, 1)
    other.begin(4, "critic0", slice(None))  # another step: another draw
    assert not torch.equal(other(torch.cat([x, fake])), whole)


def test_ada_counts_signs_as_integers_and_adjusts_p_once_per_interval():
    cfg = config.load(None, ["augment.kind=ada", "augment.interval=2", "augment.speed_kimg=0.1",
                             "train.batch_size=8", "loss.n_critic=2"])
    pipe = Augment(cfg, World())
    critic = AugmentedCritic(lambda x, onehot=None: x.flatten(1).mean(1) + 10.0, pipe)  # every real scores > 0
    for step in range(4):
        for i in range(2):
            pipe.begin(step, f"critic{i}", slice(None), observe=True)
            critic(torch.rand(16, 1, 4, 4))
            critic(torch.rand(8, 1, 4, 4))  # a second call (the interpolates) is not counted
        pipe.begin(step, "generator", slice(None))
        critic(torch.rand(8, 1, 4, 4))  # nor the generator phase
        pipe.adjust(step + 1)
        if step == 0:
            assert pipe.counts.tolist() == [16, 16] and float(pipe.p) == 0.0  # mid-interval
    assert float(pipe.rt) == 1.0 and pipe.counts.tolist() == [0, 0]
    assert float(pipe.p) == pytest.approx(2 * 8 * 2 * 2 / 100.0)  # two adjustments of batch*n_critic*interval/100
    pipe.pairs = True  # WGAN-GP: real against the fake of its row; here every pair is a tie
    pipe.begin(4, "critic0", slice(None), observe=True)
    AugmentedCritic(lambda x, onehot=None: torch.zeros(x.shape[0]), pipe)(torch.rand(16, 1, 4, 4))
    assert pipe.counts.tolist() == [0, 8]


def test_bad_augment_settings_are_one_line():
    for override, needle in [("augment.kind=randaug", "augment.kind: unknown choice 'randaug'"),
                             ("augment.policy=translation,blur", "augment.policy: unknown operation 'blur'"),
                             ("augment.p=1.5", "augment.p: must be in [0, 1]"),
                             ("augment.target=1", "augment.target: must be in (0, 1)"),
                             ("augment.speed_kimg=0", "augment.speed_kimg: must be > 0")]:
        with pytest.raises(UserError, match=needle.replace("(", "\\(").replace(")", "\\)").replace("[", "\\[")):
            config.load(None, ["augment.kind=ada", override] if "kind" not in override else [override])


def _p_series(run, key="augment_p"):
    return [r[key] for r in metrics_rows(run) if key in r]


@pytest.mark.parametrize("kind, extra", [
    ("diffaug", ["augment.kind=diffaug", "loss.kind=wgan_gp", "loss.n_critic=2"]),
    ("ada", ADA + ["loss.kind=ns_r1", "loss.n_critic=2", "loss.gp_every=2", "optim.betas=[0.0,0.99]"]),
    ("ada-wgan_gp", ADA + ["loss.kind=wgan_gp", "loss.n_critic=2"]),
])
def test_two_ranks_equal_one_rank_with_augmentation(tmp_path, kind, extra):
    # as test_distributed's 1 vs 2 ranks (model.norm=none, optim.eps=1e-6), with every critic
    # input augmented: the draws for the global batch make the ranks' rows what one process has
    args = TINY + ["model.norm=none", "train.steps=8", "optim.eps=1e-6", *extra]
    ok(train(args + [f"run.dir={tmp_path}/one"], world_size=1))
    ok(train(args + [f"run.dir={tmp_path}/two"], world_size=2))
    one, two = latest_ckpt(tmp_path / "one"), latest_ckpt(tmp_path / "two")
    for net in ("generator", "critic"):
        for name, p1 in one[net].items():
            assert torch.allclose(p1, two[net][name], atol=1e-4, rtol=0), f"{net}.{name}"
    plain = TINY + ["model.norm=none", "train.steps=8", "optim.eps=1e-6",
                    *[e for e in extra if not e.startswith("augment.")]]
    ok(train(plain + [f"run.dir={tmp_path}/plain"], world_size=1))
    moved = max((p - latest_ckpt(tmp_path / "plain")["critic"][k]).abs().max().item() for k, p in one["critic"].items())
    assert moved > 1e-3, "the augmentation did not change the training"
    if kind.startswith("ada"):
        p1, p2 = _p_series(tmp_path / "one"), _p_series(tmp_path / "two")
        assert p1 == p2 and len(p1) == 4 and len(set(p1)) > 1, (p1, p2)  # logged every 2 steps; p moved
        assert torch.equal(one["augment"]["p"], two["augment"]["p"])
        assert all("augment_rt" in r for r in metrics_rows(tmp_path / "two") if "augment_p" in r)


def test_ada_stopped_mid_interval_resumes_bitwise_on_two_ranks(tmp_path):
    # interval 4: a stop at step 6 leaves half an interval's signs counted on each rank; the
    # checkpoint holds their sum, and the resumed run adjusts p at step 8 as the straight one
    args = TINY + ["augment.kind=ada", "augment.speed_kimg=2", "augment.interval=4", "train.checkpoint_every=2"]
    ok(train(args + ["train.steps=6", f"run.dir={tmp_path}/split"], world_size=2))
    mid = latest_ckpt(tmp_path / "split")
    assert mid["augment"]["counts"][1].item() == 2 * 16 * 5  # 2 steps x 5 critic updates x 16 real images
    ok(train(args + ["train.steps=12", f"run.dir={tmp_path}/split"], world_size=2))
    ok(train(args + ["train.steps=12", f"run.dir={tmp_path}/straight"], world_size=2))
    a, b = latest_ckpt(tmp_path / "split"), latest_ckpt(tmp_path / "straight")
    for net in ("generator", "critic"):
        for name, t in a[net].items():
            assert torch.equal(t, b[net][name]), f"{net}.{name}"
    assert all(torch.equal(a["augment"][k], b["augment"][k]) for k in ("p", "counts", "rt"))
    for key in ("augment_p", "augment_rt"):  # r_t of the interval across the stop: counted once
        assert _p_series(tmp_path / "split", key)[-4:] == _p_series(tmp_path / "straight", key)[-4:], key
    assert float(a["augment"]["p"]) > 0


def test_a_rollback_restores_p_with_the_weights(tmp_path):
    """Rank 1's critic turns NaN before step 7: every rank returns to step 4 (p and the counts
    of step 4) with lr x0.5, which is resuming step 4's checkpoint with optim.lr halved."""
    args = TINY + ADA + ["train.on_divergence=rollback", "train.max_rollbacks=2"]
    run, twin = tmp_path / "run", tmp_path / "twin"
    ok(train(args + ["train.steps=4", f"run.dir={run}"], world_size=2))
    shutil.copytree(run, twin)
    assert float(latest_ckpt(run)["augment"]["p"]) > 0
    ok(train_injected(args + ["train.steps=12", f"run.dir={run}"], world_size=2,
                      env_extra={"GAN_DIST_TEST_NAN_AT": "7", "GAN_DIST_TEST_FAULT_RANKS": "1"}))
    ok(train(args + ["train.steps=12", "optim.lr=5e-5", f"run.dir={twin}"], world_size=2))
    a, b = latest_ckpt(run), latest_ckpt(twin)
    assert a["divergence"]["rollbacks"] == 1
    assert all(torch.equal(a["augment"][k], b["augment"][k]) for k in ("p", "counts", "rt"))
    for name, t in a["critic"].items():
        assert torch.equal(t, b["critic"][name]), name


def test_the_warp_differentiates_twice_as_the_penalties_need():
    """WGAN-GP's and R1's penalties differentiate the critic's input gradient back through ADA's
    warp; torch before 2.14 has no derivative of grid_sample's backward (warp.py). The warp is
    kornia's to 1e-12, its second derivatives check numerically and equal torch's own where torch
    has them."""
    import kornia.geometry.transform as kt
    import torch.nn.functional as F

    from gan_dist.training.warp import grid_sample, scale_rotate

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 9, 9, dtype=torch.float64, generator=g)
    scale, angle = torch.tensor([1.0, 1.3, 0.8], dtype=torch.float64), torch.tensor([0.0, 30.0, -100.0],
                                                                                    dtype=torch.float64)
    center = torch.tensor([[4.0, 4.0]], dtype=torch.float64).expand(3, 2)
    ref = kt.warp_affine(x, kt.get_rotation_matrix2d(center, angle, scale.view(3, 1).expand(3, 2)), (9, 9),
                         mode="bilinear", padding_mode="reflection", align_corners=True)
    assert (scale_rotate(x, scale, angle) - ref).abs().max() < 1e-12
    theta = torch.tensor([[[0.9, 0.2, 0.1], [-0.2, 0.9, 0.0]]], dtype=torch.float64).expand(3, 2, 3)
    grid = F.affine_grid(theta, [3, 2, 9, 9], align_corners=True)
    xi = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: grid_sample(t, grid), (xi,))
    assert torch.autograd.gradgradcheck(lambda t: grid_sample(t, grid), (xi,))
    weight = torch.randn(2, 2, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)

    def penalty_grad(sample):  # d/d weight of |d critic(sample(x)) / dx|^2, as the penalties compute it
        inp = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.conv2d(sample(inp), weight).pow(2).sum(), inp, create_graph=True)
        return torch.autograd.grad(grad.pow(2).sum(), weight)[0]
    ours = penalty_grad(lambda t: grid_sample(t, grid))
    try:
        native = penalty_grad(lambda t: F.grid_sample(t, grid, mode="bilinear", padding_mode="reflection",
                                                      align_corners=True))
    except RuntimeError as e:  # this torch: the gap warp.py fills
        assert "grid_sampler_2d_backward is not implemented" in str(e)
        assert torch.isfinite(ours).all() and ours.abs().sum() > 0
    else:
        assert torch.allclose(ours, native, atol=1e-12)


def test_a_resume_lists_what_changed_of_the_augmentation_and_idle_operations_are_said(tmp_path):
    args = TINY + ["augment.kind=ada", "augment.interval=1", "train.checkpoint_every=2", f"run.dir={tmp_path}"]
    ok(train(args + ["train.steps=2"]))
    r = ok(train(args + ["train.steps=4", "augment.policy=translation,saturation", "augment.target=0.7",
                         "augment.p=0.5"]))[0]
    changed = r.out.split("changed: ")[1].splitlines()[0]
    assert "augment.policy '' -> 'translation,saturation'" in changed and "augment.target 0.6 -> 0.7" in changed
    assert "augment.p=0.5 not applied: the checkpoint's p" in changed
    # the digits have 1 channel: the saturation named in the policy cannot act, said once
    assert r.err.count("augment.policy: saturation does nothing to 1-channel images") == 1, r.err
    assert latest_ckpt(tmp_path)["augment"]["p"] < 0.5  # the checkpoint's p went on
