"""Fault tolerance with real processes and real signals: SIGTERM, a worker SIGKILLed under
torchrun --max-restarts, a kill during a checkpoint write, two launchers as two nodes, and
submitit's local executor with a sweep."""
import os
import signal
import sys
from pathlib import Path

import torch

from helpers import (
    TINY,
    assert_same_state,
    finish,
    free_port,
    kill,
    latest_ckpt,
    load_ckpt,
    metrics_rows,
    ok,
    spawn,
    start,
    train,
    wait_for,
)

LONG = TINY + ["train.log_every=5", "train.checkpoint_every=1000"]


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def test_sigterm_to_all_ranks_saves_a_coordinated_step_and_resume_continues(tmp_path):
    run = tmp_path / "run"
    procs = start([sys.executable, "-m", "gan_dist.train", *LONG, "train.steps=2000", f"run.dir={run}"], 2)
    try:
        wait_for(lambda: len(metrics_rows(run)) >= 2, 120, "two log lines", procs)
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        results = finish(procs, timeout=60)
    finally:
        kill(procs)
    for r in results:
        assert r.rc == 128 + signal.SIGTERM, r.err
    stopped = int(results[0].out.split("stopped by SIGTERM at step ")[1].split()[0])
    logged = metrics_rows(run)[-1]["step"]
    assert stopped >= logged >= 10  # nothing trained before the signal is lost
    assert latest_ckpt(run)["step"] == stopped
    # The same command resumes from there; the result is bitwise an uninterrupted run's.
    resumed = ok(train(LONG + [f"train.steps={stopped + 3}", f"run.dir={run}"], 2))
    assert f"(step {stopped})" in resumed[0].out
    ok(train(LONG + [f"train.steps={stopped + 3}", f"run.dir={tmp_path}/straight"], 2))
    assert_same_state(latest_ckpt(run), latest_ckpt(tmp_path / "straight"))


def test_torchrun_restarts_the_group_after_a_worker_is_killed(tmp_path):
    run, args = tmp_path / "run", TINY + ["train.steps=40", "train.checkpoint_every=10", "train.log_every=10"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
           "-m", "gan_dist.train", *args, f"run.dir={run}"]
    (launcher,) = procs = start(cmd)
    try:
        wait_for(lambda: (run / "checkpoints" / "step_00000010.pt").exists(), 180, "the first checkpoint", procs)
        workers = _children(launcher.pid)
        assert len(workers) == 2
        os.kill(workers[1], signal.SIGKILL)
        (result,) = finish(procs, timeout=300)
    finally:
        kill(procs)
    assert result.rc == 0, result.err[-3000:]
    assert result.out.count("resuming from") == 1  # the restarted group picked up the checkpoint
    ok(train(args + [f"run.dir={tmp_path}/straight"], 2))
    assert_same_state(latest_ckpt(run), latest_ckpt(tmp_path / "straight"))


def test_kill_during_a_checkpoint_write_leaves_the_previous_one(tmp_path):
    # Wide MLPs make each checkpoint ~140 MB, so the write takes long enough to be hit.
    run = tmp_path / "run"
    big = ["model.kind=mlp", "loss.kind=bce", "loss.n_critic=1", "model.hidden=[2048,2048]", "data.image_size=28",
           "model.norm=none", "train.batch_size=16", "train.threads=1", "train.checkpoint_every=3",
           "train.keep_checkpoints=5", "train.log_every=3"]
    procs = start([sys.executable, "-m", "gan_dist.train", *big, "train.steps=60", f"run.dir={run}"])
    ckpts = run / "checkpoints"
    try:
        wait_for(lambda: (ckpts / "step_00000003.pt").exists(), 120, "the first checkpoint", procs)
        wait_for(lambda: any(p.name.startswith(".step_00000006") for p in ckpts.iterdir()), 120,
                 "the second checkpoint's write", procs)
        os.killpg(procs[0].pid, signal.SIGKILL)
        finish(procs, timeout=30)
    finally:
        kill(procs)
    names = sorted(p.name for p in ckpts.iterdir())
    assert "step_00000006.pt" not in names and any(n.startswith(".step_00000006.pt.tmp") for n in names), names
    assert load_ckpt(ckpts / "step_00000003.pt")["step"] == 3  # the previous one loads
    r = ok(train(big + ["train.steps=6", f"run.dir={run}"]))[0]
    assert "step_00000003.pt (step 3)" in r.out and "unreadable" not in r.out + r.err
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_00000003.pt", "step_00000006.pt"]  # temp file swept


def test_two_launchers_as_two_nodes_on_loopback(tmp_path):
    run, port = tmp_path / "run", free_port()
    args = TINY + ["train.steps=8"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=twonodes",
           "-m", "gan_dist.train", *args, f"run.dir={run}"]
    procs = start(cmd) + start(cmd)
    results = ok(finish(procs, timeout=300))
    assert any("on 2 rank(s)" in r.out for r in results)
    # The checkpoint's consistency check compared both ranks' parameters; and the two-node job
    # computes what a 2-rank job on one launcher computes.
    ok(train(args + [f"run.dir={tmp_path}/one_node"], 2))
    assert_same_state(latest_ckpt(run), latest_ckpt(tmp_path / "one_node"))


def test_local_submitit_sweep_runs_one_job_per_value(tmp_path):
    # --local: submitit's local executor, 2 tasks (ranks) per job; --sweep: one job per value.
    r = ok(spawn([sys.executable, "-m", "jobs.submit", "--local", "--tasks-per-node", "2", "--timeout-min", "5",
                  "--sweep", "seed=1,2", *TINY, "train.steps=4", f"run.dir={tmp_path}/sweep"]))[0]
    assert r.out.count("submitted job") == 2
    runs = [tmp_path / "sweep" / f"seed={s}" for s in (1, 2)]
    wait_for(lambda: all((d / "checkpoints" / "step_00000004.pt").exists() for d in runs), 240, "both sweep jobs")
    a, b = latest_ckpt(runs[0]), latest_ckpt(runs[1])
    assert a["config"]["seed"] == 1 and b["config"]["seed"] == 2
    assert not torch.equal(a["generator"]["net.0.weight"], b["generator"]["net.0.weight"])
