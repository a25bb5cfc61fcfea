"""The CUDA paths, each test parametrized over the device (helpers.DEVICES): the CUDA case runs
where a GPU is (`make gpu-check` on a lent one) and skips with its reason elsewhere; its CPU twin
runs everywhere and proves the test's own logic. More device-parametrized tests live beside the
feature they check: resume (test_resume), export (test_export), on-device data and compile
(test_fast_paths), device decoding (test_zip_data)."""
import math
import sys
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gan_dist import config
from gan_dist.data.dataset_tool import convert
from gan_dist.distributed import World
from helpers import (
    DEVICES,
    TINY,
    assert_same_state,
    device_args,
    device_env,
    finish,
    latest_ckpt,
    metrics_rows,
    ok,
    start,
    train,
    write_image_folder,
)

STATS = ("loss_critic", "gp", "wasserstein", "loss_gen")


def _world(device: str) -> World:
    return World(device=torch.device("cuda", 0) if device == "cuda" else torch.device("cpu"))


def _finite(rows: list[dict], keys=STATS) -> bool:
    return bool(rows) and all(math.isfinite(r[k]) for r in rows for k in keys if k in r)


def _max_diff(a: dict, b: dict) -> float:
    return max((a[n][k].float() - b[n][k].float()).abs().max().item() for n in ("generator", "critic") for k in a[n])


def _train_all(runs: dict, device: str, world_size: int = 1) -> None:
    """Independent runs at once (the cores are shared; the test waits for all)."""
    procs = [p for args in runs.values() for p in
             start([sys.executable, "-m", "gan_dist.train", *args], world_size, env=device_env(device))]
    ok(finish(procs))


@pytest.mark.parametrize("device", DEVICES)
def test_the_default_job_runs_on_the_device(tmp_path, device):
    # the defaults (16x16 conditional DCGAN, WGAN-GP, the evaluation) as a debug run: cuda:0 where
    # there is a GPU, with no flag
    r = ok(train(["train.steps=4", "train.log_every=2", "eval.num_samples=64", f"run.dir={tmp_path}"],
                 env=device_env(device)))[0]
    assert f"device {'cuda:0' if device == 'cuda' else 'cpu'};" in r.out, r.out
    rows = metrics_rows(tmp_path)
    assert _finite(rows) and "fid" in rows[-1] and math.isfinite(rows[-1]["fid"])
    assert latest_ckpt(tmp_path)["step"] == 4


PRECISIONS = {"fp32": ["train.precision=fp32", "train.tf32=false"], "tf32": ["train.precision=fp32", "train.tf32=true"],
              "bf16": ["train.precision=bf16"]}


