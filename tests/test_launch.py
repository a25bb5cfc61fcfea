"""How a rank learns its place from the launcher (torchrun, one srun task per rank), how many
threads it takes, GPUs Slurm allocated but CUDA cannot see, and the per-rank shares of start-up
work (one Fashion-MNIST download per node, each rank's share of the real images)."""
import os
from pathlib import Path

import pytest
import torch

from gan_dist import distributed
from gan_dist.errors import UserError
from helpers import TINY, base_env, ok, one_line_error, train, train_injected

SRUN = {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "6", "SLURM_PROCID": "4",
        "SLURM_LOCALID": "0", "SLURM_NODEID": "1", "SLURM_STEP_TASKS_PER_NODE": "4,2",
        "SLURM_STEP_NODELIST": "gpu[007-008]", "SLURM_CPUS_PER_TASK": "8"}


@pytest.fixture
def env(monkeypatch):
    saved = dict(os.environ)  # detect() exports RANK, MASTER_ADDR, ... for srun tasks: undone after
    yield _clean(monkeypatch)
    os.environ.clear()
    os.environ.update(saved)


def _clean(monkeypatch):
    for k in list(os.environ):
        if k.startswith(("SLURM_", "TORCHELASTIC_")) or k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                                                            "MASTER_ADDR", "MASTER_PORT"):
            monkeypatch.delenv(k)
    return monkeypatch


def test_srun_tasks_without_torchrun_take_their_ranks_from_slurm(env):
    for k, v in SRUN.items():
        env.setenv(k, v)
    world = distributed.detect()
    assert (world.rank, world.world_size, world.local_rank, world.local_world_size, world.launcher) == \
        (4, 6, 0, 2, "slurm")  # node 1 runs 2 of the 6 tasks
    assert os.environ["RANK"] == "4" and os.environ["WORLD_SIZE"] == "6"
    assert os.environ["MASTER_ADDR"] == "gpu007" and 20000 <= int(os.environ["MASTER_PORT"]) < 40000


def test_srun_task_with_unreadable_slurm_variables_is_one_line(env):
    for k, v in {**SRUN, "SLURM_PROCID": "x"}.items():
        env.setenv(k, v)
    with pytest.raises(UserError, match="srun started 6 tasks but Slurm's variables do not say this task's rank"):
        distributed.detect()


def test_one_srun_task_and_the_batch_step_are_single_process(env):
    env.setenv("SLURM_JOB_ID", "1")
    env.setenv("SLURM_NTASKS", "4")  # the batch script itself: not a step of 4 tasks
    assert distributed.detect().world_size == 1


