"""`python -m gan_dist.digits_classifier --out FILE.pt [--image-size 16] [--epochs N] [--seed 0] [--threads 1]`

Trains a small CNN on scikit-learn's digits (the images the default run learns, preprocessed
the same way) and saves it as TorchScript: `forward(x) -> logits [B, 10]` and
`features(x) -> [B, 128]` (the penultimate layer), for images [B, 1, S, S] in [-1, 1] at the
size it was trained at (the module's `image_size`). FILE.json beside it records image_size,
num_classes and the held-out accuracy. It is the feature network of the `digits` evaluation
spec (gan_dist.evaluation). Without a PATH, load_or_create() uses the cache file
default_path(S) = cache_dir() / digits_classifier_{S}.pt (cache_dir(): $GAN_DIST_CACHE, else
$XDG_CACHE_HOME/gan_dist, else ~/.cache/gan_dist), training it there the first time (a few
seconds, 12 epochs, seed 0), and rank 0 sends the file's bytes to every rank.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from gan_dist import config, jit
from gan_dist.data import datasets
from gan_dist.distributed import on_main
from gan_dist.errors import UserError, first_line

SPLIT_SEED = 20240607  # fixed: the held-out 20% is the same set whatever --seed trains with
FEATURE_DIM = 128


def cache_dir() -> Path:
    """$GAN_DIST_CACHE, else $XDG_CACHE_HOME/gan_dist, else ~/.cache/gan_dist."""
    if os.environ.get("GAN_DIST_CACHE"):
        return Path(os.environ["GAN_DIST_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "gan_dist"
    return Path.home() / ".cache" / "gan_dist"


def default_path(image_size: int) -> Path:
    """The cached classifier for image_size (load_or_create makes it when it is missing)."""
    return cache_dir() / f"digits_classifier_{image_size}.pt"


def digits_tensors(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as (images [N, 1, S, S] in [-1, 1], labels), exactly as training sees them."""
    cfg = config.Config()
    cfg.data.image_size = image_size
    ds, _ = datasets.build_dataset(cfg)
    return ds.tensors


def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic 80/20 (train, held-out) index split."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    cut = int(0.8 * n)
    return perm[:cut], perm[cut:]


class DigitsNet(nn.Module):
    """Two 3x3 conv stages, then a 128-d penultimate layer. The adaptive pool to 4x4 lets one
    architecture serve 8x8 (no-op) and larger images."""

    def __init__(self, image_size: int, num_classes: int = 10):
        super().__init__()
        self.image_size = image_size
        self.num_classes = num_classes
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
            nn.Flatten(), nn.Dropout(0.25), nn.Linear(64 * 16, FEATURE_DIM), nn.ReLU())
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    @torch.jit.export
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _shift(x: torch.Tensor, g: torch.Generator, max_shift: int) -> torch.Tensor:
    """Random translation by up to max_shift pixels, padding with background (-1): generated
    digits are less centred than the real ones, the classifier should not care."""
    if max_shift == 0:
        return x
    size = x.shape[-1]
    padded = F.pad(x, [max_shift] * 4, value=-1.0)
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2,), generator=g).tolist()
    return padded[..., dy:dy + size, dx:dx + size]


def train(image_size: int = 16, epochs: int = 12, seed: int = 0, batch: int = 32,
          log=print) -> tuple[nn.Module, float, int]:
    """(model in eval mode, held-out accuracy, held-out count)."""
    if image_size < 8:
        raise UserError(f"--image-size: {image_size} is below 8 (the digits are 8x8)")
    if epochs < 1:
        raise UserError(f"--epochs: {epochs} must be at least 1")
    images, labels = digits_tensors(image_size)
    train_idx, test_idx = split(len(images))
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = DigitsNet(image_size)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * -(-len(train_idx) // batch))
    max_shift = max(1, image_size // 8)
    for epoch in range(epochs):
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=g)]
        for i in range(0, len(order), batch):
            rows = order[i:i + batch]
            loss = F.cross_entropy(model(_shift(images[rows], g, max_shift)), labels[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        log(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}")
    model.eval()
    with torch.no_grad():
        accuracy = (model(images[test_idx]).argmax(1) == labels[test_idx]).float().mean().item()
    return model, accuracy, len(test_idx)


def script_bytes(model: nn.Module) -> bytes:
    """The TorchScript file of `model`, in memory."""
    with jit.quiet():
        return jit.to_bytes(torch.jit.script(model))


def write_atomic(path: Path, data: bytes) -> None:
    """Write under a temporary name in the same directory, then os.replace: a reader (another
    job creating the same file at the same time) sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies, as for open()
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save(model: nn.Module, out: str | Path, meta: dict) -> list[str]:
    out = Path(out)
    meta_path = out.with_suffix(".json")
    write_atomic(out, script_bytes(model))
    write_atomic(meta_path, (json.dumps(meta, indent=2) + "\n").encode())
    return [str(out), str(meta_path)]


def _meta(model: nn.Module, accuracy: float, held_out: int, epochs: int, seed: int) -> dict:
    return {"image_size": model.image_size, "channels": 1, "num_classes": model.num_classes,
            "feature_dim": FEATURE_DIM, "held_out_accuracy": accuracy, "held_out_images": held_out,
            "epochs": epochs, "seed": seed}


def read_or_create(path: Optional[str], image_size: int, log=print, epochs: int = 12) -> bytes:
    """The classifier's file: `path` if given (it must exist), else the cache file
    default_path(image_size), trained and saved there first if missing (`epochs` only applies
    then). Call it on one rank (load_or_create, the feature networks' loader)."""
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(f"eval.features: digits classifier {p} not found; create it with "
                            f"`python -m gan_dist.digits_classifier --out {p} --image-size {image_size}` "
                            "or leave the path out (eval.features=digits) to use the cached one")
        return p.read_bytes()
    p = default_path(image_size)
    try:
        data = p.read_bytes()
    except OSError:  # missing (or unreadable: then writing fails too, and says so)
        pass
    else:
        problem = _check(data, image_size)
        if problem is None:
            return data
        log(f"the cached digits classifier {p} is unusable ({problem}); replacing it")
    log(f"creating the digits classifier for {image_size}x{image_size} images in {p} (once, cached)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these convolutions are too small to split (see the CLI's --threads)
    try:
        model, accuracy, held_out = train(image_size, epochs, seed=0, log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    data = script_bytes(model)
    try:
        write_atomic(p.with_suffix(".json"),
                     (json.dumps(_meta(model, accuracy, held_out, epochs, 0), indent=2) + "\n").encode())
        write_atomic(p, data)
    except OSError as e:
        log(f"warning: cannot cache the digits classifier in {p} ({e.strerror or e}); using it from memory, "
            "it is trained again next run (set GAN_DIST_CACHE to a writable directory)")
    return data


def _check(data: bytes, image_size: int) -> Optional[str]:
    """None if `data` is a TorchScript digits classifier for image_size, else what is wrong."""
    try:
        size = int(jit.load(data).image_size)
    except Exception as e:  # a truncated or foreign file: torch.jit raises many types
        return first_line(e)
    return None if size == image_size else f"it is for {size}x{size} images"


def load_or_create(path: Optional[str], image_size: int, world, log=print, epochs: int = 12) -> bytes:
    """The TorchScript file (bytes) of the digits classifier for image_size, on every rank:
    read_or_create on rank 0, its bytes (or its error) sent to every rank. Every rank must call it."""
    return on_main(lambda: read_or_create(path, image_size, log, epochs), world, "digits classifier")
