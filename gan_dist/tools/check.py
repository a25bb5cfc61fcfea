"""Is this generator/critic pair safe under DDP? (`python -m gan_dist.check`, cli/check.py.)

What breaks GAN training under DDP, each found by trying, not by reading the code:
  contract         the dry forward of models.check_contract (shapes, range, attributes)
  critic coupling  a layer that mixes the samples of a batch (BatchNorm): a gradient penalty
                   (WGAN-GP, R1) is per sample, and batch statistics differ per rank. Found
                   by perturbing one sample and watching the others' scores.
  no gradient      a parameter that takes no part in the loss: DDP stops at the next step
                   ("Expected to have finished reduction in the prior iteration")
  determinism      the same step twice from the same state and seed gives other gradients
                   (an unseeded RNG, a non-deterministic kernel): no exact resume, no proof
  1 vs 2 ranks     K steps on one process and on 2 gloo ranks at the same global batch: the
                   largest parameter difference per module (optim.eps raised to >= 1e-3 in
                   the trials: Adam normalizes each update, so rounding in a near-zero gradient
                   can flip a whole lr-sized step; measured on examples/own_models.py: 5.3e-5
                   apart at eps 1e-6, 2.7e-6 at 1e-3, a rank-dependent buffer 7e-4 at either)
  buffers          buffers (running statistics, spectral norm's u, v) equal on both ranks
  resume           K/2 steps, stop, resume to K: bitwise the K straight steps (checkpoint)
The trials train with the config's augmentation (augment.kind): its draws must agree too.
Trials run in subprocesses (this module in worker mode), so the models must be importable:
model.kind / data.name as built-in names or package.module:factory paths.
"""
from __future__ import annotations

import copy
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from gan_dist import config as config_module
from gan_dist.config import Config
from gan_dist.distributed import launch
from gan_dist.errors import UserError, setup_logging

PENALTY_LOSSES = ("wgan_gp", "ns_r1", "rpgan")
BATCH_NORMS = (nn.modules.batchnorm._BatchNorm,)


@dataclass
class Row:
    check: str
    result: str                 # ok | warn | FAIL
    detail: str = ""
    modules: dict = field(default_factory=dict)  # module -> max |difference| (1 vs 2 ranks)


# ---- in-process checks on the bare models ------------------------------------------------
def _probe(cfg: Config):
    """Dataset, models and loss as the Trainer builds them, and a small fixed batch."""
    from gan_dist.data import build_dataset
    from gan_dist.data.images import to_unit
    from gan_dist.models import build_models, check_contract
    from gan_dist.training.losses import build_loss

    dataset, info = build_dataset(cfg)
    torch.manual_seed(cfg.seed)
    generator, critic = build_models(cfg, info)
    check_contract(generator, critic, info, cfg.model.kind, torch.device("cpu"))
    b = 4
    real = to_unit(torch.stack([dataset[i][0] for i in range(b)]))
    labels = torch.as_tensor([int(dataset[i][1]) for i in range(b)])
    onehot = F.one_hot(labels, generator.num_classes).float() if generator.num_classes else None
    return generator, critic, build_loss(cfg.loss), real, onehot


def _named(module: nn.Module, kinds) -> list[str]:
    return [f"{name or '(root)'} ({type(m).__name__})" for name, m in module.named_modules() if isinstance(m, kinds)]


def _coupled(net: nn.Module, x: torch.Tensor, *rest) -> bool:
    """Do the outputs of samples 0..B-2 change when only sample B-1 changes? (train mode, the
    same seed for both forwards so that dropout draws the same masks)."""
    net.train()
    changed = x.clone()
    changed[-1] = torch.randn(changed[-1].shape, generator=torch.Generator().manual_seed(1))
    state, outs = copy.deepcopy(net.state_dict()), []
    with torch.no_grad():
        for inp in (x, changed):  # from the same state: spectral norm's power iteration moves it
            net.load_state_dict(state)
            torch.manual_seed(0)
            outs.append(net(inp, *rest).float())
    net.load_state_dict(state)
    return not torch.allclose(outs[0][:-1], outs[1][:-1], atol=1e-6, rtol=1e-5)


