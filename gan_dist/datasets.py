"""The datasets, as (image in [-1, 1], label): scikit-learn's digits (embedded, no download),
Fashion-MNIST (torchvision, IDX files), an ImageFolder (one subfolder per class).

Bad files end in one line naming the file, before any training: a Fashion-MNIST IDX file
that is empty, not IDX, truncated, or whose image and label counts differ. An image of an
ImageFolder that does not decode is only found when it is read, mid-training, on one rank:
it is skipped with a warning naming it (the next readable image takes its place), so no rank
stops alone and leaves the others waiting in a collective.
"""
from __future__ import annotations

import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import Dataset, TensorDataset
from torchvision import datasets, transforms

from gan_dist.config import Config
from gan_dist.distributed import World, raise_if_any
from gan_dist.errors import UserError


@dataclass
class DataInfo:
    num_classes: int
    channels: int
    image_size: int


def _to_unit_range(channels: int) -> list:
    return [transforms.ToTensor(), transforms.Normalize([0.5] * channels, [0.5] * channels)]


def memory_bytes() -> int:
    """This machine's physical memory (what a dataset held in memory can use at most)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _digits(cfg: Config, world: World) -> tuple[Dataset, DataInfo]:
    """scikit-learn's bundled handwritten digits: 1,797 real 8x8 images, no download."""
    from sklearn.datasets import load_digits
    from torchvision.transforms.v2 import functional as F

    digits = load_digits()
    size = cfg.data.image_size
    need = len(digits.images) * size * size * 4 * 2  # float32 resized copy, and its [-1, 1] copy
    if need > memory_bytes():
        raise UserError(f"data.image_size: the digits resized to {size}x{size} need {need / 2**30:.0f} GiB, "
                        f"more than this machine's {memory_bytes() / 2**30:.0f} GiB")
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [N,1,8,8] in [0,1]
    if size != 8:
        images = F.resize(images, [size] * 2, antialias=True).clamp(0.0, 1.0)
    labels = torch.as_tensor(digits.target, dtype=torch.long)
    return TensorDataset(images * 2.0 - 1.0, labels), DataInfo(10, 1, size)


# ---- Fashion-MNIST ------------------------------------------------------------------------
IDX_FILES = {"train-images-idx3-ubyte": (0x0803, 3), "train-labels-idx1-ubyte": (0x0801, 1)}


