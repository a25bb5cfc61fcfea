"""data.name=zip: one uncompressed zip of images with a dataset.json, the layout of
stylegan2-ada's and stylegan3's dataset_tool (a zip made by theirs loads as it is; gan_dist's
own tool writes the same): members 00000/img00000000.png, ... in sorted order, and
{"labels": [[member, class], ...] or null} (gan_dist adds "class_names", which they ignore).

One file instead of 100,000 on a network filesystem: the member list and every member's
offset come from the zip's central directory, read once per rank at start-up (no directory
scan) through the one descriptor every read then uses (os.pread, stateless: forked workers
share it; spawned ones reopen and check the file is the one listed). The image size and
channels are the zip's: dataset.json's "image_size" and "channels" where it says them (gan_dist's
tool writes them), else the majority of a sample of members (data.image_size / data.channels
left unset take them; set to other values, one line). Items are uint8 [C, S, S], 16-bit members
scaled to 8 bits; a member that does not decode, or has another size, is skipped with a warning
naming it (the first few; the next one takes its place, the same on every rank); macOS's
__MACOSX/ and ._ members are not images. With data.decode=device the loader delivers the members' bytes (Encoded) and the loop
decodes each batch on the device (torchvision.io.decode_jpeg on CUDA; on the CPU the same
path runs, tested)."""
from __future__ import annotations

import io
import json
import logging
import os
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Optional

import torch
from PIL import Image
from torch.utils.data import Dataset

from gan_dist.config import Config, is_set
from gan_dist.data.datasets import DataInfo
from gan_dist.data.images import GRAYSCALE_MODES, Skips, decode, is_image
from gan_dist.errors import UserError, first_line

log = logging.getLogger("gan_dist")
META = "dataset.json"


def parse_meta(raw: bytes, where: str) -> dict:
    """A dataset.json's content as the mapping it must be, or one line naming the file and what
    is wrong with it (not UTF-8, not JSON, not an object)."""
    try:
        meta = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{where}: dataset.json is not UTF-8 text (byte {e.start})") from None
    except ValueError as e:
        raise UserError(f"{where}: dataset.json is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise UserError(f"{where}: dataset.json holds a JSON {type(meta).__name__}, not an object "
                        '({"labels": [[file name, label], ...] or null})')
    return meta


def read_labels(meta: Optional[dict], names: list[str], where: str) -> tuple[Optional[list[int]], list[str]]:
    """(a class per image, in `names` order, or None: unconditional; class names) from a
    dataset.json: {"labels": [[name, label], ...] or null, "class_names": [...] (optional)}.
    A one-hot vector counts as its class; other vectors are refused (class labels only). The
    class names, when given, are strings, one per class at least; without them, classes that no
    image has (a typo such as 1000 among 0-9 makes a 1001-class model) are said in one warning."""
    if not meta or meta.get("labels") is None:
        return None, []
    try:
        by_name = {str(n).replace("\\", "/"): v for n, v in meta["labels"]}
    except (TypeError, ValueError):
        raise UserError(f"{where}: dataset.json's labels are not [[file name, label], ...]") from None
    missing = [n for n in names if n not in by_name]
    if missing:
        raise UserError(f"{where}: dataset.json has no label for {missing[0]} ({len(missing)} image(s) without one)")
    labels = []
    for n in names:
        v = by_name[n]
        if isinstance(v, list) and sorted(v) == [0] * (len(v) - 1) + [1]:
            v = v.index(1)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise UserError(f"{where}: the label of {n} is {v!r}; gan_dist takes class labels (an int >= 0, "
                            "or a one-hot list)")
        labels.append(v)
    classes = meta.get("class_names") or []
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise UserError(f"{where}: dataset.json's class_names must be a list of strings, got {classes!r:.80}")
    count = max(labels) + 1 if labels else 0
    if classes and len(classes) < count:
        raise UserError(f"{where}: dataset.json names {len(classes)} classes but its labels go up to {count - 1}")
    unused = sorted(set(range(count)) - set(labels))
    if unused and not classes:  # named classes may lack images (a subset); unnamed gaps look like typos
        log.warning("%s: the labels leave %d of the classes 0-%d without an image (%s%s): the model gets %d classes "
                    "all the same (a typo in dataset.json?)", where, len(unused), count - 1,
                    ", ".join(map(str, unused[:5])), ", ..." if len(unused) > 5 else "", max(count, len(classes)))
    return labels, classes


