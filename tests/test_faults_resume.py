"""A run resumed with changed settings does what the settings say: the config's optimizer
hyperparameters apply after loading (and the lr logged is the optimizer's), and a new batch
size or world size continues the epoch with exactly the samples not yet seen."""
import pytest
import torch

from helpers import TINY, latest_ckpt, metrics_rows, ok, train

ARGS = TINY + ["train.checkpoint_every=4", "train.log_every=2"]


def test_resume_applies_the_configs_optimizer_hyperparameters(tmp_path):
    ok(train(ARGS + ["train.steps=4", f"run.dir={tmp_path}/a"], 2))
    changed = ["optim.lr=5e-5", "optim.betas=[0.5,0.99]", "optim.eps=1e-7"]
    out = ok(train(ARGS + ["train.steps=6", *changed, f"run.dir={tmp_path}/a"], 2))[0].out
    assert "changed: optim.lr 0.0001 -> 5e-05, optim.betas (0.0, 0.9) -> (0.5, 0.99), optim.eps 1e-08 -> 1e-07" in out
    state = latest_ckpt(tmp_path / "a")
    for opt in ("opt_generator", "opt_critic"):
        group = state[opt]["param_groups"][0]
        assert (group["lr"], tuple(group["betas"]), group["eps"]) == (5e-5, (0.5, 0.99), 1e-7), opt
    assert [r["lr"] for r in metrics_rows(tmp_path / "a")] == [1e-4, 1e-4, 5e-5]  # the optimizer's lr
    # and it changed the training: the same resume with the old settings ends elsewhere
    ok(train(ARGS + ["train.steps=4", f"run.dir={tmp_path}/b"], 2))
    ok(train(ARGS + ["train.steps=6", f"run.dir={tmp_path}/b"], 2))
    other = latest_ckpt(tmp_path / "b")
    assert not torch.equal(state["generator"]["net.0.weight"], other["generator"]["net.0.weight"])


# 1,797 digits. First 4 steps x 5 critic batches of 32 on 2 ranks: 640 samples of epoch 0.
# Then 4 more steps (20 batches) at the new batch size: epoch 0 has (1797 - 640) // B whole
# batches left, the rest of the 20 come from epoch 1.
@pytest.mark.parametrize("batch, ranks, expected", [
    (128, 2, (1, 11 * 128)),  # larger: 9 batches left in epoch 0 (was: a bare StopIteration)
    (16, 1, (0, 640 + 20 * 16)),  # smaller: goes on in epoch 0 (was: replayed samples)
    (64, 1, (1, 2 * 64)),  # 18 left, then 2 of epoch 1; and one rank fewer
])
def test_resume_with_another_batch_and_world_size_continues_the_epoch(tmp_path, batch, ranks, expected):
    ok(train(ARGS + ["train.batch_size=32", "train.steps=4", f"run.dir={tmp_path}"], 2))
    assert latest_ckpt(tmp_path)["data"] == {"epoch": 0, "samples_in_epoch": 640}
    out = ok(train(ARGS + [f"train.batch_size={batch}", "train.steps=8", f"run.dir={tmp_path}"], ranks))[0].out
    assert f"global batch 32 on 2 rank(s) -> {batch} on {ranks}" in out
    state = latest_ckpt(tmp_path)
    assert state["step"] == 8 and (state["data"]["epoch"], state["data"]["samples_in_epoch"]) == expected