def check_idx(path: Path, magic: int, dims: int) -> int:
    """The item count of an IDX file (the format of (Fashion-)MNIST), or a one-line error
    naming the file: torchvision only asserts, and a bad file surfaces later as a crash."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            header = f.read(4 + 4 * dims)
    except OSError as e:
        raise UserError(f"data.root: cannot read {path} ({e.strerror})") from None
    if len(header) < 4 + 4 * dims:
        raise UserError(f"data.root: {path} is {size} bytes, too short for an IDX header (empty or truncated)")
    found = struct.unpack(">I", header[:4])[0]
    if found != magic:
        raise UserError(f"data.root: {path} is not an IDX file of uint8 {'images' if dims == 3 else 'labels'} "
                        f"(magic number 0x{found:08x}, expected 0x{magic:08x})")
    shape = struct.unpack(f">{dims}I", header[4:])
    expected = 4 + 4 * dims + int(torch.tensor(shape).prod())
    if size != expected:
        raise UserError(f"data.root: {path} is {size} bytes but its header says {'x'.join(map(str, shape))} "
                        f"({expected} bytes): truncated or corrupt")
    if dims == 3 and shape[1:] != (28, 28):
        raise UserError(f"data.root: {path} holds {shape[1]}x{shape[2]} images, Fashion-MNIST's are 28x28")
    return shape[0]


def _download_once(cfg: Config, world: World) -> None:
    """data.download=true: global rank 0 downloads while the others wait; then local rank 0 of
    every other node, which finds the files there when data.root is shared and fetches them
    when it is node-local. Never two processes writing one folder."""
    for turn in ("first", "others"):
        error = None
        mine = world.rank == 0 if turn == "first" else (world.local_rank == 0 and world.rank != 0)
        if mine:
            try:
                datasets.FashionMNIST(cfg.data.root, train=True, download=True)
            except Exception as e:  # URLError, socket timeouts, torchvision's RuntimeError, checksum...
                error = (f"data.download: could not download Fashion-MNIST into {cfg.data.root} "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
        raise_if_any(error, world)  # also the barrier between the turns


def _fashion_mnist(cfg: Config, world: World) -> tuple[Dataset, DataInfo]:
    size = cfg.data.image_size
    tf = ([transforms.Resize(size, antialias=True)] if size != 28 else []) + _to_unit_range(1)
    root = Path(cfg.data.root)
    if cfg.data.download:
        _download_once(cfg, world)
    elif not root.is_dir():
        raise UserError(f"data.root: {root} does not exist (set data.download=true to fetch Fashion-MNIST)")
    raw = root / "FashionMNIST" / "raw"
    missing = [name for name in IDX_FILES if not (raw / name).is_file()]
    if missing:
        raise UserError(f"data.root: no Fashion-MNIST in {root} ({raw / missing[0]} not found); "
                        "set data.download=true or point data.root at the folder holding FashionMNIST/raw")
    counts = {name: check_idx(raw / name, *spec) for name, spec in IDX_FILES.items()}
    images, labels = counts.values()
    if images != labels:
        raise UserError(f"data.root: {raw} holds {images} images but {labels} labels: the files do not belong together")
    ds = datasets.FashionMNIST(str(root), train=True, download=False, transform=transforms.Compose(tf))
    if int(ds.targets.max()) >= 10:
        raise UserError(f"data.root: {raw / 'train-labels-idx1-ubyte'} has label {int(ds.targets.max())}; "
                        "Fashion-MNIST's are 0-9")
    return ds, DataInfo(10, 1, size)


# ---- ImageFolder ---------------------------------------------------------------------------
class SkippingImageFolder(datasets.ImageFolder):
    """ImageFolder whose unreadable files are replaced by the next readable one, with a warning
    naming the file (once per file and process). Depends on the index only, so every rank and
    every world size makes the same replacement."""

    MAX_CONSECUTIVE = 100
    _warned: set = set()

    def __getitem__(self, index: int):
        for attempt in range(min(len(self), self.MAX_CONSECUTIVE)):
            i = (index + attempt) % len(self)
            try:
                return super().__getitem__(i)
            except Exception as e:  # PIL: UnidentifiedImageError, "image file is truncated", decompression bombs
                self._warn(self.samples[i][0], e)
        raise UserError(f"data.root: {self.MAX_CONSECUTIVE} images in a row do not decode "
                        f"(from {self.samples[index][0]}); is {self.root} an image folder?")

    def _warn(self, path: str, error: Exception) -> None:
        if path not in self._warned:
            self._warned.add(path)
            print(f"gan_dist: warning: skipping unreadable image {path} ({type(error).__name__}: "
                  f"{str(error).splitlines()[0] if str(error) else ''}); the next image takes its place",
                  file=sys.stderr, flush=True)


def _image_folder(cfg: Config, world: World) -> tuple[Dataset, DataInfo]:
    """One subfolder per class (the book's glasses/G and glasses/NoG)."""
    root = Path(cfg.data.root)
    if not root.is_dir():
        raise UserError(f"data.root: {root} does not exist (expected one subfolder of images per class)")
    c, size = cfg.data.channels, cfg.data.image_size
    tf = ([transforms.Grayscale(1)] if c == 1 else []) + [
        transforms.Resize(size, antialias=True), transforms.CenterCrop(size)] + _to_unit_range(c)
    try:
        ds = SkippingImageFolder(str(root), transform=transforms.Compose(tf))
    except (FileNotFoundError, RuntimeError, OSError) as e:
        raise UserError(f"data.root: {root}: {e}") from None
    return ds, DataInfo(len(ds.classes), c, size)


def build_dataset(cfg: Config, world: Optional[World] = None) -> tuple[Dataset, DataInfo]:
    world = world or World()
    builder = {"digits": _digits, "fashion_mnist": _fashion_mnist, "image_folder": _image_folder}
    ds, info = builder[cfg.data.name](cfg, world)
    if len(ds) < cfg.train.batch_size:
        raise UserError(f"train.batch_size: {cfg.train.batch_size} is larger than the dataset "
                        f"({len(ds)} images in {cfg.data.name})")
    return ds, info