def _identity(fd: int) -> tuple:
    """What tells one file from its replacement: device, inode, size, modification time."""
    st = os.fstat(fd)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class ZipImages(Dataset):
    MAX_CONSECUTIVE = 100
    file_backed = True  # data.num_workers=auto gives it loader workers

    SAMPLE = 16  # members decoded at start-up when dataset.json does not say the size and channels

    def __init__(self, path: Path, channels: Optional[int] = None):
        self.path = Path(path)
        self._skips = Skips("")
        # One descriptor for the listing and every read (pread is stateless; forked workers share
        # it), and the file's identity: a process that must reopen (spawn) sees a replaced zip.
        self._fd, self._pid = None, os.getpid()
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
            self._identity = _identity(self._fd)
            with zipfile.ZipFile(os.fdopen(os.dup(self._fd), "rb")) as z:
                infos = {i.filename: i for i in z.infolist()}
                raw = z.read(META) if META in infos else None
        except (OSError, zipfile.BadZipFile, ValueError) as e:
            raise UserError(f"data.root: {self.path} is not a readable zip of images ({first_line(e)})") from None
        where = f"data.root: {self.path}"
        meta = parse_meta(raw, where) if raw is not None else None
        self.names = sorted(n for n in infos if is_image(n))  # macOS's __MACOSX/ and ._ members are none
        if not self.names:
            raise UserError(f"{where} holds no images")
        # (offset of the local header, stored size, compression) per image: one positioned read each
        self._where = [(infos[n].header_offset, infos[n].compress_size, infos[n].compress_type) for n in self.names]
        labels, self.classes = read_labels(meta, self.names, where)
        self.targets = labels if labels is not None else [0] * len(self.names)
        self.num_classes = max(len(self.classes), max(self.targets) + 1) if labels is not None else 0
        own_size, own_channels = self._shape(meta or {}, where)
        if channels is not None and channels != own_channels:
            raise UserError(f"data.channels={channels}, but {self.path} holds {own_channels}-channel images: leave "
                            "data.channels unset or make the zip again (python -m gan_dist.dataset_tool --channels "
                            f"{channels})")
        self.size, self.channels = own_size, own_channels

    def _shape(self, meta: dict, where: str) -> tuple[int, int]:
        """(size, channels) of the zip's images: what dataset.json says (gan_dist's tool writes
        them), else the majority of a sample of members spread over the zip (the outliers named;
        they are skipped when read). Members that do not decode are left out of the vote."""
        size, channels = meta.get("image_size"), meta.get("channels")
        if isinstance(size, int) and size > 0 and channels in (1, 3):
            return size, channels
        votes: dict = {}
        step = max(1, len(self.names) // self.SAMPLE)
        sample = sorted(set(range(min(4, len(self.names)))) | set(range(0, len(self.names), step)))  # the first too
        for i in sample:
            try:
                with Image.open(io.BytesIO(self._bytes(i).numpy().tobytes())) as img:  # as stored: L, LA, RGB...
                    key = (img.width, img.height, 1 if img.mode in GRAYSCALE_MODES else 3)
            except Exception:  # noqa: BLE001 (a bad member: the reads skip it, the vote leaves it out)
                continue
            votes.setdefault(key, []).append(self.names[i])
        if not votes:
            raise UserError(f"{where}: none of the {len(sample)} members sampled decodes "
                            f"({self.names[0]}, ...): is it a zip of images?")
        (width, height, channels), _ = max(votes.items(), key=lambda kv: len(kv[1]))
        if width != height:
            raise UserError(f"{where}: its images are {width}x{height}; images must be square (make the zip with "
                            "python -m gan_dist.dataset_tool --resolution N)")
        outliers = [n for key, names in votes.items() if key[:2] != (width, height) for n in names]
        if outliers:
            log.warning("%s: images are %dx%d, but %s (and maybe more) are not: they are skipped", where, width,
                        height, ", ".join(outliers[:3]))
        return width, channels

    def __len__(self) -> int:
        return len(self.names)

    def _bytes(self, index: int) -> torch.Tensor:
        """The member's file, read at its offset (a stored member as it is, a deflated one inflated)."""
        if self._fd is None:  # unpickled (spawn, forkserver workers): reopened, and checked to be the same file
            fd = os.open(self.path, os.O_RDONLY)
            if _identity(fd) != self._identity:
                os.close(fd)
                raise UserError(f"data.root: {self.path} changed since start-up (replaced or rewritten): restart the "
                                "run once it stays put")
            self._fd, self._pid = fd, os.getpid()
        offset, size, method = self._where[index]
        header = os.pread(self._fd, 30, offset)  # the local header: its name and extra field lengths
        if header[:4] != b"PK\x03\x04":
            raise ValueError(f"no local header at offset {offset}")
        start = offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
        data = os.pread(self._fd, size, start)
        if method == zipfile.ZIP_DEFLATED:
            data = zlib.decompress(data, -15)
        elif method != zipfile.ZIP_STORED:
            raise ValueError(f"compression method {method} (gan_dist reads stored and deflated members)")
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)

    def __getitem__(self, index: int):
        return self.first_good(index, self._item)

    def _item(self, i: int):
        image = decode(self._bytes(i), self.channels)
        if tuple(image.shape) != (self.channels, self.size, self.size):
            raise ValueError(f"it is {image.shape[-1]}x{image.shape[-2]}, the zip's images {self.size}x{self.size}")
        return image, self.targets[i]

    def first_good(self, index: int, read):
        """read(i) for the first member from `index` on that it does not fail on: a member whose
        bytes cannot be read, that does not decode or has another size is skipped, the next one
        taking its place. A rule of the index alone, so the same on every rank and on both
        decoding paths (data.decode=cpu and device); each skipped member warned once, counted."""
        for attempt in range(min(len(self), self.MAX_CONSECUTIVE)):
            i = (index + attempt) % len(self)
            try:
                return read(i)
            except UserError:  # the zip itself (replaced since start-up): no member can be read
                raise
            except Exception as e:  # a corrupt member, another size
                self._skips.skip(f"{self.names[i]} in {self.path}", e)
        raise UserError(f"data.root: {self.MAX_CONSECUTIVE} images in a row of {self.path} do not decode")

    def __getstate__(self) -> dict:  # DataLoader workers under spawn: never pickle an open file
        return {**self.__dict__, "_fd": None, "_pid": None}

    def __del__(self):
        if getattr(self, "_fd", None) is not None and getattr(self, "_pid", None) == os.getpid():
            os.close(self._fd)


