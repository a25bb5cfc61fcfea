"""Plots of a run (`python -m gan_dist.plot RUN_DIR [--out DIR]`, command line in cli/plot.py).

PNGs from a run directory (default DIR: RUN_DIR/plots), usable while the run is training:
losses.png (losses; wasserstein/gp for WGAN-GP, p_real/p_fake for BCE, score_real/score_fake
for hinge and NS+R1 (d_real/d_fake in runs written before gan_dist 0.3); gradient norms),
quality.png (fid, kid, precision/recall, cond_acc: only when the metrics have them; each with
its real-vs-real value, ref_NAME, as a dashed line), augment.png (ADA's p and its statistic
r_t, augment.kind=ada), throughput.png (images_per_sec)
and samples_strip.png (up to 6 evenly spaced sample grids from RUN_DIR/samples, captioned).
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Optional

from gan_dist.errors import UserError
from gan_dist.runs import tracking
from gan_dist.runs.run_dir import RunDir

# (title, keys) per panel; a key with no value is left out, a panel without keys too, a file
# without panels too. Quality metrics are measured now and then: their nulls are not gaps.
FIGURES = {
    "losses.png": [("losses", ["loss_critic", "loss_gen"]),
                   ("critic (WGAN-GP, R1, R2)", ["wasserstein", "gp", "r1", "r2"]),
                   ("discriminator probabilities (BCE)", ["p_real", "p_fake"]),
                   ("discriminator scores (hinge, NS)", ["score_real", "score_fake"]),
                   ("discriminator (runs before gan_dist 0.3)", ["d_real", "d_fake"]),
                   ("gradient norms", ["grad_norm_critic", "grad_norm_generator"])],
    "quality.png": [("Frechet distance (lower is better)", ["fid", "fid_class_mean", "fid_class_max"]),
                    ("KID (lower is better)", ["kid"]),
                    ("precision: fidelity, recall: diversity (higher is better)", ["precision", "recall"]),
                    ("conditional accuracy", ["cond_acc"])],
    "augment.png": [("ADA: augmentation probability p", ["augment_p"]),
                    ("ADA: overfitting statistic r_t (p rises while it is above augment.target)", ["augment_rt"])],
    "throughput.png": [("throughput", ["images_per_sec"])],
}
STRIP = 6  # sample grids in samples_strip.png


def read_metrics(run_dir: Path) -> list[dict]:
    path = RunDir(run_dir).metrics
    if not path.is_file():
        raise UserError(f"{run_dir}: no metrics.jsonl (not a run directory, or no step logged yet)")
    rows = sorted(tracking.read_metrics(path), key=lambda r: r["step"])
    if not rows:
        raise UserError(f"{path}: no metrics rows yet")
    return rows


def series(rows: list[dict], key: str, gaps: bool = True) -> tuple[list[int], list[float]]:
    """Steps and values of the rows that have `key`; null (a non-finite loss) becomes NaN, a gap
    in the line, or (gaps=False) is dropped."""
    have = [r for r in rows if key in r and (gaps or r[key] is not None)]
    return [r["step"] for r in have], [math.nan if r[key] is None else float(r[key]) for r in have]


def plot_panels(plt, rows: list[dict], panels: list, path: Path) -> bool:
    gaps = path.name != "quality.png"
    panels = [(t, [k for k in keys if any(r.get(k) is not None for r in rows)]) for t, keys in panels]
    panels = [(t, keys) for t, keys in panels if keys]
    if not panels:
        return False
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.8 * len(panels)), sharex=True, squeeze=False)
    for ax, (title, keys) in zip(axes[:, 0], panels):
        for k in keys:
            steps, values = series(rows, k, gaps)
            # markers on short series, so that a metric measured a few times still shows
            line, = ax.plot(steps, values, label=k, marker="." if len(steps) < 50 else None)
            ref = [r[f"ref_{k}"] for r in rows if r.get(f"ref_{k}") is not None]
            if ref:  # what held-out real images score: the line to aim for
                ax.axhline(ref[-1], color=line.get_color(), linestyle="--", label=f"{k} real-vs-real")
        ax.set_title(title)
        ax.legend(loc="best")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("generator step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_strip(plt, run_dir: Path, path: Path) -> bool:
    from PIL import Image

    grids = sorted(p for p in RunDir(run_dir).samples.glob("step_*.png") if re.fullmatch(r"step_\d+\.png", p.name))
    if not grids:
        return False
    k = min(STRIP, len(grids))
    picked = [grids[round(i * (len(grids) - 1) / max(k - 1, 1))] for i in range(k)]  # first and last included
    images = [Image.open(p).convert("RGB") for p in picked]
    w, h = images[0].size
    fig, axes = plt.subplots(1, k, figsize=(2.2 * k, 2.2 * h / w + 0.5), squeeze=False)
    for ax, p, im in zip(axes[0], picked, images):
        ax.imshow(im, interpolation="nearest")
        ax.set_title(f"step {int(p.stem.split('_')[1])}", fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return True


def plot(run_dir: str | Path, out: Optional[str | Path] = None) -> list[Path]:
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    try:
        import matplotlib
    except ImportError:
        raise UserError("plots need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")  # files only: no display on cluster nodes
    import matplotlib.pyplot as plt

    out = Path(out) if out is not None else RunDir(run_dir).plots
    out.mkdir(parents=True, exist_ok=True)
    written = [out / name for name, panels in FIGURES.items() if plot_panels(plt, rows, panels, out / name)]
    if plot_strip(plt, run_dir, out / "samples_strip.png"):
        written.append(out / "samples_strip.png")
    return written
