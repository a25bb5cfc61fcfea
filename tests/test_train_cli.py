"""The job as users start it: the book configs on the real loaders, torchrun, the default run
from a folder without the repo's configs/."""
import json
import sys
from pathlib import Path

from helpers import TINY, base_env, latest_ckpt, ok, spawn, train, write_fashion_mnist, write_image_folder

REPO = Path(__file__).resolve().parents[1]


def test_fashion_mlp_bce_config_trains_on_idx_files(tmp_path):
    write_fashion_mnist(tmp_path / "data", n=64)
    ok(train(["--config", str(REPO / "configs/fashion_mlp_bce.yaml"), f"data.root={tmp_path}/data",
              "model.hidden=[64,32,16]", "train.batch_size=16", "train.steps=6", "train.log_every=2",
              "train.checkpoint_every=3", "train.threads=1", f"run.dir={tmp_path}/run"]))
    state = latest_ckpt(tmp_path / "run")
    assert state["step"] == 6 and state["data"]["epoch"] == 1  # 4 batches per epoch
    assert state["generator"]["net.0.weight"].shape == (16, 100)  # book: 100-d noise
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_critic", "loss_gen", "p_real", "p_fake"} <= rows[-1].keys()


def test_glasses_cwgan_gp_config_trains_on_an_image_folder(tmp_path):
    write_image_folder(tmp_path / "glasses", per_class=6)
    ok(train(["--config", str(REPO / "configs/glasses_cwgan_gp.yaml"), f"data.root={tmp_path}/glasses",
              "data.image_size=16", "model.width=4", "train.batch_size=4", "train.steps=3",
              "train.threads=1", f"run.dir={tmp_path}/run"], world_size=2))
    state = latest_ckpt(tmp_path / "run")
    assert state["step"] == 3 and state["data_info"] == {"num_classes": 2, "channels": 3, "image_size": 16}
    assert state["critic"]["net.0.weight"].shape[1] == 3 + 2  # RGB + one-hot label channels
    assert (tmp_path / "run" / "samples" / "step_00000003.png").is_file()


def test_torchrun_two_ranks(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "gan_dist.train", *TINY, "train.steps=4", f"run.dir={tmp_path}/run"]
    r = ok(spawn(cmd, timeout=300))[0]
    assert "on 2 rank(s)" in r.out
    assert latest_ckpt(tmp_path / "run")["step"] == 4


def test_default_run_needs_no_configs_folder(tmp_path):
    # From a folder with no configs/: the defaults are the dataclasses; only the length is cut.
    r = ok(spawn([sys.executable, "-m", "gan_dist.train", "train.steps=3", "train.threads=1"],
                 cwd=tmp_path, env=base_env(tmp_path)))[0]
    run = tmp_path / "runs" / "digits_cwgan_gp"
    assert "dcgan/wgan_gp on digits" in r.out and latest_ckpt(run)["step"] == 3
    assert (run / "samples" / "step_00000003.png").is_file() and (run / "config.yaml").is_file()
    assert not (tmp_path / "configs").exists()


def test_wandb_offline_run_on_rank_0_only_and_id_kept_in_checkpoint(tmp_path):
    # WANDB_DIR is honoured (clusters set it to keep wandb's files off a small home or NFS) ...
    env = dict(base_env(), WANDB_DIR=str(tmp_path / "elsewhere"))
    (tmp_path / "elsewhere").mkdir()
    ok(train(TINY + ["train.steps=4", "wandb.mode=offline", f"run.dir={tmp_path}/run"], world_size=2, env=env))
    runs = list((tmp_path / "elsewhere" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and not (tmp_path / "run" / "wandb").exists()  # one run: rank 0's
    run_id = latest_ckpt(tmp_path / "run")["wandb_run_id"]
    assert run_id and runs[0].name.endswith(run_id) and list(runs[0].glob("*.wandb"))
    # ... and without it, wandb's files go into the run directory
    env.pop("WANDB_DIR")
    ok(train(TINY + ["train.steps=2", "wandb.mode=offline", f"run.dir={tmp_path}/run2"], env=env))
    assert len(list((tmp_path / "run2" / "wandb").glob("offline-run-*"))) == 1
