"""The generator out of a run: TorchScript / torch.export files, and loading any of them back
(`python -m gan_dist.export SOURCE --out FILE.pt [--pt2]`, command line in cli/export.py).

Formats (--format): torchscript, the book's (`torch.jit.load(FILE)` needs no gan_dist; torch.jit
is deprecated since torch 2.14 but loads), pt2, a torch.export program (the maintained format:
`torch.export.load(FILE.pt2).module()`, dynamic batch), or both; FILE.json beside them (z_dim,
num_classes, image_size, channels). forward takes (z [B, z_dim], onehot [B, num_classes]
float) for a conditional model (soft labels allowed: label interpolation) or (z) for an
unconditional one; it returns images [B, C, H, W] in [-1, 1]. SOURCE: a run directory (its
latest checkpoint) or a checkpoint file. load_sampler reads every one of them back.
"""
from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from gan_dist import config, jit
from gan_dist.errors import UserError, first_line
from gan_dist.models import build_models
from gan_dist.runs import checkpoint, samples
from gan_dist.runs.best import BEST
from gan_dist.runs.run_dir import RunDir

log = logging.getLogger("gan_dist")
Generate = Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def load_generator(source: str | Path, ema: bool = True, models: Optional[Callable] = None,
                   best: bool = False) -> tuple[nn.Module, dict]:
    """(generator in eval mode on CPU, metadata) from a run directory (its latest checkpoint, or
    its best.pt with best=True) or a checkpoint file; the EMA generator when the checkpoint has
    one, unless ema=False. The generator is rebuilt by the checkpoint's model.kind, or by
    `models` (a factory) when given."""
    source = Path(source)
    if best:
        if not source.is_dir():
            raise UserError(f"--best: {source} is not a run directory (best.pt is in RUN_DIR/checkpoints/)")
        source = RunDir(source).checkpoints / BEST
        if not source.is_file():
            raise UserError(f"--best: no {source} (train.keep_best=METRIC keeps it, from the first evaluation on)")
    if source.is_dir():
        found = checkpoint.load_latest(source)
        if found is None:
            raise UserError(f"{source}: no checkpoint in {RunDir(source).checkpoints}")
        state, path = found
    else:
        state, path = checkpoint.read(source), source
    try:
        cfg = config.from_dict(state["config"])
    except UserError as e:
        raise UserError(f"checkpoint {path}: its config does not load ({e})") from None
    info = checkpoint.data_info(state, cfg, path)
    try:
        generator, _ = build_models(cfg, info, models)
    except UserError as e:
        raise UserError(f"checkpoint {path}: cannot rebuild its generator ({e}); a factory defined in a launch "
                        "script cannot be imported: pass it as models=, or move it into a module") from None
    use_ema = ema and "generator_ema" in state
    checkpoint.load_state(generator, state["generator_ema" if use_ema else "generator"], "generator", path)
    meta = {"ema": use_ema, "z_dim": generator.z_dim, "num_classes": generator.num_classes,
            "image_size": info.image_size, "channels": info.channels,
            "step": int(state["step"]), "model": cfg.model.kind, "loss": cfg.loss.kind,
            **({"best": state["best"]} if "best" in state else {})}
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


def _torchscript(wrapped: nn.Module, example: tuple) -> bytes:
    """The TorchScript file: torch.jit.script, the book's format, if it scripts, saves and gives
    back the module's own images; else torch.jit.trace (Python control flow frozen at the
    example's). Seen on torch 2.14: an unannotated `onehot=None` scripts, then fails to save
    ("strides() called on an undefined Tensor")."""
    with torch.no_grad():
        expected = wrapped(*example)
    attempts, failures = (("script", lambda: torch.jit.script(wrapped)), ("trace", lambda: torch.jit.trace(wrapped, example))), []
    for how, make in attempts:
        try:
            with jit.quiet():
                data = jit.to_bytes(make())
            with torch.no_grad():
                got = jit.load(data)(*example)
            if not torch.allclose(got, expected, atol=1e-5):
                raise ValueError(f"the {how}d module's images differ from the generator's by "
                                 f"{(got - expected).abs().max().item():.2g}")
        except Exception as e:
            failures.append(f"{how}: {first_line(e)}")
            continue
        if failures:
            log.warning("the generator does not script (%s): exported by tracing", failures[0])
        return data
    raise UserError(f"export: the generator neither scripts nor traces to TorchScript ({'; '.join(failures)}); "
                    "--format pt2 writes a torch.export program instead")


