"""`python -m gan_dist.sample SOURCE [--n N] [--label K] [--out grid.png] [--seed S] [--raw]`
`                 [--interpolate-labels A B | --interpolate-noise] [--steps S]`

Writes a PNG grid of generated images. SOURCE: a run directory (its latest checkpoint), a
checkpoint file, or an exported generator (TorchScript FILE.pt or torch.export FILE.pt2) with FILE.json beside it.
Default: N images of class K, or (conditional, no --label) one row per class, or (unconditional)
N random images. --interpolate-labels A B: 4 fixed noise rows, each going from class A to class
B in S soft-label steps (book chapter 5). --interpolate-noise: class K (default 0), 4 rows each
going from one random z to another by slerp in S steps.
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import Optional

import torch

from gan_dist import cli
from gan_dist.errors import UserError
from gan_dist.runs import samples
from gan_dist.runs.export import load_sampler

ROWS = 4  # noise vectors (rows) in the interpolation modes


def build_inputs(args: argparse.Namespace, meta: dict, rng: torch.Generator):
    """(z, onehot or None, nrow) for the chosen mode; bad labels are one-line errors."""
    k, zd = int(meta["num_classes"]), int(meta["z_dim"])
    labels = [args.label] if args.label is not None else []
    labels += args.interpolate_labels or []
    if labels and not k:
        raise UserError("this generator is unconditional: --label / --interpolate-labels need a conditional model")
    for lab in labels:
        if not 0 <= lab < k:
            raise UserError(f"label {lab} is out of range: this model has classes 0-{k - 1}")
    if args.steps < 2 or args.n < 1:
        raise UserError(f"--steps must be >= 2 and --n >= 1 (got --steps {args.steps}, --n {args.n})")
    eye = torch.eye(k) if k else None
    if args.interpolate_labels:
        a, b = args.interpolate_labels
        z = torch.randn(ROWS, zd, generator=rng).repeat_interleave(args.steps, 0)
        return z, samples.interpolate_labels(a, b, args.steps, k).repeat(ROWS, 1), args.steps
    if args.interpolate_noise:
        ends = torch.randn(2, ROWS, zd, generator=rng)
        z = samples.slerp(ends[0], ends[1], torch.linspace(0, 1, args.steps)).reshape(-1, zd)
        onehot = eye[[args.label or 0] * len(z)] if k else None
        return z, onehot, args.steps
    if k and args.label is None:  # one row per class, N rounded up to whole rows
        per_class = math.ceil(args.n / k)
        z = torch.randn(k * per_class, zd, generator=rng)
        return z, eye.repeat_interleave(per_class, 0), per_class
    z = torch.randn(args.n, zd, generator=rng)
    return z, (eye[[args.label] * args.n] if k else None), min(args.n, 8)


def main(argv: Optional[list[str]] = None) -> int:
    p = cli.ArgumentParser(prog="python -m gan_dist.sample", description="Write a PNG grid of generated images.")
    p.add_argument("source", help="run directory, checkpoint file, or exported FILE.pt / FILE.pt2 (with FILE.json)")
    p.add_argument("--n", type=int, default=32,
                   help="images (default 32); conditional without --label: rounded up to one row per class")
    p.add_argument("--label", type=int, help="class of every image (conditional models)")
    p.add_argument("--out", default="grid.png", help="PNG to write (default grid.png)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--interpolate-labels", type=int, nargs=2, metavar=("A", "B"),
                      help=f"{ROWS} noise rows, soft labels from class A to class B")
    mode.add_argument("--interpolate-noise", action="store_true",
                      help=f"{ROWS} rows, slerp between two random z's, class --label (default 0)")
    p.add_argument("--steps", type=int, default=5, help="columns of an interpolation (default 5)")
    p.add_argument("--seed", type=int, help="noise seed: the same seed gives the same PNG (default: random)")
    p.add_argument("--raw", action="store_true",
                   help="use the raw generator when the checkpoint also holds an EMA one (default: EMA)")
    p.add_argument("--best", action="store_true", help="the run directory's best checkpoint (train.keep_best)")
    args = p.parse_args(argv)

    def sample() -> int:
        seed = args.seed if args.seed is not None else torch.seed() % 2**31
        generate, meta = load_sampler(args.source, args.raw, best=args.best)
        z, onehot, nrow = build_inputs(args, meta, torch.Generator().manual_seed(seed))
        samples.save_grid(generate(z, onehot), args.out, nrow)
        which = " ".join(filter(None, [f"step {meta['step']}" if "step" in meta else "",
                                       "EMA" if meta.get("ema") else ""]))
        print(f"wrote {args.out}: {len(z)} images ({math.ceil(len(z) / nrow)}x{nrow}) from the "
              f"{which or 'exported'} generator, seed {seed}")
        return 0
    return cli.run(sample)


if __name__ == "__main__":
    sys.exit(main())
