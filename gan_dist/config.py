"""Every setting as a dataclass; YAML files and dotted `key=value` overrides on top.

The defaults here ARE the default run (conditional WGAN-GP on scikit-learn's digits), so the
installed package runs without the repo's configs/ folder. configs/default.yaml mirrors them.
Validation raises UserError with one line naming the offending key.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from gan_dist import registry
from gan_dist.errors import UserError


@dataclass
class RunConfig:
    dir: str = "runs/digits_cwgan_gp"
    # How long a rank waits to see what rank 0 wrote in run.dir (its lock file, the checkpoint
    # it chose) before deciding run.dir is not shared: NFS attribute caches lag by seconds.
    shared_fs_wait_s: float = 30.0


@dataclass
class DistConfig:
    # auto: nccl on CUDA, gloo on CPU. gloo on CUDA lets several ranks share one GPU (a
    # laptop's, a test's); nccl needs one GPU per rank.
    backend: str = "auto"


@dataclass
class DataConfig:
    name: str = "digits"          # digits | fashion_mnist | image_folder | package.module:factory
    root: str = ""                # unused by digits (it ships inside scikit-learn)
    image_size: int = 16
    channels: int = 1             # image_folder only: 1 (grayscale) or 3 (RGB)
    download: bool = False        # fashion_mnist only; off because clusters often have no internet
    num_workers: int = 0          # DataLoader workers (persistent; pinned memory on CUDA)
    start_method: str = ""        # workers' multiprocessing start method: "" (platform default) | fork | forkserver | spawn
    on_device: bool = False       # keep the whole (small) dataset on the device: no loader at all


@dataclass
class ModelConfig:
    kind: str = "dcgan"           # dcgan | mlp | package.module:factory
    conditional: bool = True      # labels as one-hot channels (critic) / concatenated to z (generator)
    z_dim: int = 64
    width: int = 32               # DCGAN base channel count
    hidden: list[int] = field(default_factory=lambda: [1024, 512, 256])  # MLP critic; generator reversed
    norm: str = "batch"           # generator normalization: batch | none
    critic_norm: str = "instance"  # DCGAN critic normalization: instance | none (never batch: GP is per sample)
    spectral_norm: bool = False   # built-in critics: spectral normalization of every conv/linear layer
    dropout: float = 0.3          # MLP critic


@dataclass
class LossConfig:
    kind: str = "wgan_gp"         # wgan_gp | bce | hinge | ns_r1
    gp_lambda: float = 10.0       # the penalty's weight: WGAN-GP's lambda, R1's gamma (ns_r1)
    n_critic: int = 3             # the WGAN-GP paper's 5 trains worse per second here (README, Quality)
    reuse_batch: bool = False     # the book's loop: one real batch for all n_critic updates
    gp_every: int = 1             # lazy regularization: the penalty (GP, R1) every k critic updates, scaled by k


@dataclass
class OptimConfig:
    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.0, 0.9])
    eps: float = 1e-8             # Adam's; larger values damp updates of near-zero gradients


@dataclass
class TrainConfig:
    steps: int = 3000             # generator steps
    batch_size: int = 64          # GLOBAL batch, split evenly across ranks
    threads: Optional[int] = None  # torch threads per rank; None: CPUs available / local world size
    log_every: int = 50
    sample_every: int = 250
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    ema_decay: float = 0.995      # generator EMA (with warm-up); 0 turns it off
    precision: str = "fp32"       # fp32 | bf16 (autocast; the penalty's norm stays fp32)
    channels_last: bool = False   # DCGAN convolutions in NHWC (faster on tensor cores)
    tf32: bool = True             # CUDA: TF32 matmuls and convolutions
    cudnn_benchmark: bool = True  # CUDA: cuDNN picks the fastest kernels for the fixed shapes
    compile: bool = False         # torch.compile the generator (and a BCE critic; see README)
    keep_best: str = ""           # an eval metric (fid, kid, recall, ...): keep checkpoints/best.pt by it
    on_divergence: str = "stop"   # stop | rollback (to the last checkpoint, learning rates scaled)
    rollback_lr_factor: float = 0.5  # learning rates after each rollback: times this
    max_rollbacks: int = 3        # then stop
    divergence_factor: float = 0.0  # critic |Wasserstein| or grad norm above this x its running median diverges; 0: off


@dataclass
class EvalConfig:
    every: int = 500              # generator steps between quality evaluations; 0: never
    num_samples: int = 1000       # generated images per evaluation (split across ranks)
    features: str = "digits"      # digits[:PATH] | fid_inception[:PATH] | inception:PATH | torchscript:PATH
    use_ema: bool = True          # sample grids and evaluation from the EMA generator
    kid_subsets: int = 10         # KID: the mean and std over this many random subsets ...
    kid_subset_size: int = 1000   # ... of this many samples (fewer if a set is smaller)


@dataclass
class WandbConfig:
    mode: str = "disabled"        # disabled | offline | online
    project: str = "gan_dist"
    entity: str = ""
    name: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)


@dataclass
class Config:
    seed: int = 0
    run: RunConfig = field(default_factory=RunConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


CHOICES = {
    "dist.backend": ("auto", "nccl", "gloo"),
    "data.start_method": ("", "fork", "forkserver", "spawn"),
    "model.norm": ("batch", "none"),
    "model.critic_norm": ("instance", "none"),
    "loss.kind": ("wgan_gp", "bce", "hinge", "ns_r1"),
    "train.precision": ("fp32", "bf16"),
    "train.on_divergence": ("stop", "rollback"),
    "wandb.mode": ("disabled", "offline", "online"),
}

# Settings that change the shape of a model or of the data it learns: a checkpoint written
# under other values cannot be resumed (checked by checkpoint.load with a clear error).
ARCHITECTURE_KEYS = (
    "data.name", "data.image_size", "data.channels", "model.kind", "model.conditional",
    "model.z_dim", "model.width", "model.hidden", "model.norm", "model.critic_norm", "model.spectral_norm",
)


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Check/convert one value against the dataclass annotation; one-line error on mismatch."""
    origin = typing.get_origin(typ)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        (typ,) = [t for t in typing.get_args(typ) if t is not type(None)]
        origin = typing.get_origin(typ)
    if origin is list:
        (item,) = typing.get_args(typ)
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key}: expected a list of {item.__name__}, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise UserError(f"{key}: expected {typ.__name__}, got {value!r}")


