"""Dashboards: metrics read BACK from an offline wandb run (`wandb leet inspect --json`),
rank 0 only, the run id kept across a resume, no secret written anywhere, a failing wandb
leaving training going."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from helpers import TINY, base_env, latest_ckpt, metrics_rows, ok, spawn, train

WANDB = str(Path(sys.executable).with_name("wandb"))
LOGGED = {"loss_critic", "loss_gen", "gp", "wasserstein", "grad_norm_critic", "grad_norm_generator",
          "lr", "epoch", "images_per_sec", "step_time"}


def _history(run_dir: Path) -> list[dict]:
    out = subprocess.run([WANDB, "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    records = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    return [r["history"]["item"] for r in records if r.get("type") == "history"]


def test_offline_wandb_history_holds_the_metrics_and_sample_grids(tmp_path):
    env = base_env(tmp_path)
    env["WANDB_API_KEY"] = "k" * 40  # must never be written anywhere
    args = TINY + ["train.steps=4", "train.sample_every=2", "wandb.mode=offline", "wandb.name=probe",
                   "wandb.tags=[ci,digits]", f"run.dir={tmp_path}/run"]
    results = ok(train(args, world_size=2, env=env))
    pieces = sorted((tmp_path / "wandb").glob("offline-run-*"))  # WANDB_DIR (conftest)
    assert len(pieces) == 1  # rank 0 only
    rows = _history(pieces[0])
    assert [r["_step"] for r in rows] == [2, 4]
    for row in rows:
        assert LOGGED <= row.keys(), LOGGED - row.keys()
        assert row["samples._type"] == "image-file"
    ref = {r["step"]: r for r in metrics_rows(tmp_path / "run")}
    assert abs(rows[-1]["loss_critic"] - ref[4]["loss_critic"]) < 1e-6  # averaged over both ranks, same numbers
    grid = np.asarray(Image.open(pieces[0] / "files" / rows[-1]["samples.path"]))
    assert grid.dtype == np.uint8 and grid.std() > 10  # a real picture, not a black one
    assert "wandb" not in results[1].out + results[1].err  # nothing from rank 1
    leaked = [p for p in (tmp_path / "run").rglob("*") if p.is_file() and b"k" * 40 in p.read_bytes()]
    assert not leaked, leaked


def test_resumed_run_continues_the_same_wandb_run(tmp_path):
    args = TINY + ["wandb.mode=offline", f"run.dir={tmp_path}/run"]
    ok(train(args + ["train.steps=4"], env=base_env(tmp_path)))
    run_id = latest_ckpt(tmp_path / "run")["wandb_run_id"]
    ok(train(args + ["train.steps=8"], env=base_env(tmp_path)))
    assert latest_ckpt(tmp_path / "run")["wandb_run_id"] == run_id
    pieces = sorted((tmp_path / "wandb").glob("offline-run-*"))  # WANDB_DIR (conftest)
    # wandb cannot resume an offline run: a second piece with the SAME id, steps continuing
    assert len(pieces) == 2 and all(p.name.endswith(run_id) for p in pieces)
    steps = [r["_step"] for p in pieces for r in _history(p)]
    assert steps == [2, 4, 6, 8]


def test_wandb_that_cannot_start_warns_once_and_training_goes_on(tmp_path):
    env = base_env(tmp_path)
    env.update(WANDB_API_KEY="short", WANDB_BASE_URL="http://127.0.0.1:9", WANDB_MODE="online")
    (r,) = ok(train(TINY + ["train.steps=2", "wandb.mode=online", f"run.dir={tmp_path}/run"], env=env))
    assert r.err.count("gan_dist: warning: wandb did not start") == 1
    assert [row["step"] for row in metrics_rows(tmp_path / "run")] == [2]


def test_plain_lines_with_eta_when_stdout_is_not_a_terminal(tmp_path):
    r0, r1 = ok(train(TINY + ["train.steps=4", f"run.dir={tmp_path}/run"], world_size=2))
    lines = [ln for ln in r0.out.splitlines() if ln.startswith("step ")]
    assert len(lines) == 2 and all("eta" in ln and "loss_critic" in ln for ln in lines)
    assert r1.out == ""  # other ranks print nothing but errors


def test_quality_is_evaluated_during_a_two_rank_run(tmp_path):
    cls = tmp_path / "digits8.pt"
    ok(spawn([sys.executable, "-m", "gan_dist.digits_classifier", "--out", str(cls), "--image-size", "8",
              "--epochs", "3"]))
    ok(train(TINY + ["train.steps=4", "eval.every=2", "eval.num_samples=64", f"eval.features=digits:{cls}",
                     f"run.dir={tmp_path}/run"], world_size=2))
    quality = [r for r in metrics_rows(tmp_path / "run") if "fid" in r]
    assert [r["step"] for r in quality] == [2, 4]
    assert all(r["fid"] > 0 and 0 <= r["cond_acc"] <= 1 for r in quality)


def test_progress_bar_on_a_terminal(tmp_path):
    import os
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "gan_dist.train", *TINY, "train.steps=4", f"run.dir={tmp_path}/run"],
                            stdout=slave, stderr=subprocess.DEVNULL, env=base_env(tmp_path), start_new_session=True)
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # the terminal closed: the process is done
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    screen = b"".join(chunks).decode(errors="replace")
    assert "4/4" in screen and ("step/s" in screen or "s/step" in screen), screen[-2000:]
    assert "loss_critic" in screen  # the log lines still come, above the bar
