"""On a real Slurm (CI starts a one-node cluster with slurm/local_cluster_up.sh): jobs.submit
through submitit, preemption -> coordinated checkpoint -> requeue -> resume, the sbatch script.
Every wait is bounded: without slurmdbd, submitit's job state stays UNKNOWN, so the tests watch
the run directory and squeue instead."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import TINY, assert_same_state, base_env, latest_ckpt, metrics_rows, ok, train, wait_for

REPO = Path(__file__).resolve().parents[1]


def _no_slurm_reason() -> str:
    if not (shutil.which("sbatch") and shutil.which("sinfo")):
        return "no Slurm client (sbatch, sinfo) on PATH; start one with slurm/local_cluster_up.sh"
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "no Slurm reachable: sinfo timed out"
    if r.returncode != 0:
        return f"no Slurm reachable: sinfo failed ({r.stderr.strip()[:200]})"
    if not any(s.strip("*~#") in ("idle", "mixed", "allocated") for s in r.stdout.split()):
        return f"no usable Slurm node (sinfo: {r.stdout.strip()})"
    return ""


REASON = _no_slurm_reason()
if REASON and os.environ.get("GAN_DIST_REQUIRE_SLURM") == "1":  # CI: a missing cluster is a failure
    raise RuntimeError(f"GAN_DIST_REQUIRE_SLURM=1 but {REASON}")
# one worker runs them all (pytest-xdist): the node has 2 CPUs and the jobs take both
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(bool(REASON), reason=REASON), pytest.mark.xdist_group("slurm")]

ARGS = TINY + ["train.log_every=10", "train.checkpoint_every=1000"]


def _submit(args: list[str]):
    from jobs.submit import submit

    (job,) = submit(["--tasks-per-node", "2", "--cpus-per-task", "1", "--partition", "debug",
                     "--timeout-min", "10", *args])
    return job


def _in_queue(job_id: str) -> bool:
    r = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True, timeout=20)
    return bool(r.stdout.strip())


def _cancel(job_id: str) -> None:
    subprocess.run(["scancel", str(job_id)], capture_output=True, timeout=20)


def test_two_task_job_through_jobs_submit_trains_and_finishes(tmp_path):
    run = tmp_path / "run"
    job = _submit(ARGS + ["train.steps=12", f"run.dir={run}"])
    try:
        wait_for(lambda: (run / "checkpoints" / "step_00000012.pt").exists() and not _in_queue(job.job_id),
                 180, f"job {job.job_id} to finish")
    finally:
        _cancel(job.job_id)
    log = Path(job.paths.stdout).read_text()
    assert "on 2 rank(s)" in log and "Job completed successfully" in log
    # one job of 2 ranks: it equals the same 2-rank run started locally
    ok(train(ARGS + ["train.steps=12", f"run.dir={tmp_path}/local"], 2))
    assert_same_state(latest_ckpt(run), latest_ckpt(tmp_path / "local"))


@pytest.mark.parametrize("how", ["interrupt", "scontrol_requeue"])
def test_preempted_job_saves_a_coordinated_step_requeues_and_resumes(tmp_path, how):
    run, steps = tmp_path / "run", 200  # the signal lands within a second of the 30th step (~40 steps/s): mid-run
    job = _submit(ARGS + [f"train.steps={steps}", f"run.dir={run}"])
    log = Path(job.paths.stdout)
    try:
        wait_for(lambda: len(metrics_rows(run)) >= 3, 180, "training to log three times")
        logged_before = metrics_rows(run)[-1]["step"]
        signalled = time.monotonic()
        if how == "interrupt":
            job._interrupt()  # what Slurm does at preemption / time limit: SIGTERM, then SIGUSR2
        else:
            subprocess.run(["scontrol", "requeue", str(job.job_id)], check=True, timeout=20)  # SIGTERM
        wait_for(lambda: log.exists() and "resuming from" in log.read_text(), 180, "the requeued job to resume")
        print(f"\n{how}: signal -> requeued job resumed in {time.monotonic() - signalled:.1f} s")
        wait_for(lambda: (run / "checkpoints" / f"step_{steps:08d}.pt").exists() and not _in_queue(job.job_id),
                 300, "the resumed job to finish")
    finally:
        _cancel(job.job_id)
    text = log.read_text()
    signal_name = "SIGUSR2" if how == "interrupt" else "SIGTERM"
    stopped = int(text.split(f"stopped by {signal_name} at step ")[1].split()[0])
    assert stopped >= logged_before  # no step done before the signal is lost
    assert f"checkpoints/step_{stopped:08d}.pt (step {stopped})" in text  # resumed from that very step
    assert latest_ckpt(run)["step"] == steps
    ok(train(ARGS + [f"train.steps={steps}", f"run.dir={tmp_path}/straight"], 2))
    assert_same_state(latest_ckpt(run), latest_ckpt(tmp_path / "straight"))


def _sbatch(tmp_path, args: list[str], *flags: str, omp: bool = True) -> tuple[str, Path]:
    out = tmp_path / "slurm.out"
    env = base_env(tmp_path)
    if not omp:  # an exported OMP_NUM_THREADS is the user's explicit choice and wins over the task's CPUs
        env.pop("OMP_NUM_THREADS")
    r = subprocess.run(["sbatch", "--parsable", "--gpus-per-node=0", "--time=5", f"--output={out}",
                        f"--export=ALL,PYTHON={sys.executable}", *flags, str(REPO / "slurm" / "train.sbatch"), *args],
                       capture_output=True, text=True, timeout=30, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().split(";")[0], out


def test_sbatch_script_runs_a_short_job(tmp_path):
    run = tmp_path / "run"
    job_id, out = _sbatch(tmp_path, ARGS + ["train.steps=6", f"run.dir={run}"], "--ntasks-per-node=2",
                          "--cpus-per-task=1")
    try:
        wait_for(lambda: (run / "checkpoints" / "step_00000006.pt").exists() and not _in_queue(job_id),
                 180, f"sbatch job {job_id}")
    finally:
        _cancel(job_id)
    text = out.read_text()
    assert "2 tasks" in text and "on 2 rank(s)" in text and "saved" in text


def test_sbatch_usr2_saves_requeues_before_the_ranks_exit_and_resumes(tmp_path):
    # --kill-on-bad-exit: the ranks exit 140 after the save; rank 0 must have requeued before.
    run, steps = tmp_path / "run", 200
    job_id, out = _sbatch(tmp_path, ARGS + [f"train.steps={steps}", f"run.dir={run}"], "--ntasks-per-node=2",
                          "--cpus-per-task=1")
    try:
        wait_for(lambda: len(metrics_rows(run)) >= 3, 180, "training to log three times")
        logged_before = metrics_rows(run)[-1]["step"]
        signalled = time.monotonic()
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=20)  # as --signal=USR2@120 does
        wait_for(lambda: "resuming from" in out.read_text(), 180, "the requeued job to resume")
        print(f"\nsbatch USR2: signal -> requeued job resumed in {time.monotonic() - signalled:.1f} s")
        wait_for(lambda: (run / "checkpoints" / f"step_{steps:08d}.pt").exists() and not _in_queue(job_id),
                 300, "the resumed job to finish")
    finally:
        _cancel(job_id)
    text = out.read_text()
    stopped = int(text.split("stopped by SIGUSR2 at step ")[1].split()[0])
    assert stopped >= logged_before and f"requeued Slurm job {job_id}" in text
    assert f"checkpoints/step_{stopped:08d}.pt (step {stopped})" in text and "(restart 1)" in text
    ok(train(ARGS + [f"train.steps={steps}", f"run.dir={tmp_path}/straight"], 2))
    assert_same_state(latest_ckpt(run), latest_ckpt(tmp_path / "straight"))


def test_plain_srun_of_two_tasks_is_one_two_rank_run(tmp_path):
    # No torchrun, no sbatch script: the ranks come from srun's own variables (before: two
    # independent rank-0 runs in one directory).
    run = tmp_path / "run"
    r = subprocess.run(["srun", "--ntasks=2", "--cpus-per-task=1", "--time=5", sys.executable, "-m", "gan_dist.train",
                        *ARGS, "train.steps=6", f"run.dir={run}"], capture_output=True, text=True, timeout=240,
                       cwd=tmp_path, env=base_env(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("training dcgan") == 1 and "on 2 rank(s)" in r.stdout
    ok(train(ARGS + ["train.steps=6", f"run.dir={tmp_path}/local"], 2))
    assert_same_state(latest_ckpt(run), latest_ckpt(tmp_path / "local"))


def test_a_task_uses_its_cpus_per_task_and_srun_gets_the_flag(tmp_path):
    # One task with 2 CPUs: 2 threads (the cluster binds tasks: TaskPlugin=task/affinity).
    run = tmp_path / "run"
    job_id, out = _sbatch(tmp_path, TINY + ["train.steps=2", f"run.dir={run}", "train.threads=null"],
                          "--ntasks-per-node=1", "--cpus-per-task=2", omp=False)
    try:
        wait_for(lambda: (run / "checkpoints" / "step_00000002.pt").exists() and not _in_queue(job_id),
                 180, f"sbatch job {job_id}")
    finally:
        _cancel(job_id)
    assert "on 1 rank(s), 2 thread(s) each" in out.read_text()
    # submitit's generated batch script passes --cpus-per-task to srun as well
    job = _submit(ARGS + ["train.steps=2", f"run.dir={tmp_path}/sub"])
    try:
        script = Path(job.paths.submission_file).read_text()
        srun = [ln for ln in script.splitlines() if ln.startswith("srun ")][0]
        assert "--cpus-per-task=1" in srun, srun
        wait_for(lambda: not _in_queue(job.job_id), 180, f"job {job.job_id}")
    finally:
        _cancel(job.job_id)


def test_a_sweep_grid_is_one_task_and_one_run_directory_per_combination_each_resumable(tmp_path, capsys):
    from jobs.submit import submit

    root = tmp_path / "sweep"
    common = ["--tasks-per-node", "1", "--cpus-per-task", "1", "--partition", "debug", "--timeout-min", "10",
              "--sweep", "model.width=4,8", "--sweep", "loss.n_critic=1,2", *ARGS, f"run.dir={root}"]
    names = [f"model.width={w},loss.n_critic={n}" for w in (4, 8) for n in (1, 2)]

    def round_to(steps: int) -> list:
        jobs = submit(common + [f"train.steps={steps}"])
        try:
            wait_for(lambda: all((root / n / "checkpoints" / f"step_{steps:08d}.pt").exists() for n in names)
                     and not any(_in_queue(j.job_id) for j in jobs), 240, f"the 4 sweep tasks to reach step {steps}")
        finally:
            for j in jobs:
                _cancel(j.job_id)
        return jobs

    jobs = round_to(3)
    assert len(jobs) == 4 and len({j.job_id.split("_")[0] for j in jobs}) == 1  # one job array
    said = capsys.readouterr().out  # each task's own directory; the array's logs beside them
    assert all(f"run dir {root / n}\n" in said for n in names) and (root / "submitit").is_dir(), said
    assert sorted(p.name for p in root.iterdir() if p.name != "submitit") == sorted(names)
    for n in names:  # each directory trained its own combination
        saved = latest_ckpt(root / n)["config"]
        assert f"model.width={saved['model']['width']},loss.n_critic={saved['loss']['n_critic']}" == n
    jobs = round_to(5)  # the same command, further: each task resumes in its own directory
    assert all("resuming from" in Path(j.paths.stdout).read_text() for j in jobs)
