"""Bad input of every kind ends in one line `gan_dist: error: ...` (exit 2) naming the key,
file or cause, before any training, and touches nothing already saved. Most run the real CLI
entry points in this process (fast); the ones that need several ranks or workers spawn them."""
import struct
from pathlib import Path

import pytest
import torch

from gan_dist import config
from gan_dist.cli import export, plot, sample
from gan_dist.cli import train as train_cli
from gan_dist.errors import UserError
from helpers import TINY, Proc, latest_ckpt, ok, one_line_error, train, write_fashion_mnist, write_image_folder

REPO = Path(__file__).resolve().parents[1]


def in_process(main, argv: list[str], capsys) -> Proc:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse exits
        rc = e.code
    out, err = capsys.readouterr()
    return Proc(rc, out, err)


# ---- command lines ---------------------------------------------------------------------
@pytest.mark.parametrize("main, argv", [(train_cli.main, ["--bogus"]), (train_cli.main, ["--config"]),
                                        (sample.main, ["run", "--bogus"]), (export.main, ["run"]),
                                        (plot.main, ["--bogus"])],
                         ids=["train-unknown", "train-missing-value", "sample", "export-no-out", "plot"])
def test_argument_errors_are_one_line_not_argparse_usage(main, argv, capsys):
    line = one_line_error(in_process(main, argv, capsys))
    assert "see python -m gan_dist." in line and "usage:" not in line


# ---- config values ------------------------------------------------------------------------
@pytest.mark.parametrize("override, needle", [
    ("optim.lr=.nan", "optim.lr: must be a finite number"), ("optim.lr=.inf", "optim.lr: must be a finite"),
    ("optim.lr=2", "optim.lr: must be in (0, 1]"), ("optim.betas=[0.5,.nan]", "optim.betas[1]"),
    ("loss.gp_lambda=-1", "loss.gp_lambda: must be >= 0"), ("train.ema_decay=1.5", "train.ema_decay"),
    ("data.num_workers=-1", "data.num_workers: must be >= 0"), ("seed=-1", "seed: must be in [0, "),
    ("seed=18446744073709551616", "seed: must be in [0, 9223372036854775807]"),
    ("eval.num_samples=1", "eval.num_samples: must be >= 4"), ("eval.num_samples=3", "eval.num_samples: must be >= 4"), ("run.shared_fs_wait_s=-1", "run.shared_fs_wait_s"),
    ("data.start_method=thread", "data.start_method"), ("run.dir=", "run.dir: must not be empty"),
])
def test_out_of_range_and_non_finite_values_are_one_line(override, needle, capsys, tmp_path):
    # eval.num_samples=1 with eval.every=500: refused now, not after 500 steps of training
    r = in_process(train_cli.main, [override, "eval.every=500", f"run.dir={tmp_path}/run"] if override != "run.dir="
                   else [override], capsys)
    one_line_error(r, needle)
    assert not (tmp_path / "run").exists()


def test_eval_samples_fewer_than_ranks_is_refused_at_start():
    cfg = config.load(None, ["eval.every=10", "eval.num_samples=4", "train.batch_size=20"])
    config.check_world(cfg, 4)
    with pytest.raises(UserError, match="eval.num_samples: 4 is fewer than the 5 ranks"):
        config.check_world(cfg, 5)


# ---- paths and files ----------------------------------------------------------------------
def test_run_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    one_line_error(in_process(train_cli.main, [*TINY, f"run.dir={tmp_path}/f"], capsys),
                   f"run.dir: {tmp_path}/f exists and is not a directory")


def _idx(path, magic, dims, payload=b""):
    path.write_bytes(struct.pack(f">I{len(dims)}I", magic, *dims) + payload)


@pytest.mark.parametrize("damage, needle", [
    ("empty", "train-images-idx3-ubyte is 0 bytes, too short for an IDX header"),
    ("garbage", "train-labels-idx1-ubyte is not an IDX file of uint8 labels"),
    ("truncated", "train-images-idx3-ubyte is 50000 bytes but its header says 64x28x28"),
    ("counts", "holds 64 images but 60 labels"),
    ("labels", "has label 12; Fashion-MNIST's are 0-9"),
])
def test_broken_fashion_mnist_files_name_the_file(tmp_path, capsys, damage, needle):
    raw = write_fashion_mnist(tmp_path / "data", n=64) / "FashionMNIST" / "raw"
    images, labels = raw / "train-images-idx3-ubyte", raw / "train-labels-idx1-ubyte"
    if damage == "empty":
        images.write_bytes(b"")
    elif damage == "garbage":
        labels.write_bytes(b"\x89PNG not an idx file at all")
    elif damage == "truncated":
        images.write_bytes(images.read_bytes()[:50000])
    elif damage == "counts":
        _idx(labels, 0x0801, [60], bytes(60))
    else:
        _idx(labels, 0x0801, [64], bytes([12] * 64))
    r = in_process(train_cli.main, ["data.name=fashion_mnist", f"data.root={tmp_path}/data", "model.kind=mlp",
                                    "model.hidden=[16]", *TINY, "data.image_size=28", f"run.dir={tmp_path}/run"], capsys)
    one_line_error(r, "data.root:", needle)


