"""`python -m gan_dist.export SOURCE --out FILE.pt [--pt2]`

Writes the generator as TorchScript (the book's format: `torch.jit.load(FILE)` needs no
gan_dist) and FILE.json beside it (z_dim, num_classes, image_size, channels). forward takes
(z [B, z_dim], onehot [B, num_classes] float) for a conditional model (soft labels allowed:
label interpolation) or (z) for an unconditional one; it returns images [B, C, H, W] in
[-1, 1]. --pt2 also writes FILE.pt2 with torch.export (dynamic batch). SOURCE: a run
directory (its latest checkpoint) or a checkpoint file.
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from gan_dist import checkpoint, cli, config
from gan_dist.errors import UserError
from gan_dist.models import build_models


def load_generator(source: str | Path, ema: bool = True) -> tuple[nn.Module, dict]:
    """(generator in eval mode on CPU, metadata) from a run directory or a checkpoint file;
    the EMA generator when the checkpoint has one, unless ema=False."""
    source = Path(source)
    if source.is_dir():
        found = checkpoint.load_latest(source)
        if found is None:
            raise UserError(f"{source}: no checkpoint in {checkpoint.checkpoint_dir(source)}")
        state, path = found
    else:
        state, path = checkpoint.read(source), source
    try:
        cfg = config.from_dict(state["config"])
    except UserError as e:
        raise UserError(f"checkpoint {path}: its config does not load ({e})") from None
    info = checkpoint.data_info(state, cfg, path)
    generator, _ = build_models(cfg, info)
    use_ema = ema and "generator_ema" in state
    checkpoint.load_state(generator, state["generator_ema" if use_ema else "generator"], "generator", path)
    meta = {"ema": use_ema, "z_dim": generator.z_dim, "num_classes": generator.num_classes,
            "image_size": generator.image_size, "channels": generator.channels,
            "step": int(state["step"]), "model": cfg.model.kind, "loss": cfg.loss.kind}
    return generator.eval(), meta


class ConditionalGenerator(nn.Module):
    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, z: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        return self.generator(z, onehot)


class UnconditionalGenerator(nn.Module):
    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z, None)


def export(source: str | Path, out: str | Path, pt2: bool = False, ema: bool = True) -> dict:
    generator, meta = load_generator(source, ema)
    wrapped = (ConditionalGenerator if meta["num_classes"] else UnconditionalGenerator)(generator).eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # torch.jit is deprecated in torch 2.14 but still the book's format
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))
        torch.jit.script(wrapped).save(str(out))
    files = [str(out)]
    if pt2:
        z = torch.randn(2, meta["z_dim"])
        args = (z, torch.eye(meta["num_classes"])[:2]) if meta["num_classes"] else (z,)
        batch = torch.export.Dim("batch", min=1)
        shapes = tuple({0: batch} for _ in args)
        program = torch.export.export(wrapped, args, dynamic_shapes=shapes)
        torch.export.save(program, str(out.with_suffix(".pt2")))
        files.append(str(out.with_suffix(".pt2")))
    meta_path = out.with_suffix(".json")
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return {**meta, "files": files + [str(meta_path)]}


def main(argv: Optional[list[str]] = None) -> int:
    p = cli.ArgumentParser(prog="python -m gan_dist.export", description=__doc__.split("\n")[0])
    p.add_argument("source", help="run directory or checkpoint file")
    p.add_argument("--out", required=True, help="TorchScript file to write (FILE.json goes beside it)")
    p.add_argument("--pt2", action="store_true", help="also write a torch.export program FILE.pt2")
    p.add_argument("--raw", action="store_true", help="the raw generator, not its EMA")
    args = p.parse_args(argv)
    try:
        result = export(args.source, args.out, args.pt2, ema=not args.raw)
    except UserError as e:
        print(f"gan_dist: error: {e}", file=sys.stderr)
        return 2
    print(f"exported step {result['step']} {'EMA ' if result['ema'] else ''}generator: {', '.join(result['files'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