def _random(net: nn.Module, x: torch.Tensor, *rest) -> bool:
    """Does the forward draw random numbers (dropout)? Two seeds, the same state and input."""
    net.train()
    state, outs = copy.deepcopy(net.state_dict()), []
    with torch.no_grad():
        for seed in (0, 1):
            net.load_state_dict(state)
            torch.manual_seed(seed)
            outs.append(net(x, *rest).float())
    net.load_state_dict(state)
    return not torch.equal(outs[0], outs[1])


def _critic_grads(critic, generator, loss, real, onehot) -> dict[str, Optional[torch.Tensor]]:
    torch.manual_seed(0)
    with torch.no_grad():
        fake = generator(torch.randn(len(real), generator.z_dim), onehot)
    alpha = torch.rand(len(real), 1, 1, 1)
    critic.zero_grad(set_to_none=True)
    loss.critic_loss(critic, real, fake, onehot, alpha, update=0)[0].backward()
    return {n: None if p.grad is None else p.grad.clone() for n, p in critic.named_parameters() if p.requires_grad}


def static_checks(cfg: Config) -> tuple[list[Row], dict]:
    generator, critic, loss, real, onehot = _probe(cfg)
    rows = [Row("contract (dry forward)", "ok", "generator and critic take and give what the loop expects")]
    z = torch.randn(len(real), generator.z_dim, generator=torch.Generator().manual_seed(2))
    notes = {"generator_coupled": _coupled(generator, z, onehot),
             "random": [n for n, net, x in (("generator", generator, z), ("critic", critic, real))
                        if _random(net, x, onehot)]}
    norms = [f"critic.{n}" for n in _named(critic, BATCH_NORMS)]
    if _coupled(critic, real, onehot):
        where = ", ".join(norms) or "a layer that mixes the samples of a batch"
        if cfg.loss.kind in PENALTY_LOSSES:
            rows.append(Row("batch-coupled critic", "FAIL", f"{where}: {cfg.loss.kind}'s penalty is per sample; "
                            "use InstanceNorm, LayerNorm, spectral norm or none in the critic"))
        else:
            rows.append(Row("batch-coupled critic", "warn", f"{where}: per-rank (and per micro-batch) batch "
                            "statistics, so 2 ranks are not 1 rank (SyncBatchNorm on CUDA)"))
        notes["critic_coupled"] = True
    else:
        rows.append(Row("batch-coupled critic", "ok", "each sample's score depends on that sample only"))
    start = copy.deepcopy(critic.state_dict()), copy.deepcopy(generator.state_dict())
    grads = _critic_grads(critic, generator, loss, real, onehot)
    unused = [f"critic.{n}" for n, g in grads.items() if g is None]
    from gan_dist.models import frozen

    torch.manual_seed(0)
    z = torch.randn(len(real), generator.z_dim)
    with frozen(critic):
        loss.generator_loss(critic, generator.train()(z, onehot), onehot, real).backward()
    unused += [f"generator.{n}" for n, p in generator.named_parameters() if p.requires_grad and p.grad is None]
    rows.append(Row("parameters without a gradient", "FAIL" if unused else "ok",
                    (", ".join(unused) + ": not used in the loss; DDP fails at the next step (remove them, or "
                     "freeze them with requires_grad_(False))") if unused else "every parameter gets one"))
    critic.load_state_dict(start[0]), generator.load_state_dict(start[1])
    again = _critic_grads(critic, generator, loss, real, onehot)
    differ = sorted({f"critic.{n.rsplit('.', 1)[0]}" for n, g in grads.items()
                     if g is not None and not torch.equal(g, again[n])})
    rows.append(Row("deterministic step", "FAIL" if differ else "ok",
                    (f"{', '.join(differ)}: other gradients from the same state and seed (an RNG the step's seed "
                     "does not reach, or a non-deterministic kernel): no exact resume") if differ
                    else "the same gradients twice"))
    return rows, notes


