"""`gan_dist.fit`: training from your own launch script, with the CLI's run directory,
checkpoints, exact resume, signals, logging and export. The CLI is a thin caller of it.

    # my_train.py -- torchrun --nproc_per_node=2 my_train.py   (or python my_train.py)
    import gan_dist
    from my_models import build          # build(cfg, info) -> (generator, critic)
    result = gan_dist.fit("configs/my.yaml", models=build, overrides=["train.steps=5000"])

Run it the way you run `python -m gan_dist.train`: one process, torchrun, or one srun task per
rank; every rank calls fit() with the same arguments. models: a factory (called with the
config and the dataset's DataInfo on every rank after seeding, so all ranks build the same
weights) or a (generator, critic) pair (rank 0's weights are copied to every rank). data: a
factory build(cfg) -> (dataset, DataInfo), or a (dataset, DataInfo) pair. A factory defined in
an importable module is recorded in the checkpoint (model.kind / data.name), so
`python -m gan_dist.export RUN_DIR` and a resume from the command line can rebuild it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

from gan_dist import config as config_module
from gan_dist import registry
from gan_dist.config import Config
from gan_dist.errors import UserError, setup_logging

if TYPE_CHECKING:  # torch is imported once the config is known to be good: a bad one costs no torch import
    from torch import nn

Models = Union[Callable, str, tuple]
Data = Union[Callable, str, tuple]


@dataclass
class Result:
    status: str                 # "finished" | "stopped" (a signal; the stop step is saved)
    step: int                   # the last step trained (and saved)
    run_dir: Path
    checkpoint: Optional[Path]  # the latest checkpoint
    metrics: dict               # the last logged metrics (the same on every rank)
    exit_code: int              # 0, or 128 + the signal
    generator: Optional[nn.Module] = None  # the sample generator (EMA when kept), on CPU, eval mode


def _as_config(config: Union[Config, dict, str, Path, None], overrides: Sequence[str]) -> Config:
    """A Config, a dict of settings, a YAML file, or None (the defaults), then the overrides."""
    if isinstance(config, Config):
        return config_module.apply_overrides(copy.deepcopy(config), overrides)
    if isinstance(config, dict):
        return config_module.apply_overrides(config_module.from_dict(config), overrides)
    return config_module.load(None if config is None else str(config), list(overrides))


def _record(cfg: Config, models: Optional[Models], data: Optional[Data]) -> tuple[Optional[Callable], Any]:
    """Name what was passed in the config (so the checkpoint says what built it); returns the
    model factory and the data (factory or pair) the Trainer takes."""
    factory = None
    if isinstance(models, str):
        cfg.model.kind = models
    elif callable(models):
        factory = models
        cfg.model.kind = registry.name_of(models) or f"__main__:{getattr(models, '__qualname__', 'models')}"
    elif models is not None:
        from torch import nn

        if not (isinstance(models, (tuple, list)) and len(models) == 2 and all(isinstance(m, nn.Module) for m in models)):
            raise UserError("fit(models=...): a factory build(cfg, info), an import path, or a (generator, critic) pair")
        pair = tuple(models)
        factory = lambda cfg, info: pair  # noqa: E731 (rank 0's weights reach every rank: Trainer)
        cfg.model.kind = f"__main__:{type(pair[0]).__qualname__}"
    if isinstance(data, str):
        cfg.data.name = data
    elif callable(data):
        cfg.data.name = registry.name_of(data) or f"__main__:{getattr(data, '__qualname__', 'data')}"
    elif data is not None:
        cfg.data.name = "__main__:in_memory_dataset"  # a resume must be given the same data again
    config_module.validate(cfg)
    return factory, (data if callable(data) or isinstance(data, tuple) else None)


def fit(config: Union[Config, dict, str, Path, None] = None, *, models: Optional[Models] = None,
        data: Optional[Data] = None, overrides: Sequence[str] = ()) -> Result:
    """Train (or resume) the run that `config` describes; see the module docstring. Bad input
    raises gan_dist.UserError with one line; a signal stops every rank at one step, saved."""
    cfg = _as_config(config, overrides)
    factory, data = _record(cfg, models, data)
    from gan_dist import distributed
    from gan_dist.distributed.preemption import Preemption
    from gan_dist.runs.checkpoint import list_checkpoints
    from gan_dist.runs.samples import cpu_copy
    from gan_dist.training.trainer import Trainer

    world = distributed.detect(cfg.dist.backend, cfg.dist.force_ddp)
    config_module.check_world(cfg, world.world_size)
    setup_logging(world.rank)
    # Signals are caught from here on: one that arrives while the ranks meet or the data
    # loads is acted on at the first step boundary, not lost (nor fatal, as USR2 is by default).
    preemption = Preemption().install()
    owns_group = not distributed.initialized()
    trainer = late = None
    try:
        if owns_group:
            distributed.setup(world, cfg.train.threads)
        else:  # the caller's process group: use it as it is
            distributed.adopt(world)
        trainer = Trainer(cfg, world, data=data, models=factory, preemption=preemption)
        status = trainer.fit()
        generator = cpu_copy(trainer.sample_generator)
        metrics = dict(trainer.last_metrics)
        trainer.close()
        if owns_group:
            distributed.teardown()
        # Rank 0 requeued before the others left; a USR2 that landed only after that still
        # requeues (the handler stays installed until here, so it is not fatal either).
        late = preemption.requeue_if_asked(world.is_main) if status == "stopped" else None
    except BaseException:
        if trainer is not None:
            trainer.close()
        if owns_group:
            distributed.teardown(clean=False)
        raise
    finally:
        preemption.uninstall()
    if trainer.deferred_exit or late:  # submitit's exit after its requeue (rank 0)
        raise trainer.deferred_exit or late
    ckpts = list_checkpoints(cfg.run.dir)
    return Result(status, trainer.step, Path(cfg.run.dir), ckpts[-1] if ckpts else None, metrics,
                  0 if status == "finished" else 128 + preemption.signum, generator)