class Encoded(Dataset):
    """data.decode=device: a ZipImages' items as (the member's index, its bytes, label), batched
    as lists (collate); the loop decodes them on the device (decode_batch). A member whose bytes
    cannot be read is skipped by ZipImages' rule (first_good)."""

    def __init__(self, images: ZipImages):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        images = self.images
        return images.first_good(index, lambda i: (i, images._bytes(i), images.targets[i]))

    @staticmethod
    def collate(items):
        index, data, labels = zip(*items)
        return list(index), list(data), torch.as_tensor(labels)


def decode_batch(images: ZipImages, index: list[int], data: list[torch.Tensor], labels: torch.Tensor,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of a batch of JPEG members decoded on `device` (nvjpeg on CUDA); a batch
    with a member that does not decode is decoded item by item on the CPU instead (skipping it,
    and taking the next member's label with its image, as ZipImages does)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders (images.decode)
            warnings.simplefilter("ignore", DeprecationWarning)
            out = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        if all(tuple(x.shape) == (3, images.size, images.size) for x in out):
            return torch.stack(out), labels
    except RuntimeError:
        pass
    items = [images[i] for i in index]
    return torch.stack([x for x, _ in items]).to(device), torch.as_tensor([y for _, y in items], dtype=labels.dtype)


def zip_images(cfg: Config):
    """The registry's factory: (ZipImages, DataInfo with the zip's classes, channels and size)."""
    ds = ZipImages(Path(cfg.data.root).expanduser(), channels=cfg.data.channels if is_set(cfg, "data.channels") else None)
    if cfg.data.decode == "device" and not (ds.channels == 3 and ds.names[0].lower().endswith((".jpg", ".jpeg"))):
        raise UserError("data.decode=device: decodes JPEG zips as RGB on the device (nvjpeg); this zip holds "
                        f"{ds.names[0].rsplit('.', 1)[-1]} images with {ds.channels} channel(s): use data.decode=cpu "
                        "(or make the zip with python -m gan_dist.dataset_tool --format jpg --channels 3)")
    return ds, DataInfo(ds.num_classes, ds.channels, ds.size)
