"""The standard FID feature network: the TensorFlow Inception v3 (2015-12-05) ported to PyTorch,
as torch-fidelity ships it (weights-inception-2015-12-05-6726825d.pth; the network pytorch-fid
and torchmetrics' FrechetInceptionDistance use too), through torch-fidelity's own module, so
features are the ones published FIDs are computed from.

Weights: an explicit file, else torch-fidelity's usual place, torch.hub's checkpoint directory
($TORCH_HOME/hub/checkpoints, TORCH_HOME defaulting to $XDG_CACHE_HOME/torch or ~/.cache/torch),
downloaded there once (as torch-fidelity does) when a machine is online. Offline: one error line
saying where to put the file.

Input conversion: images in [-1, 1] are mapped to [0, 1] and to uint8 as torchmetrics does for
`normalize=True` (x * 255, truncated), except that values a float rounding error below a level
(<= 1e-3 of a level) count as that level: images that came from uint8 files (ToTensor and
Normalize(0.5, 0.5), or u / 127.5 - 1) give back exactly their pixels, where plain truncation
moves 63 of the 256 levels one down. torch-fidelity then resizes to 299x299 with TF 1.x's
bilinear rule (torchmetrics' default `antialias=True` resizes differently).
"""
from __future__ import annotations

import io
import socket
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from gan_dist.errors import UserError, first_line

FILE_NAME = "weights-inception-2015-12-05-6726825d.pth"
URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{FILE_NAME}"
FEATURE_DIM = 2048
DOWNLOAD_TIMEOUT_S = 60.0  # per socket operation: a dead network fails instead of hanging
_EPS = 1e-3  # of one uint8 level: float error of [-1, 1] <-> [0, 255] round trips is ~1e-5


def cache_path() -> Path:
    """Where torch.hub.load_state_dict_from_url (what torch-fidelity calls) keeps the file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FILE_NAME


def _module_class():
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as e:
        raise UserError(f"eval.features: the FID Inception network needs torch-fidelity ({e}): "
                        "pip install torch-fidelity (or gan_dist[fid])") from None
    return FeatureExtractorInceptionV3


def _download(url: str, dst: Path) -> None:
    """torch.hub's download (a temporary name, then a move: never a half file at dst)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.download_url_to_file(url, str(dst), progress=False)
    finally:
        socket.setdefaulttimeout(previous)


def weights_file(path: str) -> Path:
    """The weights file to load: `path` if given (it must exist), else the cache file,
    downloading it first if it is not there. Call it once on one rank before the others load
    when several ranks share the cache directory (they would all download otherwise)."""
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(f"eval.features: FID Inception weights {p} not found")
        return p
    p = cache_path()
    if p.is_file():
        return p
    print(f"downloading the FID Inception weights {URL} to {p}", file=sys.stderr, flush=True)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        _download(URL, p)
    except Exception as e:  # URLError, timeouts, refused connections, HTTP errors, a read-only cache
        reason = first_line(e)
        raise UserError(f"eval.features: the FID Inception weights {FILE_NAME} are not in {p.parent} and "
                        f"could not be downloaded from {URL} ({reason}); put the file there (download it on a "
                        f"connected machine) or give it as eval.features=fid_inception:PATH") from None
    return p


def _state_dict(p: Path, data: bytes) -> dict:
    """Tensors only (weights_only=True; torch-fidelity itself unpickles with weights_only=False)."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types for files that are not checkpoints
        cause = first_line(e)
        if cause.startswith("Weights only load failed"):  # torch's advice (weights_only=False) does not apply
            cause = "not a file of tensors that torch.load(weights_only=True) reads"
        raise UserError(f"eval.features: {p} is not a weights file of the FID Inception network ({cause})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"eval.features: {p} is not a weights file of the FID Inception network "
                        f"(it holds a {type(state).__name__}, not a dict of tensors)")
    return state


def to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] float -> uint8 0..255: [0, 1] times 255, truncated (torchmetrics' normalize=True
    conversion), values within _EPS of a level below it counting as that level; clamped first."""
    x01 = (images.float().clamp(-1, 1) + 1) / 2
    return (x01 * 255 + _EPS).clamp(0, 255).to(torch.uint8)


def load(path: str, device: torch.device) -> Callable[[Tensor], Tensor]:
    """features(images [B, C, H, W] float in [-1, 1], C = 1 or 3, any H, W) -> [B, 2048] float32:
    the pool features torch-fidelity computes for FID, on `device`."""
    _module_class()  # before any download: without torch-fidelity the file is of no use
    p = weights_file(path)
    return from_bytes(p.read_bytes(), p, device)


def from_bytes(data: bytes, p: Path, device: torch.device) -> Callable[[Tensor], Tensor]:
    """load() from the weights file's bytes (read by one rank, sent to every rank); p names it."""
    cls = _module_class()
    state = _state_dict(p, data)
    buffer = io.BytesIO()  # tensors we checked, handed over where torch-fidelity takes a path
    torch.save(state, buffer)
    buffer.seek(0)
    del state
    try:
        net = cls("inception-v3-compat", ["2048"], feature_extractor_weights_path=buffer)
    except RuntimeError as e:  # load_state_dict: missing / unexpected keys, wrong shapes
        detail = [line.strip() for line in str(e).strip().splitlines()]
        detail = detail[1] if len(detail) > 1 else detail[0]
        raise UserError(f"eval.features: {p} is not a weights file of the FID Inception network "
                        f"({detail[:160]}{'...' if len(detail) > 160 else ''})") from None
    net = net.to(device).eval()
    device = torch.device(device)

    def features(images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise UserError(f"eval.features: the FID Inception network takes [B, 1 or 3, H, W] images, got "
                            f"{list(images.shape)}")
        x = to_uint8(images.to(device)).expand(-1, 3, -1, -1)  # grayscale -> RGB (RGB: no-op)
        with torch.no_grad():
            return net(x)[0]

    return features