def _set(cfg: Config, key: str, value: Any) -> None:
    obj: Any = cfg
    parts = key.split(".")
    for depth, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(obj)}
        if part not in fields:
            where = ".".join(parts[:depth]) or "the top level"
            raise UserError(f"unknown config key '{key}' (valid in {where}: {', '.join(fields)})")
        hints = typing.get_type_hints(type(obj))
        if depth == len(parts) - 1:
            if dataclasses.is_dataclass(hints[part]):
                if not isinstance(value, dict):
                    raise UserError(f"{key}: expected a mapping of settings, got {value!r}")
                for sub, v in value.items():
                    _set(cfg, f"{key}.{sub}", v)
                return
            setattr(obj, part, _coerce(key, value, hints[part]))
            return
        obj = getattr(obj, part)
        if not dataclasses.is_dataclass(obj):
            raise UserError(f"unknown config key '{key}' ('{'.'.join(parts[:depth + 1])}' is not a section)")


def get(cfg: Config, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


SEED_MAX = 2**63 - 1  # torch generators take 64-bit seeds; the sampler adds the epoch to it

# key: (low, high, low inclusive, high inclusive); None: unbounded. Every float is also finite.
RANGES = {
    "seed": (0, SEED_MAX, True, True),
    "run.shared_fs_wait_s": (0, None, True, True),
    "data.image_size": (1, None, True, True),
    "data.num_workers": (0, None, True, True),
    "model.z_dim": (1, None, True, True),
    "model.width": (1, None, True, True),
    "model.dropout": (0.0, 1.0, True, False),
    "loss.gp_lambda": (0.0, None, True, True),
    "loss.n_critic": (1, None, True, True),
    "loss.gp_every": (1, None, True, True),
    "optim.lr": (0.0, 1.0, False, True),
    "optim.eps": (0.0, 1.0, False, False),
    "train.steps": (0, None, True, True),
    "train.batch_size": (1, None, True, True),
    "train.threads": (1, None, True, True),
    "train.log_every": (1, None, True, True),
    "train.sample_every": (1, None, True, True),
    "train.checkpoint_every": (1, None, True, True),
    "train.keep_checkpoints": (1, None, True, True),
    "train.ema_decay": (0.0, 1.0, True, False),
    "train.rollback_lr_factor": (0.0, 1.0, False, True),
    "train.max_rollbacks": (0, None, True, True),
    "train.divergence_factor": (0.0, None, True, True),
    "eval.every": (0, None, True, True),
    "eval.num_samples": (4, None, True, True),  # > precision/recall's k = 3
    "eval.kid_subsets": (1, None, True, True),
    "eval.kid_subset_size": (2, None, True, True),
}


def _check_range(key: str, value: Any) -> None:
    low, high, low_in, high_in = RANGES[key]
    if value is None:  # Optional settings (train.threads) left unset
        return
    ok = (low is None or (value >= low if low_in else value > low)) and \
         (high is None or (value <= high if high_in else value < high))
    if not ok:
        n = lambda x: f"{x:g}" if isinstance(x, float) else str(x)  # noqa: E731 (ints exactly: the seed's 2**63-1)
        if low is not None and high is not None:
            where = f"in {'[' if low_in else '('}{n(low)}, {n(high)}{']' if high_in else ')'}"
        else:
            where = f"{'>=' if low_in else '>'} {n(low)}" if low is not None else f"{'<=' if high_in else '<'} {n(high)}"
        raise UserError(f"{key}: must be {where}, got {value!r}")


def _floats(obj: Any, prefix: str = ""):
    """(key, value) of every float setting, lists included (optim.betas)."""
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _floats(value, f"{key}.")
        elif isinstance(value, float):
            yield key, value
        elif isinstance(value, list):
            yield from ((f"{key}[{i}]", v) for i, v in enumerate(value) if isinstance(v, float))


def validate(cfg: Config) -> Config:
    """Every check that needs the config alone; check_world adds those that need the world size."""
    registry.check_spec("model.kind", cfg.model.kind, registry.MODELS)
    registry.check_spec("data.name", cfg.data.name, registry.DATASETS)
    for key, allowed in CHOICES.items():
        if get(cfg, key) not in allowed:
            raise UserError(f"{key}: unknown choice {get(cfg, key)!r} (choose from {', '.join(map(repr, allowed))})")
    for key, value in _floats(cfg):  # .nan and .inf parse as YAML floats
        if not math.isfinite(value):
            raise UserError(f"{key}: must be a finite number, got {value!r}")
    for key in RANGES:
        _check_range(key, get(cfg, key))
    if not cfg.run.dir.strip():
        raise UserError("run.dir: must not be empty")
    if len(cfg.optim.betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.optim.betas):
        raise UserError(f"optim.betas: expected two numbers in [0, 1), got {cfg.optim.betas}")
    if cfg.eval.features.split(":", 1)[0] not in ("digits", "fid_inception", "inception", "torchscript"):
        raise UserError(f"eval.features: unknown {cfg.eval.features!r} "
                        "(digits[:PATH] | fid_inception[:PATH] | inception:PATH | torchscript:PATH)")
    if cfg.train.keep_best:
        from gan_dist.evaluation import DIRECTION  # lower or higher is better, per metric

        if cfg.train.keep_best not in DIRECTION:
            raise UserError(f"train.keep_best: unknown metric {cfg.train.keep_best!r} (choose from "
                            f"{', '.join(DIRECTION)})")
        if not cfg.eval.every:
            raise UserError("train.keep_best: needs evaluations (set eval.every, e.g. eval.every=500)")
    if 0 < cfg.train.divergence_factor <= 1:
        raise UserError(f"train.divergence_factor: must be 0 (off) or above 1, got {cfg.train.divergence_factor}")
    if not cfg.model.hidden or any(h <= 0 for h in cfg.model.hidden):
        raise UserError(f"model.hidden: expected a non-empty list of positive widths, got {cfg.model.hidden}")
    if cfg.data.channels not in (1, 3):
        raise UserError(f"data.channels: expected 1 or 3, got {cfg.data.channels}")
    size = cfg.data.image_size
    if cfg.model.kind == "dcgan" and (size < 8 or size & (size - 1)):
        raise UserError(f"data.image_size: the DCGAN needs a power of two >= 8, got {size}")
    if cfg.data.name in ("fashion_mnist", "image_folder") and not cfg.data.root:
        raise UserError(f"data.root: required for data.name={cfg.data.name}")
    return cfg


def check_world(cfg: Config, world_size: int) -> None:
    """The checks that need the number of ranks: made at start-up, before any training."""
    if cfg.train.batch_size % world_size:
        raise UserError(f"train.batch_size: {cfg.train.batch_size} (the GLOBAL batch) is not divisible "
                        f"by the world size {world_size}")
    if cfg.eval.every and cfg.eval.num_samples < world_size:
        raise UserError(f"eval.num_samples: {cfg.eval.num_samples} is fewer than the {world_size} ranks "
                        "that share the evaluation")


def load(config_file: Optional[str] = None, overrides: Optional[list[str]] = None) -> Config:
    """Defaults, then the YAML file, then `key=value` overrides (values parsed as YAML)."""
    cfg = Config()
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise UserError(f"config file {path}: expected a mapping of settings at the top level")
        for key, value in data.items():
            _set(cfg, str(key), value)
    return apply_overrides(cfg, overrides or [])


def apply_overrides(cfg: Config, overrides) -> Config:
    """`key=value` items (values parsed as YAML) onto cfg, then validated."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r}: expected key=value (e.g. train.steps=500)")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            value = text
        _set(cfg, key.strip(), value)
    return validate(cfg)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(data: dict) -> Config:
    cfg = Config()
    for key, value in data.items():
        _set(cfg, key, value)
    return validate(cfg)


def dump(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
