"""python -m gan_dist.dataset_tool on every source kind: an ImageFolder tree (the zip holds the
very pixels data.name=image_folder loads), a flat folder, IDX files, a zip; a corrupt image;
an interrupted run; bad flags. And the listing of an ImageFolder, made once and cached."""
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import torch
from PIL import Image

from gan_dist import config
from gan_dist.data import folder
from gan_dist.data.dataset_tool import convert
from gan_dist.data.folder import image_folder
from gan_dist.data.zipdata import ZipImages
from helpers import base_env, one_line_error, spawn, tool_here, write_fashion_mnist, write_image_folder


def tool(*args, env=None):
    return spawn([sys.executable, "-m", "gan_dist.dataset_tool", *map(str, args)], env=env, timeout=120)[0]


def test_an_image_folder_becomes_stylegan2_adas_zip_with_the_pixels_the_folder_loads(tmp_path, capsys):
    root = write_image_folder(tmp_path / "glasses", classes=("G", "NoG"), per_class=5, size=(20, 24))
    r = tool("--source", root, "--dest", tmp_path / "g.zip", "--resolution", 16)
    assert r.rc == 0 and "wrote" in r.out and "10 images 16x16x3 (png), 2 classes" in r.out, r.err
    with zipfile.ZipFile(tmp_path / "g.zip") as z:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
        names = sorted(n for n in z.namelist() if n.endswith(".png"))
        meta = json.loads(z.read("dataset.json"))
    assert names[0] == "00000/img00000000.png" and names[-1] == "00000/img00000009.png"
    assert meta["labels"] == [[n, 0 if i < 5 else 1] for i, n in enumerate(names)] and meta["class_names"] == ["G", "NoG"]
    cfg = config.load(None, ["data.name=image_folder", f"data.root={root}", "data.channels=3", "train.batch_size=4",
                             f"run.dir={tmp_path}/none"])
    folder_ds, _ = image_folder(cfg)
    zipped = ZipImages(tmp_path / "g.zip")
    assert (zipped.size, zipped.channels, zipped.num_classes, len(zipped)) == (16, 3, 2, 10)
    for i in range(10):  # the same pixels, the same labels, the same order
        (a, la), (b, lb) = folder_ds[i], zipped[i]
        assert a.dtype == b.dtype == torch.uint8 and torch.equal(a, b) and la == lb
    one_line_error(tool_here(capsys, "--source", root, "--dest", tmp_path / "g.zip", "--resolution", 16), "exists; --force")
    assert tool_here(capsys, "--source", root, "--dest", tmp_path / "g.zip", "--resolution", 8, "--force").rc == 0
    assert ZipImages(tmp_path / "g.zip").size == 8


