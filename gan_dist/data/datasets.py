"""The datasets as (image [C, H, W], label): scikit-learn's digits (embedded, no download; float
in [-1, 1]), Fashion-MNIST and MNIST (torchvision, IDX files; uint8); ImageFolder and zip live in
folder.py and zipdata.py. The dataset contract, its check, and the factory's turns across
ranks (build_dataset).

Bad files end in one line naming the file, before any training: a (Fashion-)MNIST IDX file
that is empty, not IDX, truncated, or whose image and label counts differ."""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.utils.data import Dataset, TensorDataset

from gan_dist import registry
from gan_dist.config import Config, is_set, validate
from gan_dist.data.images import to_tensor
from gan_dist.distributed import World, raise_if_any
from gan_dist.errors import UserError, first_line

log = logging.getLogger("gan_dist")


@dataclass
class DataInfo:
    num_classes: int
    channels: int
    image_size: int


def memory_bytes() -> int:
    """This machine's physical memory (what a dataset held in memory can use at most)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def digits_arrays():
    """(pixels [1797, 64] in 0..16, labels [1797]): load_digits' own file, read without importing
    scikit-learn (3 s of scipy for every rank of every run); load_digits where the file moved."""
    import importlib.util

    import numpy as np

    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is not None and path.is_file():
        data = np.loadtxt(path, delimiter=",")
        return data[:, :-1], data[:, -1].astype(int)
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data, d.target


def digits(cfg: Config) -> tuple[Dataset, DataInfo]:
    """scikit-learn's bundled handwritten digits: 1,797 real 8x8 images, no download."""
    pixels, target = digits_arrays()
    size = cfg.data.image_size
    need = len(pixels) * size * size * 4 * 2  # float32 resized copy, and its [-1, 1] copy
    if need > memory_bytes():
        raise UserError(f"data.image_size: the digits resized to {size}x{size} need {need / 2**30:.0f} GiB, "
                        f"more than this machine's {memory_bytes() / 2**30:.0f} GiB")
    images = torch.as_tensor(pixels, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0  # [N,1,8,8] in [0,1]
    if size != 8:  # what torchvision's Resize(antialias=True) computes on a tensor, bitwise
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                                                 antialias=True).clamp(0.0, 1.0)
    labels = torch.as_tensor(target, dtype=torch.long)
    return TensorDataset(images * 2.0 - 1.0, labels), DataInfo(10, 1, size)


# ---- Fashion-MNIST and MNIST ------------------------------------------------------------------------
def idx_files(split: str = "train") -> dict:
    """The IDX files of a split ("train", or "t10k": (Fashion-)MNIST's test split): name -> (magic, dims)."""
    return {f"{split}-images-idx3-ubyte": (0x0803, 3), f"{split}-labels-idx1-ubyte": (0x0801, 1)}


IDX_FILES = idx_files()


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
        raise UserError(f"data.root: {path} holds {shape[1]}x{shape[2]} images, (Fashion-)MNIST's are 28x28")
    return shape[0]


# torchvision's class, its folder under data.root, the name in messages
IDX_DATASETS = {"fashion_mnist": ("FashionMNIST", "Fashion-MNIST"), "mnist": ("MNIST", "MNIST")}


def idx_dataset(cfg: Config, name: str, split: str = "train") -> tuple[Dataset, DataInfo]:
    """Fashion-MNIST or MNIST (`name`) from their IDX files in data.root/<FashionMNIST|MNIST>/raw,
    read by torchvision; the files are checked first (one line naming a bad file). split:
    "train", or "t10k" (the test split, which evaluation's eval.real reads)."""
    from torchvision import datasets

    folder, title = IDX_DATASETS[name]
    size = cfg.data.image_size
    root = Path(cfg.data.root)
    if cfg.data.download:  # build_dataset runs this on rank 0 first: one download per folder
        try:
            getattr(datasets, folder)(str(root), train=True, download=True)
        except Exception as e:  # URLError, socket timeouts, torchvision's RuntimeError, checksum...
            raise UserError(f"data.download: could not download {title} into {root} "
                            f"({first_line(e)})") from None
    elif not root.is_dir():
        raise UserError(f"data.root: {root} does not exist (set data.download=true to fetch {title})")
    raw = root / folder / "raw"
    files = idx_files(split)
    missing = [name for name in files if not (raw / name).is_file()]
    if missing:
        raise UserError(f"data.root: no {title} in {root} ({raw / missing[0]} not found); "
                        f"set data.download=true or point data.root at the folder holding {folder}/raw")
    counts = {name: check_idx(raw / name, *spec) for name, spec in files.items()}
    images, labels = counts.values()
    if images != labels:
        raise UserError(f"data.root: {raw} holds {images} images but {labels} labels: the files do not belong together")
    from torchvision.datasets.mnist import read_image_file, read_label_file

    # torchvision's dataset class also demands the t10k files, which training never reads
    ds = IdxImages(read_image_file(str(raw / f"{split}-images-idx3-ubyte")),
                   read_label_file(str(raw / f"{split}-labels-idx1-ubyte")), size)
    if int(ds.targets.max()) >= 10:
        raise UserError(f"data.root: {raw / f'{split}-labels-idx1-ubyte'} has label {int(ds.targets.max())}; "
                        f"{title}'s are 0-9")
    return ds, DataInfo(10, 1, size)


