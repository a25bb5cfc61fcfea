"""Frechet distance against scipy's sqrtm formula; the digits classifier command and the
feature networks; evaluate() in 1 process and in 2 real gloo processes (same numbers)."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from workers.evaluation_worker import inputs

from gan_dist.cli.digits_classifier import main as classifier_main
from gan_dist.config import METRIC_DIRECTION
from gan_dist.distributed import World
from gan_dist.errors import UserError
from gan_dist.quality import evaluation as E
from gan_dist.quality.digits_classifier import digits_tensors
from helpers import ok, spawn

WORKER = str(Path(__file__).parent / "workers" / "evaluation_worker.py")


def scipy_fid(mu1, s1, mu2, s2) -> float:
    """The reference formula (pytorch-fid): sqrtm of the non-symmetric product."""
    from scipy import linalg

    covmean = linalg.sqrtm(s1 @ s2).real
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def rotated(eigenvalues, rng):
    q, _ = np.linalg.qr(rng.normal(size=(len(eigenvalues),) * 2))
    return q @ np.diag(eigenvalues) @ q.T


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    cases = []
    for d, n in ((8, 100), (64, 500), (64, 20), (128, 60)):  # the last two: fewer samples than dims
        a = rng.normal(size=(n, d))
        b = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.5 + 1.0
        cases.append((*E.feature_stats(torch.tensor(a)), *E.feature_stats(torch.tensor(b))))
    for cond in (1e6, 1e10, 1e14):  # ill-conditioned covariances
        e = np.logspace(0, -math.log10(cond), 16)
        cases.append((rng.normal(size=16), rotated(e, rng), rng.normal(size=16), rotated(3 * e[::-1], rng)))
    for mu1, s1, mu2, s2 in cases:
        ours = E.frechet_distance(mu1, s1, mu2, s2)
        ref = scipy_fid(*(np.asarray(t, dtype=np.float64) for t in (mu1, s1, mu2, s2)))
        assert abs(ours - ref) <= 1e-6 * abs(ref), (ours, ref)


def test_identical_is_zero_and_a_mean_shift_is_its_squared_norm():
    rng = np.random.default_rng(1)
    mu, sigma = E.feature_stats(torch.tensor(rng.normal(size=(300, 32)) @ rng.normal(size=(32, 32))))
    scale = float(torch.trace(sigma))
    assert abs(E.frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * scale
    shift = torch.tensor(rng.normal(size=32))
    assert E.frechet_distance(mu, sigma, mu + shift, sigma) == pytest.approx(float(shift @ shift), abs=1e-9 * scale)
    # feature_stats is numpy's mean and unbiased covariance
    x = rng.normal(size=(50, 5))
    m, s = E.feature_stats(torch.tensor(x, dtype=torch.float32))
    assert np.allclose(m, x.mean(0), atol=1e-6) and np.allclose(s, np.cov(x, rowvar=False), atol=1e-6)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """The command as a user runs it (fewer epochs than the default, to stay fast)."""
    out = tmp_path_factory.mktemp("clf") / "digits_16.pt"
    r = ok(spawn([sys.executable, "-m", "gan_dist.digits_classifier", "--out", str(out),
                  "--image-size", "16", "--epochs", "8"], timeout=120))[0]
    assert "held-out accuracy" in r.out
    return out


def test_digits_classifier_command_and_feature_net(classifier):
    meta = json.loads(classifier.with_suffix(".json").read_text())
    assert meta["image_size"] == 16 and meta["num_classes"] == 10 and meta["held_out_accuracy"] >= 0.9
    net = E.load_feature_network(f"digits:{classifier}", "cpu")
    images, labels = digits_tensors(16)
    with torch.no_grad():
        assert net.features(images[:4]).shape == (4, 128)
        assert (net.logits(images).argmax(1) == labels).double().mean() >= 0.9
        # any TorchScript with a `features` method serves the same way
        generic = E.load_feature_network(f"torchscript:{classifier}", "cpu")
        assert torch.equal(generic.features(images[:4]), net.features(images[:4]))
    with pytest.raises(UserError, match="takes \\[B, 1, 16, 16\\]"):
        net.features(torch.zeros(2, 1, 8, 8))


def test_feature_spec_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = {"digits:/no/clf.pt": "/no/clf.pt",
             "inception:/no/such.pth": "needs the Inception v3 weights file",
             "inception": "needs the Inception v3 weights file",
             "torchscript:/no/such.pt": "/no/such.pt", "resnet": "unknown feature network"}
    for spec, needle in cases.items():
        with pytest.raises(UserError) as e:
            E.load_feature_network(spec, "cpu", image_size=8)
        assert needle in str(e.value) and "\n" not in str(e.value)
    assert classifier_main(["--out", str(tmp_path / "x.pt"), "--image-size", "4"]) == 2


def test_inception_features_are_2048_and_match_torchvisions_pretrained_pipeline(tmp_path):
    from torchvision.models import inception_v3

    torch.manual_seed(0)  # random weights: this checks the plumbing, not the values
    reference = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=True)
    torch.save(reference.state_dict(), tmp_path / "inception.pth")
    net = E.load_feature_network(f"inception:{tmp_path / 'inception.pth'}", "cpu")
    assert net.logits is None
    images = torch.rand(2, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        feats = net.features(images)
        assert feats.shape == (2, 2048) and torch.isfinite(feats).all()
        # what torchvision's pretrained model is given: [0, 1] RGB at 299, ImageNet-normalized
        x = torch.nn.functional.interpolate((images.expand(-1, 3, -1, -1) + 1) / 2, size=(299, 299),
                                           mode="bilinear", align_corners=False)
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        reference.fc = torch.nn.Identity()
        expected = reference.eval()((x - mean[:, None, None]) / std[:, None, None])
    assert torch.allclose(feats, expected, atol=1e-4, rtol=1e-4)


def test_evaluate_one_process(classifier):
    generator, net, real, labels, reference, eval_cfg = inputs(str(classifier))
    generator.train()
    args = dict(num_classes=10, z_dim=16, seed=7, world=World(), batch=16)
    result = E.evaluate(generator, net, reference, eval_cfg, **args)
    assert generator.training  # mode restored
    assert 0 < result["fid"] < 1e4 and 0 <= result["cond_acc"] <= 1 and 0 <= result["recall"] <= 1
    assert set(METRIC_DIRECTION) <= set(result) and "kid_std" in result and "fid_class/3" in result
    # real-vs-real: held-out real digits score far better than a tiny untrained generator
    ref = reference.real_vs_real
    assert ref["cond_acc"] >= 0.9 and ref["recall"] > 0.5 and ref["fid"] < result["fid"] / 5
    assert result["ref_fid"] == ref["fid"] and result["ref_recall"] == ref["recall"]

    class Replay(torch.nn.Module):
        """A 'perfect' generator: a real digit of the class asked for."""
        def forward(self, z, onehot):
            picks = [int((labels == c).nonzero()[int(abs(zz[0]) * 50) % 100]) for c, zz in zip(onehot.argmax(1), z)]
            return real[picks]

    perfect = E.evaluate(Replay(), net, reference, eval_cfg, **args)
    assert perfect["cond_acc"] >= 0.9 and perfect["fid"] < result["fid"] / 5 and perfect["recall"] > result["recall"]

    class OneMode(Replay):
        """Mode dropping: one real digit per class, every time -- good samples, no variety."""
        def forward(self, z, onehot):
            return real[[int((labels == c).nonzero()[0]) for c in onehot.argmax(1)]]

    dropped = E.evaluate(OneMode(), net, reference, eval_cfg, **args)
    assert dropped["cond_acc"] >= 0.9 and dropped["precision"] >= 0.9  # fidelity intact ...
    assert dropped["recall"] < 0.2 < perfect["recall"]  # ... diversity gone, and recall sees it


def test_two_ranks_return_what_one_process_returns(tmp_path, classifier):
    # 51 samples: rank 0 makes 26, rank 1 makes 25 (the padding path of the gather); the
    # reference built from shares too
    ok(spawn([sys.executable, WORKER, str(tmp_path), str(classifier), "51"], world_size=2, timeout=120))
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0 == r1 and r0.pop("world_size") == 2, (r0, r1)
    generator, net, _, _, reference, eval_cfg = inputs(str(classifier), num_samples=51)
    one = E.evaluate(generator, net, reference, eval_cfg, 10, 16, seed=7, world=World(), batch=16)
    assert r0.keys() == one.keys()
    for k in one:
        assert r0[k] == pytest.approx(one[k], rel=1e-5, abs=1e-9), (k, r0, one)


@pytest.mark.parametrize("num_samples, size, n", [(40, 1797, 40), (1000, 200, 100)])
def test_generated_and_real_vs_real_are_scored_at_the_same_n(tmp_path, classifier, num_samples, size, n):
    """FID is biased by the sample count: ref_* must come from as many held-out images as the
    generator is scored with, n = min(eval.num_samples, the held-out half)."""
    from torch.utils.data import Subset, TensorDataset

    from gan_dist import config
    from gan_dist.data import DataInfo
    from gan_dist.runs.run_dir import RunDir

    cfg = config.load(None, [f"eval.num_samples={num_samples}", f"eval.features=digits:{classifier}",
                             "eval.kid_subsets=2", "eval.kid_subset_size=50"])
    real, labels = digits_tensors(16)
    dataset = Subset(TensorDataset(real, labels), range(size))
    net, reference = E.prepare(cfg, dataset, World(), DataInfo(10, 1, 16), RunDir(tmp_path))
    assert reference.num_samples == n
    ref_idx, held_idx = E.split(size)
    held = real[held_idx[:n]]
    with torch.no_grad():
        expected = E.scores(net.features(held), labels[held_idx[:n]], net.logits(held).argmax(1), reference, 10,
                            cfg.eval)
    assert reference.real_vs_real["fid"] == pytest.approx(expected["fid"], rel=1e-9)
    seen = []

    class Counting(torch.nn.Module):
        def forward(self, z, onehot):
            seen.append(len(z))
            return real[:len(z)]

    result = E.evaluate(Counting(), net, reference, cfg.eval, 10, 16, seed=0, world=World())
    assert sum(seen) == n and result["ref_fid"] == reference.real_vs_real["fid"]


def test_a_digits_path_that_is_not_a_digits_classifier_is_one_line(tmp_path):
    text, plain = tmp_path / "text.pt", tmp_path / "plain.pt"
    text.write_text("not a network")
    torch.jit.script(torch.nn.Linear(4, 4)).save(str(plain))  # TorchScript, but no image_size
    for path, needle in ((text, "is not TorchScript"), (plain, "is TorchScript but not a digits classifier")):
        with pytest.raises(UserError) as e:
            E.load_feature_network(f"digits:{path}", "cpu", image_size=8)
        assert needle in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)