# ---- trials in subprocesses -----------------------------------------------------------------
def worker(cfg: Config, out: Path) -> None:
    """One rank of a trial: train, then write this rank's parameters and buffers."""
    from gan_dist import distributed
    from gan_dist.training.trainer import Trainer

    world = distributed.setup(distributed.detect(cfg.dist.backend, cfg.dist.force_ddp), threads=1)
    setup_logging(world.rank)
    trainer, finished = None, False
    try:
        trainer = Trainer(cfg, world)
        trainer.fit()
        nets = {"generator": trainer.generator, "critic": trainer.critic}
        torch.save({"params": {f"{k}.{n}": p.detach().cpu() for k, m in nets.items() for n, p in m.named_parameters()},
                    "buffers": {f"{k}.{n}": b.cpu() for k, m in nets.items() for n, b in m.named_buffers()},
                    "batch_norm_buffers": [f"{k}.{n}.{b}" for k, m in nets.items() for n, mod in m.named_modules()
                                           if isinstance(mod, BATCH_NORMS) for b, _ in mod.named_buffers()]},
                   out / f"rank{world.rank}.pt")
        finished = True
    finally:
        if trainer is not None:
            trainer.close()
        distributed.teardown(clean=finished)


def _trial(name: str, overrides: list[str], ranks: int, tmp: Path, timeout: float) -> Optional[str]:
    """Run one trial; None when it ran, else the line it failed with."""
    (tmp / name).mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "gan_dist.check", "--worker", str(tmp / name), *overrides]
    try:
        # on CPU/gloo: the trial proves the pair, and 2 ranks need no 2 GPUs (nccl refuses one shared)
        launch.run_ranks(cmd, ranks, tmp, name, timeout, env=launch.child_env({"CUDA_VISIBLE_DEVICES": ""}), echo=False)
    except UserError as e:
        return str(e)
    return None


def _module(name: str) -> str:
    """The module owning a parameter or buffer (a parametrized weight's: the layer's)."""
    return name.split(".parametrizations.")[0] if ".parametrizations." in name else name.rsplit(".", 1)[0]