def _program(wrapped: nn.Module, example: tuple) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1)
    try:
        return torch.export.export(wrapped, example, dynamic_shapes=tuple({0: batch} for _ in example))
    except Exception as e:
        raise UserError(f"export: torch.export cannot capture the generator ({first_line(e)})") from None


FORMATS = ("torchscript", "pt2", "both")


def export(source: str | Path, out: str | Path, pt2: bool = False, ema: bool = True,
           models: Optional[Callable] = None, best: bool = False, format: str = "") -> dict:
    """Write the generator of a run: TorchScript at OUT (format torchscript), a torch.export
    program at OUT with suffix .pt2 (pt2), or both (both, or pt2=True); OUT.json beside them."""
    format = format or ("both" if pt2 else "torchscript")
    if format not in FORMATS:
        raise UserError(f"--format: choose from {', '.join(FORMATS)}, got {format!r}")
    generator, meta = load_generator(source, ema, models, best)
    wrapped = (ConditionalGenerator if meta["num_classes"] else UnconditionalGenerator)(generator).eval()
    z = torch.randn(2, meta["z_dim"], generator=torch.Generator().manual_seed(0))
    args = (z, torch.eye(meta["num_classes"])[:2] if meta["num_classes"] > 1 else torch.ones(2, 1)) \
        if meta["num_classes"] else (z,)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    files = []
    if format in ("torchscript", "both"):
        data = _torchscript(wrapped, args)
        out.write_bytes(data)
        files.append(str(out))
    if format in ("pt2", "both"):
        path = out.with_suffix(".pt2")
        torch.export.save(_program(wrapped, args), str(path))
        files.append(str(path))
    meta_path = out.with_suffix(".json")
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return {**meta, "files": files + [str(meta_path)]}


def _is_torchscript(path: Path) -> bool:
    # TorchScript archives keep the module's code under <name>/code/; checkpoints do not.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n for n in z.namelist())


def _sidecar(source: Path, raw: bool) -> dict:
    sidecar = source.with_suffix(".json")
    if not sidecar.is_file():
        raise UserError(f"{source} is an exported generator but {sidecar} (z_dim, num_classes) is missing")
    try:
        meta = json.loads(sidecar.read_text())
        meta["z_dim"], meta["num_classes"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{sidecar}: not the JSON gan_dist.export writes ({first_line(e)})") from None
    if raw and meta.get("ema"):  # the export kept only the EMA weights
        raise UserError(f"--raw: {source} holds the EMA generator only; give the run directory or checkpoint")
    return meta


def load_sampler(source: str | Path, raw: bool = False, models=None, best: bool = False) -> tuple[Generate, dict]:
    """(generate(z, onehot) -> images in [-1, 1], meta with z_dim, num_classes, ...) from a run
    directory (its latest checkpoint), a checkpoint file, or an exported generator: FILE.pt
    (TorchScript) or FILE.pt2 (torch.export), with FILE.json beside it."""
    source = Path(source)
    if not source.exists():
        raise UserError(f"source not found: {source}")
    if source.is_file() and not best and (source.suffix == ".pt2" or _is_torchscript(source)):
        meta = _sidecar(source, raw)
        try:
            module = torch.export.load(str(source)).module() if source.suffix == ".pt2" else jit.load(source)
        except Exception as e:
            raise UserError(f"{source}: cannot load the exported generator ({first_line(e)})") from None

        @torch.no_grad()
        def generate(z, onehot):
            return (module(z) if onehot is None else module(z, onehot)).float()
        return generate, meta
    generator, meta = load_generator(source, ema=not raw, models=models, best=best)
    return (lambda z, onehot: samples.generate(generator, z, onehot)), meta
