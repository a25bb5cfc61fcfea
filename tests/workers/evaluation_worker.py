"""Run on each rank: evaluate() a fixed tiny generator against the digits; writes OUT/rank{r}.json.
argv: OUT CLASSIFIER NUM_SAMPLES. Also imported by tests/test_evaluation.py for the same inputs."""
import json
import sys
from pathlib import Path

import torch


def inputs(classifier: str, num_samples: int = 60, world=None):
    """(generator, feature net, real images, labels, reference, eval config): the same on every
    rank and in the 1-process run; each rank computes the reference from its share."""
    from gan_dist import config
    from gan_dist.data import DataInfo
    from gan_dist.distributed import World, rows
    from gan_dist.models import build_models
    from gan_dist.quality import evaluation
    from gan_dist.quality.digits_classifier import digits_tensors

    world = world or World()
    cfg = config.load(None, ["model.width=8", "model.z_dim=16", f"eval.num_samples={num_samples}",
                             "eval.kid_subsets=3", "eval.kid_subset_size=40"])
    torch.manual_seed(0)
    generator, _ = build_models(cfg, DataInfo(10, 1, 16))
    real, labels = digits_tensors(16)
    net = evaluation.load_feature_network(f"digits:{classifier}", "cpu")
    ref_idx, held_idx = evaluation.split(len(real))
    shares = {n: (real[idx][rows(world)], labels[idx][rows(world)]) for n, idx in (("reference", ref_idx),
                                                                               ("held_out", held_idx))}
    reference = evaluation.reference_from_shares(net, shares, {"reference": len(ref_idx), "held_out": len(held_idx)},
                                                 10, cfg.eval, world, "cpu")
    return generator, net, real, labels, reference, cfg.eval


if __name__ == "__main__":
    from gan_dist import distributed
    from gan_dist.quality.evaluation import evaluate

    out, classifier, num_samples = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    world = distributed.setup(distributed.detect(), threads=1)
    generator, net, _, _, reference, eval_cfg = inputs(classifier, num_samples, world)
    result = evaluate(generator, net, reference, eval_cfg, 10, 16, seed=7, world=world, batch=16)
    (out / f"rank{world.rank}.json").write_text(json.dumps({**result, "world_size": world.world_size}))
    distributed.teardown()
