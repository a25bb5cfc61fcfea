"""Signals never lost and never fatal before the save: DataLoader workers under every start
method, a signal landing inside the per-step agreement (delivered there deterministically),
torchrun forwarding SIGUSR2. Real processes, real signals, 2 gloo ranks."""
import os
import signal
import sys

import pytest

from helpers import (
    INJECT,
    TINY,
    assert_same_state,
    base_env,
    finish,
    kill,
    latest_ckpt,
    metrics_rows,
    ok,
    start,
    train,
    wait_for,
)

LONG = TINY + ["train.log_every=5", "train.checkpoint_every=1000", "train.steps=3000"]


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return False
    except ProcessLookupError:
        return True


def _stop_step(out: str, name: str) -> int:
    assert f"stopped by {name} at step " in out, out[-2000:]
    return int(out.split(f"stopped by {name} at step ")[1].split()[0])


@pytest.mark.parametrize("method, sig", [("fork", signal.SIGTERM), ("forkserver", signal.SIGUSR2),
                                         ("spawn", signal.SIGINT), ("", signal.SIGINT)],
                         ids=["fork-TERM", "forkserver-USR2", "spawn-INT", "noworkers-INT"])
def test_signal_to_every_process_with_loader_workers_saves_a_coordinated_step(tmp_path, method, sig):
    # Slurm, torchrun's agent and a terminal signal the whole process group: workers included.
    run = tmp_path / "run"
    workers = ["data.num_workers=2", f"data.start_method={method}"] if method else []
    procs = start([sys.executable, "-m", "gan_dist.train", *LONG, *workers, f"run.dir={run}"], 2)
    try:
        wait_for(lambda: len(metrics_rows(run)) >= 2, 180, "two log lines", procs)
        for p in procs:
            os.killpg(p.pid, sig)
        results = finish(procs, timeout=90)
    finally:
        kill(procs)
    for r in results:
        assert r.rc == 128 + sig, f"exit {r.rc}\n{r.err[-3000:]}"
        assert "DataLoader worker" not in r.err and "Traceback" not in r.err, r.err[-3000:]
    stopped = _stop_step(results[0].out, signal.Signals(sig).name)
    assert stopped >= metrics_rows(run)[-1]["step"] >= 10  # nothing trained before the signal is lost
    assert latest_ckpt(run)["step"] == stopped
    # no worker (or forkserver) outlives its rank
    wait_for(lambda: all(_group_gone(p.pid) for p in procs), 20, "the workers to exit")
    if method == "fork":  # and the run goes on exactly: bitwise an uninterrupted run's parameters
        args = LONG[:-1] + workers + [f"train.steps={stopped + 2}"]
        ok(train(args + [f"run.dir={run}"], 2))
        ok(train(args + [f"run.dir={tmp_path}/straight"], 2))
        assert_same_state(latest_ckpt(run), latest_ckpt(tmp_path / "straight"))


@pytest.mark.parametrize("ranks", ["0,1", "1"], ids=["both-ranks", "rank1-only"])
def test_signal_landing_inside_the_agreement_is_not_lost(tmp_path, ranks):
    # SIGUSR2 arrives on `ranks` after the 3rd agreement read the local flag and before its
    # all-reduce ran. The flag only rises, so the next boundary (step 4) stops every rank.
    run = tmp_path / "run"
    env = dict(base_env(), GAN_DIST_TEST_SIGNAL_IN_AGREE=f"3:{ranks}")
    results = finish(start([sys.executable, INJECT, *LONG[:-1], "train.steps=40", f"run.dir={run}"], 2, env=env))
    for r in results:
        assert r.rc == 128 + signal.SIGUSR2, f"exit {r.rc} (the signal was lost?)\n{r.out[-1500:]}\n{r.err[-1500:]}"
    assert _stop_step(results[0].out, "SIGUSR2") == 4
    assert latest_ckpt(run)["step"] == 4


def test_torchrun_forwards_usr2_with_signals_to_handle(tmp_path):
    # torchrun's workers run in sessions of their own: a USR2 to the agent reaches them only if
    # the agent handles and forwards it (--signals-to-handle). Without it the agent dies of it.
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR2", "-m", "gan_dist.train", *LONG, f"run.dir={run}"]
    (launcher,) = procs = start(cmd)
    try:
        wait_for(lambda: len(metrics_rows(run)) >= 2, 180, "two log lines", procs)
        os.kill(launcher.pid, signal.SIGUSR2)  # the agent alone, as `kill` or `scancel -b` would
        (result,) = finish(procs, timeout=120)
    finally:
        kill(procs)
    stopped = _stop_step(result.out, "SIGUSR2")
    assert latest_ckpt(run)["step"] == stopped >= metrics_rows(run)[-1]["step"]


def test_a_usr2_on_one_rank_after_the_agreement_does_not_split_the_ranks(tmp_path):
    # Slurm job; TERM reaches both ranks inside the 3rd agreement, so they stop at step 4 on TERM;
    # then rank 1 alone gets USR2 between that agreement and settle(). Every rank must still take
    # settle's second agreement (branching on the agreed TERM), which turns the stop into USR2.
    run, bin_dir = tmp_path / "run", tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/scontrol.log\n")
    (bin_dir / "scontrol").chmod(0o755)
    env = dict(base_env(), SLURM_JOB_ID="777", PATH=f"{bin_dir}:{os.environ['PATH']}",
               GAN_DIST_TEST_SIGNAL_IN_AGREE="3:0,1:SIGTERM", GAN_DIST_TEST_SIGNAL_BEFORE_SETTLE="1:SIGUSR2")
    results = finish(start([sys.executable, INJECT, *LONG[:-1], "train.steps=40", f"run.dir={run}"], 2, env=env),
                     timeout=120)
    for r in results:
        assert r.rc == 128 + signal.SIGUSR2, f"exit {r.rc}\n{r.out[-1500:]}\n{r.err[-1500:]}"
    assert _stop_step(results[0].out, "SIGUSR2") == 4 and latest_ckpt(run)["step"] == 4
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "777"]  # rank 0 requeued, once
