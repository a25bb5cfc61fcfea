"""What a search on real data needs: a wall-clock budget per run (train.max_time_s: every rank
finishes at the same step, saved; a resume counts the seconds already spent) and evaluation
against a held-out real set (eval.real: MNIST's t10k files, which training never reads); and
what it published, configs/mnist32.yaml, is the point it measured. Real processes, gloo."""
import sys
from pathlib import Path

import yaml
from test_quality import EVAL, _features_file

from gan_dist import config
from gan_dist.data.datasets import build_dataset, held_out_real
from gan_dist.distributed import World
from gan_dist.errors import UserError
from helpers import (
    TINY,
    latest_ckpt,
    metrics_rows,
    ok,
    one_line_error,
    train,
    train_injected,
    write_fashion_mnist,
    write_image_folder,
)

MNIST = ["data.name=mnist", "data.image_size=8"]


def test_a_time_budget_ends_both_ranks_at_one_saved_step_and_a_resume_counts_what_was_spent(tmp_path):
    run = tmp_path / "run"
    args = TINY + ["train.steps=100000", "train.max_time_s=3", "train.checkpoint_every=100000", f"run.dir={run}"]
    results = ok(train(args, world_size=2, timeout=180))
    first = latest_ckpt(run)
    assert 0 < first["step"] < 100000 and 3 <= first["train_seconds"] < 60
    assert "train.max_time_s=3 reached at step" in results[0].out + results[0].err
    # the same command: the budget is spent, nothing trains
    again = ok(train(args, world_size=2, timeout=120))[0]
    assert "nothing to do" in again.out + again.err and latest_ckpt(run)["step"] == first["step"]
    # a larger budget resumes where the first stopped and counts its seconds on
    ok(train([a.replace("max_time_s=3", "max_time_s=5") for a in args], timeout=120))
    second = latest_ckpt(run)
    assert second["step"] > first["step"] and 5 <= second["train_seconds"] < first["train_seconds"] + 60
    assert metrics_rows(run)[-1]["step"] <= second["step"]


def test_a_budget_one_rank_alone_sees_spent_ends_both_ranks_at_the_same_step(tmp_path):
    # rank 1's clock runs an hour ahead: it alone sees the budget spent at its first step, and
    # both ranks finish there (a rank deciding alone would leave the other in a collective)
    run = tmp_path / "run"
    results = ok(train_injected(TINY + ["train.steps=100000", "train.max_time_s=600", f"run.dir={run}"], world_size=2,
                                timeout=180, env_extra={"GAN_DIST_TEST_CLOCK_AHEAD": "1:3600"}))
    saved = latest_ckpt(run)  # rank 0 saves, by its own clock: far from spent
    assert saved["step"] == 1 and saved["train_seconds"] < 600
    assert "train.max_time_s=600 reached at step 1" in results[0].out + results[0].err


def test_evaluation_scores_against_the_held_out_test_files(tmp_path):
    root = write_fashion_mnist(tmp_path / "data", n=128, folder="MNIST")  # train 128, t10k 32
    features = _features_file(tmp_path / "features.pt")
    args = TINY + MNIST + EVAL + ["train.steps=4", f"data.root={root}", f"eval.features=torchscript:{features}"]
    plain = ok(train(args + [f"run.dir={tmp_path}/plain"]))[0]
    held = ok(train(args + [f"eval.real={root}", f"run.dir={tmp_path}/held"], world_size=2, timeout=180))[0]
    # the reference half and the held-out half of the 32 test images, not of the 128 training ones
    assert "40 generated and 40 held-out real images, each against the 64-image reference half" in plain.out
    assert "16 generated and 16 held-out real images, each against the 16-image reference half" in held.out
    rows = [r for r in metrics_rows(tmp_path / "held") if "fid" in r]
    plain_rows = [r for r in metrics_rows(tmp_path / "plain") if "fid" in r]
    assert rows and rows[-1]["ref_fid"] != plain_rows[-1]["ref_fid"]


def test_a_held_out_set_that_cannot_serve_is_one_line(tmp_path):
    root = write_fashion_mnist(tmp_path / "data", n=64, folder="MNIST")
    features = _features_file(tmp_path / "features.pt")
    base = TINY + MNIST + EVAL + ["train.steps=2", f"data.root={root}", f"eval.features=torchscript:{features}"]
    one_line_error(train(base + [f"eval.real={tmp_path}/none", f"run.dir={tmp_path}/a"])[0],
                   "eval.real:", f"{tmp_path}/none does not exist")
    one_line_error(train(TINY + EVAL + [f"eval.real={root}", f"run.dir={tmp_path}/b"])[0],
                   "eval.real: data.name=digits is the embedded set")
    # an image folder with other classes than the training folder's
    train_root, other = write_image_folder(tmp_path / "g2"), write_image_folder(tmp_path / "g3", classes=("a", "b", "c"))
    cfg = config.load(None, ["data.name=image_folder", f"data.root={train_root}", "data.image_size=8",
                             f"eval.real={other}", "train.batch_size=4"])
    _, info = build_dataset(cfg)
    try:
        held_out_real(cfg, World(), info)
    except UserError as e:
        assert str(e).startswith(f"eval.real: {other} holds 1-channel 8px images in 3 classes") and "in 2" in str(e)
    else:
        raise AssertionError("a held-out folder of 3 classes for a 2-class training set was taken")


REPO = Path(__file__).resolve().parents[1]


def test_configs_mnist32_is_the_point_the_search_measured_and_reads_mnist_files(tmp_path):
    sys.path.insert(0, str(REPO / "examples"))
    import mnist32_search

    from gan_dist.tools.compare import _flat as flat  # config dicts as dotted keys, as compare reads them

    winner = [f"{k}={v}" for k, v in yaml.safe_load((REPO / "examples" / "mnist32_decay.yaml").read_text())[0].items()
              if k != "seed"]
    searched = flat(config.to_dict(config.load(str(REPO / "configs" / "glasses_cwgan_gp.yaml"),
                                               mnist32_search.shared() + winner)))
    published = flat(config.to_dict(config.load(str(REPO / "configs" / "mnist32.yaml"),
                                                mnist32_search.shared(for_config=True))))
    differ = {k for k in searched if searched[k] != published[k]}
    # what the search ran for its budget, not what trains: its steps and budget, threads, file cadence
    assert differ == {"train.steps", "train.max_time_s", "train.threads", "train.checkpoint_every",
                      "train.sample_every"}, differ
    root = write_fashion_mnist(tmp_path / "data", n=32, folder="MNIST")
    r = ok(train(["--config", str(REPO / "configs" / "mnist32.yaml"), f"data.root={root}", "train.steps=2",
                  "train.threads=1", f"run.dir={tmp_path}/run"]))[0]
    assert "on mnist" in r.out + r.err and latest_ckpt(tmp_path / "run")["step"] == 2
