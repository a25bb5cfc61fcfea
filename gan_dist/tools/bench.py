"""Throughput of gan_dist's Trainer (`python -m gan_dist.bench`, command line in cli/bench.py)
against a plain hand-written loop, on 1 and 2 ranks. A benchmark to read, not a timed test.

Rows, each in fresh subprocesses of this file (worker mode), 1 torch thread per process:
  plain    the loop a user writes from the book: same models, Adam, batch, n_critic and loss,
           the gradient penalty the straightforward way (3 critic forwards), no DDP; fp32, no
           EMA (train.precision / channels_last / compile / ema_decay are the Trainer's)
  ws1      Trainer.train_step in 1 process
  weak2    2 ranks (gloo on CPU), the same per-rank batch as ws1: global batch doubled
  strong2  2 ranks, the same global batch as ws1
  gp_cost  one WGAN-GP critic update (the Trainer's loss strategy) vs one without the penalty
  micro2, micro4  1 rank, the same global batch as ws1 in 2 and 4 micro-batches (accumulation)
  diffaug, ada    ws1 with augment.kind=diffaug / ada (ada at p=0.5: every operation's cost is
           paid at any p, torch.where keeps a sample's original where it does not apply)
Memory: peak RSS per process, and the peak the step itself allocates (the allocator's
tensors: torch.profiler's memory events on the CPU, max_memory_allocated on CUDA), which is
what accumulation lowers (RSS is mostly imports).
Images/s = images through the critic: global batch * (2 * n_critic + 1) per generator step.
Beside wall time, CPU time per step: on a loaded machine (CPU/wall well below 1) the "cpu"
ratios, from the work per step, are the ones to read.
Where the config's dataset is missing (or with --synthetic), random images in [-1, 1] with
labels, of the same shape and classes, stand in.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from gan_dist import config, distributed
from gan_dist.data import DataInfo, build_dataset
from gan_dist.distributed import launch
from gan_dist.errors import UserError
from gan_dist.tools.plain_loop import plain_step, update
from gan_dist.training import trainer
from gan_dist.training.losses import WGANGP

RANKS = {"plain": 1, "ws1": 1, "weak2": 2, "strong2": 2, "gp_cost": 1, "micro2": 1, "micro4": 1, "diffaug": 1,
         "ada": 1}
MICRO = {"micro2": 2, "micro4": 4}  # micro-batches per update
AUGMENT = {"diffaug": ["augment.kind=diffaug"], "ada": ["augment.kind=ada", "augment.p=0.5"]}
DEFAULT_CLASSES = {"digits": 10, "fashion_mnist": 10, "mnist": 10, "image_folder": 2}  # glasses: G, NoG
TARGETS = {"ws1/plain": ">= 0.97", "weak2/ws1": ">= 1.8", "strong2/ws1": "", "gp_cost": "<= 2.2",
           "micro2/ws1": ">= 0.9", "micro4/ws1": ">= 0.9", "diffaug/ws1": "", "ada/ws1": ""}
Step = Callable[[int], object]


# ---- data and the rows' steps -----------------------------------------------------------
def synthetic_data(cfg: config.Config, classes: int, size: int) -> tuple[TensorDataset, DataInfo]:
    c, s = (cfg.data.channels if cfg.data.name == "image_folder" else 1), cfg.data.image_size
    g = torch.Generator().manual_seed(cfg.seed)
    n = max(size, 2 * cfg.train.batch_size)
    images = torch.rand(n, c, s, s, generator=g) * 2.0 - 1.0
    return TensorDataset(images, torch.randint(classes, (n,), generator=g)), DataInfo(classes, c, s)


def gp_cost_steps(tr: trainer.Trainer) -> tuple[Step, Step]:
    """(critic update with the Trainer's WGAN-GP strategy, critic update with -(E[real]-E[fake])
    from one forward over real+fake), on one fixed batch, under the Trainer's autocast. BCE
    configs: a WGANGP on their critic."""
    dev, b = tr.world.device, tr.stream.local_batch
    real, y = tr.stream.next()
    oh = F.one_hot(y, tr.num_classes).float() if tr.num_classes else None
    with torch.no_grad():
        fake = tr.generator(torch.randn(b, tr.cfg.model.z_dim, device=dev), oh)
    alpha = torch.rand(b, 1, 1, 1, device=dev)
    strategy = tr.loss if isinstance(tr.loss, WGANGP) else WGANGP(tr.cfg.loss.gp_lambda)
    both, oh2 = torch.cat([real, fake]), None if oh is None else oh.repeat(2, 1)

    def with_gp(_: int) -> None:
        with torch.autocast(**tr.autocast):
            loss = strategy.critic_loss(tr.critic_ddp, real, fake, oh, alpha)[0]  # update=0: with the penalty
        update(tr.opt_c, loss)

    def without_gp(_: int) -> None:
        with torch.autocast(**tr.autocast):
            scores = tr.critic_ddp(both, oh2).float()
        update(tr.opt_c, scores[b:].mean() - scores[:b].mean())
    return with_gp, without_gp


# ---- a worker: one rank of one row --------------------------------------------------------
def measure(fn: Step, world: distributed.World, warmup: int, steps: int, repeats: int) -> dict:
    """`warmup` untimed steps, then `repeats` x `steps` timed ones; the ranks start each repeat
    together (barrier); on CUDA the device is synchronized before a timer is read."""
    def sync():
        if world.device.type == "cuda":
            torch.cuda.synchronize(world.device)
    for i in range(warmup):
        fn(i)
    sync()
    # CPU time (this process, all its threads) beside wall time: a 1-thread rank's CPU time per
    # step is its work, little changed by other processes; CPU/wall below 1 says they took its core.
    k, walls, times, cpu_times = warmup, [], [], []
    for _ in range(repeats):
        distributed.barrier(world)
        start = time.perf_counter()
        for _ in range(steps):
            t, c = time.perf_counter(), time.process_time()
            fn(k)
            sync()
            times.append(time.perf_counter() - t)
            cpu_times.append(time.process_time() - c)
            k += 1
        walls.append(time.perf_counter() - start)
    return {"walls": walls, "times": times, "cpu_times": cpu_times}


def worker(args: argparse.Namespace) -> None:
    """Measure one rank of row args.worker; write OUT_DIR/ROW.RANK.json."""
    torch.set_num_threads(1)
    importlib.import_module("torchvision.utils")  # the sample grids' import in every row, before the baseline
    rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    # the parent appended run.dir, batch, threads; no evaluation: it is not a training step
    cfg = config.load(args.config, ["eval.every=0", *args.overrides])
    world = distributed.setup(distributed.detect(cfg.dist.backend, cfg.dist.force_ddp), threads=1, timeout_s=args.timeout)
    tr, finished = None, False
    try:
        data = synthetic_data(cfg, args.classes, args.synthetic_size) if args.synthetic else None
        timing = dict(world=world, warmup=args.warmup, steps=args.steps, repeats=args.repeats)
        if args.worker == "plain":
            result = measure(plain_step(cfg, data or build_dataset(cfg), world.device), **timing)
        elif args.worker == "gp_cost":
            tr = trainer.Trainer(cfg, world, data=data)
            steps = dict(zip(("with_gp", "without_gp"), gp_cost_steps(tr)))
            result = {name: {"times": [], "cpu_times": []} for name in steps}
            for r in range(args.repeats):  # interleaved, so drifting load hits both alike
                for name, fn in steps.items():
                    once = measure(fn, **{**timing, "warmup": args.warmup if r == 0 else 0, "repeats": 1})
                    for key in ("times", "cpu_times"):
                        result[name][key] += once[key]
        else:
            tr = trainer.Trainer(cfg, world, data=data)
            result = measure(tr.train_step, **timing)
            result["step_alloc_mb"] = step_allocation(tr.train_step, args.warmup + args.steps * args.repeats,
                                                      world.device) / 2**20
        result.update(rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, rss_imports_mb=rss_imports,
                      cuda_max_mb=torch.cuda.max_memory_allocated(world.device) / 2**20
                      if world.device.type == "cuda" else None)
        Path(args.out_dir, f"{args.worker}.{world.rank}.json").write_text(json.dumps(result))
        finished = True
    finally:
        if tr is not None:
            tr.close()  # the DDP wrappers go before the process group
        distributed.teardown(clean=finished)


def step_allocation(fn: Step, k: int, device: torch.device) -> int:
    """Peak bytes of tensors one step allocates beyond what lived before it: the allocator's own
    figure (CUDA), or the running sum of torch.profiler's memory events (CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn(k)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(k)
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


