"""Rank-0 checkpoints and exact resume: 8 steps straight == 4 steps, stop, same command with
train.steps=8 -- bitwise, for 1 and 2 ranks (resume crosses an epoch boundary here)."""
import hashlib
import json

import pytest
import torch

from helpers import (
    NO_CUDA,
    TINY,
    device_args,
    device_env,
    latest_ckpt,
    load_ckpt,
    ok,
    one_line_error,
    train,
    train_injected,
)

# batch 64: 28 global batches per epoch of the 1,797 digits; 8 steps x 5 critic batches = 40.
RESUME = TINY + ["train.batch_size=64", "train.checkpoint_every=4"]
MLP = ["model.kind=mlp", "loss.kind=bce", "loss.n_critic=1", "model.hidden=[32,16]", "model.norm=none",
       "optim.betas=[0.5,0.999]"]


def _assert_tree_equal(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs (max {(a.float() - b.float()).abs().max()})"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_tree_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_tree_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a} != {b}"


@pytest.mark.parametrize("device, world_size, extra", [
    pytest.param("cpu", 1, [], id="1rank"), pytest.param("cpu", 2, [], id="2ranks"),
    pytest.param("cpu", 1, MLP, id="mlp-bce-dropout"), pytest.param("cuda", 1, [], id="1rank-cuda", marks=NO_CUDA),
    pytest.param("cuda", 1, MLP, id="mlp-bce-dropout-cuda", marks=NO_CUDA)])
def test_resume_is_bitwise_exact(tmp_path, device, world_size, extra):
    # CUDA: bitwise with train.deterministic (cuDNN's and cuBLAS's repeatable kernels, no TF32)
    args, env = RESUME + extra + device_args(device), device_env(device)
    ok(train(args + ["train.steps=8", f"run.dir={tmp_path}/straight"], world_size, env=env))
    ok(train(args + ["train.steps=4", f"run.dir={tmp_path}/resumed"], world_size, env=env))
    second = ok(train(args + ["train.steps=8", f"run.dir={tmp_path}/resumed"], world_size, env=env))
    assert "resuming from" in second[0].out and "step_00000004.pt" in second[0].out
    a, b = latest_ckpt(tmp_path / "straight"), latest_ckpt(tmp_path / "resumed")
    assert a["step"] == b["step"] == 8 and a["data"] == b["data"]
    for key in ("generator", "critic", "opt_generator", "opt_critic", "generator_ema"):
        _assert_tree_equal(a[key], b[key], key)
    # metrics.jsonl continues without duplicated steps, with the same losses
    rows = [json.loads(ln) for ln in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(ln) for ln in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [r["step"] for r in ref] == [2, 4, 6, 8]
    assert [r["loss_critic"] for r in rows] == [r["loss_critic"] for r in ref]


def test_checkpoint_contents_and_keep_last_k(tmp_path):
    ok(train(TINY + ["train.steps=8", "train.checkpoint_every=2", "train.keep_checkpoints=2", f"run.dir={tmp_path}"]))
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_00000006.pt", "step_00000008.pt"]  # no temporary files left either
    state = load_ckpt(tmp_path / "checkpoints" / names[-1])  # weights_only=True
    for key in ("generator", "critic", "opt_generator", "opt_critic", "step", "data", "config"):
        assert key in state
    assert state["config"]["train"]["steps"] == 8 and state["data_info"]["num_classes"] == 10
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "samples" / "step_00000008.png").is_file()
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "loss_critic", "loss_gen", "gp", "wasserstein", "images_per_sec"} <= rows[-1].keys()


def test_rerun_of_a_finished_run_does_nothing(tmp_path):
    ok(train(TINY + ["train.steps=4", f"run.dir={tmp_path}"]))
    before = (tmp_path / "checkpoints" / "step_00000004.pt").read_bytes()
    out = ok(train(TINY + ["train.steps=4", f"run.dir={tmp_path}"]))[0].out
    assert "nothing to do" in out and (tmp_path / "checkpoints" / "step_00000004.pt").read_bytes() == before


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path):
    ok(train(TINY + ["train.steps=8", f"run.dir={tmp_path}"]))
    latest = tmp_path / "checkpoints" / "step_00000008.pt"
    latest.write_bytes(latest.read_bytes()[:1000])  # truncated, as by a full disk
    r = ok(train(TINY + ["train.steps=8", f"run.dir={tmp_path}"]))[0]
    assert "step_00000008.pt is unreadable" in r.err and "resuming from" in r.out and "step_00000004.pt" in r.out
    assert load_ckpt(latest)["step"] == 8  # re-trained from step 4 and saved again


