"""The feature networks that quality is measured in, by spec (the config value eval.features):
  digits[:PATH]         the project's digits classifier, found or created (a few seconds, once)
                        in the cache (digits_classifier.cache_dir) unless PATH is given
  fid_inception[:PATH]  the standard FID Inception (the TF-ported weights of pytorch-fid,
                        torch-fidelity, torchmetrics): FIDs comparable with papers; weights from
                        torch's hub cache (downloaded there on a connected machine) or PATH
  inception:PATH        torchvision's Inception v3 (IMAGENET1K_V1 state_dict), 2048-d pool
                        features: comparable between runs here, not to published FIDs
  torchscript:PATH      a TorchScript module: images [B, C, H, W] in [-1, 1] -> features [B, D];
                        if it also has a `features` method, forward's output is taken as logits
Loaded once per run and shared across ranks one way: rank 0 reads (downloads, creates) the
file, every rank builds the network from its bytes, a failure anywhere stops every rank."""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from gan_dist import jit
from gan_dist.distributed import World, on_every_rank, on_main
from gan_dist.errors import UserError, first_line
from gan_dist.quality import digits_classifier


@dataclass
class FeatureNet:
    """features(images in [-1, 1]) -> [B, D]; logits(images) -> [B, K], or None if it has none."""
    name: str
    features: Callable[[torch.Tensor], torch.Tensor]
    logits: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    identity: str = ""  # what the cached reference features were computed with


def _read(path: str, missing: str) -> bytes:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"eval.features: {missing.format(p=p)}")
    return p.read_bytes()


def _torchscript(data: bytes, path: str, device: torch.device) -> torch.jit.ScriptModule:
    try:
        return jit.load(data, device)
    except Exception as e:  # torch.jit raises many types for files that are not TorchScript
        raise UserError(f"eval.features: {path} is not TorchScript ({first_line(e)})") from None


def _torchscript_net(data: bytes, path: str, device: torch.device, image_size: int) -> FeatureNet:
    module = _torchscript(data, path, device)
    if hasattr(module, "features"):  # a classifier: features() for FID, forward for logits
        return FeatureNet(f"torchscript:{path}", module.features, module.forward)
    return FeatureNet(f"torchscript:{path}", module.forward)


def _digits_net(data: bytes, path: str, device: torch.device, image_size: int) -> FeatureNet:
    p = path or str(digits_classifier.default_path(image_size))
    module = _torchscript(data, p, device)
    if not isinstance(getattr(module, "image_size", None), int) or not hasattr(module, "features"):
        raise UserError(f"eval.features: {p} is TorchScript but not a digits classifier (no image_size and "
                        "features()): make one with `python -m gan_dist.digits_classifier --out PATH`")
    size = int(module.image_size)

    def check(x: torch.Tensor) -> torch.Tensor:  # resizing would silently change what is measured
        if tuple(x.shape[1:]) != (1, size, size):
            raise UserError(f"eval.features: digits classifier {p} takes [B, 1, {size}, {size}] images, got "
                            f"{list(x.shape)}; train one for this size with "
                            f"`python -m gan_dist.digits_classifier --image-size {x.shape[-1]} --out ...`")
        return x

    return FeatureNet(f"digits:{p}", lambda x: module.features(check(x)), lambda x: module(check(x)))


def _fid_inception_net(data: bytes, path: str, device: torch.device, image_size: int) -> FeatureNet:
    from gan_dist.quality import inception

    features = inception.from_bytes(data, Path(path) if path else inception.cache_path(), device)
    return FeatureNet(f"fid_inception:{path}" if path else "fid_inception", features)


def _inception_net(data: bytes, path: str, device: torch.device, image_size: int) -> FeatureNet:
    from torchvision.models import inception_v3

    # transform_input=False: torchvision's pretrained pipeline feeds ImageNet-normalized images
    # and transform_input maps them back to (x01 - 0.5) / 0.5 before the first conv, i.e. to
    # [-1, 1]. Our images are already in [-1, 1], so they go in as they are (same numbers,
    # tested against transform_input=True with ImageNet normalization).
    net = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise TypeError(f"it holds a {type(state).__name__}, not a dict of tensors")
        net.load_state_dict(state)
    except Exception as e:  # torch.load raises many types for files that are not checkpoints
        raise UserError(f"eval.features: {path} is not an Inception v3 state_dict ({first_line(e)})") from None
    net.fc = torch.nn.Identity()  # 2048-d pool features, as FID uses
    net = net.to(device).eval()

    def features(images: torch.Tensor) -> torch.Tensor:
        x = images.float().clamp(-1, 1).expand(-1, 3, -1, -1)  # grayscale -> 3 channels (RGB: no-op)
        return net(F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False))

    return FeatureNet(f"inception:{path}", features)


def _reader(kind: str, path: str, image_size: int) -> Callable[[], bytes]:
    """What rank 0 runs to get the network's file (it may download or create it)."""
    if kind == "digits":
        return lambda: digits_classifier.read_or_create(path or None, image_size, log=lambda m: print(m, flush=True))
    if kind == "fid_inception":
        from gan_dist.quality import inception

        return lambda: inception.weights_file(path).read_bytes()
    if kind == "inception":
        needs = ("inception:PATH needs the Inception v3 weights file (torchvision's IMAGENET1K_V1 state_dict, "
                 "inception_v3_google-0cc3c7bd.pth); ")
        if not path:
            raise UserError(f"eval.features: {needs}no PATH given")
        return lambda: _read(path, needs + "not found: {p}")
    return lambda: _read(path, "TorchScript feature network {p} not found")


BUILDERS = {"digits": _digits_net, "fid_inception": _fid_inception_net, "inception": _inception_net,
            "torchscript": _torchscript_net}


def load_feature_network(spec: str, device, image_size: int = 16, world: Optional[World] = None) -> FeatureNet:
    """A FeatureNet from a spec (module docstring); image_size picks the default digits file.
    One way for every network: rank 0 reads (or downloads, or creates) its file and sends the
    bytes to every rank, so nodes need not share a cache or see the path; every rank builds the
    network from them, and a failure anywhere stops every rank at once with its line."""
    device, world = torch.device(device), world or World()
    kind, _, path = spec.partition(":")
    if kind not in BUILDERS or (kind == "torchscript" and not path):
        raise UserError(f"eval.features: unknown feature network {spec!r} "
                        "(expected digits[:PATH], fid_inception[:PATH], inception:PATH or torchscript:PATH)")
    data = on_main(_reader(kind, path, image_size), world, f"eval.features={spec}")
    net = on_every_rank(lambda: BUILDERS[kind](data, path, device, image_size), world, f"eval.features={spec}")
    net.identity = hashlib.sha256(data).hexdigest()[:16]
    return net
