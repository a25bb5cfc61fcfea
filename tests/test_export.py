import json
import sys
import warnings

import pytest
import torch

from gan_dist.runs.export import load_generator
from helpers import DEVICES, TINY, device_env, ok, one_line_error, spawn, train


def _export(args, env=None):
    return spawn([sys.executable, "-m", "gan_dist.export", *args], env=env)[0]


@pytest.mark.parametrize("device", DEVICES)
def test_conditional_torchscript_export_matches_the_generator(tmp_path, device):
    # trained (and exported) where the GPU is; the files load on a machine without one
    ok(train(TINY + ["train.steps=2", f"run.dir={tmp_path}/run"], env=device_env(device)))
    r = _export([str(tmp_path / "run"), "--out", str(tmp_path / "g.pt"), "--pt2"], env=device_env(device))
    assert r.rc == 0, r.err
    meta = json.loads((tmp_path / "g.json").read_text())
    assert {k: meta[k] for k in ("z_dim", "num_classes", "image_size", "channels")} == \
        {"z_dim": 16, "num_classes": 10, "image_size": 8, "channels": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(tmp_path / "g.pt"), map_location="cpu")
    assert all(t.device.type == "cpu" for t in [*scripted.parameters(), *scripted.buffers()])
    z = torch.randn(4, 16)
    hard = torch.eye(10)[[0, 3, 5, 9]]
    out = scripted(z, hard)
    assert out.shape == (4, 1, 8, 8) and out.abs().max() <= 1
    generator, _ = load_generator(tmp_path / "run")
    with torch.no_grad():
        assert torch.allclose(out, generator(z, hard), atol=1e-6)
    soft = 0.3 * torch.eye(10)[[2]] + 0.7 * torch.eye(10)[[7]]  # label interpolation
    assert scripted(z[:1], soft).shape == (1, 1, 8, 8)
    program = torch.export.load(str(tmp_path / "g.pt2")).module()
    assert torch.allclose(program(z, hard), out, atol=1e-6)  # CPU inputs: its weights are on the CPU


def test_unconditional_mlp_export_takes_noise_only(tmp_path):
    ok(train(TINY + ["model.kind=mlp", "model.conditional=false", "loss.kind=bce", "loss.n_critic=1",
                     "model.hidden=[16,8]", "train.steps=2", f"run.dir={tmp_path}/run"]))
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000002.pt"
    r = _export([str(ckpt), "--out", str(tmp_path / "mlp.pt")])
    assert r.rc == 0, r.err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(tmp_path / "mlp.pt"))
    assert scripted(torch.randn(3, 16)).shape == (3, 1, 8, 8)
    assert json.loads((tmp_path / "mlp.json").read_text())["num_classes"] == 0


def test_export_of_a_run_without_checkpoint_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    one_line_error(_export([str(tmp_path / "empty"), "--out", str(tmp_path / "g.pt")]), "no checkpoint")
    one_line_error(_export([str(tmp_path / "missing.pt"), "--out", str(tmp_path / "g.pt")]), "checkpoint not found")


def test_a_generator_that_scripts_but_does_not_save_is_traced_and_pt2_is_first_class(tmp_path):
    import os
    from pathlib import Path

    from helpers import base_env

    fixtures = str(Path(__file__).parent / "fixtures")
    env = dict(base_env(), PYTHONPATH=os.pathsep.join([fixtures, os.environ.get("PYTHONPATH", "")]))
    ok(train(TINY + ["model.kind=export_models:build", "train.steps=1", f"run.dir={tmp_path}/run"], env=env))
    r = spawn([sys.executable, "-m", "gan_dist.export", str(tmp_path / "run"), "--out", str(tmp_path / "g.pt"),
               "--format", "both"], env=env)[0]
    assert r.rc == 0 and "exported by tracing" in r.err and "Traceback" not in r.err, r.err
    sys.path.insert(0, fixtures)
    generator, _ = load_generator(tmp_path / "run", models=__import__("export_models").build)
    z, hard = torch.randn(3, 16), torch.eye(10)[[1, 4, 7]]
    with torch.no_grad():
        expected = generator(z, hard)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.allclose(torch.jit.load(str(tmp_path / "g.pt"))(z, hard), expected, atol=1e-6)
    assert torch.allclose(torch.export.load(str(tmp_path / "g.pt2")).module()(z, hard), expected, atol=1e-6)
    # sample and load_sampler read the .pt2 as they read the TorchScript file
    from gan_dist.runs.export import load_sampler

    generate, meta = load_sampler(tmp_path / "g.pt2")
    assert meta["num_classes"] == 10 and torch.allclose(generate(z, hard), expected, atol=1e-6)
    r = spawn([sys.executable, "-m", "gan_dist.sample", str(tmp_path / "g.pt2"), "--label", "3", "--n", "4",
               "--out", str(tmp_path / "s.png")], env=env)[0]
    assert r.rc == 0 and (tmp_path / "s.png").is_file(), r.err
    r = spawn([sys.executable, "-m", "gan_dist.export", str(tmp_path / "run"), "--out", str(tmp_path / "only.pt"),
               "--format", "pt2"], env=env)[0]
    assert r.rc == 0 and (tmp_path / "only.pt2").is_file() and not (tmp_path / "only.pt").exists(), r.err
