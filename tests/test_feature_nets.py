"""The FID Inception network through torch-fidelity (random weights: the plumbing, not the
values; the network never downloads here) and the self-creating, cached digits classifier."""
from __future__ import annotations

import io
import urllib.error
import warnings

import pytest
import torch

from gan_dist.distributed import World
from gan_dist.errors import UserError
from gan_dist.quality import digits_classifier as D
from gan_dist.quality import inception

tf_inception = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")


def offline(monkeypatch):
    def refuse(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture(scope="module")
def fid_net(tmp_path_factory):
    """(torch-fidelity's own module with random weights, the .pth file of those weights)."""
    cls = tf_inception.FeatureExtractorInceptionV3
    with pytest.MonkeyPatch.context() as mp:  # its constructor insists on loading weights
        mp.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: None)
        mp.setattr(cls, "load_state_dict", lambda self, state: None)
        net = cls("inception-v3-compat", ["2048"])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # signal-preserving random weights, so features are O(1), not 1e-8
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2 / fan_in) ** 0.5)
            elif isinstance(m, torch.nn.BatchNorm2d):
                for t, lo, hi in ((m.weight, 0.8, 1.2), (m.bias, -0.1, 0.1), (m.running_mean, -0.1, 0.1),
                                  (m.running_var, 0.8, 1.2)):
                    t.copy_(lo + (hi - lo) * torch.rand(t.shape, generator=g))
    path = tmp_path_factory.mktemp("fid") / "random-inception.pth"
    # as torch-fidelity's converter writes the real file: a plain dict, no num_batches_tracked
    torch.save({k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    return net.eval(), path


def test_fid_inception_features_are_torch_fidelitys(fid_net):
    reference, path = fid_net
    features = inception.load(str(path), torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (2, 3, 20, 20), generator=g, dtype=torch.uint8)  # any size: resized to 299
    pixels[1] = pixels[1, :1]  # a gray image, as RGB
    images = pixels / 127.5 - 1  # what our data loader makes of uint8 pixels
    ours = features(images)
    assert ours.shape == (2, 2048) and ours.dtype == torch.float32 and ours.std() > 1e-2
    assert torch.equal(features(images[1:, :1]), ours[1:])  # grayscale = the same image repeated in RGB
    assert torch.allclose(ours, reference(pixels)[0], rtol=1e-5, atol=1e-5)  # torch-fidelity's forward

def test_uint8_conversion_is_torchmetrics_and_gives_back_uint8_pixels():
    levels = torch.arange(256)
    for x in (levels / 127.5 - 1, (levels / 255 - 0.5) / 0.5):  # from uint8 files, as our data does
        assert torch.equal(inception.to_uint8(x), levels.to(torch.uint8))
    x = torch.rand(10_000, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torchmetrics = (((x + 1) / 2) * 255).byte()  # FrechetInceptionDistance(normalize=True)
    differ = inception.to_uint8(x) != torchmetrics
    assert differ.sum() <= 20  # only values within 1e-3 of a level below it
    assert torch.equal(inception.to_uint8(torch.tensor([-3.0, 3.0])), torch.tensor([0, 255], dtype=torch.uint8))


def test_fid_inception_cache_download_and_offline_error(fid_net, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints" / inception.FILE_NAME
    assert inception.cache_path() == cache
    offline(monkeypatch)
    with pytest.raises(UserError) as e:
        inception.load("", torch.device("cpu"))
    message = str(e.value)
    assert "\n" not in message and str(cache.parent) in message and inception.URL in message
    assert inception.FILE_NAME in message and "eval.features=fid_inception:PATH" in message

    fetched = []  # a connected machine: torch.hub's download puts the file in the cache

    def download(url, dst, *args, **kwargs):
        fetched.append((url, dst))
        with open(dst, "wb") as f:
            f.write(fid_net[1].read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    assert inception.weights_file("") == cache and fetched == [(inception.URL, str(cache))]
    offline(monkeypatch)  # found in the cache now: no download
    assert inception.weights_file("") == cache and len(fetched) == 1


def test_fid_inception_bad_files_and_missing_torch_fidelity(tmp_path, monkeypatch):
    cpu = torch.device("cpu")
    missing, text, foreign = tmp_path / "missing.pth", tmp_path / "text.pth", tmp_path / "foreign.pth"
    text.write_text("not weights\n")
    torch.save({"fc.weight": torch.zeros(3, 3)}, foreign)
    for p in (missing, text, foreign):
        with pytest.raises(UserError) as e:
            inception.load(str(p), cpu)
        assert str(p) in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setitem(__import__("sys").modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    with pytest.raises(UserError, match=r"pip install torch-fidelity \(or gan_dist\[fid\]\)"):
        inception.load(str(foreign), cpu)


def jit_classifier(data: bytes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(io.BytesIO(data), map_location="cpu")


def test_digits_classifier_is_created_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GAN_DIST_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "cache" / "digits_classifier_16.pt"
    assert D.default_path(16) == path
    lines = []
    first = D.load_or_create(None, 16, World(), log=lines.append, epochs=1)
    assert path.read_bytes() == first and path.with_suffix(".json").is_file()
    assert lines == [f"creating the digits classifier for 16x16 images in {path} (once, cached)"]
    assert not list(path.parent.glob(".*.tmp"))  # the temporary file was moved into place

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(D, "train", no_training)
    assert D.load_or_create(None, 16, World(), log=lines.append) == first and len(lines) == 1
    module = jit_classifier(first)
    with torch.no_grad():
        x = D.digits_tensors(16)[0][:4]
        assert module(x).shape == (4, 10) and module.features(x).shape == (4, D.FEATURE_DIM)
    assert int(module.image_size) == 16


def test_digits_classifier_without_a_writable_cache_and_with_a_missing_path(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("GAN_DIST_CACHE", str(blocker / "cache"))  # cannot be made: a file is in the way
    lines = []
    data = D.load_or_create(None, 16, World(), log=lines.append, epochs=1)
    assert len(lines) == 2 and lines[1].startswith("warning: cannot cache the digits classifier")
    with torch.no_grad():
        assert jit_classifier(data)(torch.zeros(2, 1, 16, 16)).shape == (2, 10)
    with pytest.raises(UserError, match="digits classifier .*no-such.pt not found"):
        D.load_or_create(str(tmp_path / "no-such.pt"), 16, World())


def test_digits_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("GAN_DIST_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert D.cache_dir() == tmp_path / "xdg" / "gan_dist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert D.cache_dir() == tmp_path / "home" / ".cache" / "gan_dist"
    monkeypatch.setenv("GAN_DIST_CACHE", str(tmp_path / "mine"))
    assert D.default_path(8) == tmp_path / "mine" / "digits_classifier_8.pt"
