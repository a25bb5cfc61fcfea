"""The data: datasets.py (digits, Fashion-MNIST, ImageFolder as (image in [-1, 1], label); the
dataset contract and its check; each factory run rank 0 first), stream.py (sharding with the
row rule, the resumable position in samples, the loader and its workers). Imports
distributed, config, registry, errors."""
from gan_dist.data.datasets import DataInfo, build_dataset, check_dataset  # noqa: F401
from gan_dist.data.stream import BatchStream, ResumableSampler, materialize  # noqa: F401
