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

Parallel over the CPUs (one process each, the source opened once per process, every Nth image
through its own pipe), a progress bar on a terminal, an image that does not decode named and
skipped (the count reported), images smaller than the resolution upscaled and counted, an
output that would not fit in memory refused before any work; atomic (written under a temporary
name, fsynced, renamed: a killed run leaves no half-written DEST; SIGTERM and SIGINT remove the
temporary file, the next run those of killed runs), and DEST is never overwritten without
--force; what would fail at the end (DEST a directory, its folder unwritable) fails first."""
from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
import zipfile
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from gan_dist.data.datasets import check_idx, memory_bytes
from gan_dist.data.folder import scan
from gan_dist.data.images import GRAYSCALE_MODES, Skips, center_crop, is_image, to_8bit, to_tensor
from gan_dist.data.zipdata import META, parse_meta, read_labels
from gan_dist.errors import UserError, first_line

log = logging.getLogger("gan_dist")
TRANSFORMS = ("center-crop", "center-crop-wide", "none")
VIRTUAL = ("/proc", "/sys", "/dev")  # kernel filesystems: never a dataset (/dev/shm is, a tmpfs)
BYTES_PER_PIXEL = 12  # a worker's peak per output pixel and channel: PIL's resize buffers, the array, the PNG
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


def _has_class_folders(src: Path) -> bool:
    """torchvision's ImageFolder rule: subfolders (not macOS's __MACOSX) are the classes."""
    return any(e.is_dir() and e.name != "__MACOSX" for e in os.scandir(src))


def open_source(src: Path, max_images: Optional[int] = None) -> Source:
    """The source's images and labels, in the order they will be written (with max_images, that
    many spread evenly over the source, so every class keeps its share)."""
    if not src.exists():
        raise UserError(f"--source: {src} does not exist")
    if _virtual(src):
        raise UserError(f"--source: {src} is on the kernel's {src.resolve().parts[1]} filesystem, not a dataset")
    try:
        return _open_source(src, max_images)
    except OSError as e:
        raise UserError(f"--source: cannot read {e.filename or src} ({e.strerror or e})") from None


def _virtual(path: Path) -> bool:
    parts = path.resolve().parts
    return len(parts) > 1 and "/" + parts[1] in VIRTUAL and parts[1:3] != ("dev", "shm")


def _open_source(src: Path, max_images: Optional[int]) -> Source:
    if src.is_file() and zipfile.is_zipfile(src):
        with zipfile.ZipFile(src) as z:
            names = sorted(n for n in z.namelist() if is_image(n))
            meta = parse_meta(z.read(META), f"--source: {src}") if META in z.namelist() else None
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
        if not (src / META).is_file() and _has_class_folders(src):
            found = scan(src)  # exactly data.name=image_folder's classes and order (top-level files: said, unread)
            source = Source("image_folder", src, [rel for rel, _ in found["samples"]],
                            [int(t) for _, t in found["samples"]], list(found["classes"]))
        else:  # a flat folder (stylegan2-ada's: unconditional, or labelled by its dataset.json)
            names = sorted(str(p.relative_to(src)).replace("\\", "/") for p in src.rglob("*")
                           if p.is_file() and is_image(str(p.relative_to(src))))
            meta = parse_meta((src / META).read_bytes(), f"--source: {src / META}") if (src / META).is_file() else None
            labels, classes = read_labels(meta, names, f"--source: {src}")
            source = Source("flat", src, names, labels, classes)
    else:
        raise UserError(f"--source: {src} is neither a folder of images, an IDX file nor a zip")
    if not source.items:
        raise UserError(f"--source: no images in {src}")
    if max_images is not None and max_images < len(source.items):
        keep = [i * len(source.items) // max_images for i in range(max_images)]  # spread: every class keeps its share
        source.items = [source.items[i] for i in keep]
        source.labels = None if source.labels is None else [source.labels[i] for i in keep]
    return source


def source_channels(source: Source) -> int:
    """The source's own channels (the tool's default, as --help says): 1 when the images it
    holds are grayscale (a sample of up to 16 spread over it, by their stored mode), else 3."""
    if source.native == "L":
        return 1
    step = max(1, len(source.items) // 16)
    modes = set()
    with (zipfile.ZipFile(source.path) if source.kind == "zip" else nullcontext()) as z:
        for item in source.items[::step]:
            try:
                with (z.open(item) if z is not None else open(source.path / item, "rb")) as f, Image.open(f) as img:
                    modes.add(img.mode)
            except Exception:  # noqa: BLE001 (unreadable: the conversion names and skips it)
                continue
    return 1 if modes and modes <= set(GRAYSCALE_MODES) else 3


# ---- one process per CPU: each opens the source once ---------------------------------------
_worker: dict = {}


def _open(source: Source, settings: dict) -> None:
    if multiprocessing.parent_process() is not None:  # a pool worker: the main process handles the signals
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker.clear()
    _worker.update(source=source, settings=settings)
    if source.kind == "zip":
        _worker["zip"] = zipfile.ZipFile(source.path)
    elif source.kind == "idx":
        count = max(source.items) + 1
        _worker["idx"] = np.memmap(source.path, dtype=np.uint8, mode="r", offset=16, shape=(count, 28, 28))


def _image(item) -> Image.Image:
    """The item as data.name=image_folder's loader gives it: 8 bits per channel (16-bit scaled,
    not clipped), then RGB (IDX: L); the crop then makes it gray for 1 channel, as there."""
    source = _worker["source"]
    if source.kind == "idx":
        return Image.fromarray(np.array(_worker["idx"][item]), mode="L")
    f = _worker["zip"].open(item) if source.kind == "zip" else open(source.path / item, "rb")
    with f:
        img = Image.open(f)
        img.load()
    return to_8bit(img).convert(source.native)


def wide(width: int, height: int, channels: int):
    """center-crop-wide: the image scaled to `width` (its aspect kept), its center band of
    `height` rows kept, letterboxed into a width x width square (None: too small). Not
    stylegan2-ada's own, which crops first and resizes the crop with LANCZOS to the band,
    stretching it whenever the image's aspect is not the band's: gan_dist keeps the aspect."""
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
        upscaled = s["upscale_below"] is not None and min(img.size) < s["upscale_below"]
        img = s["crop"](img) if s["crop"] is not None else img
        if img is None:
            return index, None, None, f"smaller than {s['resolution']}"
        pixels = to_tensor(img, s["channels"])
        out = io.BytesIO()
        array = pixels.permute(1, 2, 0).squeeze(-1).numpy()
        Image.fromarray(array, mode="L" if s["channels"] == 1 else "RGB").save(
            out, format="PNG" if s["format"] == "png" else "JPEG",
            **({"compress_level": 0} if s["format"] == "png" else {"quality": 95}))
        return index, out.getvalue(), tuple(pixels.shape), "upscaled" if upscaled else ""
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


class Interrupted(BaseException):
    """SIGTERM or SIGINT during a conversion: the temporary file goes, DEST stays as it was."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _interrupted(signum, frame):
    raise Interrupted(signum)