def test_threads_follow_the_tasks_own_cpus_under_srun_and_are_shared_under_torchrun(env):
    cpus = len(os.sched_getaffinity(0))
    env.delenv("OMP_NUM_THREADS", raising=False)
    srun_task = distributed.World(world_size=4, local_world_size=4, launcher="slurm")
    env.setenv("SLURM_CPUS_PER_TASK", "1")
    assert distributed.default_threads(srun_task) == 1
    env.setenv("SLURM_CPUS_PER_TASK", str(cpus))  # bound to its own cpus: not divided by the 4 tasks
    assert distributed.default_threads(srun_task) == cpus
    torchrun_rank = distributed.World(world_size=2, local_world_size=2, launcher="torchrun")
    assert distributed.default_threads(torchrun_rank) == max(1, cpus // 2)
    # an explicit OMP_NUM_THREADS wins outside torchrun (torchrun sets 1 itself when unset)
    env.setenv("OMP_NUM_THREADS", "3")
    assert distributed.default_threads(distributed.World()) == 3 and distributed.default_threads(srun_task) == 3
    assert distributed.default_threads(torchrun_rank) == max(1, cpus // 2)


@pytest.mark.parametrize("variable", ["SLURM_JOB_GPUS=0,1", "SLURM_GPUS_ON_NODE=4", "SLURM_GPUS_PER_TASK=1"])
def test_gpus_allocated_but_not_visible_is_an_error_not_a_cpu_run(env, variable):
    if torch.cuda.is_available():
        pytest.skip("this machine's CUDA sees GPUs: the CPU fallback cannot happen here")
    name, value = variable.split("=")
    env.setenv(name, value)
    env.setenv("CUDA_VISIBLE_DEVICES", "3")  # what submitit's export used to leave under per-task binding
    with pytest.raises(UserError, match=f"Slurm allocated GPUs \\({name}={value}\\) but CUDA sees none "
                                        "\\(CUDA_VISIBLE_DEVICES='3'"):
        distributed.detect()
    env.delenv(name)  # none allocated: a CPU job
    env.setenv("SLURM_GPUS_ON_NODE", "0")
    assert distributed.detect().backend == "gloo"


def test_gpu_allocation_check_through_the_cli(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine's CUDA sees GPUs")
    r = train(TINY + [f"run.dir={tmp_path}/run"], env=dict(base_env(), SLURM_JOB_GPUS="0"))[0]
    one_line_error(r, "Slurm allocated GPUs (SLURM_JOB_GPUS=0) but CUDA sees none")
    assert not (tmp_path / "run").exists()


def test_fashion_mnist_downloads_once_and_each_rank_loads_only_its_share_of_real_images(tmp_path):
    record = tmp_path / "record"
    record.mkdir()
    ok(train_injected(["--config", str(Path(__file__).parents[1] / "configs/fashion_mlp_bce.yaml"),
                       f"data.root={tmp_path}/data", "data.download=true", "model.hidden=[32]", "train.batch_size=16",
                       "train.steps=2", "train.threads=1", "eval.every=2", "eval.num_samples=16",
                       f"eval.features=torchscript:{_feature_net(tmp_path)}", f"run.dir={tmp_path}/run"], 2,
                      env_extra={"GAN_DIST_TEST_RECORD": str(record)}))
    lines = {r: (record / f"rank{r}.txt").read_text().split("\n") for r in (0, 1)}
    downloads = sum(line == "download" for rank in lines.values() for line in rank)
    assert downloads == 1 and "download" in lines[0]  # rank 0 fetched; rank 1 waited and found the files
    # 64 real images: a reference half of 32, each rank loading 16 (not 64), and of the held-out
    # half the 16 that eval.num_samples scores against, 8 per rank
    for r in (0, 1):
        assert [line for line in lines[r] if line.startswith("real")] == ["real 16", "real 8"], lines[r]


def _feature_net(tmp_path: Path) -> Path:
    """A tiny TorchScript feature network: images [B, 1, 28, 28] -> 4 features."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 4))
    path = tmp_path / "features.pt"
    torch.jit.script(net).save(str(path))
    return path



def _fake_gpus(monkeypatch, count: int):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


@pytest.mark.parametrize("gpus, local_ranks, rank, device", [(1, 2, 1, 0), (2, 4, 3, 1)])
def test_more_local_ranks_than_gpus_need_the_gloo_switch(env, gpus, local_ranks, rank, device):
    """torchrun's ranks share its GPUs: nccl refuses two ranks on one GPU, so without
    dist.backend=gloo one line names the switch; with it, ranks share the GPUs over gloo."""
    for k, v in dict(RANK=rank, WORLD_SIZE=local_ranks, LOCAL_RANK=rank, LOCAL_WORLD_SIZE=local_ranks,
                     TORCHELASTIC_RUN_ID="x").items():
        env.setenv(k, str(v))
    _fake_gpus(env, gpus)
    with pytest.raises(UserError, match=f"{local_ranks} ranks on this node but {gpus} CUDA device.*dist.backend=gloo"):
        distributed.detect()
    world = distributed.detect("gloo")
    assert (world.backend, world.device) == ("gloo", torch.device("cuda", device))
    env.setenv("LOCAL_WORLD_SIZE", str(gpus))  # one rank per GPU: nccl
    env.setenv("LOCAL_RANK", "0")
    assert distributed.detect().backend == "nccl"


def test_nccl_without_cuda_is_one_line(env, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine's CUDA sees GPUs")
    with pytest.raises(UserError, match="dist.backend=nccl: CUDA sees no GPU"):
        distributed.detect("nccl")
    one_line_error(train(TINY + ["dist.backend=nccl", f"run.dir={tmp_path}/run"])[0], "dist.backend=nccl")
    one_line_error(train(TINY + ["dist.backend=mpi", f"run.dir={tmp_path}/run"])[0], "dist.backend: unknown choice")