@pytest.mark.parametrize("content", ["tensor", "bytes", "wrong-keys"])
def test_inception_weights_that_are_not_a_state_dict(tmp_path, capsys, content):
    path = tmp_path / "weights.pth"
    if content == "tensor":
        torch.save(torch.zeros(3), path)
    elif content == "bytes":
        path.write_bytes(b"\x00garbage" * 100)
    else:
        torch.save({"conv.weight": torch.zeros(1)}, path)
    r = in_process(train_cli.main, [*TINY, "eval.every=2", f"eval.features=inception:{path}",
                                    f"run.dir={tmp_path}/run"], capsys)
    one_line_error(r, f"eval.features: {path} is not an Inception v3 state_dict")


@pytest.mark.parametrize("args, needle", [
    (["data.image_size=65536"], "the digits resized to 65536x65536 need"),
    (["data.name=image_folder", "data.image_size=8192"], "data.image_size=8192: this dcgan generator and critic need"),
    (["data.name=image_folder", "model.kind=mlp", "data.image_size=4096", "model.hidden=[65536]"],
     "data.image_size=4096: this mlp generator and critic need"),
])
def test_a_model_that_cannot_fit_is_refused_with_the_estimate(tmp_path, capsys, args, needle):
    write_image_folder(tmp_path / "images", per_class=8)
    r = in_process(train_cli.main, [*TINY, f"data.root={tmp_path}/images", *args, f"run.dir={tmp_path}/run"], capsys)
    line = one_line_error(r, needle)
    assert "GiB" in line


def test_export_and_sample_of_a_checkpoint_without_data_info(tmp_path, capsys):
    ok(train(TINY + ["train.steps=2", f"run.dir={tmp_path}/run"]))
    state = latest_ckpt(tmp_path / "run")
    del state["data_info"]
    torch.save(state, tmp_path / "digits.pt")  # digits: 10 classes, grayscale, known without it
    assert in_process(export.main, [str(tmp_path / "digits.pt"), "--out", str(tmp_path / "g.pt")], capsys).rc == 0
    state["config"]["data"].update(name="image_folder", root="/anywhere")  # classes unknown
    torch.save(state, tmp_path / "folder.pt")
    for main, argv in ((export.main, [str(tmp_path / "folder.pt"), "--out", str(tmp_path / "h.pt")]),
                       (sample.main, [str(tmp_path / "folder.pt"), "--out", str(tmp_path / "s.png")])):
        one_line_error(in_process(main, argv, capsys), f"checkpoint {tmp_path}/folder.pt has no data_info")


def test_unreadable_image_in_an_image_folder_is_skipped_with_a_warning(tmp_path):
    root = write_image_folder(tmp_path / "images", per_class=6)
    bad = root / "G" / "3.png"
    bad.write_bytes(b"not a png")
    results = ok(train(["--config", "configs/glasses_cwgan_gp.yaml", f"data.root={root}", "data.image_size=8",
                        "model.width=4", "train.batch_size=4", "train.steps=4", "train.threads=1", "data.num_workers=1",
                        f"run.dir={tmp_path}/run"], world_size=2, cwd=str(REPO)))
    warned = "".join(r.err for r in results)
    assert f"skipping unreadable image {bad}" in warned and "UnidentifiedImageError" in warned
    assert latest_ckpt(tmp_path / "run")["step"] == 4


# ---- jobs.submit ------------------------------------------------------------------------
@pytest.mark.parametrize("flags, needle", [
    (["--nodes", "0"], "--nodes: must be at least 1, got 0"),
    (["--cpus-per-task", "0"], "--cpus-per-task: must be at least 1"),
    (["--timeout-min", "0"], "--timeout-min: must be at least 1"),
    (["--gpus-per-node", "-1"], "--gpus-per-node: must be >= 0"),
    (["--timeout-min", "60", "--signal-delay-s", "3600"], "--signal-delay-s: 3600 s is not before the end"),
    (["--gpus-per-node", "2", "--tasks-per-node", "3"], "one task (rank) per GPU"),
    (["--mem-gb", "-4"], "--mem-gb: must be positive"),
    (["--tasks-per-node", "3"], "train.batch_size: 64 (the GLOBAL batch) is not divisible by the world size 3"),
    (["--sweep", "seed=1,,2"], "--sweep"),
    (["--slurm", "exclusive"], "--slurm 'exclusive': expected KEY=VALUE"),
    (["--nodes", "two"], "argument --nodes: invalid int value"),
])
def test_invalid_submit_flags_are_one_line_and_leave_nothing_behind(tmp_path, capsys, flags, needle):
    from jobs.submit import main

    r = in_process(main, ["--local", *flags, f"run.dir={tmp_path}/run"], capsys)
    assert r.rc == 2 and "Traceback" not in r.err
    lines = [ln for ln in r.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("jobs.submit: error:") and needle in lines[0], r.err
    assert list(tmp_path.iterdir()) == []  # no submitit folder, no run directory

