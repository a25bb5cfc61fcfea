"""The datasets, as (image in [-1, 1], label): scikit-learn's digits (embedded, no download),
Fashion-MNIST (torchvision, IDX files), an ImageFolder (one subfolder per class).

Bad files end in one line naming the file, before any training: a Fashion-MNIST IDX file
that is empty, not IDX, truncated, or whose image and label counts differ. An image of an
ImageFolder that does not decode is only found when it is read, mid-training, on one rank:
it is skipped with a warning naming it (the next readable image takes its place), so no rank
stops alone and leaves the others waiting in a collective.
"""
from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.utils.data import Dataset, TensorDataset
from torchvision import datasets, transforms

from gan_dist import registry
from gan_dist.config import Config
from gan_dist.distributed import World, raise_if_any
from gan_dist.errors import UserError, first_line

log = logging.getLogger("gan_dist")


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


def digits(cfg: Config) -> tuple[Dataset, DataInfo]:
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


def fashion_mnist(cfg: Config) -> tuple[Dataset, DataInfo]:
    size = cfg.data.image_size
    tf = ([transforms.Resize(size, antialias=True)] if size != 28 else []) + _to_unit_range(1)
    root = Path(cfg.data.root)
    if cfg.data.download:  # build_dataset runs this on rank 0 first: one download per folder
        try:
            datasets.FashionMNIST(str(root), train=True, download=True)
        except Exception as e:  # URLError, socket timeouts, torchvision's RuntimeError, checksum...
            raise UserError(f"data.download: could not download Fashion-MNIST into {root} "
                            f"({first_line(e)})") from None
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
            log.warning("skipping unreadable image %s (%s); the next image takes its place", path, first_line(error))


def image_folder(cfg: Config) -> tuple[Dataset, DataInfo]:
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


def build_dataset(cfg: Config, world: Optional[World] = None, factory: Optional[Callable] = None
                  ) -> tuple[Dataset, DataInfo]:
    """(dataset, DataInfo) from data.name's factory, checked. The factory runs on global rank 0
    first (it may download or write a cache into data.root), then on one rank of every other
    node (which finds the files when data.root is shared, and makes them when it is
    node-local), then on the rest: never two processes writing one folder."""
    world = world or World()
    factory = factory or registry.dataset_factory(cfg.data.name)
    result = None
    for mine in (world.rank == 0, world.local_rank == 0 and world.rank != 0, world.local_rank != 0):
        error = None
        if mine:
            try:
                result = check_dataset(factory(cfg), cfg)
            except UserError as e:
                error = str(e)
            except Exception as e:  # a user's factory: its traceback here, one line on every rank
                log.exception("the dataset factory %s failed", cfg.data.name)
                error = f"data.name={cfg.data.name}: the factory raised {first_line(e)}"
        raise_if_any(error, world)  # also the barrier between the turns
    return result


def check_dataset(result, cfg: Config) -> tuple[Dataset, DataInfo]:
    """The dataset contract: (dataset, DataInfo); dataset[i] = (image [C, H, W] in [-1, 1],
    label int in [0, num_classes)); at least one global batch of items."""
    who = f"data.name={cfg.data.name}"
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        raise UserError(f"{who}: the factory must return (dataset, DataInfo), got {type(result).__name__}")
    ds, info = result
    if isinstance(info, dict):
        info = DataInfo(**info)
    if not isinstance(info, DataInfo):
        raise UserError(f"{who}: the factory's second value must be a DataInfo(num_classes, channels, image_size)")
    if len(ds) < cfg.train.batch_size:
        raise UserError(f"train.batch_size: {cfg.train.batch_size} is larger than the dataset "
                        f"({len(ds)} images in {cfg.data.name})")
    item = ds[0]
    image, label = item if isinstance(item, (tuple, list)) and len(item) == 2 else (item, None)
    want = (info.channels, info.image_size, info.image_size)
    if not isinstance(image, torch.Tensor) or tuple(image.shape) != want:
        raise UserError(f"{who}: dataset[0] must be (image {list(want)}, label) as its DataInfo says; got "
                        f"{list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
    if image.min() < -1.0 - 1e-3 or image.max() > 1.0 + 1e-3:
        raise UserError(f"{who}: images must be in [-1, 1], dataset[0] has values in "
                        f"[{image.min().item():.3g}, {image.max().item():.3g}]")
    if not isinstance(label, (int, torch.Tensor)) or not 0 <= int(label) < max(info.num_classes, 1):
        raise UserError(f"{who}: dataset[0]'s label must be an int in [0, {max(info.num_classes, 1)}), got {label!r}")
    return ds, info
