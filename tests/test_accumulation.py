"""Gradient accumulation keeps the mathematics of the global batch: (W=1, A=2), (W=2, A=1) and
(W=1, A=1) compute the same update; a checkpoint keeps the micro-batch, so a resume on fewer
ranks accumulates more (and on more ranks less) and equals going on where it was; the
gradients are reduced in as many buckets at A=2 as at A=1 (none during no_sync); each
network takes its own optimizer settings. Real processes, gloo."""
import json
import sys
from pathlib import Path

import pytest

from gan_dist import config
from gan_dist.distributed import World
from gan_dist.errors import UserError
from gan_dist.training import layout
from helpers import TINY, assert_same_state, latest_ckpt, ok, one_line_error, spawn, train, train_injected

EXACT = TINY + ["model.norm=none", "optim.eps=1e-6", "train.steps=8"]
LOSSES = {"wgan_gp": ["loss.kind=wgan_gp", "loss.n_critic=3"],
          "ns_r1-lazy": ["loss.kind=ns_r1", "loss.n_critic=3", "loss.gp_every=2", "optim.betas=[0.0,0.99]"],
          # spectral norm's power iteration runs per forward: each micro-batch starts from the same u, v
          # (before: 1.0e-2 apart at A=2, 1.3e-5 at W=2)
          "hinge-spectral_norm": ["loss.kind=hinge", "loss.n_critic=2", "model.spectral_norm=true",
                                  "optim.betas=[0.0,0.999]"],
          "wgan_gp-spectral_norm": ["loss.kind=wgan_gp", "loss.n_critic=2", "model.spectral_norm=true"],
          # RpGAN with R1 + R2 (lazy), every schedule on, the EMA as a half-life with its ramp: the
          # EMA is compared too (its decay follows from the global batch, not from W or A)
          "rpgan-schedules": ["loss.kind=rpgan", "loss.n_critic=2", "loss.gp_every=2", "loss.r1_gamma=1.0",
                              "loss.r1_gamma_end=0.1", "optim.schedule=cosine", "optim.beta2_end=0.99",
                              "train.ema_kimg=0.2", "train.ema_rampup=0.5"],
          "r3gan-rpgan": ["model.kind=r3gan", "loss.kind=rpgan", "loss.n_critic=1", "loss.r1_gamma=0.5"]}


def _max_diff(a: dict, b: dict) -> float:
    return max((a[n][k].float() - b[n][k].float()).abs().max().item() for n in ("generator", "critic", "generator_ema")
               if n in a for k in a[n])


@pytest.mark.parametrize("loss", list(LOSSES))
def test_one_rank_accumulating_equals_two_ranks_equals_one_rank(tmp_path, loss):
    args = EXACT + LOSSES[loss]
    ok(train(args + [f"run.dir={tmp_path}/w1a1"]))
    ok(train(args + ["train.micro_batch=8", f"run.dir={tmp_path}/w1a2"]))
    ok(train(args + [f"run.dir={tmp_path}/w2a1"], 2))
    ref = latest_ckpt(tmp_path / "w1a1")
    for name in ("w1a2", "w2a1"):
        state = latest_ckpt(tmp_path / name)
        assert state["micro_batch"] == 8
        diff = _max_diff(ref, state)
        print(f"{loss} {name} vs w1a1: max |difference| {diff:.2e}")
        assert diff < 1e-4, (name, diff)
    assert latest_ckpt(tmp_path / "w1a1")["micro_batch"] == 16


