"""A full disk and a read-only filesystem, for real: a size-limited tmpfs and a read-only bind
mount (root only; CI runs as root). One line naming the path and the cause, no partial file
left, the earlier checkpoints intact, and the same command resumes once space is freed."""
import os
import subprocess

import pytest

from helpers import TINY, latest_ckpt, load_ckpt, ok, one_line_error, train

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs / a read-only bind mount needs root")


def _mount(*args: str) -> None:
    r = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"mount {' '.join(args)}: {r.stderr}"  # root and no mount: a failure, not a skip


@pytest.fixture
def mounts():
    made = []
    yield made
    for path in reversed(made):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def test_disk_full_during_a_checkpoint_is_one_line_and_the_restart_works_once_space_is_freed(tmp_path, mounts):
    disk = tmp_path / "disk"
    disk.mkdir()
    # A checkpoint of this model is ~90 kB: 400 kB hold a few, not all eight of them.
    _mount("-t", "tmpfs", "-o", "size=400k", "tmpfs", str(disk))
    mounts.append(disk)
    run = disk / "run"
    args = TINY + ["train.checkpoint_every=2", "train.keep_checkpoints=8", "train.steps=16", f"run.dir={run}"]
    results = train(args, 2)
    for r in results:
        one_line_error(r, "No space left on device")
    line = [ln for ln in results[0].err.splitlines() if ln.startswith("gan_dist: error:")][0]
    assert str(run) in line and "needs about" in line and " free)" in line, line
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names and all(n.startswith("step_") and n.endswith(".pt") for n in names), names  # no partial file
    for n in names:
        load_ckpt(run / "checkpoints" / n)  # every earlier checkpoint loads
    last = load_ckpt(run / "checkpoints" / names[-1])["step"]
    _mount("-o", "remount,size=8m", str(disk))  # space freed
    out = ok(train(args, 2))[0].out
    assert f"(step {last})" in out and latest_ckpt(run)["step"] == 16


def test_run_dir_on_a_read_only_filesystem_is_one_line(tmp_path, mounts):
    src, ro = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    _mount("--bind", str(src), str(ro))
    mounts.append(ro)
    _mount("-o", "remount,bind,ro", str(ro))
    one_line_error(train(TINY + ["train.steps=2", f"run.dir={ro}/run"])[0], f"cannot create {ro}/run",
                   "Read-only file system")
    one_line_error(train(TINY + ["train.steps=2", f"run.dir={ro}"])[0], f"cannot write in {ro}",
                   "Read-only file system")
