"""Sample quality during training, in a feature network's space (features.py): Frechet distance
(FID), KID, improved precision and recall (fidelity and diversity apart: mode dropping lowers
recall), class-wise Frechet distances and conditional accuracy for conditional models
(metrics.py).

The real set is split once into a reference half and a held-out half (at most REAL_IMAGES
each): generated samples are scored against the reference, and so is the held-out half, which
gives each metric's real-vs-real value (logged beside it as ref_NAME).

evaluate() follows the equivalence principle: the global noise/label set depends on the seed
only, rank r generates rows r, r+W, ..., and the gathered features are in global order, so W
ranks compute what one process computes, and every rank returns the same numbers.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from gan_dist.distributed import World, broadcast_object, gather_rows, max_over_ranks, rows
from gan_dist.distributed.seeding import seeded_generator
from gan_dist.errors import UserError
from gan_dist.quality import metrics
from gan_dist.quality.features import FeatureNet, load_feature_network
from gan_dist.quality.metrics import feature_stats, frechet_distance


@torch.no_grad()
def _batched(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch: int, device) -> torch.Tensor:
    return torch.cat([fn(images[i:i + batch].to(device).float()).float() for i in range(0, len(images), batch)])


REAL_IMAGES = 10_000  # the most real images on each side of the reference split
SPLIT_SEED = 20241125  # fixed: every run of a dataset compares against the same real images


class NotFinite(Exception):
    """The generated images' features are not finite: a divergence, not an error of the metrics."""


@dataclass
class Reference:
    """The real side of every metric, computed once per run: the features (and labels) of the
    reference half of the real set, and what the other, held-out half scores against it --
    real-vs-real, the value a perfect generator would reach at these sample sizes."""
    features: torch.Tensor  # [M, D] float32, CPU
    labels: torch.Tensor    # [M]
    real_vs_real: dict
    num_samples: int = 0    # held-out images behind real_vs_real: generated sets are scored at this n too

    def __post_init__(self):
        self.stats = feature_stats(self.features)


def scores(features: torch.Tensor, labels: torch.Tensor, predicted: Optional[torch.Tensor],
           reference: Reference, num_classes: int, eval_cfg) -> dict:
    """Every metric of a set of features (generated, or held-out real) against the reference:
    Frechet distance, KID, improved precision/recall, and for conditional models the
    class-wise Frechet distances and the conditional accuracy (when the network classifies)."""
    out = {"fid": frechet_distance(*feature_stats(features), *reference.stats)}
    out["kid"], out["kid_std"] = metrics.kid(features, reference.features, eval_cfg.kid_subsets,
                                             eval_cfg.kid_subset_size, seed=SPLIT_SEED)
    out["precision"], out["recall"] = metrics.precision_recall(features, reference.features, k=metrics.K_NN)
    if num_classes:
        per_class = metrics.class_frechet(features, labels, reference.features, reference.labels, num_classes)
        if per_class:  # the class-wise mode dropping a global number averages away
            out["fid_class_mean"] = sum(per_class.values()) / len(per_class)
            out["fid_class_max"] = max(per_class.values())
            out.update({f"fid_class/{c}": v for c, v in sorted(per_class.items())})
        if predicted is not None:
            out["cond_acc"] = (predicted.cpu() == labels.cpu()).double().mean().item()
    return out