def test_an_elastic_resume_keeps_the_micro_batch_and_goes_on_where_it_was(tmp_path):
    # a spectral-norm critic: the resumed run accumulates, and must still update as 2 ranks did
    args = EXACT[:-1] + ["train.checkpoint_every=4", "model.spectral_norm=true"]
    ok(train(args + ["train.steps=4", f"run.dir={tmp_path}/two_one"], 2))  # micro 8 on 2 ranks
    out = ok(train(args + ["train.steps=8", f"run.dir={tmp_path}/two_one"], 1))[0].out
    assert "per rank 2 micro-batch(es) of 8" in out  # the same memory per rank, accumulation follows W
    ok(train(args + ["train.steps=8", f"run.dir={tmp_path}/two"], 2))
    assert _max_diff(latest_ckpt(tmp_path / "two_one"), latest_ckpt(tmp_path / "two")) < 1e-4
    # and the reverse: micro 8 from a 1-rank run, resumed on 2 ranks: A = 1
    ok(train(args + ["train.micro_batch=8", "train.steps=4", f"run.dir={tmp_path}/one_two"], 1))
    out = ok(train(args + ["train.steps=8", f"run.dir={tmp_path}/one_two"], 2))[0].out
    assert "per rank 1 micro-batch(es) of 8" in out
    ok(train(args + ["train.micro_batch=8", "train.steps=8", f"run.dir={tmp_path}/one"], 1))
    assert _max_diff(latest_ckpt(tmp_path / "one_two"), latest_ckpt(tmp_path / "one")) < 1e-4
    # BatchNorm in the generator: the resume says the statistics change with the layout
    ok(train(TINY + ["train.steps=2", "train.checkpoint_every=2", f"run.dir={tmp_path}/bn"], 2))
    r = ok(train(TINY + ["train.steps=4", f"run.dir={tmp_path}/bn"], 1))[0]
    assert "BatchNorm now normalizes micro-batches of 8 on 1 rank(s)" in r.err


def test_reductions_per_update_are_those_of_a_single_micro_batch(tmp_path):
    worker = str(Path(__file__).parent / "workers" / "comm_count.py")
    counts = {}
    for micro in (8, 4):  # A = 1 and A = 2 on 2 ranks of batch 16
        out = tmp_path / f"m{micro}"
        out.mkdir()
        ok(spawn([sys.executable, worker, str(out), *TINY, "loss.n_critic=2", "train.steps=3",
                  f"train.micro_batch={micro}", f"run.dir={out}/run"], world_size=2))
        counts[micro] = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    one, two = counts[8][0], counts[4][0]
    assert (one["accumulation"], two["accumulation"]) == (1, 2)
    assert one["critic"] > 0 and one["critic"] % one["critic_updates"] == 0  # whole buckets per update
    assert two["critic"] == one["critic"] and two["generator"] == one["generator"], (one, two)
    assert counts[4][1] == two  # every rank the same


def test_layouts_that_do_not_divide_are_one_line_and_too_large_micro_batches_shrink(tmp_path):
    cfg = config.load(None, ["train.batch_size=24", "train.micro_batch=5"])
    with pytest.raises(UserError, match="train.micro_batch: 5 images per forward does not divide the 12 that each of 2"):
        layout.resolve(cfg, World(world_size=2), None)
    big = config.load(None, ["train.batch_size=24", "train.micro_batch=32"])
    got, notes = layout.resolve(big, World(world_size=2), None)
    assert (got.accumulation, got.micro_batch) == (1, 12) and "micro-batches of 12" in notes[0]
    auto = config.load(None, ["train.batch_size=24", "train.micro_batch=auto"])
    assert layout.resolve(auto, World(world_size=2), None)[0].micro_batch == 12  # the CPU: batch_size / W
    assert layout.largest_fitting(24, lambda n: n <= 7) == 6 and layout.largest_fitting(24, lambda n: False) == 1
    saved = config.load(None, ["train.batch_size=24"])
    assert layout.resolve(saved, World(world_size=1), 6)[0].accumulation == 4  # a resume keeps micro 6
    one_line_error(train(TINY + ["train.micro_batch=3", f"run.dir={tmp_path}/r"])[0], "train.micro_batch: 3")
    one_line_error(train(TINY + ["train.micro_batch=x", f"run.dir={tmp_path}/r"])[0], "train.micro_batch: expected")


def test_each_network_takes_its_own_optimizer_settings_and_a_resume_applies_new_ones(tmp_path):
    args = TINY + ["train.checkpoint_every=2", "optim.critic.lr=4e-4", "optim.generator.betas=[0.5,0.99]"]
    ok(train(args + ["train.steps=2", f"run.dir={tmp_path}"]))
    state = latest_ckpt(tmp_path)
    g, c = state["opt_generator"]["param_groups"][0], state["opt_critic"]["param_groups"][0]
    assert (g["lr"], tuple(g["betas"])) == (1e-4, (0.5, 0.99)) and (c["lr"], tuple(c["betas"])) == (4e-4, (0.0, 0.9))
    out = ok(train(args[:-2] + ["optim.critic.lr=3e-4", "train.steps=4", f"run.dir={tmp_path}"]))[0].out
    assert "optim.critic.lr 0.0004 -> 0.0003" in out and "optim.generator.betas (0.5, 0.99) -> (0.0, 0.9)" in out
    state = latest_ckpt(tmp_path)
    assert state["opt_critic"]["param_groups"][0]["lr"] == 3e-4 and state["opt_generator"]["param_groups"][0]["lr"] == 1e-4
    one_line_error(train(TINY + ["optim.critic.lr=2", f"run.dir={tmp_path}/x"])[0], "optim.critic.lr: must be in (0, 1]")