# ---- the parent: rows in subprocesses, summaries, the table -------------------------------
def run_row(row: str, args: argparse.Namespace, batch: int, tmp: str, synthetic: bool, classes: int) -> list[dict]:
    """The row's ranks: this module in worker mode, at most --timeout seconds."""
    n = RANKS[row]
    cmd = [sys.executable, "-m", "gan_dist.bench", "--worker", row, "--out-dir", tmp, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--timeout", str(args.timeout),
           "--classes", str(classes), "--synthetic-size", str(args.synthetic_size)]
    cmd += (["--synthetic"] if synthetic else []) + (["--config", args.config] if args.config else [])
    cmd += args.overrides + [f"run.dir={tmp}/run_{row}", "train.threads=1",
                             f"train.batch_size={2 * batch if row == 'weak2' else batch}"]
    if row in MICRO:
        cmd.append(f"train.micro_batch={batch // MICRO[row]}")
    cmd += AUGMENT.get(row, [])
    env = launch.child_env({"CUDA_VISIBLE_DEVICES": ""} if args.cpu else None)
    launch.run_ranks(cmd, n, tmp, f"row {row}", args.timeout, env)
    return [json.loads(Path(tmp, f"{row}.{r}.json").read_text()) for r in range(n)]


def spread(times: list[float]) -> dict:
    q = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else times * 3
    return {key: round(v * 1e3, 3) for key, v in (("median_ms", statistics.median(times)), ("p25_ms", q[0]),
                                                  ("p75_ms", q[2]), ("min_ms", min(times)), ("max_ms", max(times)))}


