"""data.name=image_folder: one subfolder of images per class (the book's glasses/G and
glasses/NoG), read with torchvision's ImageFolder semantics (classes sorted, files sorted
within each), items as uint8 [C, H, W] (gan_dist.data.images).

Listing a tree of 100,000 files on NFS or Lustre takes minutes and loads the file server for
everyone; W ranks listing it W times makes it worse. The listing is made once, by rank 0 (the
dataset factory runs there first), and kept in RUN_DIR/cache/ with the modification time of
every folder of the tree: the other ranks and every later start check those folder times (a
stat per folder, no listing) and use the cached list while none changed (adding, removing or
renaming a file changes its folder's time).

An image that does not decode is only found when it is read, mid-training, on one rank: it is
skipped with a warning naming it (the next readable image takes its place, the same on every
rank), so no rank stops alone and leaves the others waiting in a collective."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Optional

from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from gan_dist.config import Config
from gan_dist.data.datasets import DataInfo
from gan_dist.data.images import Skips, ToItem, center_crop, load_image
from gan_dist.errors import UserError

log = logging.getLogger("gan_dist")
CACHE_VERSION = 1


def _images_in(files: list[str]) -> list[str]:
    return [f for f in sorted(files) if has_file_allowed_extension(f, IMG_EXTENSIONS) and not f.startswith("._")]


def scan(root: Path, say=log.warning) -> dict:
    """What torchvision's ImageFolder lists (find_classes, make_dataset: the same order), and
    every folder it walked with its modification time. As torchvision: the classes are the
    subfolders, files at the top level are not read (said once, here); a class folder without
    an image is not a class (said; torchvision refuses it); macOS's ._ files are no images."""
    top = os.listdir(root)
    candidates = sorted(e for e in top if (root / e).is_dir() and e != "__MACOSX")
    if not candidates:
        raise UserError(f"data.root: {root} has no subfolders (expected one subfolder of images per class)")
    stray = _images_in([e for e in top if (root / e).is_file()])
    if stray:
        say(f"{root}: {len(stray)} image(s) at the top level ({stray[0]}, ...) are not read: the classes are the "
            "subfolders (as torchvision's ImageFolder)")
    classes, samples, folders, empty = [], [], {".": os.stat(root).st_mtime_ns}, []
    for name in candidates:
        found = []
        for where, _, files in sorted(os.walk(root / name, followlinks=True)):
            folders[os.path.relpath(where, root)] = os.stat(where).st_mtime_ns
            found += [os.path.relpath(os.path.join(where, f), root) for f in _images_in(files)]
        if not found:
            empty.append(name)
            continue
        samples += [[rel, len(classes)] for rel in found]
        classes.append(name)
    if not samples:
        raise UserError(f"data.root: no images in the class folders of {root} (extensions: {', '.join(IMG_EXTENSIONS)})")
    if empty:
        say(f"{root}: class folder(s) {', '.join(empty)} hold no image: not classes ({len(classes)} classes)")
    return {"version": CACHE_VERSION, "root": str(root), "classes": classes, "samples": samples, "folders": folders}


def _unchanged(listing: dict, root: Path) -> bool:
    try:
        return listing.get("version") == CACHE_VERSION and listing["root"] == str(root) and all(
            os.stat(root / rel).st_mtime_ns == mtime for rel, mtime in listing["folders"].items())
    except (OSError, KeyError, TypeError):
        return False


def listing(root: Path, run_dir: Optional[Path]) -> dict:
    """scan(root), from RUN_DIR/cache/ while no folder of the tree changed (written there by the
    first process that scans; without a run directory, scanned)."""
    if run_dir is None or not run_dir.is_dir():
        return scan(root)
    path = run_dir / "cache" / f"image_folder_{hashlib.sha256(str(root).encode()).hexdigest()[:16]}.json"
    try:
        cached = json.loads(path.read_text())
        if _unchanged(cached, root):
            return cached
    except (OSError, ValueError):
        pass
    fresh = scan(root)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(exist_ok=True)
        tmp.write_text(json.dumps(fresh))
        tmp.replace(path)
    except OSError as e:  # only a cache: the next start lists the tree again
        tmp.unlink(missing_ok=True)
        log.warning("could not cache the listing of %s in %s (%s)", root, path, e.strerror or e)
    return fresh


class SkippingImageFolder(datasets.ImageFolder):
    """ImageFolder from a listing (no walk of its own), whose unreadable files are replaced by the
    next readable one, with a warning naming the file (once per file and process). Depends on
    the index only, so every rank and every world size makes the same replacement."""

    MAX_CONSECUTIVE = 100
    file_backed = True  # data.num_workers=auto gives it loader workers

    def __init__(self, root: Path, found: dict, transform):
        self._found, self._skips = found, Skips("unreadable image")
        super().__init__(str(root), transform=transform, loader=load_image)

    def find_classes(self, directory):
        classes = list(self._found["classes"])
        return classes, {c: i for i, c in enumerate(classes)}

    def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        return [(os.path.join(directory, rel), int(target)) for rel, target in self._found["samples"]]

    def __getitem__(self, index: int):
        for attempt in range(min(len(self), self.MAX_CONSECUTIVE)):
            i = (index + attempt) % len(self)
            try:
                return super().__getitem__(i)
            except Exception as e:  # PIL: UnidentifiedImageError, "image file is truncated", decompression bombs
                self._skips.skip(self.samples[i][0], e)
        raise UserError(f"data.root: {self.MAX_CONSECUTIVE} images in a row do not decode "
                        f"(from {self.samples[index][0]}); is {self.root} an image folder?")


def image_folder(cfg: Config):
    """The registry's factory: (dataset of (uint8 [C, S, S], class), DataInfo)."""
    root = Path(cfg.data.root).expanduser().absolute()
    if not root.is_dir():
        raise UserError(f"data.root: {root} does not exist (expected one subfolder of images per class)")
    c, size = cfg.data.channels, cfg.data.image_size
    crop = center_crop(size, c)
    try:
        found = listing(root, Path(cfg.run.dir))
    except OSError as e:
        raise UserError(f"data.root: cannot list {root} ({e.strerror or e})") from None
    ds = SkippingImageFolder(root, found, transform=ToItem(crop, c))
    return ds, DataInfo(len(ds.classes), c, size)
