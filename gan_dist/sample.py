"""`python -m gan_dist.sample SOURCE [--n N] [--label K] [--out grid.png] [--seed S] [--raw]`
`                 [--interpolate-labels A B | --interpolate-noise] [--steps S]`

Writes a PNG grid of generated images. SOURCE: a run directory (its latest checkpoint), a
checkpoint file, or an exported TorchScript generator FILE.pt with FILE.json beside it.
Default: N images of class K, or (conditional, no --label) one row per class, or (unconditional)
N random images. --interpolate-labels A B: 4 fixed noise rows, each going from class A to class
B in S soft-label steps (book chapter 5). --interpolate-noise: class K (default 0), 4 rows each
going from one random z to another by slerp in S steps.
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Optional

import torch

from gan_dist import cli, sampling
from gan_dist.errors import UserError
from gan_dist.export import load_generator

ROWS = 4  # noise vectors (rows) in the interpolation modes
Generate = Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def _is_torchscript(path: Path) -> bool:
    # TorchScript archives keep the module's code under <name>/code/; checkpoints do not.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n for n in z.namelist())


def load(source: str | Path, raw: bool = False) -> tuple[Generate, dict]:
    """(generate(z, onehot) -> images in [-1, 1], meta with z_dim, num_classes, ...)."""
    source = Path(source)
    if not source.exists():
        raise UserError(f"source not found: {source}")
    if source.is_file() and _is_torchscript(source):
        sidecar = source.with_suffix(".json")
        if not sidecar.is_file():
            raise UserError(f"{source} is an exported generator but {sidecar} (z_dim, num_classes) is missing")
        try:
            meta = json.loads(sidecar.read_text())
            meta["z_dim"], meta["num_classes"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{sidecar}: not the JSON gan_dist.export writes ({type(e).__name__}: {e})") from None
        if raw and meta.get("ema"):  # the export kept only the EMA weights
            raise UserError(f"--raw: {source} holds the EMA generator only; give the run directory or checkpoint")
        with warnings.catch_warnings():  # torch.jit is deprecated in torch 2.14 but still loads
            warnings.simplefilter("ignore")
            module = torch.jit.load(str(source), map_location="cpu").eval()

        @torch.no_grad()
        def generate(z, onehot):
            return (module(z) if onehot is None else module(z, onehot)).float()
        return generate, meta
    # Pass `ema` only where load_generator takes it, so this works with versions from before EMA.
    kwargs = {"ema": not raw} if "ema" in inspect.signature(load_generator).parameters else {}
    generator, meta = load_generator(source, **kwargs)
    return (lambda z, onehot: sampling.generate(generator, z, onehot)), meta


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of rows a, b [R, D] at weights t [S] -> [R, S, D]. Midpoints of a
    linear path between two Gaussian z's have a smaller norm than the generator ever saw."""
    omega = torch.acos((a / a.norm(dim=1, keepdim=True) * b / b.norm(dim=1, keepdim=True))
                       .sum(1).clamp(-1, 1))[:, None, None]
    t = t[None, :, None]
    so = torch.sin(omega)
    lerp = (1 - t) * a[:, None] + t * b[:, None]
    out = (torch.sin((1 - t) * omega) * a[:, None] + torch.sin(t * omega) * b[:, None]) / so.clamp_min(1e-8)
    return torch.where(so.abs() < 1e-6, lerp, out)  # (anti)parallel rows: slerp is undefined


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
        return z, sampling.interpolate_labels(a, b, args.steps, k).repeat(ROWS, 1), args.steps
    if args.interpolate_noise:
        ends = torch.randn(2, ROWS, zd, generator=rng)
        z = slerp(ends[0], ends[1], torch.linspace(0, 1, args.steps)).reshape(-1, zd)
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
    p.add_argument("source", help="run directory, checkpoint file, or exported FILE.pt (with FILE.json)")
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
    args = p.parse_args(argv)
    seed = args.seed if args.seed is not None else torch.seed() % 2**31
    try:
        generate, meta = load(args.source, args.raw)
        z, onehot, nrow = build_inputs(args, meta, torch.Generator().manual_seed(seed))
        sampling.save_grid(generate(z, onehot), args.out, nrow)
    except UserError as e:
        print(f"gan_dist: error: {e}", file=sys.stderr)
        return 2
    which = " ".join(filter(None, [f"step {meta['step']}" if "step" in meta else "", "EMA" if meta.get("ema") else ""]))
    print(f"wrote {args.out}: {len(z)} images ({math.ceil(len(z) / nrow)}x{nrow}) from the {which or 'exported'} "
          f"generator, seed {seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
