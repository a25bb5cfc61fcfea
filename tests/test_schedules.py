"""The modern loss and its schedules: RpGAN's terms against their definition (the pairing by
global row, R1 + R2 per sample), the schedules' values against the formula, a resume in the
middle of a cosine schedule bitwise the straight run, on another world size continuing the
schedule, T kept when train.steps grows, the EMA half-life's decay the same for any world
size, and RpGAN with a user's own pair on 1 and 2 ranks. Real processes, gloo."""
import json
import math

import torch
from test_own_models import OWN, env

from gan_dist import config
from gan_dist.training.ema import EMA
from gan_dist.training.losses import RpGAN, build_loss
from gan_dist.training.schedule import Schedules, resolve_total, weight
from helpers import TINY, assert_same_state, latest_ckpt, metrics_rows, ok, train

COSINE = ["optim.schedule=cosine", "optim.lr=2e-4", "optim.lr_end=5e-5", "optim.beta2_end=0.99",
          "loss.kind=rpgan", "loss.n_critic=1", "loss.r1_gamma=2.0", "loss.r1_gamma_end=0.2"]


def test_rpgan_terms_are_the_pairs_of_one_row_with_r1_and_r2_per_sample():
    torch.manual_seed(0)
    critic = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 1), torch.nn.Flatten(0))
    real, fake = torch.randn(6, 1, 4, 4), torch.randn(6, 1, 4, 4)
    loss, stats = RpGAN(gamma=3.0).critic_loss(lambda x, c: critic(x), real, fake, None, None)
    d_real, d_fake = critic(real), critic(fake)
    w = critic[1].weight.detach()
    r1 = r2 = (w.pow(2).sum()).item()  # a linear critic: the same gradient for every sample
    want = torch.nn.functional.softplus(-(d_real - d_fake)).mean() + 1.5 * (r1 + r2)
    assert torch.allclose(loss, want, rtol=1e-5) and math.isclose(stats[1].item(), r1, rel_tol=1e-5)
    # swapping two rows of both halves alike leaves the loss; swapping only the fakes' changes it
    perm = torch.tensor([1, 0, 2, 3, 4, 5])
    same = RpGAN(3.0).critic_loss(lambda x, c: critic(x), real[perm], fake[perm], None, None)[0]
    other = RpGAN(3.0).critic_loss(lambda x, c: critic(x), real, fake[perm], None, None)[0]
    assert torch.allclose(same, loss) and not torch.allclose(other, loss)
    g = RpGAN(3.0).generator_loss(lambda x, c: critic(x), fake, None, real)
    assert torch.allclose(g, torch.nn.functional.softplus(-(d_fake - d_real)).mean())
    assert build_loss(config.load(None, ["loss.kind=rpgan"]).loss).gamma == 0.05  # the default --help states


def test_the_schedules_follow_the_formula_and_t_is_the_first_starts():
    cfg = config.load(None, COSINE + ["optim.critic.lr=4e-4", "optim.critic.lr_end=1e-4", "train.steps=100"])
    s = Schedules(cfg, 100, build_loss(cfg.loss))
    for k in (0, 25, 50, 99, 100, 150):
        c = 0.5 * (1 + math.cos(math.pi * min(k, 100) / 100))
        now = s.at(k, lr_scale=0.5)
        assert math.isclose(now["generator"]["lr"], (5e-5 + (2e-4 - 5e-5) * c) * 0.5)
        assert math.isclose(now["critic"]["lr"], (1e-4 + (4e-4 - 1e-4) * c) * 0.5)
        assert math.isclose(now["generator"]["betas"][1], 0.99 + (0.9 - 0.99) * c)
        assert now["generator"]["betas"][0] == 0.0 and math.isclose(now["gamma"], 0.2 + 1.8 * c)
    assert weight("constant", 70, 100) == 1.0
    assert resolve_total(cfg, None) == (100, [])  # a first start: train.steps
    longer = config.load(None, COSINE + ["train.steps=300"])
    assert resolve_total(longer, {"schedule_steps": 100}) == (100, [])  # extended: the past kept
    asked = config.load(None, COSINE + ["optim.schedule_steps=200"])
    assert resolve_total(asked, {"schedule_steps": 100}) == (200, ["optim.schedule_steps 100 -> 200"])


