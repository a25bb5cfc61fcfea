"""Sample quality: Frechet distance in a feature network's space (FID with Inception v3) and
conditional accuracy (the share of generated samples a classifier puts in the class asked for).

Feature networks by spec (the config value eval.features):
  inception:PATH    torchvision's Inception v3, 2048-d pool features, weights from PATH
                    (the IMAGENET1K_V1 state_dict; nothing is downloaded). Comparable between
                    runs here, not to published FIDs (those use the TF Inception port)
  torchscript:PATH  a TorchScript module: images [B, C, H, W] in [-1, 1] -> features [B, D];
                    if it also has a `features` method, forward's output is taken as logits
  digits[:PATH]     the project's digits classifier (python -m gan_dist.digits_classifier),
                    default PATH runs/digits_classifier_{image_size}.pt

evaluate() follows the equivalence principle: the global noise/label set depends on the seed
only, rank r generates rows r, r+W, ..., and the gathered features are in global order, so W
ranks compute what one process computes, and every rank returns the same numbers.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from gan_dist.digits_classifier import default_path
from gan_dist.distributed import World, gather_rows, rows
from gan_dist.errors import UserError
from gan_dist.seeding import seeded_generator


def feature_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [D], unbiased covariance [D, D]) in float64, as numpy.cov(rowvar=False)."""
    if features.dim() != 2 or features.shape[0] < 2:
        raise UserError(f"feature statistics need at least 2 feature rows, got shape {tuple(features.shape)}")
    x = features.detach().to("cpu", torch.float64)
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    Tr((S1 S2)^(1/2)) equals the sum of square roots of the eigenvalues of the SYMMETRIC PSD
    matrix sqrt(S1) S2 sqrt(S1) (same spectrum as S1 S2). eigvalsh of that is stable where
    sqrtm(S1 @ S2) of a non-symmetric product goes complex or inaccurate (rank-deficient
    covariances: fewer samples than feature dimensions)."""
    mu1, mu2, s1, s2 = (torch.as_tensor(t).to("cpu", torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    if s1.shape != s2.shape or mu1.shape != mu2.shape or s1.shape != (mu1.numel(), mu1.numel()):
        raise UserError(f"frechet_distance: shapes do not match ({tuple(mu1.shape)}, {tuple(s1.shape)}, "
                        f"{tuple(mu2.shape)}, {tuple(s2.shape)})")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    w, v = torch.linalg.eigh(s1)
    root1 = (v * w.clamp(min=0).sqrt()) @ v.T
    m = root1 @ s2 @ root1
    tr_covmean = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + torch.trace(s1) + torch.trace(s2) - 2 * tr_covmean)


def conditional_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of samples whose argmax class is the label they were generated for."""
    return (logits.argmax(1).cpu() == labels.cpu()).double().mean().item()


@dataclass
class FeatureNet:
    """features(images in [-1, 1]) -> [B, D]; logits(images) -> [B, K], or None if it has none."""
    name: str
    features: Callable[[torch.Tensor], torch.Tensor]
    logits: Optional[Callable[[torch.Tensor], torch.Tensor]] = None


def _jit_load(path: Path, device: torch.device, missing: str):
    if not path.is_file():
        raise UserError(f"eval.features: {missing}")
    with warnings.catch_warnings():  # torch.jit is deprecated in torch 2.14 but works
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        try:
            return torch.jit.load(str(path), map_location=device).eval()
        except (RuntimeError, ValueError) as e:
            raise UserError(f"eval.features: {path} is not TorchScript ({str(e).splitlines()[0]})") from None


def _torchscript(path: Path, device: torch.device) -> FeatureNet:
    module = _jit_load(path, device, f"TorchScript feature network {path} not found")
    if hasattr(module, "features"):  # a classifier: features() for FID, forward for logits
        return FeatureNet(f"torchscript:{path}", module.features, module.forward)
    return FeatureNet(f"torchscript:{path}", module.forward)


def _digits(path: Optional[str], device: torch.device, image_size: int) -> FeatureNet:
    p = Path(path) if path else default_path(image_size)
    module = _jit_load(p, device, f"digits classifier {p} not found; create it with "
                       f"`python -m gan_dist.digits_classifier --out {p} --image-size {image_size}`")
    size = int(module.image_size)

    def check(x: torch.Tensor) -> torch.Tensor:  # resizing would silently change what is measured
        if tuple(x.shape[1:]) != (1, size, size):
            raise UserError(f"eval.features: digits classifier {p} takes [B, 1, {size}, {size}] images, got "
                            f"{list(x.shape)}; train one for this size with "
                            f"`python -m gan_dist.digits_classifier --image-size {x.shape[-1]} --out ...`")
        return x

    return FeatureNet(f"digits:{p}", lambda x: module.features(check(x)), lambda x: module(check(x)))