def fashion_mnist(cfg: Config) -> tuple[Dataset, DataInfo]:
    return idx_dataset(cfg, "fashion_mnist")


def mnist(cfg: Config) -> tuple[Dataset, DataInfo]:
    return idx_dataset(cfg, "mnist")


class IdxImages(Dataset):
    """(uint8 [1, S, S], label) from IDX arrays, as torchvision's MNIST item (PIL "L", resized).
    Picklable (no lambda): spawn and forkserver workers receive the dataset pickled."""

    def __init__(self, data: torch.Tensor, targets: torch.Tensor, size: int):
        from torchvision import transforms

        self.data, self.targets = data, targets
        self.resize = transforms.Resize(size, antialias=True) if size != data.shape[-1] else None

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        from PIL import Image

        img = Image.fromarray(self.data[i].numpy(), mode="L")
        return to_tensor(self.resize(img) if self.resize else img, 1), int(self.targets[i])


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
            except Exception as e:  # its traceback here, one line on every rank
                own = cfg.data.name not in registry.DATASETS
                log.exception("%s %s failed", "the dataset factory" if own else "the built-in dataset", cfg.data.name)
                error = (f"data.name={cfg.data.name}: " + ("the factory raised " if own else "reading data.root failed: ")
                         + first_line(e))
        raise_if_any(error, world)  # also the barrier between the turns
    return result


def held_out_real(cfg: Config, world: World, train_info: DataInfo, factory: Optional[Callable] = None) -> Dataset:
    """eval.real: the real images evaluation scores against instead of halves of the training
    set -- data.name's reader on the root eval.real names (for (Fashion-)MNIST its t10k test
    files where present), which the generator never trains on. Its shape and classes must
    be the training data's; errors name eval.real."""
    root = cfg.eval.real
    if cfg.data.name == "digits" and factory is None:
        raise UserError("eval.real: data.name=digits is the embedded set, read from no root; leave eval.real empty")
    held = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=root, download=False),
                               train=dataclasses.replace(cfg.train, batch_size=1))  # no batch drawn from it
    try:
        if cfg.data.name in IDX_DATASETS and factory is None:
            raw = Path(root) / IDX_DATASETS[cfg.data.name][0] / "raw"
            split = "t10k" if (raw / "t10k-images-idx3-ubyte").is_file() else "train"
            dataset, info = check_dataset(idx_dataset(held, cfg.data.name, split), held)
        else:
            dataset, info = build_dataset(held, world, factory)
    except UserError as e:
        raise UserError("eval.real: " + str(e).removeprefix("data.root: ")) from None
    if (info.channels, info.image_size, info.num_classes) != \
            (train_info.channels, train_info.image_size, train_info.num_classes):
        raise UserError(f"eval.real: {root} holds {info.channels}-channel {info.image_size}px images in "
                        f"{info.num_classes} classes; the training data's are {train_info.channels}-channel "
                        f"{train_info.image_size}px in {train_info.num_classes}")
    return dataset


