import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # `import helpers` from any test

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))


@pytest.fixture(scope="session")
def _cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("gan_dist_cache")


@pytest.fixture(autouse=True)
def _gan_dist_cache(_cache_dir, monkeypatch):
    """The digits classifier is created once per session, here, never in the user's ~/.cache."""
    monkeypatch.setenv("GAN_DIST_CACHE", str(_cache_dir))
