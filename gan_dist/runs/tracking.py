"""Metrics on rank 0 only: a console line, run_dir/metrics.jsonl (always), wandb (when
enabled). Other ranks get a Tracker that does nothing, so no wandb call ever runs there.
Warnings go through the "gan_dist" logger: one line each on stderr, from any rank (a rank
other than 0 says which), since some (an unreadable image) are seen by one rank only."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Optional

import torch

from gan_dist.config import Config, to_dict
from gan_dist.errors import UserError, first_line, log
from gan_dist.runs.run_dir import RunDir


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl. The last line may be half-written (the run is training,
    or was killed mid-write): it is skipped; a broken line before it is an error."""
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    rows = []
    for i, ln in enumerate(lines, 1):
        try:
            rows.append(json.loads(ln))
        except json.JSONDecodeError:
            if i == len(lines):
                break
            raise UserError(f"{path}:{i}: not a JSON object") from None
    return [r for r in rows if isinstance(r, dict) and "step" in r]


def _fmt(v: float) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Tracker:
    def __init__(self, cfg: Config, active: bool, resume_step: int = 0, run_id: Optional[str] = None):
        self.active = active
        self.run_dir = Path(cfg.run.dir)
        self.total_steps = cfg.train.steps
        self.wandb_run = self.bar = None
        if not active:
            return
        if sys.stdout.isatty():  # a terminal gets a progress bar; Slurm logs get plain lines
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.train.steps, initial=resume_step, unit="step", dynamic_ncols=True,
                            file=sys.stdout)
        self.metrics_path = RunDir(self.run_dir).metrics
        self._truncate_after(resume_step)
        if cfg.wandb.mode != "disabled":
            try:
                import wandb
                w = cfg.wandb
                # WANDB_DIR, when set, says where wandb's files go (clusters move them off a small
                # home or NFS); passing dir= would override it. Otherwise: the run directory.
                where = None if os.environ.get("WANDB_DIR") else str(self.run_dir)
                self.wandb_run = wandb.init(project=w.project, entity=w.entity or None, name=w.name or None,
                                            group=w.group or None, tags=w.tags or None, mode=w.mode,
                                            dir=where, id=run_id or None, resume="allow", config=to_dict(cfg))
            except Exception as e:  # no network, bad key...: the run goes on with metrics.jsonl
                self.warn(f"wandb did not start ({first_line(e)}); metrics go to {self.metrics_path} only")

    @property
    def run_id(self) -> str:
        return self.wandb_run.id if self.wandb_run is not None else ""

    def _truncate_after(self, step: int) -> None:
        """A resumed run repeats the steps after its checkpoint: drop their old lines (and a
        line torn by a kill mid-write)."""
        if self.metrics_path.exists():
            rows = [r for r in read_metrics(self.metrics_path) if r["step"] <= step]
            self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def rollback(self, to_step: int, from_step: int, metrics: dict) -> None:
        """Training returned from from_step to to_step: metrics.jsonl forgets the steps in
        between and records the event at to_step; wandb, whose steps only increase, gets the
        event at from_step and drops the replayed steps up to there (docs/watching.md)."""
        if not self.active:
            return
        self._truncate_after(to_step)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps({"step": to_step, "rollback_from": from_step, **metrics}) + "\n")
        if self.bar is not None:
            self.bar.n = to_step
            self.bar.refresh()
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=from_step)

    def info(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message)
        elif self.active:
            print(message, flush=True)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def warn(self, message: str) -> None:
        if self.active:
            log.warning(message)

    def log(self, step: int, metrics: dict) -> None:
        if not self.active:
            return
        row = {"step": step, **{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                for k, v in metrics.items()}}
        try:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as e:  # a full disk: the checkpoint that follows stops the run with the cause
            self.warn(f"could not append to {self.metrics_path} ({e.strerror or e})")
        shown = " ".join(f"{k} {_fmt(v)}" for k, v in metrics.items()
                         if k not in ("epoch", "lr", "step_time") and not k.startswith("grad_norm"))
        eta = metrics.get("step_time", 0.0) * (self.total_steps - step)
        self.info(f"step {step}/{self.total_steps} | {shown} | eta {int(eta // 60)}m{int(eta % 60):02d}s")
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)

    def log_image(self, step: int, name: str, grid_uint8: torch.Tensor) -> None:
        if self.active and self.wandb_run is not None:
            import wandb
            self.wandb_run.log({name: wandb.Image(grid_uint8.permute(1, 2, 0).numpy())}, step=step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
