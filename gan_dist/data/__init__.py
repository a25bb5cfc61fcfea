"""The data: datasets.py (digits, Fashion-MNIST; the dataset contract, its check, the
fingerprint; each factory run rank 0 first), folder.py (ImageFolder, listed once), zipdata.py
(stylegan2-ada's zip layout), images.py (file -> uint8 pixels -> [-1, 1] on the device),
dataset_tool.py (python -m gan_dist.dataset_tool), stream.py (sharding with the row rule, the
resumable position in samples, the loader, its workers and their number). Imports
distributed, config, registry, errors."""
from gan_dist.data.datasets import DataInfo, build_dataset, check_dataset, fingerprint, held_out_real  # noqa: F401
from gan_dist.data.stream import BatchStream, ResumableSampler, materialize  # noqa: F401
