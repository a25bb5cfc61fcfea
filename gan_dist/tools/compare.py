"""Runs side by side (`python -m gan_dist.compare RUN_DIR... [--sort fid] [--plot OUT.png]`,
command line in cli/compare.py): one table of the settings that differ between the runs and
each run's final and best quality metrics, with the real-vs-real value the evaluation logs
beside each (ref_NAME); and one plot of a metric against the images the generator has seen.
Reads config.yaml and metrics.jsonl only, so it works on runs that are still training."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import yaml

from gan_dist.config import METRIC_DIRECTION
from gan_dist.errors import UserError
from gan_dist.tools.plot import read_metrics

METRICS = ("fid", "kid", "precision", "recall", "cond_acc")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def load_run(run_dir: Path) -> dict:
    """A run's settings (config.yaml, flattened), metrics rows, and batch size; one line when
    the directory is not a run."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir}: not a run directory (no config.yaml)")
    try:
        settings = _flat(yaml.safe_load(path.read_text()) or {})
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not readable YAML ({str(e).splitlines()[0]})") from None
    try:
        rows = read_metrics(Path(run_dir))
    except UserError:
        rows = []  # started, nothing logged yet: its settings still show
    return {"dir": Path(run_dir), "settings": settings, "rows": rows}


def summary(run: dict) -> dict:
    """Final and best value of each quality metric (best by its direction), with the step of
    the best and the real-vs-real value of the last evaluation."""
    out = {"step": run["rows"][-1]["step"] if run["rows"] else 0}
    for m in METRICS:
        have = [r for r in run["rows"] if r.get(m) is not None]
        if not have:
            continue
        best = (min if METRIC_DIRECTION[m] == "min" else max)(have, key=lambda r: r[m])
        out[m] = {"final": have[-1][m], "best": best[m], "best_step": best["step"], "real": have[-1].get(f"ref_{m}")}
    return out


def compare(runs: list[dict], sort: str = "fid") -> tuple[list[str], list[dict]]:
    """(the setting keys that differ, one row per run sorted by the final `sort` metric); runs:
    load_run's."""
    if sort not in METRICS:
        raise UserError(f"--sort: one of {', '.join(METRICS)}, got {sort!r}")
    keys = sorted({k for r in runs for k in r["settings"]})
    differ = [k for k in keys if k != "run.dir" and len({repr(r["settings"].get(k)) for r in runs}) > 1]
    rows = [{"dir": str(r["dir"]), "settings": {k: r["settings"].get(k) for k in differ}, **summary(r)} for r in runs]
    worst = math.inf if METRIC_DIRECTION[sort] == "min" else -math.inf
    sign = 1 if METRIC_DIRECTION[sort] == "min" else -1
    rows.sort(key=lambda r: sign * (r[sort]["final"] if sort in r else worst))
    return differ, rows


def table(differ: list[str], rows: list[dict]) -> str:
    """Markdown: run, the differing settings, step, each metric final (best @ step), and the
    real-vs-real line."""
    metrics = [m for m in METRICS if any(m in r for r in rows)]
    head = ["run", *differ, "step", *metrics]

    def cell(r, m):
        if m not in r:
            return ""
        v = r[m]
        return f"{v['final']:.4g} (best {v['best']:.4g} @ {v['best_step']})"
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([Path(r["dir"]).name, *(str(r["settings"][k]) for k in differ), str(r["step"]),
                                        *(cell(r, m) for m in metrics)]) + " |")
    real = {m: next((r[m]["real"] for r in rows if m in r and r[m]["real"] is not None), None) for m in metrics}
    if any(v is not None for v in real.values()):
        lines.append("| real vs real | " + " | ".join([""] * len(differ) + [""] +
                                                  [f"{real[m]:.4g}" if real[m] is not None else "" for m in metrics]) + " |")
    return "\n".join(lines)


def plot(runs: list[dict], metric: str, out: Path) -> Optional[Path]:
    """One line per run: `metric` against the images the generator has seen (step x global batch);
    the real-vs-real value dashed. None when no run has the metric yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn, values = False, []
    for run in runs:
        batch = int(run["settings"].get("train.batch_size", 1))
        have = [r for r in run["rows"] if r.get(metric) is not None]
        if not have:
            continue
        drawn = True
        values += [r[metric] for r in have] + [r[f"ref_{metric}"] for r in have if r.get(f"ref_{metric}") is not None]
        line, = ax.plot([r["step"] * batch / 1000 for r in have], [r[metric] for r in have], marker="o",
                        label=run["dir"].name)
        if have[-1].get(f"ref_{metric}") is not None:
            ax.axhline(have[-1][f"ref_{metric}"], color=line.get_color(), linestyle="--", linewidth=0.8)
    if not drawn:
        plt.close(fig)
        return None
    if min(values) > 0 and max(values) > 10 * min(values):  # early FIDs would flatten the end that matters
        ax.set_yscale("log")
    ax.set_xlabel("thousands of images seen by the generator")
    ax.set_ylabel(f"{metric} (dashed: real vs real)")
    ax.legend(fontsize=7)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out