def summarize(row: str, parts: list[dict], batch: int, n_critic: int) -> dict:
    memory = {"peak_rss_mb": [p["rss_mb"] for p in parts], "rss_after_imports_mb": [p["rss_imports_mb"] for p in parts],
              "cuda_max_mb": [p["cuda_max_mb"] for p in parts], "step_alloc_mb": [p.get("step_alloc_mb") for p in parts]}
    if row == "gp_cost":
        (with_gp, without), m = (parts[0][k] for k in ("with_gp", "without_gp")), statistics.median
        return {"with_gp": spread(with_gp["times"]), "without_gp": spread(without["times"]),
                "ratio": m(with_gp["times"]) / m(without["times"]),
                "ratio_cpu": m(with_gp["cpu_times"]) / m(without["cpu_times"]), **memory}
    n, global_batch = len(parts), 2 * batch if row == "weak2" else batch
    walls = [max(w) for w in zip(*(p["walls"] for p in parts))]  # the slowest rank sets the pace
    times = [max(t) for t in zip(*(p["times"] for p in parts))]
    per_repeat = [len(times) / len(walls) / w for w in walls]
    steps_per_s = statistics.median(per_repeat)
    return {"ranks": n, "global_batch": global_batch, "per_rank_batch": global_batch // n,
            "gen_steps_per_s": steps_per_s, "images_per_s": steps_per_s * global_batch * (2 * n_critic + 1),
            "steps_per_s_per_repeat": per_repeat, "step": spread(times),
            "cpu_ms_per_step": [statistics.median(p["cpu_times"]) * 1e3 for p in parts],
            "cpu_per_wall": [sum(p["cpu_times"]) / sum(p["walls"]) for p in parts], **memory}


def bench(args: argparse.Namespace) -> dict:
    cfg = config.load(args.config, args.overrides)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    if not rows or any(r not in RANKS for r in rows):
        raise UserError(f"--rows: choose from {','.join(RANKS)}, got {args.rows!r}")
    batch = cfg.train.batch_size
    if "strong2" in rows and batch % 2:
        raise UserError(f"train.batch_size: strong2 splits {batch} over 2 ranks; use an even batch")
    for row in (r for r in rows if r in MICRO):
        if batch % MICRO[row]:
            raise UserError(f"train.batch_size: {row} splits {batch} into {MICRO[row]} micro-batches; use a multiple")
    if torch.cuda.is_available() and not args.cpu and torch.cuda.device_count() < 2:
        print("note: one CUDA device: skipping the 2-rank rows (--cpu runs every row on CPU)")
        rows = [r for r in rows if RANKS[r] == 1]
    synthetic = args.synthetic
    if not synthetic and cfg.data.name != "digits":  # the digits ship inside scikit-learn
        try:
            build_dataset(cfg)
        except UserError as e:
            if not str(e).startswith("data.root"):
                raise
            synthetic = True
            print(f"note: synthetic data ({e})")
    classes = args.classes or DEFAULT_CLASSES.get(cfg.data.name, 10)
    res = {"argv": sys.argv[1:], "config": config.to_dict(cfg), "synthetic": synthetic,
           "settings": {"steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "torch_threads": 1,
                        "images_per_gen_step": f"global batch * {2 * cfg.loss.n_critic + 1}"},
           "loadavg_before": os.getloadavg(), "rows": {}}
    with tempfile.TemporaryDirectory(prefix="gan_dist_bench_") as tmp:
        for row in rows:
            print(f"running {row} ...", flush=True)
            res["rows"][row] = summarize(row, run_row(row, args, batch, tmp, synthetic, classes), batch,
                                         cfg.loss.n_critic)
    res["loadavg_after"] = os.getloadavg()
    rows = {k: v for k, v in res["rows"].items() if k != "gp_cost"}
    pairs = [(a, b) for a, b in (("ws1", "plain"), ("weak2", "ws1"), ("strong2", "ws1"), ("micro2", "ws1"),
                                 ("micro4", "ws1"), ("diffaug", "ws1"), ("ada", "ws1")) if a in rows and b in rows]
    res["ratios"] = {f"{a}/{b}": rows[a]["images_per_s"] / rows[b]["images_per_s"] for a, b in pairs}
    # the same ratios from CPU time: images per CPU-second of the slowest rank
    cpu_ips = {k: r["global_batch"] / max(r["cpu_ms_per_step"]) for k, r in rows.items()}
    res["ratios_cpu"] = {f"{a}/{b}": cpu_ips[a] / cpu_ips[b] for a, b in pairs}
    if "gp_cost" in res["rows"]:
        res["ratios"]["gp_cost"] = res["rows"]["gp_cost"]["ratio"]
        res["ratios_cpu"]["gp_cost"] = res["rows"]["gp_cost"]["ratio_cpu"]
    return res