def test_the_ema_half_life_gives_one_decay_for_any_world_size_and_ramps():
    g = torch.nn.Linear(2, 2)
    ema = EMA(g, 0.0, kimg=10.0, rampup=0.05, batch_size=64)
    assert ema.decay_at(0) == 0.0  # nothing seen: the EMA is the generator
    assert math.isclose(ema.decay_at(10**6), 0.5 ** (64 / 10000))  # StyleGAN's ema_beta
    assert math.isclose(ema.decay_at(100), 0.5 ** (64 / (100 * 64 * 0.05)))
    assert math.isclose(ema.halflife_kimg(10**6), 10.0)


def test_a_resume_mid_schedule_is_bitwise_on_any_world_size_and_keeps_t(tmp_path):
    args = TINY + ["model.norm=none", "optim.eps=1e-6", "train.checkpoint_every=4", "train.log_every=4",
                   "optim.schedule_steps=8", "train.ema_kimg=0.1", "train.ema_rampup=0.5"] + COSINE
    ok(train(args + ["train.steps=8", f"run.dir={tmp_path}/straight"]))
    ok(train(args + ["train.steps=4", f"run.dir={tmp_path}/resumed"]))
    out = ok(train(args + ["train.steps=8", f"run.dir={tmp_path}/resumed"]))[0].out
    assert "resuming from" in out
    assert_same_state(latest_ckpt(tmp_path / "straight"), latest_ckpt(tmp_path / "resumed"))
    rows = metrics_rows(tmp_path / "straight")
    lr7 = 5e-5 + (2e-4 - 5e-5) * 0.5 * (1 + math.cos(math.pi * 7 / 8))  # what step 7 (the 8th) used
    assert math.isclose(rows[-1]["lr"], lr7, rel_tol=1e-9) and "gamma" in rows[-1] and "beta2" in rows[-1]
    # 2 ranks go on from the 1-rank checkpoint at step 4 with the same schedule
    ok(train(args + ["train.steps=4", f"run.dir={tmp_path}/elastic"]))
    ok(train(args + ["train.steps=8", f"run.dir={tmp_path}/elastic"], 2))
    elastic = latest_ckpt(tmp_path / "elastic")
    assert elastic["schedule_steps"] == 8
    assert math.isclose(elastic["opt_generator"]["param_groups"][0]["lr"], lr7, rel_tol=1e-9)
    # T = train.steps at the first start: extending train.steps keeps it
    free = [a for a in args if not a.startswith("optim.schedule_steps")]
    ok(train(free + ["train.steps=4", f"run.dir={tmp_path}/grow"]))
    ok(train(free + ["train.steps=6", f"run.dir={tmp_path}/grow"]))
    grown = latest_ckpt(tmp_path / "grow")
    assert grown["schedule_steps"] == 4 and math.isclose(grown["opt_generator"]["param_groups"][0]["lr"], 5e-5)


def test_rpgan_with_a_users_own_pair_one_rank_equals_two(tmp_path):
    args = TINY + [a for a in OWN if not a.startswith("loss.")] + [
        "loss.kind=rpgan", "loss.n_critic=1", "loss.r1_gamma=0.5", "optim.eps=1e-3", "train.steps=6"]  # eps: as gan_dist check
    ok(train(args + [f"run.dir={tmp_path}/one"], env=env()))
    ok(train(args + [f"run.dir={tmp_path}/two"], 2, env=env()))
    a, b = latest_ckpt(tmp_path / "one"), latest_ckpt(tmp_path / "two")
    diff = max((a[n][k].float() - b[n][k].float()).abs().max().item() for n in ("generator", "critic") for k in a[n])
    print(f"rpgan own pair, 2 ranks vs 1: max |difference| {diff:.2e}")
    assert diff < 1e-4
    assert json.loads((tmp_path / "one" / "metrics.jsonl").read_text().splitlines()[-1])["r2"] >= 0