def check_dest(dest: Path, force: bool) -> None:
    """What would stop the conversion at its end, said before any work: one line each."""
    try:
        _check_dest(dest, force)
    except OSError as e:  # a name too long, a folder that cannot be searched
        raise UserError(f"--dest: {dest} cannot be used ({e.strerror or e})") from None


def _check_dest(dest: Path, force: bool) -> None:
    if dest.suffix.lower() != ".zip":
        raise UserError(f"--dest: {dest} must end in .zip")
    if _virtual(dest):
        raise UserError(f"--dest: {dest} is on the kernel's {dest.resolve().parts[1]} filesystem")
    if dest.is_dir():
        raise UserError(f"--dest: {dest} is a directory" + (" (--force replaces a zip, never a directory)" if force else ""))
    if dest.exists() and not force:
        raise UserError(f"--dest: {dest} exists; --force replaces it")
    above = next((p for p in [dest.parent, *dest.parent.parents] if p.exists()), None)
    if above is not None and not above.is_dir():
        raise UserError(f"--dest: {above} is a file, not a folder")


def remove_stale(dest: Path) -> None:
    """Remove the temporary files of this host's conversions to DEST whose process is gone (a
    run killed by SIGKILL or a power cut leaves one; SIGTERM and SIGINT do not)."""
    host = socket.gethostname()
    for tmp in dest.parent.glob(f".{dest.name}.{host}.*.tmp"):
        pid = tmp.name[len(f".{dest.name}.{host}."):-len(".tmp")]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
            log.warning("removed %s, left by a conversion that was killed", tmp)
        except PermissionError:  # alive, another user's
            pass