def check_dataset(result, cfg: Config) -> tuple[Dataset, DataInfo]:
    """The dataset contract: (dataset, DataInfo); dataset[i] = (image [C, H, W], label int in
    [0, num_classes)), the image float in [-1, 1] or uint8 pixels; at least one global batch
    of items. data.image_size and data.channels left unset take the DataInfo's values (a zip's
    own); set to others, one line."""
    who = f"data.name={cfg.data.name}"
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        raise UserError(f"{who}: the factory must return (dataset, DataInfo), got {type(result).__name__}")
    ds, info = result
    if isinstance(info, dict):
        info = DataInfo(**info)
    if not isinstance(info, DataInfo):
        raise UserError(f"{who}: the factory's second value must be a DataInfo(num_classes, channels, image_size)")
    for key, value in (("data.image_size", info.image_size), ("data.channels", info.channels)):
        section, name = key.split(".")
        if getattr(cfg.data, name) != value:
            if is_set(cfg, key):
                raise UserError(f"{key}={getattr(cfg.data, name)}, but {cfg.data.root or who} holds images of "
                                f"{name.replace('_', ' ')} {value}: leave {key} unset or make the data again")
            setattr(cfg.data, name, value)
            try:  # the dataset's size must suit the model as a set value must (DCGAN: 2^k)
                validate(cfg)
            except UserError as e:
                raise UserError(f"{e} (the images of {cfg.data.root or who})") from None
    if len(ds) < cfg.train.batch_size:
        raise UserError(f"train.batch_size: {cfg.train.batch_size} is larger than the dataset "
                        f"({len(ds)} images in {cfg.data.name})")
    item = ds[0]
    image, label = item if isinstance(item, (tuple, list)) and len(item) == 2 else (item, None)
    want = (info.channels, info.image_size, info.image_size)
    if not isinstance(image, torch.Tensor) or tuple(image.shape) != want:
        raise UserError(f"{who}: dataset[0] must be (image {list(want)}, label) as its DataInfo says; got "
                        f"{list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
    if image.dtype != torch.uint8 and (image.min() < -1.0 - 1e-3 or image.max() > 1.0 + 1e-3):
        raise UserError(f"{who}: images must be in [-1, 1] (or uint8 pixels), dataset[0] has values in "
                        f"[{image.min().item():.3g}, {image.max().item():.3g}]")
    if not isinstance(label, (int, torch.Tensor)) or not 0 <= int(label) < max(info.num_classes, 1):
        raise UserError(f"{who}: dataset[0]'s label must be an int in [0, {max(info.num_classes, 1)}), got {label!r}")
    return ds, info


PIXEL_SAMPLE = 64  # items whose pixels the fingerprint hashes: spread over the dataset, never a pass over all


def fingerprint(dataset: Dataset, info: DataInfo) -> dict:
    """What identifies a dataset across resumes: count, image size, channels, classes, the
    labels in order (hashed; None where the dataset does not say them without loading every
    item) and the pixels of PIXEL_SAMPLE items spread over it (hashed: what the channel
    conversion, the resize and their order made of them). A resume may switch data.name (an
    ImageFolder and the zip made from it) only when all of these agree."""
    labels = getattr(dataset, "targets", None)
    if labels is None and isinstance(dataset, TensorDataset) and len(dataset.tensors) > 1:
        labels = dataset.tensors[1]
    digest = None
    if labels is not None:
        digest = hashlib.sha256(torch.as_tensor(list(labels) if not isinstance(labels, torch.Tensor) else labels,
                                                dtype=torch.int64).numpy().tobytes()).hexdigest()[:16]
    return {"count": len(dataset), "image_size": info.image_size, "channels": info.channels,
            "num_classes": info.num_classes, "labels": digest, "pixels": pixel_digest(dataset)}


def pixel_digest(dataset: Dataset) -> Optional[str]:
    """A hash of PIXEL_SAMPLE items' images (dtype, shape, bytes), or None when one cannot be read."""
    n = len(dataset)
    h = hashlib.sha256()
    try:
        for i in sorted({k * n // PIXEL_SAMPLE for k in range(min(PIXEL_SAMPLE, n))}):
            item = dataset[i]
            image = torch.as_tensor(item[0] if isinstance(item, (tuple, list)) else item).detach().cpu().contiguous()
            h.update(f"{image.dtype}{tuple(image.shape)}".encode())
            h.update(image.view(torch.uint8).numpy().tobytes())
    except Exception:  # noqa: BLE001 (a dataset that cannot be sampled: not compared)
        return None
    return h.hexdigest()[:16]
