"""Sharding and the resumable stream of batches (the datasets themselves: datasets.py).

Sharding follows the equivalence principle: each epoch's permutation depends on (seed, epoch)
only (DistributedSampler's), the epoch is cut into global batches of B images, and rank r of W
holds rows r, r+W, ... of every global batch. So a W-rank run sees exactly the images a 1-rank
run sees, step for step. The position in the epoch is kept in SAMPLES: a run resumed with
another batch size or world size continues the same epoch with the samples not yet seen.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from gan_dist.config import Config
from gan_dist.data.images import to_unit
from gan_dist.data.zipdata import Encoded, ZipImages, decode_batch
from gan_dist.distributed import World, default_threads, rows
from gan_dist.errors import UserError

# Slurm (preemption, scancel, requeue), torchrun's agent and a terminal's Ctrl-C signal every
# process of the job, DataLoader workers included. They are the main process's to handle.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)


def ignore_stop_signals(worker_id: int) -> None:
    """worker_init_fn: a worker killed by SIGTERM makes its rank raise "DataLoader worker is
    killed by signal" before the ranks can agree on a stop and save. Workers ignore the stop
    signals; the main process stops every rank at one step and saves. (A worker still exits
    when its rank does: DataLoader's watchdog, and Slurm's SIGKILL.)"""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextmanager
def stop_signals_blocked():
    """Workers start with the stop signals blocked (fork copies the mask, exec under spawn and
    forkserver keeps it, and so does the forkserver itself), so none dies of a signal before
    ignore_stop_signals runs. This process receives what arrived meanwhile once unblocked."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class ResumableSampler(DistributedSampler):
    """DistributedSampler's epoch permutation, sharded from `start` (in samples): the samples
    not yet seen are cut into whole global batches of `batch_size` and rank r takes rows r, r+W,
    ... of each. At start 0 this is DistributedSampler's own layout (tested)."""

    def __init__(self, dataset: Dataset, world: World, seed: int, batch_size: int):
        super().__init__(dataset, num_replicas=world.world_size, rank=world.rank,
                         shuffle=True, seed=seed, drop_last=True)
        self.world, self.batch_size, self.start = world, batch_size, 0

    def batches_left(self) -> int:
        return (len(self.dataset) - self.start) // self.batch_size

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)  # as DistributedSampler: the permutation of (seed, epoch)
        perm = torch.randperm(len(self.dataset), generator=g)
        rest = perm[self.start:self.start + self.batches_left() * self.batch_size]
        return iter(rest[rows(self.world)].tolist())

    def __len__(self) -> int:
        return self.batches_left() * self.batch_size // self.num_replicas


def materialize(dataset: Dataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole dataset as two device tensors (data.on_device: digits, Fashion-MNIST fit), the
    images as the dataset gives them (uint8 pixels stay uint8: 4x less memory)."""
    if isinstance(dataset, TensorDataset):
        images, labels = dataset.tensors
    else:
        items = [dataset[i] for i in range(len(dataset))]
        images = torch.stack([x for x, _ in items])
        labels = torch.as_tensor([y for _, y in items], dtype=torch.long)
    return images.to(device), labels.to(device)


def num_workers(cfg: Config, dataset: Dataset, world: World) -> int:
    """data.num_workers, or for auto: 0 for datasets in memory; for file-backed ones (a folder,
    a zip: decoding per item) on CUDA the CPUs of this rank but one (one drives the GPU), at
    most 8; on the CPU 0: there the loader in the main process delivers 50-120x what training
    consumes (the loader benchmark against `bench` of the glasses config at 64x64, docs/performance.md),
    and a worker would only take a core from the training threads."""
    if cfg.data.num_workers != "auto":
        return int(cfg.data.num_workers)
    if not getattr(dataset, "file_backed", False) or world.device.type != "cuda":
        return 0
    return max(1, min(8, default_threads(world) - 1))


class BatchStream:
    """An endless stream of local batches; its position (epoch, samples seen in the epoch) is
    all a checkpoint needs to resume exactly, under any batch size or world size."""

    def __init__(self, dataset: Dataset, cfg: Config, world: World, epoch: int = 0, position: int = 0):
        self.batch_size = cfg.train.batch_size
        self.local_batch = self.batch_size // world.world_size
        self.size = len(dataset)
        self.sampler = ResumableSampler(dataset, world, cfg.seed, self.batch_size)
        self.device = world.device
        # train.channels_last: the critic's real images in the layout of its weights (fakes come so)
        self.memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        self.on_device = materialize(dataset, world.device) if cfg.data.on_device else None
        self.workers = 0 if self.on_device else num_workers(cfg, dataset, world)
        self.images = dataset  # a ZipImages whose batches arrive encoded (data.decode=device)
        encoded = cfg.data.decode == "device" and isinstance(dataset, ZipImages)
        self.loader = None if self.on_device else DataLoader(
            Encoded(dataset) if encoded else dataset, batch_size=self.local_batch, sampler=self.sampler,
            drop_last=True, num_workers=self.workers, persistent_workers=self.workers > 0,
            pin_memory=world.device.type == "cuda", collate_fn=Encoded.collate if encoded else None,
            worker_init_fn=ignore_stop_signals if self.workers else None,
            multiprocessing_context=(cfg.data.start_method or None) if self.workers else None,
            # its own generator: starting an iterator (resume, new epoch) must not draw from
            # the global RNG that dropout uses
            generator=torch.Generator().manual_seed(cfg.seed))
        self.encoded = encoded
        self._it = None
        self.load_state_dict({"epoch": epoch, "samples_in_epoch": position})

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "samples_in_epoch": self.position}

    def load_state_dict(self, state: dict) -> None:
        epoch, position = int(state["epoch"]), int(state["samples_in_epoch"])
        if not 0 <= position <= self.size:
            raise ValueError(f"data position {position} is outside the epoch of {self.size} images "
                             "(was the dataset changed?)")
        self.epoch, self.position, self._it = epoch, position, None
        if position + self.batch_size > self.size:  # too few samples left for a batch of this size
            self.epoch, self.position = epoch + 1, 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._it is None:
            self.sampler.set_epoch(self.epoch)
            self.sampler.start = self.position
            if self.on_device:  # the epoch's indices go to the device once; batches are slices
                self._it = iter(torch.tensor(list(self.sampler), device=self.device).split(self.local_batch))
            else:
                with stop_signals_blocked():  # starts the workers (once: they persist)
                    self._it = iter(self.loader)
        if self.on_device:
            index = next(self._it)
            images, labels = self.on_device[0][index], self.on_device[1][index]
        else:
            try:
                batch = next(self._it)
            except UserError as e:  # raised in a worker: DataLoader re-raises it with the traceback
                raise UserError(str(e).strip().splitlines()[-1].split("UserError: ", 1)[-1]) from None
            images, labels = decode_batch(self.images, *batch, self.device) if self.encoded else batch
        self.position += self.batch_size
        if self.position + self.batch_size > self.size:
            self.epoch, self.position, self._it = self.epoch + 1, 0, None
        # uint8 pixels cross to the device, and become floats in [-1, 1] there
        images = images.to(self.device, non_blocking=True)
        if images.dim() == 4:
            images = images.contiguous(memory_format=self.memory_format)
        return to_unit(images), labels.to(self.device, non_blocking=True)

    def close(self) -> None:
        """Stop the workers now (persistent workers otherwise live until garbage collection)."""
        it, self._it = getattr(self.loader, "_iterator", None) or self._it, None
        if hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
