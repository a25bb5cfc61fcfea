"""`python tests/workers/inject.py [gan_dist.train args]`: the real CLI, real ranks and real
collectives, with one fault placed exactly where a test needs it (chosen by environment):

GAN_DIST_TEST_SIGNAL_IN_AGREE=K:R1,R2[:SIG]  ranks R1, R2 send themselves SIGUSR2 (or SIG, e.g.
    SIGTERM) from INSIDE the K-th signal agreement (after the local flag was read, before the
    all-reduce runs): the race that lost signals, made deterministic.
GAN_DIST_TEST_SIGNAL_BEFORE_SETTLE=R1,R2[:SIG]  these ranks send themselves SIGUSR2 (or SIG)
    at a stop, between the agreement and Preemption.settle
GAN_DIST_TEST_NAN_AT=K                 the critic's weights turn NaN before step K (1-based), once
GAN_DIST_TEST_NAN_GENERATOR_AT=K      the generator's weights turn NaN before step K, once
GAN_DIST_TEST_NAN_EMA_AT=K            the generator EMA's weights turn NaN before step K, once (losses stay finite)
GAN_DIST_TEST_BLOWUP_AT=K              the critic's weights are multiplied by 30 before step K, once
GAN_DIST_TEST_FAULT_RANKS=R1,R2        ... on these ranks only (default: every rank)
GAN_DIST_TEST_REFERENCE_UNSEEN=R1      rank R1 cannot read the cached real reference (a lagging NFS view)
GAN_DIST_TEST_EVAL_VALUES=V1,V2,...  each evaluation returns the next value as every metric
    (rank 1 reads GAN_DIST_TEST_EVAL_VALUES_RANK1 instead when it is set): a scripted
    history for train.keep_best
GAN_DIST_TEST_HIDE=R1,R2:NAME         on these ranks no file called NAME exists (a node-local path,
    a hub cache another node filled)
GAN_DIST_TEST_SAVE_FAULT=unlink|pickle  on rank 0: removing an old checkpoint raises PermissionError,
    or torch.save raises a TypeError (not an OSError) for step checkpoints
GAN_DIST_TEST_PROBE_LIMITS=L0,L1       train.micro_batch=auto's probe on the CPU: rank r's device "holds" a
    micro-batch of n when n <= Lr; each trial runs build.trial (the real forwards and backwards)
    and, with GAN_DIST_TEST_RECORD, records "probe N"
GAN_DIST_TEST_CLOCK_AHEAD=R:S         rank R's training clock (the trainer's time.monotonic) runs S seconds
    ahead once training starts: one rank alone sees train.max_time_s spent
GAN_DIST_TEST_RECORD=DIR               each rank appends to DIR/rank{r}.txt what it did:
    "download" for each Fashion-MNIST download it ran (a fake one: writes IDX files after
    a second, so two concurrent downloads would overlap), "real N" for the real images it
    loaded for the evaluation's reference statistics, "rollback A -> B lr X" for each
    rollback, "final STEP checksum C" when training returns.
"""
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for helpers

RANK = int(os.environ.get("RANK", "0"))


def record(line: str) -> None:
    with open(Path(os.environ["GAN_DIST_TEST_RECORD"]) / f"rank{RANK}.txt", "a") as f:
        f.write(line + "\n")