def test_no_readable_checkpoint_is_an_error_and_keeps_the_files(tmp_path):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "step_00000004.pt").write_bytes(b"not a checkpoint")
    torch.save({"foo": 1}, ckpts / "step_00000008.pt")
    digests = {p.name: _digest(p) for p in ckpts.iterdir()}
    one_line_error(train(TINY + ["train.steps=12", f"run.dir={tmp_path}"])[0], "no readable checkpoint", str(ckpts))
    assert {p.name: _digest(p) for p in ckpts.iterdir()} == digests


def test_incompatible_checkpoint_names_the_key(tmp_path):
    ok(train(TINY + ["train.steps=4", f"run.dir={tmp_path}"]))
    path = tmp_path / "checkpoints" / "step_00000004.pt"
    digest = _digest(path)
    one_line_error(train(TINY + ["train.steps=8", "model.width=16", f"run.dir={tmp_path}"])[0],
                   "model.width=8", "model.width=16", str(path))
    assert _digest(path) == digest and sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_non_finite_loss_stops_every_rank_at_the_same_step(tmp_path):
    ok(train(TINY + ["train.steps=4", f"run.dir={tmp_path}"], world_size=2))
    digest = _digest(tmp_path / "checkpoints" / "step_00000004.pt")
    config_yaml = (tmp_path / "config.yaml").read_text()
    # resumed with another lr; the critic's weights turn NaN before step 5 (a real NaN through the loop)
    results = train_injected(TINY + ["train.steps=8", "optim.lr=5e-5", f"run.dir={tmp_path}"], world_size=2,
                             env_extra={"GAN_DIST_TEST_NAN_AT": "5"})
    for r in results:
        one_line_error(r, "not finite at step 5")
    assert _digest(tmp_path / "checkpoints" / "step_00000004.pt") == digest
    assert not (tmp_path / "checkpoints" / "step_00000008.pt").exists()
    # config.yaml keeps the settings of the saved checkpoints, not the rejected run's
    assert (tmp_path / "config.yaml").read_text() == config_yaml and "lr: 0.0001" in config_yaml


def test_resume_after_a_kill_mid_metrics_write(tmp_path):
    # A kill while rank 0 appends to metrics.jsonl leaves a torn last line; resume drops it.
    ok(train(TINY + ["train.steps=4", f"run.dir={tmp_path}"]))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "loss_critic": 1.2')
    ok(train(TINY + ["train.steps=6", f"run.dir={tmp_path}"]))
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]


def test_a_checkpoint_written_before_the_reorganization_resumes_exports_and_samples(tmp_path):
    """tests/fixtures/checkpoint_v0.2.0.pt: 2 steps of gan_dist 0.2.0 (commit 4f7f40f) with EMA,
    divergence history and train.keep_best=fid, the layout of modules before gan_dist 0.3."""
    import shutil
    import sys
    from pathlib import Path

    from helpers import spawn

    old = Path(__file__).parent / "fixtures" / "checkpoint_v0.2.0.pt"
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    shutil.copy(old, tmp_path / "run" / "checkpoints" / "step_00000002.pt")
    args = ["data.image_size=8", "model.width=4", "model.z_dim=8", "train.batch_size=16", "train.threads=1",
            "eval.every=0", "train.steps=3", f"run.dir={tmp_path}/run"]
    out = ok(train(args))[0].out
    assert "resuming from" in out and "step_00000002.pt (step 2)" in out
    assert latest_ckpt(tmp_path / "run")["step"] == 3
    ok(spawn([sys.executable, "-m", "gan_dist.export", str(old), "--out", str(tmp_path / "g.pt")]))
    ok(spawn([sys.executable, "-m", "gan_dist.sample", str(old), "--out", str(tmp_path / "s.png"), "--n", "10"]))
    assert (tmp_path / "g.pt").is_file() and (tmp_path / "s.png").is_file()