def test_flat_folder_idx_files_and_a_zip_as_sources(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(6):
        Image.new("RGB", (12 + i, 12), (40 * i, 0, 0)).save(flat / f"{i}.jpg")
    r = convert(flat, tmp_path / "flat.zip", "8", channels=1, workers=2)
    assert (r["images"], r["size"], r["channels"], r["classes"], r["source"]) == (6, 8, 1, 0, "flat")
    with zipfile.ZipFile(tmp_path / "flat.zip") as z:
        # unconditional, as stylegan2-ada writes it; the size and channels said for the reader
        assert json.loads(z.read("dataset.json")) == {"labels": None, "image_size": 8, "channels": 1}
    fashion = write_fashion_mnist(tmp_path / "fm", n=40)
    r = convert(fashion, tmp_path / "fm.zip", workers=2)  # the folder holding FashionMNIST/raw
    assert (r["images"], r["size"], r["channels"], r["classes"], r["source"]) == (40, 28, 1, 10, "idx")
    images = ZipImages(tmp_path / "fm.zip")
    from torchvision.datasets import FashionMNIST

    raw = FashionMNIST(str(fashion), train=True)
    assert torch.equal(images[7][0][0], raw.data[7]) and images.targets == raw.targets.tolist()
    assert images.classes[0] == "T-shirt/top"
    r = convert(tmp_path / "fm.zip", tmp_path / "fm16.zip", "16", format="jpg", max_images=10, workers=1)
    assert (r["images"], r["size"], r["format"], r["classes"]) == (10, 16, "jpg", 10)
    assert ZipImages(tmp_path / "fm16.zip").targets == raw.targets.tolist()[::4]  # spread over the source


def test_a_corrupt_image_is_named_and_skipped_and_bad_flags_are_one_line(tmp_path, capsys):
    root = write_image_folder(tmp_path / "images", per_class=4)
    (root / "G" / "2.png").write_bytes(b"not a png")
    r = tool("--source", root, "--dest", tmp_path / "d.zip", "--resolution", 8)
    assert r.rc == 0 and "skipped 1 unreadable" in r.out and f"skipping {root / 'G' / '2.png'}" in r.err, r.err
    assert len(ZipImages(tmp_path / "d.zip")) == 7
    for args, needle in [(["--resolution", "0"], "--resolution: expected N or WxH"),
                         (["--transform", "center-crop-wide"], "needs --resolution WxH"),
                         (["--resolution", "8x4"], "WxH is for --transform center-crop-wide"),
                         (["--max-images", "0"], "--max-images: must be >= 1")]:
        one_line_error(tool_here(capsys, "--source", root, "--dest", tmp_path / "e.zip", *args), needle)
    one_line_error(tool_here(capsys, "--source", tmp_path / "nowhere", "--dest", tmp_path / "e.zip"), "does not exist")
    one_line_error(tool_here(capsys, "--source", root, "--dest", tmp_path / "e.tar"), "must end in .zip")
    one_line_error(tool_here(capsys, "--source", root, "--dest", tmp_path / "e.zip"), "must be square; give --resolution N")
    r = convert(root, tmp_path / "w.zip", "16x8", transform="center-crop-wide", workers=1)
    assert r["size"] == 16  # letterboxed into a square, as stylegan2-ada's
    assert not (tmp_path / "e.zip").exists()


def test_a_killed_run_leaves_no_half_written_zip_and_a_terminated_one_no_temporary_file(tmp_path):
    root = tmp_path / "many"
    write_image_folder(root, classes=("a",), per_class=1, size=(8, 8))
    for i in range(1500):
        (root / "a" / f"{i}.png").write_bytes((root / "a" / "0.png").read_bytes())

    def start_then(sig, workers):  # 1500 images at 256x256: seconds of work, signalled 0.3 s in
        before = set(tmp_path.glob(".out.zip.*.tmp"))
        p = subprocess.Popen([sys.executable, "-m", "gan_dist.dataset_tool", "--source", str(root), "--dest",
                              str(tmp_path / "out.zip"), "--resolution", "256", "--workers", str(workers)],
                             env=base_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while not set(tmp_path.glob(".out.zip.*.tmp")) - before and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            assert p.poll() is None, "finished before it could be killed"
            os.killpg(p.pid, sig)  # the whole group, as Slurm and a terminal's Ctrl-C signal it
            _, err = p.communicate(timeout=60)
        finally:
            p.kill()
            p.wait()
        return p.returncode, err.decode()

    rc, _ = start_then(signal.SIGKILL, 1)
    assert rc == -signal.SIGKILL and not (tmp_path / "out.zip").exists()  # only the temporary file, never a half DEST
    assert len(list(tmp_path.glob(".out.zip.*.tmp"))) == 1  # SIGKILL cannot be handled: the next run removes it
    rc, err = start_then(signal.SIGTERM, 2)
    assert rc == 2 and "interrupted by SIGTERM" in err and "Traceback" not in err, err
    assert "left by a conversion that was killed" in err
    assert not list(tmp_path.glob(".out.zip.*")) and not (tmp_path / "out.zip").exists()


def test_an_image_folder_is_listed_once_then_read_from_the_cache_until_a_folder_changes(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "images", per_class=3)
    run = tmp_path / "run"
    run.mkdir()
    scans = []
    real_scan = folder.scan
    monkeypatch.setattr(folder, "scan", lambda r: scans.append(r) or real_scan(r))
    first = folder.listing(root, run)
    from torchvision.datasets import ImageFolder

    assert [(os.path.join(str(root), rel), t) for rel, t in first["samples"]] == ImageFolder(str(root)).samples
    assert folder.listing(root, run) == first and len(scans) == 1  # a stat per folder, no listing
    time.sleep(0.01)
    write_image_folder(root, classes=("NoG",), per_class=4)  # a new image in one class folder
    assert len(folder.listing(root, run)["samples"]) == 7 and len(scans) == 2
    (root / "G" / "sub").mkdir()  # a new (empty) folder is a change too
    folder.listing(root, run)
    assert len(scans) == 3 and len(list((run / "cache").iterdir())) == 1