@pytest.mark.parametrize("device", DEVICES)
def test_fp32_tf32_and_bf16_from_one_seed_train_without_nan(tmp_path, device):
    # a few hundred steps on CUDA (the CPU twin: 20, the same checks)
    steps = 300 if device == "cuda" else 20
    base = TINY + [f"train.steps={steps}", "train.log_every=5", f"train.checkpoint_every={steps}"]
    _train_all({name: base + extra + [f"run.dir={tmp_path}/{name}"] for name, extra in PRECISIONS.items()}, device)
    rows = {name: metrics_rows(tmp_path / name) for name in PRECISIONS}
    for name, r in rows.items():
        assert len(r) == steps // 5 and _finite(r), (name, r[-1])
        assert all(row["gp"] >= 0 for row in r)  # the penalty, a norm taken in fp32 under autocast
    # one seed: the first window agrees (TF32 ~1e-3, bf16's 8 mantissa bits)
    first = {name: r[0] for name, r in rows.items()}
    for name, rel in (("tf32", 1e-2), ("bf16", 5e-2)):
        for k in STATS:
            assert first[name][k] == pytest.approx(first["fp32"][k], rel=rel, abs=rel), (name, k, first)
    if device == "cpu":  # TF32 is a CUDA switch: on the CPU it changes nothing
        assert_same_state(latest_ckpt(tmp_path / "tf32"), latest_ckpt(tmp_path / "fp32"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("augment", ["none", "ada"])
def test_channels_last_reaches_the_critic_with_its_label_channels(tmp_path, device, augment):
    # every critic forward of a step (real+fake, interpolates, the generator phase) gets NHWC
    # input, the one-hot label channels included; the real images come from the stream so
    from gan_dist.training.trainer import Trainer

    cfg = config.load(None, TINY + ["train.channels_last=true", "loss.n_critic=2", f"augment.kind={augment}",
                                    "augment.p=0.5", f"run.dir={tmp_path}"])
    trainer = Trainer(cfg, _world(device))
    seen = []
    hook = trainer.critic.net[0].register_forward_pre_hook(
        lambda module, args: seen.append((tuple(args[0].shape), args[0].is_contiguous(memory_format=torch.channels_last))))
    try:
        for step in range(2):
            trainer.train_step(step)
    finally:
        hook.remove()
        trainer.close()
    assert len(seen) == 2 * (2 * 2 + 1) and all(shape[1] == 1 + 10 for shape, _ in seen)
    assert all(nhwc for _, nhwc in seen), seen


@pytest.mark.parametrize("device", DEVICES)
def test_loader_workers_with_pinned_memory_give_the_run_of_the_main_process(tmp_path, device):
    # an ImageFolder and the zip made from it, 0 and 2 workers (pinned memory on CUDA): one run
    root = write_image_folder(tmp_path / "folder", classes=("a", "b"), per_class=16, size=(10, 12))
    convert(root, tmp_path / "data.zip", "8")
    data = {"folder": ["data.name=image_folder", f"data.root={root}", "data.channels=3"],
            "zip": ["data.name=zip", f"data.root={tmp_path}/data.zip"]}
    base = TINY + ["model.norm=none", "train.steps=4", *device_args(device)]
    runs = {f"{name}{w}": base + extra + [f"data.num_workers={w}", f"run.dir={tmp_path}/{name}{w}"]
            for name, extra in data.items() for w in (0, 2)}
    _train_all(runs, device)
    ref = latest_ckpt(tmp_path / "folder0")
    for name in ("folder2", "zip0", "zip2"):  # the zip holds the pixels the folder loads as
        assert_same_state(ref, latest_ckpt(tmp_path / name))


@pytest.mark.parametrize("device", DEVICES)
def test_augmentation_and_accumulation_on_the_device_equal_the_cpu(tmp_path, device):
    # ADA at p=0.5 with 2 micro-batches per update, on the device and on the CPU
    args = TINY + ["model.norm=none", "optim.eps=1e-6", "train.steps=4", "augment.kind=ada", "augment.p=0.5",
                   "train.micro_batch=8"]
    procs = start([sys.executable, "-m", "gan_dist.train", *args, f"run.dir={tmp_path}/cpu"], env=device_env("cpu")) + \
        start([sys.executable, "-m", "gan_dist.train", *args, *device_args(device), f"run.dir={tmp_path}/dev"],
              env=device_env(device))
    out = ok(finish(procs))[1].out
    assert "per rank 2 micro-batch(es) of 8" in out and f"device {'cuda:0' if device == 'cuda' else 'cpu'}" in out
    cpu, dev = latest_ckpt(tmp_path / "cpu"), latest_ckpt(tmp_path / "dev")
    diff = _max_diff(cpu, dev)
    print(f"{device} vs cpu: max |difference| {diff:.2e}")
    assert diff < (1e-3 if device == "cuda" else 1e-12)  # CUDA's kernels round otherwise than the CPU's
    assert torch.equal(cpu["augment"]["p"], dev["augment"]["p"]) or device == "cuda"


@pytest.mark.parametrize("device", DEVICES)
def test_micro_batch_auto_on_one_rank_and_two_ranks_sharing_the_device(tmp_path, device):
    # the default BatchNorm generator; on CUDA the probe measures (every rank; SyncBatchNorm over
    # the 2 ranks, which share the one GPU over gloo), on the CPU auto is batch_size / W
    args = TINY + ["train.steps=3", "train.micro_batch=auto", *device_args(device, 2)]
    one = ok(train(args + [f"run.dir={tmp_path}/one"], env=device_env(device)))[0].out
    two = ok(train(args + ["dist.backend=gloo", f"run.dir={tmp_path}/two"], 2, env=device_env(device)))
    a, b = latest_ckpt(tmp_path / "one"), latest_ckpt(tmp_path / "two")
    assert f"device {'cuda:0' if device == 'cuda' else 'cpu'}" in two[0].out and "DDP over gloo" in two[0].out
    if device == "cpu":
        assert (a["micro_batch"], b["micro_batch"]) == (16, 8) and "per rank 1 micro-batch(es) of 16" in one
    else:  # the GPU holds a whole local batch of this tiny model; SyncBatchNorm: 2 ranks are 1 rank
        assert "SyncBatchNorm" in two[0].out and (a["micro_batch"], b["micro_batch"]) == (16, 8)
        assert _max_diff(a, b) < 1e-3


@pytest.mark.parametrize("device", DEVICES)
def test_torchrun_with_one_process_forced_through_ddp(tmp_path, device):
    # dist.force_ddp: nccl's init, SyncBatchNorm's conversion and DDP's device_ids on one GPU (gloo and
    # DDP on the CPU); the same run as without it
    args = TINY + ["train.steps=3", *device_args(device)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "gan_dist.train",
           *args, "dist.force_ddp=true", f"run.dir={tmp_path}/ddp"]
    r = ok(finish(start(cmd, env=device_env(device)), timeout=300))[0]
    assert "on 1 rank(s)" in r.out
    assert ("DDP over nccl, SyncBatchNorm" if device == "cuda" else "DDP over gloo") in r.out, r.out
    ok(train(args + [f"run.dir={tmp_path}/plain"], env=device_env(device)))
    assert _max_diff(latest_ckpt(tmp_path / "ddp"), latest_ckpt(tmp_path / "plain")) < 1e-5


class _SyncOps(TorchDispatchMode):
    """The ops that wait for the device on CUDA: a value read on the host (item, bool, float),
    a shape that depends on the data (nonzero, masked_select, unique). Not counted: Adam's step
    counters, host tensors on every device (torch.optim reads them with .item())."""
    SYNCING = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "repeat_interleave")

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.SYNCING:
            stack = traceback.extract_stack()
            if not any("/torch/optim/" in frame.filename for frame in stack):
                self.seen.append(f"{func.overloadpacket.__name__} at " + " <- ".join(
                    f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in reversed(stack[-6:-1])))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("extra", [[], ["augment.kind=ada", "augment.interval=2", "train.micro_batch=8"],
                                   ["loss.kind=ns_r1", "loss.gp_every=2", "train.ema_decay=0.99"]],
                         ids=["wgan_gp", "ada-accumulation", "ns_r1-lazy"])
def test_a_training_step_makes_no_host_sync(tmp_path, device, extra):
    # Steps between log steps: the step, its stats into the window, the signal agreement (a CPU
    # all-reduce). CUDA: torch's sync debug mode raises at any sync; both devices: no op of the
    # kind that syncs on CUDA. The first step (allocations, cuDNN's choices) is left out.
    from gan_dist.training.trainer import Trainer

    cfg = config.load(None, TINY + extra + ["loss.n_critic=2", f"run.dir={tmp_path}"])
    world = _world(device)
    trainer = Trainer(cfg, world)
    try:
        trainer.window.add(trainer.train_step(0), 0)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        with _SyncOps() as ops:
            for step in range(1, 5):  # an ADA adjustment (interval 2) and a lazy-penalty update among them
                trainer.window.add(trainer.train_step(step), step)
                trainer.preemption.agree(world)
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode(0)
        trainer.close()
    assert ops.seen == [], ops.seen
    means, first_bad = trainer.window.reduce(world)  # a log step may sync: the window holds 5 finite steps
    assert first_bad is None and trainer.window.steps == 5 and all(math.isfinite(v) for v in means.values())
