"""`python -m gan_dist.digits_classifier --out FILE.pt [--image-size 16] [--epochs N] [--seed 0] [--threads 1]`

Trains a small CNN on scikit-learn's digits (the images the default run learns, preprocessed
the same way) and saves it as TorchScript: `forward(x) -> logits [B, 10]` and
`features(x) -> [B, 128]` (the penultimate layer), for images [B, 1, S, S] in [-1, 1] at the
size it was trained at (the module's `image_size`). FILE.json beside it records image_size,
num_classes and the held-out accuracy. It is the feature network of the `digits` evaluation
spec (gan_dist.evaluation), which looks for runs/digits_classifier_{image_size}.pt by default.
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gan_dist import config, datasets
from gan_dist.errors import UserError

SPLIT_SEED = 20240607  # fixed: the held-out 20% is the same set whatever --seed trains with
FEATURE_DIM = 128


def default_path(image_size: int) -> Path:
    return Path("runs") / f"digits_classifier_{image_size}.pt"


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


def save(model: nn.Module, out: str | Path, meta: dict) -> list[str]:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # torch.jit is deprecated in torch 2.14 but works
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))
        torch.jit.script(model).save(str(out))
    meta_path = out.with_suffix(".json")
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return [str(out), str(meta_path)]


if __name__ == "__main__":
    from gan_dist.cli.digits_classifier import main

    sys.exit(main())