def _features(feature_net: FeatureNet, images: torch.Tensor, world: World, total: int, device,
              batch: int = 256) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(features, predicted classes or None) of all `total` images, rank r holding rows r, r+W, ..."""
    feats = gather_rows(_batched(feature_net.features, images, batch, device).cpu(), total, world)
    if feature_net.logits is None:
        return feats, None
    predicted = _batched(feature_net.logits, images, batch, device).argmax(1).cpu()
    return feats, gather_rows(predicted, total, world)


def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(reference, held-out) indices of a real set of n images: disjoint, equal in size, at
    most REAL_IMAGES each, the same for every run."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    m = min(REAL_IMAGES, n // 2)
    return perm[:m], perm[m:2 * m]


def reference_from_shares(feature_net: FeatureNet, shares: dict, totals: dict, num_classes: int, eval_cfg,
                          world: World, device) -> Reference:
    """shares: {"reference"|"held_out": (images, labels)}, rank r holding rows r, r+W, ... of each
    (a rank never loads the whole real set); totals: their full sizes."""
    for name, total in totals.items():
        if total < max(metrics.K_NN + 1, world.world_size):
            raise UserError(f"evaluation: {total} real images in the {name} half are too few for "
                            f"{world.world_size} rank(s)")
    ref_feats, _ = _features(feature_net, shares["reference"][0], world, totals["reference"], device)
    held_feats, held_pred = _features(feature_net, shares["held_out"][0], world, totals["held_out"], device)
    ref_labels, held_labels = (gather_rows(shares[n][1].cpu(), totals[n], world) for n in ("reference", "held_out"))
    reference = Reference(ref_feats, ref_labels, {}, totals["held_out"])
    reference.real_vs_real = scores(held_feats, held_labels, held_pred, reference, num_classes, eval_cfg)
    return reference


def effective_every(cfg, own_data: bool, is_main: bool) -> int:
    """eval.every, or 0 with a warning where the default feature network cannot measure the
    data (it knows handwritten digits only): the default eval.every must not stop other runs."""
    if not cfg.eval.every or cfg.eval.features.partition(":")[0] != "digits" or \
            (cfg.data.name == "digits" and not own_data):
        return cfg.eval.every
    advice = "give eval.features=fid_inception[:PATH] or torchscript:PATH"
    if cfg.train.keep_best:
        raise UserError(f"train.keep_best: the digits classifier (eval.features={cfg.eval.features}) measures "
                        f"handwritten digits only: {advice}")
    if is_main:
        logging.getLogger("gan_dist").warning(
            f"evaluation is off: eval.features={cfg.eval.features} measures handwritten digits only, not "
            f"{'your data' if own_data else cfg.data.name} ({advice}, or eval.every=0 to silence this)")
    return 0


def prepare(cfg, dataset, world: World, info, run_dir) -> tuple[FeatureNet, Reference]:
    """(feature network, reference) for a run: loaded at start-up, so a bad network fails
    before any training. The reference is cached in RUN_DIR/eval/: a resumed run reads it."""
    from torch.utils.data import Subset

    from gan_dist.data import materialize
    from gan_dist.data.images import to_unit

    feature_net = load_feature_network(cfg.eval.features, world.device, info.image_size, world)
    ref_idx, held_idx = split(len(dataset))
    # FID is biased by the sample count: generated and held-out real images are scored at the
    # same n, so ref_* is the value a perfect generator reaches at this evaluation's size.
    n = min(cfg.eval.num_samples, len(held_idx))
    held_idx = held_idx[:n]
    if world.is_main:
        print(f"evaluation: {n} generated and {n} held-out real images, each against the {len(ref_idx)}-image "
              "reference half" + (f" (eval.num_samples={cfg.eval.num_samples}: the held-out half has only {n})"
                                  if n < cfg.eval.num_samples else ""), flush=True)
    key = hashlib.sha256(repr((feature_net.identity, feature_net.name, cfg.data.name, cfg.data.root, cfg.eval.real,
                               info.image_size, info.channels, len(dataset), len(ref_idx), n, cfg.eval.kid_subsets,
                               cfg.eval.kid_subset_size)).encode()).hexdigest()[:16]
    path = run_dir.eval / f"reference_{key}.pt"
    if broadcast_object(world.is_main and path.is_file(), world):  # every rank reads it: run.dir is shared
        reference = None
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            reference = Reference(saved["features"], saved["labels"], saved["real_vs_real"], n)
        except Exception as e:  # damaged, or not yet visible to this node: recomputed, never trusted
            logging.getLogger("gan_dist").warning(f"{path} is unreadable on rank {world.rank} "
                                                  f"({type(e).__name__}); recomputing it")
        if not max_over_ranks(int(reference is None), world):  # all ranks use it, or none does
            return feature_net, reference
    shares = {name: materialize(Subset(dataset, idx[rows(world)].tolist()), torch.device("cpu"))
              for name, idx in (("reference", ref_idx), ("held_out", held_idx))}
    shares = {name: (to_unit(images), labels) for name, (images, labels) in shares.items()}
    reference = reference_from_shares(feature_net, shares, {"reference": len(ref_idx), "held_out": len(held_idx)},
                                      info.num_classes, cfg.eval, world, world.device)
    if world.is_main:
        tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"features": reference.features, "labels": reference.labels,
                        "real_vs_real": reference.real_vs_real}, tmp)
            tmp.replace(path)
        except OSError as e:  # only a cache: the run goes on
            tmp.unlink(missing_ok=True)
            logging.getLogger("gan_dist").warning(f"could not cache {path} ({e.strerror or e})")
    return feature_net, reference


@torch.no_grad()
def evaluate(generator: torch.nn.Module, feature_net: FeatureNet, reference: Reference, eval_cfg,
             num_classes: int, z_dim: int, seed: int, world: World, batch: int = 256) -> dict:
    """Every metric of n generated images (scores()), n = eval_cfg.num_samples or fewer: the
    reference's held-out count, so each value and its real-vs-real ref_NAME share a sample
    size; the same on every rank. `generator` is the bare module (not DDP)."""
    num_samples, device = min(eval_cfg.num_samples, reference.num_samples or eval_cfg.num_samples), world.device
    if num_samples < max(metrics.K_NN + 1, world.world_size):
        raise UserError(f"eval.num_samples: {num_samples} must be above {metrics.K_NN} (the k-NN of precision/recall) "
                        "and at least the world size")
    g = seeded_generator(seed, "eval")
    z = torch.randn(num_samples, z_dim, generator=g)
    labels = torch.randint(max(num_classes, 1), (num_samples,), generator=g)  # the same on every rank
    mine = labels[rows(world)]
    onehot = F.one_hot(mine, num_classes).float() if num_classes else None
    was_training = generator.training
    generator.eval()  # BatchNorm running statistics: a sample must not depend on its batch
    try:
        images = torch.cat([generator(z[rows(world)][i:i + batch].to(device),  # stay on the device
                                      None if onehot is None else onehot[i:i + batch].to(device)).float()
                            for i in range(0, len(mine), batch)])
    finally:
        generator.train(was_training)
    feats, predicted = _features(feature_net, images, world, num_samples, device, batch)
    if not torch.isfinite(feats).all():  # gathered: every rank reaches the same verdict
        raise NotFinite("the sample generator's images are not finite (their features are NaN or inf)")
    result = scores(feats, labels, predicted, reference, num_classes, eval_cfg)
    return {**result, **{f"ref_{k}": v for k, v in reference.real_vs_real.items() if not k.startswith("fid_class/")}}