def fit_memory(size: int, channels: int, procs: int, resolution: str) -> int:
    """The processes that fit this machine's memory at size x size x channels outputs (an
    estimate, as training's memory check): fewer when all would not, one line when one cannot."""
    each = size * size * channels * BYTES_PER_PIXEL
    have = memory_bytes()
    if each > have:
        raise UserError(f"--resolution {resolution}: one {size}x{size}x{channels} image needs about "
                        f"{each / 2**30:.1f} GiB while converting, more than this machine's {have / 2**30:.0f} GiB")
    fit = max(1, min(procs, have // 2 // each))  # half the memory: the zip's pages, the rest of the machine
    if fit < procs:
        log.warning("--resolution %s: %d processes instead of %d (about %.1f GiB each)", resolution, fit, procs,
                    each / 2**30)
    return fit


def convert(src: str | Path, dest: str | Path, resolution: Optional[str] = None, transform: str = "center-crop",
            channels: Optional[int] = None, format: str = "png", max_images: Optional[int] = None,
            force: bool = False, workers: Optional[int] = None) -> dict:
    """Write DEST.zip from SRC (the module docstring); a summary of what was written."""
    src, dest = Path(src).expanduser(), Path(dest).expanduser().absolute()
    check_dest(dest, force)
    if transform not in TRANSFORMS or format not in ("png", "jpg") or channels not in (None, 1, 3):
        raise UserError(f"expected --transform {'|'.join(TRANSFORMS)}, --format png|jpg, --channels 1|3")
    if max_images is not None and max_images < 1:
        raise UserError(f"--max-images: must be >= 1, got {max_images}")
    width, height = parse_resolution(resolution, transform)
    source = open_source(src, max_images)
    channels = channels or source_channels(source)
    crop = None
    if transform == "center-crop-wide":
        crop = wide(width, height, channels)
    elif transform == "center-crop" and width is not None:
        crop = center_crop(width, channels)
    settings = {"crop": crop, "channels": channels, "format": format, "resolution": resolution,
                "upscale_below": width if transform == "center-crop" else None}
    procs = workers or len(os.sched_getaffinity(0))
    if width is not None:
        procs = fit_memory(width, channels, procs, resolution)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(dest)
        tmp = dest.with_name(f".{dest.name}.{socket.gethostname()}.{os.getpid()}.tmp")
        z = zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED)  # before any work: can DEST's folder take it?
    except OSError as e:
        raise UserError(f"--dest: cannot write in {dest.parent} ({e.strerror or e})") from None
    handlers = {}
    if multiprocessing.current_process().name == "MainProcess" and _main_thread():
        handlers = {sig: signal.signal(sig, _interrupted) for sig in (signal.SIGTERM, signal.SIGINT)}
    written, skips, upscaled, shape, labels = 0, Skips("", then="left out"), 0, None, []
    try:
        with z, _pool(procs, source, settings) as jobs:
            for index, data, got, why in _progress(jobs, len(source.items)):
                name = source.items[index]
                if data is None:
                    skips.skip(str(source.path / str(name)) if source.kind != "idx" else f"{source.path}[{name}]",
                               why)
                    continue
                upscaled += why == "upscaled"
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
                                         **({"class_names": source.class_names} if source.class_names else {}),
                                         "image_size": shape[1], "channels": shape[0]}))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, Interrupted):
            raise UserError(f"interrupted by {signal.Signals(e.signum).name}: {dest} not written "
                            "(its temporary file removed)") from None
        if isinstance(e, OSError):
            raise UserError(f"--dest: writing {dest} failed ({e.strerror or e})") from None
        raise
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if upscaled:
        log.warning("%d of the %d images were smaller than %d and were upscaled", upscaled, written, width)
    used = {label for _, label in labels}
    return {"dest": str(dest), "images": written, "skipped": len(skips.seen), "size": shape[1], "channels": shape[0],
            "classes": max(len(source.class_names), max(used) + 1) if used else 0, "classes_with_images": len(used),
            "format": format, "source": source.kind, "upscaled": upscaled}


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


CHUNK = 32  # images a worker sends at once


def _work(conn, source: Source, settings: dict, k: int, n: int) -> None:
    """A worker: images k, k + n, k + 2n, ... encoded, in order, sent in chunks through its own pipe."""
    _open(source, settings)
    chunk = []
    for i in range(k, len(source.items), n):
        chunk.append(_encode((i, source.items[i])))
        if len(chunk) == CHUNK:
            conn.send(chunk)
            chunk = []
    conn.send(chunk)
    conn.close()


class _pool:
    """The encoded images in source order, from `procs` forked workers (the source listing
    inherited, not pickled per task) or this process. Each worker has its own pipe and takes
    every procs-th image: no lock is shared, so workers dying by a signal to the process group
    (Slurm's SIGTERM) cannot leave one held (multiprocessing.Pool then hangs in terminate)."""

    def __init__(self, procs: int, source: Source, settings: dict):
        self.procs, self.source, self.settings, self.workers, self.pipes = procs, source, settings, [], []

    def __enter__(self):
        if self.procs <= 1:
            _open(self.source, self.settings)
            return map(_encode, enumerate(self.source.items))
        ctx = multiprocessing.get_context("fork" if sys.platform != "win32" else "spawn")
        for k in range(self.procs):
            reader, writer = ctx.Pipe(duplex=False)
            worker = ctx.Process(target=_work, args=(writer, self.source, self.settings, k, self.procs), daemon=True)
            worker.start()
            writer.close()
            self.workers.append(worker)
            self.pipes.append(reader)
        return self._results()

    def _results(self):
        from collections import deque

        ready = [deque() for _ in self.workers]
        for i in range(len(self.source.items)):
            k = i % self.procs
            if not ready[k]:
                try:
                    ready[k].extend(self.pipes[k].recv())
                except EOFError:
                    raise UserError(f"a conversion process died (exit code {self.workers[k].exitcode}) at "
                                    f"{self.source.items[i]}") from None
            yield ready[k].popleft()

    def __exit__(self, kind, value, tb):
        for worker in self.workers:
            if kind is not None and worker.is_alive():
                worker.kill()
            worker.join()
        for pipe in self.pipes:
            pipe.close()


def _progress(jobs, total: int):
    from tqdm import tqdm

    return tqdm(jobs, total=total, unit="img", file=sys.stderr, disable=None)
