"""ALL value validation, one place: choices, ranges, finiteness and the rules between keys, each
a one-line UserError naming the key; check_world adds the checks that need the world size.
Nothing is validated late: what passes here fails later only for reasons outside the config
(files, memory, the world)."""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

from gan_dist import registry
from gan_dist.config.schema import (
    AUGMENT_ALIASES,
    AUGMENT_OPERATIONS,
    AUGMENT_POLICY,
    CHOICES,
    METRIC_DIRECTION,
    RANGES,
    WORDS,
    Config,
)
from gan_dist.errors import UserError

_said: set = set()


def get(cfg: Config, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


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


def _deprecated(message: str) -> None:
    if message not in _said:
        _said.add(message)
        logging.getLogger("gan_dist").warning(message)


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
    for key, betas in (("optim.betas", cfg.optim.betas), ("optim.generator.betas", cfg.optim.generator.betas),
                       ("optim.critic.betas", cfg.optim.critic.betas)):
        if betas is not None and (len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas)):
            raise UserError(f"{key}: expected two numbers in [0, 1), got {betas}")
    micro = cfg.train.micro_batch
    if micro != "auto" and not (micro.isdigit() and int(micro) >= 0):
        raise UserError(f"train.micro_batch: expected {WORDS['train.micro_batch']}, got {micro!r}")
    if cfg.eval.features.split(":", 1)[0] not in ("digits", "fid_inception", "inception", "torchscript"):
        raise UserError(f"eval.features: unknown {cfg.eval.features!r} "
                        "(digits[:PATH] | fid_inception[:PATH] | inception:PATH | torchscript:PATH)")
    if cfg.train.keep_best:
        if cfg.train.keep_best not in METRIC_DIRECTION:
            raise UserError(f"train.keep_best: unknown metric {cfg.train.keep_best!r} (choose from "
                            f"{', '.join(METRIC_DIRECTION)})")
        if not cfg.eval.every:
            raise UserError("train.keep_best: needs evaluations (set eval.every, e.g. eval.every=500)")
    if 0 < cfg.train.divergence_factor <= 1:
        raise UserError(f"train.divergence_factor: must be 0 (off) or above 1, got {cfg.train.divergence_factor}")
    if cfg.augment.kind != "none":
        augment_operations(cfg.augment.kind, cfg.augment.policy)
    if not cfg.model.hidden or any(h <= 0 for h in cfg.model.hidden):
        raise UserError(f"model.hidden: expected a non-empty list of positive widths, got {cfg.model.hidden}")
    if cfg.data.channels not in (1, 3):
        raise UserError(f"data.channels: expected 1 or 3, got {cfg.data.channels}")
    size = cfg.data.image_size
    if cfg.model.kind == "dcgan" and (size < 8 or size & (size - 1)):
        raise UserError(f"data.image_size: the DCGAN needs a power of two >= 8, got {size}")
    if cfg.model.kind == "r3gan" and (size < 4 or size & (size - 1)):
        raise UserError(f"data.image_size: r3gan needs a power of two >= 4, got {size}")
    workers = cfg.data.num_workers
    if workers != "auto" and not (workers.lstrip("-").isdigit() and int(workers) >= 0):
        raise UserError(f"data.num_workers: must be >= 0 or auto, got {workers!r}")
    if cfg.data.name in ("fashion_mnist", "mnist", "image_folder", "zip") and not cfg.data.root:
        raise UserError(f"data.root: required for data.name={cfg.data.name}")
    if cfg.loss.kind == "ns_r1" and cfg.loss.r1_gamma is None and cfg.loss.gp_lambda != 10.0:
        # loss.gp_lambda used to be R1's gamma too: an old config keeps its meaning
        _deprecated(f"loss.gp_lambda={cfg.loss.gp_lambda:g} with loss.kind=ns_r1 is R1's gamma: write "
                    "loss.r1_gamma instead (loss.gp_lambda is WGAN-GP's lambda)")
        cfg.loss.r1_gamma = cfg.loss.gp_lambda
    return cfg


def augment_operations(kind: str, policy: str) -> tuple[str, ...]:
    """augment.policy -> the operations in the order they apply (aliases expanded, each once)."""
    names: list[str] = []
    for name in filter(None, (n.strip() for n in (policy or AUGMENT_POLICY.get(kind, "")).split(","))):
        for op in AUGMENT_ALIASES.get(name, (name,)):
            if op not in AUGMENT_OPERATIONS:
                raise UserError(f"augment.policy: unknown operation {name!r} (choose from "
                                f"{', '.join(AUGMENT_OPERATIONS + tuple(AUGMENT_ALIASES))})")
            if op not in names:
                names.append(op)
    if not names and kind != "none":
        raise UserError(f"augment.policy: no operation for augment.kind={kind}")
    return tuple(names)


def check_world(cfg: Config, world_size: int) -> None:
    """The checks that need the number of ranks: made at start-up, before any training."""
    if cfg.train.batch_size % world_size:
        raise UserError(f"train.batch_size: {cfg.train.batch_size} (the GLOBAL batch) is not divisible "
                        f"by the world size {world_size}")
    if cfg.eval.every and cfg.eval.num_samples < world_size:
        raise UserError(f"eval.num_samples: {cfg.eval.num_samples} is fewer than the {world_size} ranks "
                        "that share the evaluation")
