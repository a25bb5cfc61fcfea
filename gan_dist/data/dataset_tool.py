"""`python -m gan_dist.dataset_tool --source SRC --dest DEST.zip [--resolution N] ...`: a raw
collection resized and cropped once into one uncompressed zip of images with a dataset.json,
the layout of stylegan2-ada's and stylegan3's dataset_tool (their tools and loaders read it,
and gan_dist reads theirs: data.name=zip).

Sources: an ImageFolder tree (one subfolder per class; labels and class names recorded), a
flat folder (unconditional, or labelled by its own dataset.json as stylegan2-ada's), a
(Fashion-)MNIST IDX images file or the folder holding it, or an existing zip. The images are
written in the order data.name=image_folder reads them, through the same pixel pipeline
(gan_dist.data.images.center_crop), so a zip made from a folder holds exactly the pixels
training on the folder sees, and a run may resume from one on the other.

Parallel over the CPUs (one process each, the source opened once per process), a progress
bar on a terminal, an image that does not decode named and skipped (the count reported),
atomic (written under a temporary name, fsynced, renamed: a killed run leaves no half-written
DEST), and DEST is never overwritten without --force."""
from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from gan_dist.data.datasets import check_idx
from gan_dist.data.folder import scan
from gan_dist.data.images import center_crop, is_image, to_tensor
from gan_dist.data.zipdata import META, read_labels
from gan_dist.errors import UserError, first_line

log = logging.getLogger("gan_dist")
TRANSFORMS = ("center-crop", "center-crop-wide", "none")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


@dataclass
class Source:
    kind: str                       # image_folder | flat | idx | zip
    path: Path
    items: list                     # per image: a path relative to `path`, a zip member, or an IDX index
    labels: Optional[list[int]]     # a class per image, or None: unconditional
    class_names: list[str] = field(default_factory=list)
    native: str = "RGB"             # what an image is first converted to (ImageFolder's loader: RGB)


def _idx_pair(path: Path) -> tuple[Path, Optional[Path]]:
    """(images file, labels file or None) of an IDX source: the images file itself, or a folder
    holding train-images-idx3-ubyte (directly or in FashionMNIST/raw)."""
    if path.is_dir():
        for raw in (path, path / "FashionMNIST" / "raw", path / "MNIST" / "raw"):
            if (raw / "train-images-idx3-ubyte").is_file():
                path = raw / "train-images-idx3-ubyte"
                break
    labels = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
    return path, labels if labels.is_file() else None


def open_source(src: Path, max_images: Optional[int] = None) -> Source:
    """The source's images and labels, in the order they will be written."""
    if not src.exists():
        raise UserError(f"--source: {src} does not exist")
    if src.is_file() and zipfile.is_zipfile(src):
        with zipfile.ZipFile(src) as z:
            names = sorted(n for n in z.namelist() if is_image(n))
            meta = json.loads(z.read(META)) if META in z.namelist() else None
        labels, classes = read_labels(meta, names, f"--source: {src}")
        source = Source("zip", src, names, labels, classes)
    elif src.name.endswith("idx3-ubyte") or (src.is_dir() and _idx_pair(src)[0].name.endswith("idx3-ubyte")):
        images, labels_file = _idx_pair(src)
        count = check_idx(images, 0x0803, 3)
        labels = None
        if labels_file is not None:
            if check_idx(labels_file, 0x0801, 1) != count:
                raise UserError(f"--source: {images} and {labels_file} hold different counts")
            labels = np.fromfile(labels_file, dtype=np.uint8, offset=8).astype(int).tolist()
        fashion = "FashionMNIST" in str(images)
        classes = FASHION_CLASSES if fashion else [str(c) for c in range(10)] if labels is not None else []
        source = Source("idx", images, list(range(count)), labels, classes, native="L")
    elif src.is_dir():
        top = [e for e in os.scandir(src) if e.is_file() and is_image(e.name)]
        if not top and any(e.is_dir() for e in os.scandir(src)):
            found = scan(src)  # exactly data.name=image_folder's classes and order
            source = Source("image_folder", src, [rel for rel, _ in found["samples"]],
                            [int(t) for _, t in found["samples"]], list(found["classes"]))
        else:
            names = sorted(str(p.relative_to(src)).replace("\\", "/") for p in src.rglob("*")
                           if p.is_file() and is_image(p.name))
            meta = json.loads((src / META).read_text()) if (src / META).is_file() else None
            labels, classes = read_labels(meta, names, f"--source: {src}")
            source = Source("flat", src, names, labels, classes)
    else:
        raise UserError(f"--source: {src} is neither a folder of images, an IDX file nor a zip")
    if not source.items:
        raise UserError(f"--source: no images in {src}")
    if max_images is not None:
        source.items = source.items[:max_images]
        source.labels = None if source.labels is None else source.labels[:max_images]
    return source