def trials(cfg_file: Optional[str], overrides: list[str], cfg: Config, steps: int, tolerance: float,
           notes: dict, timeout: float) -> list[Row]:
    from gan_dist.runs.checkpoint import list_checkpoints, load_state_equal

    if cfg.train.batch_size % 2:
        raise UserError(f"train.batch_size: {cfg.train.batch_size} is odd; the check splits it over 2 ranks")
    common = (["--config", cfg_file] if cfg_file else []) + overrides + [
        "train.threads=1", "eval.every=0", "wandb.mode=disabled", "train.log_every=1", f"train.sample_every={10**9}",
        f"optim.eps={max(cfg.optim.eps, 1e-3)}", "train.keep_checkpoints=2",
        # one schedule for every trial: the resumed one's first start would take T = K/2
        f"optim.schedule_steps={cfg.optim.schedule_steps or steps}"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="gan_dist_check_") as t:
        tmp = Path(t)

        def run(name, ranks, k, every):
            return _trial(name, common + [f"run.dir={tmp / name / 'run'}", f"train.steps={k}",
                                          f"train.checkpoint_every={every}"], ranks, tmp, timeout)
        # the trials train with the config's augmentation: its draws are part of what must agree
        augmented = "" if cfg.augment.kind == "none" else f" (with augment.kind={cfg.augment.kind})"
        failed = {"one": run("one", 1, steps, steps), "two": run("two", 2, steps, steps)}
        if failed["one"]:
            raise UserError(f"the 1-process trial failed: {failed['one']}")
        one = torch.load(tmp / "one" / "rank0.pt", weights_only=True)
        if failed["two"]:
            rows.append(Row(f"1 rank vs 2 ranks ({steps} steps)", "FAIL", f"the 2-rank run failed: {failed['two']}"))
        else:
            two = [torch.load(tmp / "two" / f"rank{r}.pt", weights_only=True) for r in range(2)]
            modules: dict[str, float] = {}
            for name, p in one["params"].items():
                diff = (p.float() - two[0]["params"][name].float()).abs().max().item()
                modules[_module(name)] = max(modules.get(_module(name), 0.0), diff)
            worst = max(modules.values())
            coupled = [n for n in ("generator", "critic") if notes.get(f"{n}_coupled")]
            bad = [m for m, d in modules.items() if d > tolerance]
            if bad and (coupled or notes["random"]):
                reasons = ([f"the {' and the '.join(coupled)} {'use' if len(coupled) > 1 else 'uses'} batch statistics "
                            "per rank and per micro-batch (train.micro_batch; SyncBatchNorm on CUDA makes them "
                            "global over the ranks, not over a rank's micro-batches)"] if coupled else []) + \
                          ([f"the {' and the '.join(notes['random'])} {'draw' if len(notes['random']) > 1 else 'draws'} "
                            "random numbers (dropout) per rank: seeded by step and rank, so resume is exact but 2 "
                            "ranks draw other masks than 1"] if notes["random"] else [])
                result, why = "warn", "; ".join(reasons) + ": not held to the tolerance"
            else:
                named = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
                result, why = ("FAIL", f"over {tolerance:g} in {named}") if bad else ("ok", f"<= {tolerance:g}")
            rows.append(Row(f"1 rank vs 2 ranks ({steps} steps)", result, f"max |difference| {worst:.2g}: {why}"
                            + augmented, modules))
            differ = [n for n in two[0]["buffers"] if not torch.equal(two[0]["buffers"][n], two[1]["buffers"][n])]
            norms = set(two[0]["batch_norm_buffers"])
            real = sorted(n for n in differ if n not in norms)
            stats = sorted({_module(n) for n in differ if n in norms})
            if real:
                rows.append(Row("buffers equal on every rank", "FAIL", f"{', '.join(real)}: buffers differ between "
                                "ranks after training (a buffer that depends on the rank or on its data)"))
            else:
                rows.append(Row("buffers equal on every rank", "warn" if stats else "ok",
                                f"{', '.join(stats)}: BatchNorm running statistics per rank (SyncBatchNorm on CUDA)"
                                if stats else f"{len(two[0]['buffers'])} buffers identical"))
        half = max(1, steps // 2)
        for k in (half, steps):  # stop at K/2, then the same command to K resumes
            failed_resume = run("resumed", 1, k, half)
            if failed_resume:
                break
        if failed_resume:
            rows.append(Row(f"resume ({half} + {steps - half} steps) bitwise", "FAIL", failed_resume))
        else:
            a, b = (list_checkpoints(tmp / n / "run")[-1] for n in ("one", "resumed"))
            where = load_state_equal(a, b)
            rows.append(Row(f"resume ({half} + {steps - half} steps) bitwise", "FAIL" if where else "ok",
                            f"differs from {steps} straight steps in {where}" if where else
                            "models, optimizers, EMA and data position equal" + augmented))
    return rows


def check(cfg_file: Optional[str], overrides: list[str], steps: int = 4, tolerance: float = 1e-4,
          timeout: float = 600.0) -> list[Row]:
    """Every check of the module docstring for a config; the rows of the report."""
    if steps < 2:
        raise UserError(f"--steps: at least 2 (the resume check stops halfway), got {steps}")
    cfg = config_module.load(cfg_file, overrides)
    rows, notes = static_checks(cfg)
    return rows + trials(cfg_file, overrides, cfg, steps, tolerance, notes, timeout)
