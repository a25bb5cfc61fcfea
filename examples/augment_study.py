"""Does augmentation help on small datasets? none vs diffaug vs ada on the embedded digits at
several training-set sizes, judged on images the GAN never trains on.

Splits of the 1,797 digits (16x16), fixed: the GAN trains on the first N of a 1,000-image pool;
a judge classifier (gan_dist's DigitsNet) trains on 300 other images; generated images are
scored against a 250-image reference that neither saw, and a second disjoint real set of 247
gives the real-vs-real value at the same n beside each figure.

    python examples/augment_study.py run --kinds none,diffaug,ada --sizes 200,1000 --steps 1000
    python examples/augment_study.py report      # the markdown table and docs/ada_p.png

Each run appends one JSON line to --results (default runs/augment_study/results.jsonl); runs of
two invocations side by side (one thread each) share the file.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

REPO = Path(__file__).resolve().parents[1]
POOL, JUDGE, REF, REAL = slice(0, 1000), slice(1000, 1300), slice(1300, 1550), slice(1550, 1797)


def splits():
    from gan_dist.quality.digits_classifier import digits_tensors

    images, labels = digits_tensors(16)
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
    torch.save(net.state_dict(), path)
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
    images, labels, perm = splits()
    cache = Path(args.results).parent
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
                run_dir = results.parent / f"{args.loss}_{kind}_n{size}_s{seed}_{args.steps}"
                overrides = [f"loss.kind={args.loss}", f"augment.kind={kind}", f"train.steps={args.steps}",
                             "eval.every=0", f"seed={seed}", f"run.dir={run_dir}", f"train.threads={args.threads}",
                             "train.log_every=50", "train.sample_every=100000", "train.checkpoint_every=100000"]
                start = time.time()
                gan_dist.fit(None, data=data, overrides=overrides + args.overrides)
                wall = time.time() - start
                gen = generated(run_dir, ref_labels)
                rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
                row = {"loss": args.loss, "kind": kind, "size": size, "seed": seed, "steps": args.steps,
                       "run_dir": str(run_dir), "wall_s": round(wall, 1),
                       **scores(net, gen, ref_labels, ref, ref_labels, feature_scale(net, ref)),
                       "leak": flag(gen), "leak_plain_real": rates["plain_real"],
                       "leak_augmented_real": rates["augmented_real"],
                       "p": [(r["step"], r["augment_p"]) for r in rows if "augment_p" in r]}
                with results.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps({k: v for k, v in row.items() if k != "p"}), flush=True)


def report(args) -> None:
    images, labels, perm = splits()
    cache = Path(args.results).parent
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
    print("| loss | kind | N | steps | seeds | " + " | ".join(keys) + " | wall (s) |")
    print("|---|---|---|---|---|" + "---|" * (len(keys) + 1))
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["loss"], r["size"], r["steps"], r["kind"]), []).append(r)
    for (loss, size, steps, kind), rs in sorted(groups.items()):
        cells = [" / ".join(f"{r[k]:.3g}" for r in rs) for k in keys]
        print(f"| {loss} | {kind} | {size} | {steps} | {len(rs)} | " + " | ".join(cells) +
              f" | {' / '.join(str(r['wall_s']) for r in rs)} |")
    real["leak"] = rates["plain_real"]
    print("| real vs real | | 247 | | | " + " | ".join(f"{real[k]:.3g}" for k in keys) + " | |")
    print(f"\nleak: the share of images a plain-or-augmented classifier calls augmented; held-out reals "
          f"{rates['plain_real']:.3f} plain, {rates['augmented_real']:.3f} augmented at p = 1")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for r in rows:
        if r["kind"] == "ada" and r["p"]:
            steps, ps = zip(*r["p"])
            ax.plot(steps, ps, label=f"{r['loss']} N={r['size']} seed {r['seed']}")
    ax.set_xlabel("generator step")
    ax.set_ylabel("ADA p")
    ax.set_title("ADA p per training-set size N on the digits (examples/augment_study.py)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = REPO / "docs" / "ada_p.png"
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=("run", "report"))
    p.add_argument("--kinds", default="none,diffaug,ada")
    p.add_argument("--sizes", default="200,1000")
    p.add_argument("--seeds", default="0")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--loss", default="ns_r1")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default=str(REPO / "runs" / "augment_study" / "results.jsonl"))
    p.add_argument("overrides", nargs="*", help="more key=value settings for every run")
    args = p.parse_args(argv)
    (run if args.mode == "run" else report)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
