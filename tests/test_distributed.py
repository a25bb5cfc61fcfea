"""The equivalence principle with 2 real gloo processes: a 2-rank run IS a 1-rank run at the
same global batch, and every rank ends with the same parameters."""
import json
import sys
from pathlib import Path

import pytest
import torch

from helpers import TINY, latest_ckpt, ok, spawn, train

WORKER = str(Path(__file__).parent / "workers" / "consistency.py")


LOSSES = {  # loss: (extra settings, its logged stats)
    "wgan_gp": (["loss.kind=wgan_gp", "loss.n_critic=5"], ("loss_critic", "gp", "wasserstein", "loss_gen")),
    "hinge-sn": (["loss.kind=hinge", "loss.n_critic=2", "model.spectral_norm=true", "optim.betas=[0.0,0.999]"],
                 ("loss_critic", "score_real", "score_fake", "loss_gen")),
    "ns_r1-lazy": (["loss.kind=ns_r1", "loss.n_critic=2", "loss.gp_every=2", "optim.betas=[0.0,0.99]"],
                   ("loss_critic", "r1", "score_real", "score_fake", "loss_gen")),
    "bce-mlp": (["loss.kind=bce", "loss.n_critic=2", "model.kind=mlp", "model.hidden=[32,16]", "model.dropout=0.0"],
                ("loss_critic", "p_real", "p_fake", "loss_gen")),
}


@pytest.mark.parametrize("loss", list(LOSSES))
def test_two_ranks_equal_one_rank_at_the_same_global_batch(tmp_path, loss):
    # Each loss, no batch-coupled layers (model.norm=none); 8 generator steps (WGAN-GP: 40
    # critic updates with the penalty's double backward through DDP; hinge with a spectral-
    # norm critic, whose power-iteration buffers are compared too; R1 every 2nd update).
    # optim.eps=1e-6: the critic's label-channel weights get gradients of ~1e-10 (real and fake
    # share labels, so their terms cancel), below Adam's default eps of 1e-8, where Adam turns
    # the summation-order noise of 16 vs 2x8 samples into updates of ~lr/100 of either sign
    # (measured: 4e-4 apart after 8 steps at eps=1e-8, 2e-6 at eps=1e-6). A real desync is
    # ~1e-2 in 10 steps (DESIGN.md), so 1e-4 still tells a bug from rounding.
    extra, stats = LOSSES[loss]
    args = TINY + ["model.norm=none", "train.steps=8", "optim.eps=1e-6", *extra]
    ok(train(args + [f"run.dir={tmp_path}/one"], world_size=1))
    ok(train(args + [f"run.dir={tmp_path}/two"], world_size=2))
    one, two = latest_ckpt(tmp_path / "one"), latest_ckpt(tmp_path / "two")
    assert one["step"] == two["step"] == 8
    for net in ("generator", "critic"):
        for name, p1 in one[net].items():  # parameters and buffers (spectral norm's u, v)
            p2 = two[net][name]
            assert torch.allclose(p1, p2, atol=1e-4, rtol=0), f"{net}.{name}: max diff {(p1 - p2).abs().max()}"
        print(f"{loss} {net}: max |1 rank - 2 ranks| = "
              f"{max((p - two[net][k]).abs().max().item() for k, p in one[net].items()):.2e}")
    # not vacuous: training moved the weights far more than the tolerance
    from gan_dist import config
    from gan_dist.data import DataInfo
    from gan_dist.models import build_models
    torch.manual_seed(0)
    g0, c0 = build_models(config.load(None, args), DataInfo(10, 1, 8))
    moved = max((p - one["critic"][k]).abs().max().item() for k, p in c0.state_dict().items()
                if p.is_floating_point())
    assert moved > 1e-3
    m1 = (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()
    m2 = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    for a, b in zip(map(json.loads, m1), map(json.loads, m2)):
        for key in stats:
            assert abs(a[key] - b[key]) < 1e-3 * max(1.0, abs(a[key])), (key, a, b)


def test_after_a_two_rank_run_every_rank_holds_identical_parameters(tmp_path):
    # With the default generator BatchNorm (per-rank statistics on CPU) and dropout-free critic,
    # behind DiffAugment (AugmentedCritic holds the DDP critic too).
    args = TINY + ["train.steps=6", "augment.kind=diffaug", f"run.dir={tmp_path}/run"]
    ok(spawn([sys.executable, WORKER, str(tmp_path), *args], world_size=2))
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["checksums"] == r1["checksums"] and len(r0["checksums"]) == 2
    assert r0["checksums"][0] == r0["checksums"][1]
    assert r0["max_abs_diff"] == 0.0 and r1["max_abs_diff"] == 0.0 and r0["num_params"] > 1000
    assert r0["drift_detected"] and r1["drift_detected"]  # the check fails loudly on every rank
    # the trainer outlives the process group in gan_dist.fit: no DDP wrapper may (augmented here)
    assert r0["ddp_alive_after_close"] == r1["ddp_alive_after_close"] == 0


def test_frozen_parameters_stay_frozen_on_two_ranks(tmp_path):
    """A critic's frozen first layer and a generator's frozen output layer (transfer learning):
    bitwise unchanged after training on 2 ranks, while the rest trains and the ranks agree."""
    import os

    sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
    import frozen_models

    from helpers import base_env

    env = dict(base_env(), PYTHONPATH=os.pathsep.join([str(Path(__file__).parent / "fixtures"),
                                                       os.environ.get("PYTHONPATH", "")]))
    args = TINY + ["model.kind=frozen_models:build", "loss.n_critic=2", "train.steps=3", "train.checkpoint_every=3",
                   f"run.dir={tmp_path}/run"]
    ok(train(args, world_size=2, env=env))
    from gan_dist import config
    from gan_dist.data import DataInfo

    torch.manual_seed(0)
    start = dict(zip(("generator", "critic"), frozen_models.build(config.load(None, args), DataInfo(10, 1, 8))))
    state = latest_ckpt(tmp_path / "run")
    for net, prefix in frozen_models.FROZEN.items():
        frozen = [n for n, _ in start[net].named_parameters() if n.startswith(prefix)]
        trained = [n for n, _ in start[net].named_parameters() if not n.startswith(prefix)]
        assert frozen and trained
        for name in frozen:
            assert torch.equal(state[net][name], start[net].state_dict()[name]), f"{net}.{name} moved"
        assert any(not torch.equal(state[net][n], start[net].state_dict()[n]) for n in trained), net
