"""Datasets as (image in [-1, 1], label), sharded by DistributedSampler, resumable mid-epoch.

Sharding follows the equivalence principle: rank r of W holds global positions r, r+W, ...
of each epoch's permutation (DistributedSampler's layout), and every global batch of B images
is split into W local batches of B/W. Epoch e's permutation depends on (seed, e) only, so a
W-rank run sees exactly the images a 1-rank run sees, step for step.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset
from torchvision import datasets, transforms

from gan_dist.config import Config
from gan_dist.distributed import World
from gan_dist.errors import UserError


@dataclass
class DataInfo:
    num_classes: int
    channels: int
    image_size: int


def _to_unit_range(channels: int) -> list:
    return [transforms.ToTensor(), transforms.Normalize([0.5] * channels, [0.5] * channels)]


def _digits(cfg: Config) -> tuple[Dataset, DataInfo]:
    """scikit-learn's bundled handwritten digits: 1,797 real 8x8 images, no download."""
    from sklearn.datasets import load_digits
    from torchvision.transforms.v2 import functional as F

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [N,1,8,8] in [0,1]
    if cfg.data.image_size != 8:
        images = F.resize(images, [cfg.data.image_size] * 2, antialias=True).clamp(0.0, 1.0)
    labels = torch.as_tensor(digits.target, dtype=torch.long)
    return TensorDataset(images * 2.0 - 1.0, labels), DataInfo(10, 1, cfg.data.image_size)


def _fashion_mnist(cfg: Config) -> tuple[Dataset, DataInfo]:
    size = cfg.data.image_size
    tf = ([transforms.Resize(size, antialias=True)] if size != 28 else []) + _to_unit_range(1)
    root = Path(cfg.data.root)
    if not cfg.data.download and not root.is_dir():
        raise UserError(f"data.root: {root} does not exist (set data.download=true to fetch Fashion-MNIST)")
    try:
        ds = datasets.FashionMNIST(str(root), train=True, download=cfg.data.download,
                                   transform=transforms.Compose(tf))
    except RuntimeError as e:  # torchvision: "Dataset not found. You can use download=True ..."
        raise UserError(f"data.root: no Fashion-MNIST in {root} ({e}); "
                        "set data.download=true or point data.root at its parent folder") from None
    return ds, DataInfo(10, 1, size)


def _image_folder(cfg: Config) -> tuple[Dataset, DataInfo]:
    """One subfolder per class (the book's glasses/G and glasses/NoG)."""
    root = Path(cfg.data.root)
    if not root.is_dir():
        raise UserError(f"data.root: {root} does not exist (expected one subfolder of images per class)")
    c, size = cfg.data.channels, cfg.data.image_size
    tf = ([transforms.Grayscale(1)] if c == 1 else []) + [
        transforms.Resize(size, antialias=True), transforms.CenterCrop(size)] + _to_unit_range(c)
    try:
        ds = datasets.ImageFolder(str(root), transform=transforms.Compose(tf))
    except (FileNotFoundError, RuntimeError) as e:
        raise UserError(f"data.root: {root}: {e}") from None
    return ds, DataInfo(len(ds.classes), c, size)


def build_dataset(cfg: Config) -> tuple[Dataset, DataInfo]:
    builder = {"digits": _digits, "fashion_mnist": _fashion_mnist, "image_folder": _image_folder}
    ds, info = builder[cfg.data.name](cfg)
    if len(ds) < cfg.train.batch_size:
        raise UserError(f"train.batch_size: {cfg.train.batch_size} is larger than the dataset "
                        f"({len(ds)} images in {cfg.data.name})")
    return ds, info


class ResumableSampler(DistributedSampler):
    """DistributedSampler (drop_last: every rank gets the same count) that can start
    `start` samples into its shard, so a resumed run continues inside the epoch."""

    def __init__(self, dataset: Dataset, world: World, seed: int):
        super().__init__(dataset, num_replicas=world.world_size, rank=world.rank,
                         shuffle=True, seed=seed, drop_last=True)
        self.start = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


def materialize(dataset: Dataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole dataset as two device tensors (data.on_device: digits, Fashion-MNIST fit)."""
    if isinstance(dataset, TensorDataset):
        images, labels = dataset.tensors
    else:
        items = [dataset[i] for i in range(len(dataset))]
        images = torch.stack([x for x, _ in items])
        labels = torch.as_tensor([y for _, y in items], dtype=torch.long)
    return images.to(device), labels.to(device)


class BatchStream:
    """An endless stream of local batches; its position (epoch, batch in epoch) is all a
    checkpoint needs to resume exactly."""

    def __init__(self, dataset: Dataset, cfg: Config, world: World, epoch: int = 0, position: int = 0):
        self.local_batch = cfg.train.batch_size // world.world_size
        self.per_epoch = len(dataset) // cfg.train.batch_size  # global batches per epoch, any W
        self.sampler = ResumableSampler(dataset, world, cfg.seed)
        self.device = world.device
        self.on_device = materialize(dataset, world.device) if cfg.data.on_device else None
        workers = cfg.data.num_workers
        self.loader = None if self.on_device else DataLoader(dataset, batch_size=self.local_batch, sampler=self.sampler,
                                 drop_last=True, num_workers=workers, persistent_workers=workers > 0,
                                 pin_memory=world.device.type == "cuda",
                                 # its own generator: starting an iterator (resume, new epoch) must
                                 # not draw from the global RNG that dropout uses
                                 generator=torch.Generator().manual_seed(cfg.seed))
        self.epoch, self.position = epoch, position
        self._it = None

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._it is None:
            self.sampler.set_epoch(self.epoch)
            self.sampler.start = self.position * self.local_batch
            if self.on_device:  # the epoch's indices go to the device once; batches are slices
                self._it = iter(torch.tensor(list(self.sampler), device=self.device).split(self.local_batch))
            else:
                self._it = iter(self.loader)
        if self.on_device:
            index = next(self._it)
            images, labels = self.on_device[0][index], self.on_device[1][index]
        else:
            images, labels = next(self._it)
        self.position += 1
        if self.position == self.per_epoch:
            self.epoch, self.position, self._it = self.epoch + 1, 0, None
        return images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
