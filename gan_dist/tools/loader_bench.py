"""The loader benchmark (`python -m gan_dist.bench --loader`): images/s that one rank's data
stream delivers (decoded, uint8 to [-1, 1] on the device, the loop's own BatchStream) from an
ImageFolder of PNGs, a zip of PNGs and a zip of JPEGs (both made by gan_dist.dataset_tool), at
64x64 and 256x256 RGB, with 0, 1 and 2 loader workers; and the start-up (dataset built, first
batch) of a large tree of tiny files against the zip made from it, with the folder listing
uncached and cached. The images are smooth random noise, which compresses about as photos do.
A benchmark to read, not a timed test."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gan_dist import config
from gan_dist.data import BatchStream, build_dataset
from gan_dist.data.dataset_tool import convert
from gan_dist.distributed import World


def _images(root: Path, n: int, size: int, classes: int = 4) -> None:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        small = rng.integers(0, 256, (max(1, size // 8), max(1, size // 8), 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.BICUBIC).save(root / f"class{i % classes}" / f"{i:06d}.png")


def _cfg(name: str, root: Path, run: Path, size: int, workers: int, batch: int) -> config.Config:
    return config.load(None, [f"data.name={name}", f"data.root={root}", f"data.image_size={size}", "data.channels=3",
                              f"data.num_workers={workers}", f"train.batch_size={batch}", f"run.dir={run}"])


def stream_rate(cfg: config.Config, batches: int) -> float:
    """Images/s of BatchStream.next() after two warm-up batches (workers started)."""
    dataset, _ = build_dataset(cfg)
    stream = BatchStream(dataset, cfg, World())
    try:
        for _ in range(2):
            stream.next()
        start = time.perf_counter()
        for _ in range(batches):
            stream.next()
        return batches * cfg.train.batch_size / (time.perf_counter() - start)
    finally:
        stream.close()


def startup(cfg: config.Config) -> float:
    """Seconds from nothing to the first batch: the dataset built (listed or opened) and read."""
    start = time.perf_counter()
    dataset, _ = build_dataset(cfg)
    stream = BatchStream(dataset, cfg, World())
    stream.next()
    stream.close()
    return time.perf_counter() - start


def run(sizes=(64, 256), images: int = 1024, batches: int = 12, batch: int = 64, workers=(0, 1, 2),
        startup_files: int = 100_000, log=print) -> dict:
    torch.set_num_threads(1)
    out = {"rates": [], "startup": {}, "cpus": len(os.sched_getaffinity(0))}
    with tempfile.TemporaryDirectory(prefix="gan_dist_loader_") as t:
        tmp = Path(t)
        for size in sizes:
            folder = tmp / f"folder{size}"
            _images(folder, images, size)
            layouts = {"image_folder png": ("image_folder", folder)}
            for fmt in ("png", "jpg"):
                convert(folder, tmp / f"{fmt}{size}.zip", str(size), format=fmt)
                layouts[f"zip {fmt}"] = ("zip", tmp / f"{fmt}{size}.zip")
            for layout, (name, root) in layouts.items():
                for w in workers:
                    rate = stream_rate(_cfg(name, root, tmp / "run", size, w, batch), batches)
                    out["rates"].append({"size": size, "layout": layout, "workers": w, "images_per_s": rate})
                    log(f"{size:4d}x{size:<4d} {layout:17s} workers {w}: {rate:8.0f} images/s")
        if startup_files:
            tiny = tmp / "tiny"
            log(f"writing {startup_files} files of 8x8 ...")
            _images(tiny, startup_files, 8, classes=10)
            convert(tiny, tmp / "tiny.zip")
            run_dir = tmp / "startup_run"
            run_dir.mkdir()
            folder_cfg = _cfg("image_folder", tiny, run_dir, 8, 0, batch)
            out["startup"] = {"files": startup_files,
                              "image_folder listed": startup(folder_cfg),
                              "image_folder cached listing": startup(folder_cfg),
                              "zip": startup(_cfg("zip", tmp / "tiny.zip", run_dir, 8, 0, batch))}
            for k, v in out["startup"].items():
                if k != "files":
                    log(f"start-up, {startup_files} files, {k}: {v:.2f} s")
    return out