def test_micro_batch_auto_probes_on_every_rank_takes_the_smallest_and_leaves_no_trace(tmp_path):
    # The probe injected on the CPU (tests/workers/inject.py) runs the real trial forwards and
    # backwards; rank 0's device "holds" 8 images, rank 1's 4. The default BatchNorm generator and
    # a spectral-norm critic: the probe's forwards must leave their buffers (and the RNG) as they were.
    args = TINY + ["loss.kind=hinge", "loss.n_critic=2", "model.spectral_norm=true", "train.steps=3",
                   "train.checkpoint_every=3"]
    rec = tmp_path / "rec"
    rec.mkdir()
    out = ok(train_injected(args + ["train.micro_batch=auto", f"run.dir={tmp_path}/auto"], 2,
                            env_extra={"GAN_DIST_TEST_PROBE_LIMITS": "8,4", "GAN_DIST_TEST_RECORD": str(rec)}))[0].out
    probes = [[ln for ln in (rec / f"rank{r}.txt").read_text().splitlines() if ln.startswith("probe")] for r in (0, 1)]
    assert probes == [["probe 8"], ["probe 8", "probe 4"]]  # every rank probes its own device
    assert "train.micro_batch=auto: 4 images per forward" in out and "per rank 2 micro-batch(es) of 4" in out
    ok(train(args + ["train.micro_batch=4", f"run.dir={tmp_path}/given"], 2))
    auto, given = latest_ckpt(tmp_path / "auto"), latest_ckpt(tmp_path / "given")
    assert auto["micro_batch"] == given["micro_batch"] == 4
    assert_same_state(auto, given)  # parameters and buffers (running statistics, u and v): no trace of the probe
    # an explicit auto on a resume probes again (a requeue onto a smaller GPU): rank 1 now holds 2
    (rec / "rank0.txt").unlink()
    (rec / "rank1.txt").unlink()
    out = ok(train_injected(args + ["train.micro_batch=auto", "train.steps=4", f"run.dir={tmp_path}/auto"], 2,
                            env_extra={"GAN_DIST_TEST_PROBE_LIMITS": "8,2", "GAN_DIST_TEST_RECORD": str(rec)}))[0].out
    assert "resuming from" in out and "per rank 4 micro-batch(es) of 2" in out


def test_a_checkpoints_micro_batch_that_no_longer_divides_falls_back_in_one_line(tmp_path):
    # saved micro-batch 8 (batch 16 on 1 rank, A=2); resumed with batch 12: 8 does not divide 12
    ok(train(TINY + ["train.steps=2", "train.checkpoint_every=2", "train.micro_batch=8", f"run.dir={tmp_path}"]))
    r = ok(train(TINY + ["train.steps=4", "train.batch_size=12", f"run.dir={tmp_path}"]))[0]
    assert "the checkpoint's micro-batch of 8 does not divide the 12 images each of 1 rank(s) holds" in r.out
    assert "per rank 2 micro-batch(es) of 6" in r.out and latest_ckpt(tmp_path)["micro_batch"] == 6
    ok(train(TINY + ["train.steps=6", "train.micro_batch=8", f"run.dir={tmp_path}/given"]))
    r = train(TINY + ["train.steps=8", "train.micro_batch=5", f"run.dir={tmp_path}/given"])[0]
    one_line_error(r, "train.micro_batch: 5 images per forward does not divide the 16")  # the user's own value
    for bad in ("null", "true", "[8]"):
        one_line_error(train(TINY + [f"train.micro_batch={bad}", f"run.dir={tmp_path}/x"])[0], "train.micro_batch:")