# ---- one process per CPU: each opens the source once ---------------------------------------
_worker: dict = {}


def _open(source: Source, settings: dict) -> None:
    _worker.clear()
    _worker.update(source=source, settings=settings)
    if source.kind == "zip":
        _worker["zip"] = zipfile.ZipFile(source.path)
    elif source.kind == "idx":
        count = max(source.items) + 1
        _worker["idx"] = np.memmap(source.path, dtype=np.uint8, mode="r", offset=16, shape=(count, 28, 28))


def _image(item) -> Image.Image:
    source = _worker["source"]
    if source.kind == "idx":
        return Image.fromarray(np.array(_worker["idx"][item]), mode="L")
    f = _worker["zip"].open(item) if source.kind == "zip" else open(source.path / item, "rb")
    with f:
        img = Image.open(f)
        img.load()
    return img.convert(source.native)


def wide(width: int, height: int, channels: int):
    """stylegan2-ada's center-crop-wide: the image scaled to `width`, its center band of
    `height` rows kept, letterboxed into a width x width square (None: too small)."""
    def crop(img: Image.Image) -> Optional[Image.Image]:
        band = round(width * img.height / img.width)
        if img.width < width or band < height:
            return None
        scaled = img.resize((width, band), Image.BILINEAR, reducing_gap=None)
        top = (band - height) // 2
        canvas = Image.new(scaled.mode, (width, width))
        canvas.paste(scaled.crop((0, top, width, top + height)), (0, (width - height) // 2))
        return canvas
    return crop


def _encode(job: tuple[int, object]) -> tuple[int, Optional[bytes], Optional[tuple], str]:
    """(index, encoded bytes or None, (C, H, W), why it was skipped)."""
    index, item = job
    s = _worker["settings"]
    try:
        img = _image(item)
        img = s["crop"](img) if s["crop"] is not None else img
        if img is None:
            return index, None, None, f"smaller than {s['resolution']}"
        pixels = to_tensor(img, s["channels"])
        out = io.BytesIO()
        array = pixels.permute(1, 2, 0).squeeze(-1).numpy()
        Image.fromarray(array, mode="L" if s["channels"] == 1 else "RGB").save(
            out, format="PNG" if s["format"] == "png" else "JPEG",
            **({"compress_level": 0} if s["format"] == "png" else {"quality": 95}))
        return index, out.getvalue(), tuple(pixels.shape), ""
    except Exception as e:  # PIL: UnidentifiedImageError, truncated files, decompression bombs
        return index, None, None, first_line(e)


def parse_resolution(text: Optional[str], transform: str) -> tuple[Optional[int], Optional[int]]:
    if text is None:
        if transform == "center-crop-wide":
            raise UserError("--transform center-crop-wide needs --resolution WxH (the band, e.g. 512x384)")
        return None, None
    w, _, h = text.lower().partition("x")
    if not w.isdigit() or (h and not h.isdigit()) or int(w) < 1 or (h and int(h) < 1):
        raise UserError(f"--resolution: expected N or WxH (positive integers), got {text!r}")
    if h and transform != "center-crop-wide":
        raise UserError(f"--resolution {text}: WxH is for --transform center-crop-wide; images are square (N)")
    return int(w), int(h) if h else None


def convert(src: str | Path, dest: str | Path, resolution: Optional[str] = None, transform: str = "center-crop",
            channels: Optional[int] = None, format: str = "png", max_images: Optional[int] = None,
            force: bool = False, workers: Optional[int] = None) -> dict:
    """Write DEST.zip from SRC (the module docstring); a summary of what was written."""
    src, dest = Path(src).expanduser(), Path(dest).expanduser()
    if dest.suffix.lower() != ".zip":
        raise UserError(f"--dest: {dest} must end in .zip")
    if dest.exists() and not force:
        raise UserError(f"--dest: {dest} exists; --force replaces it")
    if transform not in TRANSFORMS or format not in ("png", "jpg") or channels not in (None, 1, 3):
        raise UserError(f"expected --transform {'|'.join(TRANSFORMS)}, --format png|jpg, --channels 1|3")
    if max_images is not None and max_images < 1:
        raise UserError(f"--max-images: must be >= 1, got {max_images}")
    width, height = parse_resolution(resolution, transform)
    source = open_source(src, max_images)
    channels = channels or (1 if source.native == "L" else 3)
    crop = None
    if transform == "center-crop-wide":
        crop = wide(width, height, channels)
    elif transform == "center-crop" and width is not None:
        crop = center_crop(width, channels)
    settings = {"crop": crop, "channels": channels, "format": format, "resolution": resolution}
    procs = workers or len(os.sched_getaffinity(0))
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    written, skipped, shape, labels = 0, [], None, []
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z, _pool(procs, source, settings) as pool:
            jobs = pool.imap(_encode, enumerate(source.items), chunksize=32) if pool else map(_encode, enumerate(source.items))
            for index, data, got, why in _progress(jobs, len(source.items)):
                name = source.items[index]
                if data is None:
                    skipped.append(name)
                    log.warning("skipping %s (%s)", source.path / str(name) if source.kind != "idx" else
                                f"{source.path}[{name}]", why)
                    continue
                if shape is None:
                    shape = got
                    if got[1] != got[2]:
                        raise UserError(f"{source.path / str(name)} is {got[2]}x{got[1]}: images must be square; "
                                        "give --resolution N")
                elif got != shape:
                    raise UserError(f"{source.path / str(name)} is {got[2]}x{got[1]}, the first image {shape[2]}x{shape[1]}: "
                                    "give --resolution N to make every image one size")
                member = f"{written // 1000:05d}/img{written:08d}.{format}"
                z.writestr(member, data)
                if source.labels is not None:
                    labels.append([member, source.labels[index]])
                written += 1
            if not written:
                raise UserError(f"--source: none of the {len(source.items)} images of {src} could be used")
            z.writestr(META, json.dumps({"labels": labels if source.labels is not None else None,
                                         **({"class_names": source.class_names} if source.class_names else {})}))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"dest": str(dest), "images": written, "skipped": len(skipped), "size": shape[1], "channels": shape[0],
            "classes": len(source.class_names) if source.labels is not None else 0, "format": format,
            "source": source.kind}


class _pool:
    """A process pool (fork: the source listing is inherited, not pickled per task), or none
    for one process."""

    def __init__(self, procs: int, source: Source, settings: dict):
        self.procs, self.source, self.settings, self.pool = procs, source, settings, None

    def __enter__(self):
        if self.procs <= 1:
            _open(self.source, self.settings)
            return None
        ctx = multiprocessing.get_context("fork" if sys.platform != "win32" else "spawn")
        self.pool = ctx.Pool(self.procs, initializer=_open, initargs=(self.source, self.settings))
        return self.pool

    def __exit__(self, kind, value, tb):
        if self.pool is not None:
            (self.pool.close if kind is None else self.pool.terminate)()
            self.pool.join()


def _progress(jobs, total: int):
    from tqdm import tqdm

    return tqdm(jobs, total=total, unit="img", file=sys.stderr, disable=None)
