"""Run on each rank: evaluate() a fixed tiny generator against the digits; writes OUT/rank{r}.json.
argv: OUT CLASSIFIER NUM_SAMPLES. Also imported by tests/test_evaluation.py for the same inputs."""
import json
import sys
from pathlib import Path

import torch


def inputs(classifier: str, device="cpu"):
    """(generator, feature net, real images): the same on every rank and in the 1-process run."""
    from gan_dist import config, evaluation
    from gan_dist.digits_classifier import digits_tensors
    from gan_dist.data import DataInfo
    from gan_dist.models import build_models

    torch.manual_seed(0)
    generator, _ = build_models(config.load(None, ["model.width=8", "model.z_dim=16"]), DataInfo(10, 1, 16))
    real, _ = digits_tensors(16)
    return generator, evaluation.load_feature_network(f"digits:{classifier}", device), real


if __name__ == "__main__":
    from gan_dist import distributed
    from gan_dist.evaluation import evaluate

    out, classifier, num_samples = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    world = distributed.setup(distributed.detect(), threads=1)
    generator, net, real = inputs(classifier)
    result = evaluate(generator, net, real, num_samples, 10, 16, seed=7, world=world, device="cpu", batch=16)
    (out / f"rank{world.rank}.json").write_text(json.dumps({**result, "world_size": world.world_size}))
    distributed.teardown()
