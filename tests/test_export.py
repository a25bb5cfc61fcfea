import json
import sys
import warnings

import torch

from gan_dist.export import load_generator
from helpers import TINY, ok, one_line_error, spawn, train


def _export(args):
    return spawn([sys.executable, "-m", "gan_dist.export", *args])[0]


def test_conditional_torchscript_export_matches_the_generator(tmp_path):
    ok(train(TINY + ["train.steps=2", f"run.dir={tmp_path}/run"]))
    r = _export([str(tmp_path / "run"), "--out", str(tmp_path / "g.pt"), "--pt2"])
    assert r.rc == 0, r.err
    meta = json.loads((tmp_path / "g.json").read_text())
    assert {k: meta[k] for k in ("z_dim", "num_classes", "image_size", "channels")} == \
        {"z_dim": 16, "num_classes": 10, "image_size": 8, "channels": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(tmp_path / "g.pt"))
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
    assert torch.allclose(program(z, hard), out, atol=1e-6)


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
