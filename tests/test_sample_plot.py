"""gan_dist.sample and gan_dist.plot on a real tiny run (trained once per module). The CLIs run
as subprocesses once each; the other cases call main() in-process to stay fast."""
import json
import math
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from gan_dist.cli import plot, sample
from gan_dist.runs import samples
from helpers import TINY, Proc, ok, one_line_error, spawn, train

RUN = TINY + ["train.steps=4", "train.sample_every=2", "train.checkpoint_every=2"]
UNCONDITIONAL = ["model.kind=mlp", "model.conditional=false", "loss.kind=bce", "loss.n_critic=1", "model.hidden=[16,8]"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("sample") / "run"
    ok(train(RUN + [f"run.dir={d}"]))
    return d


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("sample") / "mlp"
    ok(train(RUN + UNCONDITIONAL + [f"run.dir={d}"]))
    return d


def call(main, capsys, *args) -> Proc:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return Proc(rc, out, err)


def grid(n: int, nrow: int, size: int = 8, pad: int = 2) -> tuple[int, int]:
    """Pixel (width, height) of torchvision's make_grid of n size x size images."""
    cols = min(n, nrow)
    return cols * (size + pad) + pad, math.ceil(n / cols) * (size + pad) + pad


def png(path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def pixels(path) -> torch.Tensor:
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im).astype(np.int16))


def test_sample_cli_from_a_run_directory(run, tmp_path):
    r = spawn([sys.executable, "-m", "gan_dist.sample", str(run), "--out", str(tmp_path / "a.png"), "--seed", "0"])[0]
    assert r.rc == 0, r.err
    assert "step 4" in r.out and "seed 0" in r.out
    assert png(tmp_path / "a.png") == grid(40, 4)  # n=32 rounded up to one row of 4 per class


def test_sample_from_a_checkpoint_file_one_class(run, tmp_path, capsys):
    ckpt = run / "checkpoints" / "step_00000002.pt"
    ok([call(sample.main, capsys, ckpt, "--n", 11, "--label", 2, "--out", tmp_path / "c.png", "--seed", 1)])
    assert png(tmp_path / "c.png") == grid(11, 8)
    ok([call(sample.main, capsys, ckpt, "--n", 11, "--label", 2, "--out", tmp_path / "raw.png", "--seed", 1, "--raw")])
    if "generator_ema" in torch.load(ckpt, weights_only=True):  # --raw picks the other weights
        assert (tmp_path / "raw.png").read_bytes() != (tmp_path / "c.png").read_bytes()


def test_sample_from_an_exported_generator_matches_the_run(run, tmp_path, capsys):
    r = spawn([sys.executable, "-m", "gan_dist.export", str(run), "--out", str(tmp_path / "g.pt")])[0]
    assert r.rc == 0, r.err
    ok([call(sample.main, capsys, tmp_path / "g.pt", "--label", 5, "--n", 8, "--out", tmp_path / "e.png", "--seed", 3)])
    ok([call(sample.main, capsys, run, "--label", 5, "--n", 8, "--out", tmp_path / "r.png", "--seed", 3)])
    assert png(tmp_path / "e.png") == grid(8, 8)
    assert (pixels(tmp_path / "e.png") - pixels(tmp_path / "r.png")).abs().max() <= 1  # rounding only
    (tmp_path / "g.json").unlink()
    one_line_error(call(sample.main, capsys, tmp_path / "g.pt"), "g.json")


def test_label_and_noise_interpolation_grids(run, tmp_path, capsys):
    ok([call(sample.main, capsys, run, "--interpolate-labels", 3, 8, "--steps", 6, "--out", tmp_path / "l.png")])
    assert png(tmp_path / "l.png") == grid(4 * 6, 6)  # 4 noise rows x 6 label steps
    ok([call(sample.main, capsys, run, "--interpolate-noise", "--label", 1, "--out", tmp_path / "z.png")])
    assert png(tmp_path / "z.png") == grid(4 * 5, 5)
    a, b = torch.randn(3, 16), torch.randn(3, 16)
    path = samples.slerp(a, b, torch.linspace(0, 1, 5))
    assert path.shape == (3, 5, 16)
    assert torch.allclose(path[:, 0], a, atol=1e-5) and torch.allclose(path[:, -1], b, atol=1e-5)


def test_seed_makes_the_grid_reproducible(run, tmp_path, capsys):
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        ok([call(sample.main, capsys, run, "--interpolate-labels", 0, 9, "--seed", seed, "--out", tmp_path / f"{name}.png")])
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "c.png").read_bytes()


def test_sample_errors_are_one_line(run, mlp_run, tmp_path, capsys):
    one_line_error(call(sample.main, capsys, run, "--label", 10), "label 10", "0-9")
    one_line_error(call(sample.main, capsys, run, "--interpolate-labels", 0, -1), "label -1")
    one_line_error(call(sample.main, capsys, tmp_path / "nope"), "not found")
    one_line_error(call(sample.main, capsys, mlp_run, "--label", 1), "unconditional")
    one_line_error(call(sample.main, capsys, mlp_run, "--interpolate-labels", 1, 2), "unconditional")
    ok([call(sample.main, capsys, mlp_run, "--n", 16, "--out", tmp_path / "u.png")])  # noise only
    assert png(tmp_path / "u.png") == grid(16, 8)


def test_plot_cli_writes_losses_and_samples_strip(run, tmp_path):
    r = spawn([sys.executable, "-m", "gan_dist.plot", str(run), "--out", str(tmp_path / "plots")])[0]
    assert r.rc == 0, r.err
    for name in ("losses.png", "samples_strip.png", "throughput.png"):
        assert f"wrote {tmp_path / 'plots' / name}" in r.out
        assert png(tmp_path / "plots" / name) > (0, 0)
    assert not (tmp_path / "plots" / "quality.png").exists()  # no fid / cond_acc logged


def test_plot_quality_from_synthetic_metrics(tmp_path, capsys):
    rows = [{"step": s, "loss_critic": 0.7, "loss_gen": None if s == 20 else 0.9, "d_real": 0.6, "d_fake": 0.4}
            for s in (10, 20, 30, 40)]
    for r in rows:  # measured at steps 20 and 40 only; cond_acc never (unconditional)
        r["fid"], r["cond_acc"] = {20: 120.0, 40: 80.5}.get(r["step"]), None
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 50, "loss_cr'  # a line mid-write
    (tmp_path / "metrics.jsonl").write_text(text)
    ok([call(plot.main, capsys, tmp_path)])
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"losses.png", "quality.png"}  # no samples yet
    assert png(tmp_path / "plots" / "quality.png") == (800, 280)  # one panel: fid


def test_plot_errors_are_one_line(tmp_path, capsys):
    one_line_error(call(plot.main, capsys, tmp_path), "no metrics.jsonl")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    one_line_error(call(plot.main, capsys, tmp_path), "metrics.jsonl:2")
