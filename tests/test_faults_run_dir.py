"""One run per run directory (rank 0's lock), and one directory for every rank: two jobs on
one directory, a lock left by a SIGKILLed run, a run.dir that is not the same folder on every
node (two torchrun launchers as two nodes), a rank that sees rank 0's checkpoint late."""
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

from helpers import (
    TINY,
    Proc,
    assert_same_state,
    base_env,
    finish,
    free_port,
    kill,
    latest_ckpt,
    metrics_rows,
    ok,
    one_line_error,
    start,
    train,
    wait_for,
)

ARGS = TINY + ["train.log_every=5", "train.checkpoint_every=5"]


def test_second_run_on_a_directory_in_use_is_refused_and_a_killed_runs_lock_is_not_stale(tmp_path):
    run = tmp_path / "run"
    first = start([sys.executable, "-m", "gan_dist.train", *ARGS, "train.steps=5000", f"run.dir={run}"], 2)
    try:
        wait_for(lambda: (run / "checkpoints" / "step_00000005.pt").exists(), 180, "the first run's checkpoint", first)
        # a resubmitted job beside its requeued self: refused at start-up, touching nothing
        second = train(ARGS + ["train.steps=5000", "train.keep_checkpoints=1", f"run.dir={run}"], 2)
        for r in second:
            line = one_line_error(r, f"run.dir: {run} is in use by another gan_dist run", f"pid {first[0].pid}")
        assert "host " in line and all(p.poll() is None for p in first)  # the first run goes on
        assert len(list((run / "checkpoints").glob("step_*.pt"))) >= 2  # the second's keep-last-1 pruned nothing
        for p in first:  # a crash: no chance to let go of the lock
            os.killpg(p.pid, signal.SIGKILL)
        finish(first, timeout=30)
    finally:
        kill(first)
    saved = latest_ckpt(run)["step"]
    out = ok(train(ARGS + [f"train.steps={saved + 2}", f"run.dir={run}"], 2))[0].out  # the kernel dropped the lock
    assert f"(step {saved})" in out and latest_ckpt(run)["step"] == saved + 2


def test_run_dir_that_differs_between_nodes_is_refused_at_once(tmp_path):
    # Two torchrun launchers as two nodes whose (relative) run.dir resolves to different folders:
    # node 2 would never see rank 0's checkpoints and resume elsewhere at the next restart.
    port = free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d",
           f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=localdirs", "-m", "gan_dist.train", *ARGS,
           "train.steps=6", "run.shared_fs_wait_s=2", "run.dir=run"]
    procs = []
    for node in ("node_a", "node_b"):
        (tmp_path / node).mkdir()
        procs.append(subprocess.Popen(cmd, cwd=tmp_path / node, env=base_env(tmp_path), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, start_new_session=True))
    results = finish(procs, timeout=180)
    for r in results:
        assert r.rc != 0
        assert "gan_dist: error: " in r.err and "must be one directory on a filesystem every node sees" in r.err, \
            r.err[-3000:]
    assert not list(tmp_path.glob("node_*/run/checkpoints/*.pt"))  # no training happened


def test_every_rank_loads_the_checkpoint_rank_0_chose_even_when_it_shows_up_late(tmp_path):
    # Rank 1's view of run.dir lags (NFS): it shares the lock file but still lists only step 5
    # when rank 0 resumes from step 10. Rank 1 must wait for step 10, not resume from step 5.
    a, b = tmp_path / "a", tmp_path / "b"
    ok(train(ARGS + ["train.steps=10", f"run.dir={a}/run"], 2))
    (b / "run" / "checkpoints").mkdir(parents=True)
    shutil.copy(a / "run" / "checkpoints" / "step_00000005.pt", b / "run" / "checkpoints")
    (b / "run" / ".lock").symlink_to(a / "run" / ".lock")
    late = a / "run" / "checkpoints" / "step_00000010.pt"

    def arrive():  # whole, as a file shows up on another NFS client
        shutil.copy(late, b / "run" / "checkpoints" / ".incoming")
        os.replace(b / "run" / "checkpoints" / ".incoming", b / "run" / "checkpoints" / late.name)

    threading.Timer(2.0, arrive).start()
    procs, port = [], free_port()
    for rank, cwd in enumerate((a, b)):
        env = dict(base_env(tmp_path), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, "-m", "gan_dist.train", *ARGS, "train.steps=12",
                                       "run.shared_fs_wait_s=30", "run.dir=run"], cwd=cwd, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      start_new_session=True))
    started = time.monotonic()
    results: list[Proc] = ok(finish(procs, timeout=180))
    assert "step_00000010.pt (step 10)" in results[0].out and time.monotonic() - started >= 2
    ok(train(ARGS + ["train.steps=12", f"run.dir={tmp_path}/straight"], 2))
    assert_same_state(latest_ckpt(a / "run"), latest_ckpt(tmp_path / "straight"))
    assert metrics_rows(a / "run")[-1]["step"] == 12