def _inception(path: str, device: torch.device) -> FeatureNet:
    from torchvision.models import inception_v3

    p = Path(path)
    if not path or not p.is_file():
        raise UserError("eval.features: the standard FID needs the Inception v3 weights file (torchvision's "
                        "IMAGENET1K_V1 state_dict, inception_v3_google-0cc3c7bd.pth) as inception:PATH; "
                        + (f"not found: {p}" if path else "no PATH given"))
    # transform_input=False: torchvision's pretrained pipeline feeds ImageNet-normalized images
    # and transform_input maps them back to (x01 - 0.5) / 0.5 before the first conv, i.e. to
    # [-1, 1]. Our images are already in [-1, 1], so they go in as they are (same numbers,
    # tested against transform_input=True with ImageNet normalization).
    net = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise TypeError(f"it holds a {type(state).__name__}, not a dict of tensors")
        net.load_state_dict(state)
    except Exception as e:  # torch.load raises many types for files that are not checkpoints
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"eval.features: {p} is not an Inception v3 state_dict ({cause})") from None
    net.fc = torch.nn.Identity()  # 2048-d pool features, as FID uses
    net = net.to(device).eval()

    def features(images: torch.Tensor) -> torch.Tensor:
        x = images.float().clamp(-1, 1).expand(-1, 3, -1, -1)  # grayscale -> 3 channels (RGB: no-op)
        return net(F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False))

    return FeatureNet(f"inception:{p}", features)


def load_feature_network(spec: str, device, image_size: int = 16) -> FeatureNet:
    """A FeatureNet from a spec (module docstring); image_size picks the default digits file."""
    device = torch.device(device)
    kind, _, path = spec.partition(":")
    if kind == "inception":
        return _inception(path, device)
    if kind == "torchscript" and path:
        return _torchscript(Path(path), device)
    if kind == "digits":
        return _digits(path or None, device, image_size)
    raise UserError(f"eval.features: unknown feature network {spec!r} "
                    "(expected inception:PATH, torchscript:PATH, digits or digits:PATH)")


@torch.no_grad()
def _batched(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch: int, device) -> torch.Tensor:
    return torch.cat([fn(images[i:i + batch].to(device).float()).float() for i in range(0, len(images), batch)])


REAL_IMAGES = 10_000  # real images behind the reference statistics (fewer if the dataset is smaller)


def real_statistics(feature_net: FeatureNet, real_images: torch.Tensor, world: World, device,
                    batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, sigma) of the real images' features, every rank given ALL of them; see share_statistics."""
    total = len(real_images)
    return share_statistics(feature_net, real_images[rows(world)], total, world, device, batch)


def share_statistics(feature_net: FeatureNet, share: torch.Tensor, total: int, world: World, device,
                     batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, sigma) of `total` real images' features, rank r holding only rows r, r+W, ... of
    them (its share: a rank never loads the whole real set). Compute once per run and pass as
    evaluate(real_stats=...): the real set does not change."""
    if total < max(2, world.world_size):
        raise UserError(f"evaluation: {total} real images are too few for {world.world_size} rank(s)")
    feats = gather_rows(_batched(feature_net.features, share, batch, device), total, world)
    return feature_stats(feats)


def prepare(spec: str, dataset, world: World, device, image_size: int):
    """(feature network, real statistics) for a run: loaded at start-up, so a bad network
    fails before any training. Each rank loads only its share of the real images."""
    from torch.utils.data import Subset

    from gan_dist.data import materialize

    feature_net = load_feature_network(spec, device, image_size=image_size)
    total = min(len(dataset), REAL_IMAGES)
    share = materialize(Subset(dataset, range(total)[rows(world)]), torch.device("cpu"))[0]
    return feature_net, share_statistics(feature_net, share, total, world, device)


@torch.no_grad()
def evaluate(generator: torch.nn.Module, feature_net: FeatureNet, real_images: Optional[torch.Tensor],
             num_samples: int, num_classes: int, z_dim: int, seed: int, world: World, device,
             batch: int = 256, real_stats: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> dict:
    """{"fid": float, "cond_acc": float or None} for num_samples generated images, the same on
    every rank. `generator` is the bare module (not DDP): generator(z, onehot or None)."""
    if num_samples < max(2, world.world_size):
        raise UserError(f"eval.num_samples: {num_samples} must be at least 2 and at least the world size")
    if real_stats is None:
        if real_images is None:
            raise UserError("evaluate: give real_images or real_stats")
        real_stats = real_statistics(feature_net, real_images, world, device, batch)
    g = seeded_generator(seed, "eval")
    z = torch.randn(num_samples, z_dim, generator=g)
    labels = torch.randint(max(num_classes, 1), (num_samples,), generator=g)
    z, labels = z[rows(world)], labels[rows(world)]
    onehot = F.one_hot(labels, num_classes).float() if num_classes else None
    scored = bool(num_classes) and feature_net.logits is not None
    feats, correct = [], torch.zeros(1, dtype=torch.float64)
    was_training = generator.training
    generator.eval()  # BatchNorm running statistics: a sample must not depend on its batch
    try:
        for i in range(0, len(z), batch):
            images = generator(z[i:i + batch].to(device),
                               None if onehot is None else onehot[i:i + batch].to(device)).float()
            feats.append(feature_net.features(images).float())
            if scored:
                correct += (feature_net.logits(images).argmax(1).cpu() == labels[i:i + batch]).sum()
    finally:
        generator.train(was_training)
    fid = frechet_distance(*feature_stats(gather_rows(torch.cat(feats), num_samples, world)), *real_stats)
    if scored and world.distributed:
        dist.all_reduce(correct, group=world.cpu_group)  # counts, not shares: exact for any split
    return {"fid": fid, "cond_acc": float(correct.item()) / num_samples if scored else None}