if os.environ.get("GAN_DIST_TEST_SIGNAL_IN_AGREE"):
    step, ranks, *name = os.environ["GAN_DIST_TEST_SIGNAL_IN_AGREE"].split(":")
    in_agree = getattr(signal, name[0] if name else "SIGUSR2")
    calls = {"n": 0}
    all_reduce = dist.all_reduce

    def all_reduce_with_signal(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
        # The agreement is the only MAX all-reduce of two int64 (the signal, the time budget).
        if op == dist.ReduceOp.MAX and tensor.dtype == torch.int64 and tensor.numel() == 2:
            calls["n"] += 1
            if calls["n"] == int(step) and str(RANK) in ranks.split(","):
                os.kill(os.getpid(), in_agree)  # its handler runs before the next line
        return all_reduce(tensor, op=op, group=group, async_op=async_op)

    dist.all_reduce = all_reduce_with_signal

if os.environ.get("GAN_DIST_TEST_SIGNAL_BEFORE_SETTLE"):
    from gan_dist.distributed.preemption import Preemption

    ranks, *name = os.environ["GAN_DIST_TEST_SIGNAL_BEFORE_SETTLE"].split(":")
    before_settle = getattr(signal, name[0] if name else "SIGUSR2")
    settle = Preemption.settle

    def settle_after_a_signal(self, *args, **kwargs):
        if str(RANK) in ranks.split(","):
            os.kill(os.getpid(), before_settle)
        return settle(self, *args, **kwargs)

    Preemption.settle = settle_after_a_signal

if any(os.environ.get(f"GAN_DIST_TEST_{k}_AT") for k in ("NAN", "BLOWUP", "NAN_GENERATOR", "NAN_EMA")):
    from gan_dist.training.trainer import Trainer

    train_step = Trainer.train_step
    fired = set()
    ranks = os.environ.get("GAN_DIST_TEST_FAULT_RANKS", "")

    def poisoned_step(self, step):
        # Once per process (a rollback replays the step: the fault does not come back), on
        # every rank or those in GAN_DIST_TEST_FAULT_RANKS.
        for kind in ("NAN", "BLOWUP", "NAN_GENERATOR", "NAN_EMA"):
            at = os.environ.get(f"GAN_DIST_TEST_{kind}_AT")
            if at and step + 1 == int(at) and kind not in fired and (not ranks or str(RANK) in ranks.split(",")):
                fired.add(kind)
                with torch.no_grad():
                    if kind == "NAN":
                        next(self.critic.parameters()).fill_(float("nan"))
                    elif kind == "NAN_GENERATOR":
                        next(self.generator.parameters()).fill_(float("nan"))
                    elif kind == "NAN_EMA":
                        next(self.ema.module.parameters()).fill_(float("nan"))
                    else:  # finite but huge: the critic's scores and gradients explode
                        for p in self.critic.parameters():
                            p.mul_(30.0)
        return train_step(self, step)

    Trainer.train_step = poisoned_step

if os.environ.get("GAN_DIST_TEST_REFERENCE_UNSEEN"):
    load = torch.load

    def lagging_load(f, *args, **kwargs):  # this node does not see the cached reference yet (NFS)
        if Path(str(f)).name.startswith("reference_") and str(RANK) in os.environ["GAN_DIST_TEST_REFERENCE_UNSEEN"].split(","):
            raise FileNotFoundError(str(f))
        return load(f, *args, **kwargs)

    torch.load = lagging_load

if os.environ.get("GAN_DIST_TEST_EVAL_VALUES"):
    from gan_dist.config import METRIC_DIRECTION
    from gan_dist.quality import evaluation

    own = os.environ.get(f"GAN_DIST_TEST_EVAL_VALUES_RANK{RANK}") or os.environ["GAN_DIST_TEST_EVAL_VALUES"]
    values = [float(v) for v in own.split(",")]

    def scripted_evaluate(*args, **kwargs):
        value = values.pop(0)
        return {name: value for name in METRIC_DIRECTION}

    evaluation.evaluate = scripted_evaluate

if os.environ.get("GAN_DIST_TEST_CLOCK_AHEAD"):
    import types

    from gan_dist.training import trainer

    rank, ahead = os.environ["GAN_DIST_TEST_CLOCK_AHEAD"].split(":")
    if int(rank) == RANK:
        first = {}

        def monotonic() -> float:  # the first reading (the loop's start) is true, then S ahead
            now = time.monotonic()
            return now if first.setdefault("t", now) == now else now + float(ahead)
        trainer.time = types.SimpleNamespace(monotonic=monotonic)

if os.environ.get("GAN_DIST_TEST_HIDE"):
    import builtins
    import pathlib

    ranks, hidden = os.environ["GAN_DIST_TEST_HIDE"].split(":", 1)
    if str(RANK) in ranks.split(","):
        def _hides(f) -> bool:
            return isinstance(f, (str, os.PathLike)) and Path(f).name == hidden

        def _hiding(fn, missing):
            def wrapper(f, *args, **kwargs):
                if _hides(f):
                    return missing(f)
                return fn(f, *args, **kwargs)
            return wrapper

        def _not_found(f):
            raise FileNotFoundError(2, "No such file or directory", str(f))

        builtins.open = _hiding(builtins.open, _not_found)
        torch.load = _hiding(torch.load, _not_found)
        torch.jit.load = _hiding(torch.jit.load, _not_found)
        for name in ("read_bytes", "open"):
            setattr(pathlib.Path, name, _hiding(getattr(pathlib.Path, name), _not_found))
        for name in ("is_file", "exists"):
            setattr(pathlib.Path, name, _hiding(getattr(pathlib.Path, name), lambda f: False))

if os.environ.get("GAN_DIST_TEST_SAVE_FAULT") and RANK == 0:
    import pathlib

    from gan_dist.runs import checkpoint

    fault = os.environ["GAN_DIST_TEST_SAVE_FAULT"]
    if fault == "unlink":
        unlink = pathlib.Path.unlink

        def refusing_unlink(self, *args, **kwargs):
            if self.name.startswith("step_"):
                raise PermissionError(13, "Permission denied", str(self))
            return unlink(self, *args, **kwargs)

        pathlib.Path.unlink = refusing_unlink
    else:
        save = torch.save

        def failing_save(obj, f, *args, **kwargs):
            if isinstance(obj, dict) and "generator" in obj:
                raise TypeError("cannot pickle 'generator' object")
            return save(obj, f, *args, **kwargs)

        checkpoint.torch.save = failing_save

if os.environ.get("GAN_DIST_TEST_PROBE_LIMITS"):
    from gan_dist.training import build

    limit = int(os.environ["GAN_DIST_TEST_PROBE_LIMITS"].split(",")[RANK])

    def cpu_probe(cfg, world, loss, generator, critic, autocast):
        def fits(n):
            build.trial(n, loss, generator, critic, autocast)
            if os.environ.get("GAN_DIST_TEST_RECORD"):
                record(f"probe {n}")
            return n <= limit
        return fits if cfg.train.micro_batch == "auto" else None

    build.probe = cpu_probe

if os.environ.get("GAN_DIST_TEST_RECORD"):
    from torchvision import datasets

    from gan_dist import data, distributed
    from helpers import write_fashion_mnist

    def fake_download(self):  # as torchvision's: nothing to do when the files are there
        if self._check_exists():
            return
        record("download")
        time.sleep(1.0)
        write_fashion_mnist(Path(self.root), n=64)

    datasets.FashionMNIST.download = fake_download
    materialize = data.materialize

    def recording_materialize(dataset, device):
        record(f"real {len(dataset)}")
        return materialize(dataset, device)

    data.materialize = recording_materialize
    from gan_dist.training.trainer import Trainer

    diverged = Trainer._diverged

    def recording_diverged(self, reason):
        at = self.step
        diverged(self, reason)
        record(f"rollback {at} -> {self.step} lr {self.opt_g.param_groups[0]['lr']:g}")

    Trainer._diverged = recording_diverged
    fit = Trainer.fit

    def recording_fit(self):
        result = fit(self)
        record(f"final {self.step} checksum {distributed.parameter_checksum(self.generator, self.critic)!r}")
        return result

    Trainer.fit = recording_fit

if __name__ == "__main__":
    from gan_dist.cli.train import main

    sys.exit(main(sys.argv[1:]))
