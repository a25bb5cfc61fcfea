"""THE training loop. One step = n_critic critic updates, then one generator update.

Reads top to bottom: build (data, models, optimizers, resume), wrap in DDP when W > 1, then
`fit`: steps, and at step boundaries logging, sample grids and checkpoints. All ranks run the
same updates in the same order; anything that may differ per rank is agreed by a collective
at a step boundary.
"""
from __future__ import annotations

import dataclasses
import gc
import logging
import time
from contextlib import nullcontext
from typing import Callable, Optional, Union

import torch
from torch.utils.data import Dataset

from gan_dist import distributed
from gan_dist.config import METRIC_DIRECTION, NEEDS_CLASSES, Config, dump, to_dict
from gan_dist.data import BatchStream, DataInfo, build_dataset, check_dataset, fingerprint, held_out_real
from gan_dist.distributed import World, check_consistency
from gan_dist.distributed.preemption import Preemption
from gan_dist.distributed.seeding import draw, mix_seed
from gan_dist.errors import UserError
from gan_dist.models import MicroBatchStart, frozen, unchanged
from gan_dist.quality import evaluation
from gan_dist.runs import checkpoint, clock, samples
from gan_dist.runs.best import BEST, Best
from gan_dist.runs.run_dir import RunDir
from gan_dist.runs.tracking import Tracker
from gan_dist.training import augment, build, layout
from gan_dist.training.augment import Augment, AugmentedCritic
from gan_dist.training.divergence import Monitor
from gan_dist.training.ema import EMA
from gan_dist.training.losses import build_loss
from gan_dist.training.schedule import Schedules, resolve_total
from gan_dist.training.window import Window, grad_norms


def micro_batches(a: int, size: int) -> list[slice]:
    """The A contiguous slices of a rank's rows, `size` each."""
    return [slice(m * size, (m + 1) * size) for m in range(a)]


def reduce_last(module: torch.nn.Module, m: int, a: int):
    """DDP's no_sync for micro-batches 0..A-2: their gradients accumulate locally and the last
    one's backward reduces the sum, in the same buckets as one forward of the whole batch."""
    ddp = getattr(module, "_orig_mod", module)  # under torch.compile
    return ddp.no_sync() if m < a - 1 and hasattr(ddp, "no_sync") else nullcontext()


class Trainer:
    def __init__(self, cfg: Config, world: World, data: Union[tuple[Dataset, DataInfo], Callable, None] = None,
                 models: Optional[Callable] = None, preemption: Optional[Preemption] = None):
        """data: (dataset, info) or a dataset factory, instead of data.name's (gan_dist.fit, the
        benchmark's synthetic data); models: a model factory instead of model.kind's."""
        self.cfg, self.world = cfg, world
        self.preemption = preemption or Preemption()
        self.deferred_exit: Optional[BaseException] = None  # submitit's exit after a requeue
        # Before anything reads or writes run.dir: rank 0 locks it, every rank checks it sees it.
        self.run_dir = RunDir(cfg.run.dir)
        self.run_dir.open(world, cfg.run.shared_fs_wait_s)
        try:
            self._build(data, models)
        except BaseException:
            self.run_dir.release()
            raise

    def _build(self, data, models: Optional[Callable]) -> None:
        cfg, world = self.cfg, self.world
        dataset, self.info = (check_dataset(data, cfg) if isinstance(data, (tuple, list))
                              else build_dataset(cfg, world, factory=data))
        # rank 0 decodes the fingerprint's sample; the other ranks take its result (one read of
        # 64 images per job, not per rank, on a shared filesystem)
        self.fingerprint = distributed.on_main(lambda: fingerprint(dataset, self.info), world, "the dataset fingerprint")
        # What the run resumes from, read first: its micro-batch sets the memory per rank
        found = checkpoint.resume_state(self.run_dir.path, world, cfg.run.shared_fs_wait_s)
        saved = int(found[0]["micro_batch"]) if found is not None and "micro_batch" in found[0] else None
        self.autocast = build.device_switches(cfg, world)  # before the first kernel (determinism)
        self.generator, self.critic = build.networks(cfg, self.info, world, models,
                                                     build.per_forward(cfg, world, saved))
        self.loss = build_loss(cfg.loss)
        # lr, gamma, beta2 by the step: T is the first start's (the checkpoint keeps it)
        total, self.schedule_changes = resolve_total(cfg, found[0] if found is not None else None)
        self.schedules = Schedules(cfg, total, self.loss)
        # train.micro_batch=auto: every rank probes its own device on its networks, left as they were
        with unchanged(self.generator, self.critic):
            self.layout, notes = layout.resolve(cfg, world, saved, build.probe(cfg, world, self.loss, self.generator,
                                                                              self.critic, self.autocast))
        self.generator = build.sync_batch_norm(self.generator, world)
        # spectral norm: each micro-batch of an update starts from the power iteration's same state
        self.micro_start = MicroBatchStart(self.generator, self.critic, accumulation=self.layout.accumulation)
        self.opt_g, self.opt_c = build.optimizers(cfg, self.generator, self.critic)
        self.num_classes = self.generator.num_classes
        self.batches_per_step = 1 if cfg.loss.reuse_batch else cfg.loss.n_critic

        self.ema = EMA(self.generator, cfg.train.ema_decay, cfg.train.ema_kimg, cfg.train.ema_rampup,
                       cfg.train.batch_size) if cfg.train.ema_decay > 0 or cfg.train.ema_kimg > 0 else None
        self.stream = BatchStream(dataset, cfg, world)
        self.monitor = Monitor(cfg.train.divergence_factor)
        self.best = None
        if cfg.train.keep_best:
            if cfg.train.keep_best in NEEDS_CLASSES and not self.num_classes:
                raise UserError(f"train.keep_best: {cfg.train.keep_best} needs a conditional model")
            self.best = Best(cfg.train.keep_best, METRIC_DIRECTION[cfg.train.keep_best] == "min")
        # The stateful parts, saved and restored by name (beside them: step, config, data_info).
        # What the critic sees (augment.kind): DiffAugment or ADA, its p and statistic saved
        self.augment = Augment(cfg, world, pairs=getattr(self.loss, "scores_defined_up_to_a_constant", False)) \
            if cfg.augment.kind != "none" else None
        self.parts = {"generator": self.generator, "critic": self.critic, "opt_generator": self.opt_g,
                      "opt_critic": self.opt_c, "data": self.stream, "divergence": self.monitor,
                      **({"generator_ema": self.ema.module} if self.ema else {}),
                      **({"best": self.best} if self.best else {}),
                      **({"augment": self.augment} if self.augment is not None and self.augment.adaptive else {})}
        self.feature_net = self.reference = None
        self.eval_every = evaluation.effective_every(cfg, own_data=data is not None, is_main=world.is_main)
        if self.eval_every:  # load (and fail) before training; the real set's features once per run
            real = dataset
            if cfg.eval.real:
                if isinstance(data, (tuple, list)):
                    raise UserError("eval.real: a root for data.name's reader; with the dataset passed in "
                                    "as (dataset, info) pass a factory instead, which eval.real's root is given to")
                real = held_out_real(cfg, world, self.info, factory=data)
            self.feature_net, self.reference = evaluation.prepare(cfg, real, world, self.info, self.run_dir)
        self.step, self.wandb_run_id, self.last_metrics, self.startup_s = 0, "", {}, None
        self.train_seconds, self.started = 0.0, None  # train.max_time_s: what earlier starts spent; this start's clock
        self.window = Window(self.loss.stat_names + ("loss_gen",), world.device)
        self._resume(found)
        if world.is_main:
            for line in notes:
                print(line, flush=True)
            for line in augment.idle_operations(cfg, self.info.channels):
                logging.getLogger("gan_dist").warning(line)
            for line in build.layout_change(found, self.layout, self.generator):
                logging.getLogger("gan_dist").warning(line)
        self.generator_ddp, self.critic_ddp = build.wrapped(cfg, world, self.loss, self.generator, self.critic)
        # The critic of each phase as the losses call it: DDP's in the critic phase, the bare
        # (frozen) one in the generator phase; behind the augmentation when there is one
        self.critic_phase_critic, self.generator_phase_critic = (
            (self.critic_ddp, self.critic) if self.augment is None else
            (AugmentedCritic(self.critic_ddp, self.augment), AugmentedCritic(self.critic, self.augment)))

    def close(self) -> None:
        """Drop every reference to the DDP wrappers before the process group goes (the trainer
        may outlive it, as in gan_dist.fit): a DDP reducer destroyed after destroy_process_group
        can abort the process (gloo, seen as exit -6). Stop the data workers; let go of run.dir."""
        if hasattr(self, "critic_ddp"):
            self.generator_ddp, self.critic_ddp = self.generator, self.critic
            self.critic_phase_critic = self.generator_phase_critic = None
        if hasattr(self, "stream"):
            self.stream.close()
        gc.collect()
        self.run_dir.release()

    # ---- resume -------------------------------------------------------------------------
    def _resume(self, found) -> None:
        """Load what rank 0 chose (the same file on every rank)."""
        cfg = self.cfg
        if found is None:
            if self.world.is_main:  # a fresh run's settings; a resumed run's once it saves
                self.run_dir.write_config(dump(cfg))
            return
        state, path = found
        changes = checkpoint.check_compatible(state, cfg, path, self.fingerprint) + self._load(state, path) + \
            augment.resume_changes(state, cfg) + self.schedule_changes
        self.wandb_run_id = str(state.get("wandb_run_id", ""))
        if self.world.is_main:
            print(f"resuming from {path} (step {self.step})" + (f"; changed: {', '.join(changes)}" if changes else ""),
                  flush=True)

    def _load(self, state: dict, path, rollbacks: Optional[int] = None) -> list[str]:
        """Every stateful part and the step from a checkpoint (resume and rollback alike), the
        config's optimizer settings on top (the lr scaled by the rollbacks); what changed."""
        checkpoint.restore(self.parts, state, path)
        if self.best is not None:  # best.pt may be newer than this checkpoint
            self.best.sync(self.run_dir.checkpoints / BEST, self.world)
        if rollbacks is not None:  # a rollback: the checkpoint's count is older
            self.monitor.rollbacks = rollbacks
        self.step = int(state["step"])
        if rollbacks is None:  # a resume; a rollback's wall time still counts against the budget
            self.train_seconds = float(state.get("train_seconds", 0.0))
        optimizers = {"generator": self.opt_g, "critic": self.opt_c}
        changes = checkpoint.apply_optimizer_config(optimizers, self.cfg, state, self.world.world_size, self.lr_scale)
        self.schedules.apply(self.step, optimizers, self.loss, self.lr_scale)  # the scheduled values of this step
        return changes

    @property
    def lr_scale(self) -> float:
        """What the rollbacks so far did to the learning rates."""
        return self.cfg.train.rollback_lr_factor ** self.monitor.rollbacks

    def _diverged(self, reason: str) -> None:
        """Every rank is here at the same step with the same reason. Stop with one line, or
        return every rank to the last checkpoint with lower learning rates."""
        cfg = self.cfg
        self.monitor.allow_rollback(reason, cfg.train)  # or raise the stop line
        found = checkpoint.resume_state(self.run_dir.path, self.world, cfg.run.shared_fs_wait_s)
        if found is None:
            raise UserError(f"{reason}; no checkpoint to roll back to yet (the first is written at step "
                            f"{cfg.train.checkpoint_every}, train.checkpoint_every)")
        state, path = found
        rollbacks, diverged_at = self.monitor.rollbacks + 1, self.step
        self._load(state, path, rollbacks)
        self.window.reset()
        self.tracker.rollback(self.step, diverged_at, {"rollbacks": rollbacks, "lr": self.opt_g.param_groups[0]["lr"]})
        self.tracker.warn(f"{reason} (step {diverged_at}): rolled back to {path.name} at step {self.step}, learning "
                          f"rates x{self.lr_scale:g} (rollback {rollbacks} of at most {cfg.train.max_rollbacks})")

    # ---- one step -----------------------------------------------------------------------
    def _draw(self, step: int, phase: str):
        """Noise, labels and GP weights for the GLOBAL batch; this rank keeps rows r, r+W, ..."""
        draws = draw(self.cfg.seed, step, phase, self.cfg.train.batch_size, self.cfg.model.z_dim,
                     self.num_classes, self.world.device)
        return tuple(t[distributed.rows(self.world)] for t in draws)

    def _onehot(self, labels: torch.Tensor):
        """Float one-hot rows; a scatter, the same on every device (F.one_hot reads the labels'
        range on the host on some devices)."""
        if not self.num_classes:
            return None
        return torch.zeros(len(labels), self.num_classes, device=labels.device).scatter_(1, labels.view(-1, 1), 1.0)

    def train_step(self, step: int) -> torch.Tensor:
        """Returns this rank's stats for the step (on device, no host sync). Each update runs A
        micro-batches: micro-batch m takes the m-th contiguous slice of this rank's rows (each
        sample keeps the noise, labels and penalty weights of its global row), its loss weighted
        1/A, and the gradients reduced once, in the last micro-batch's backward (DDP no_sync
        before): the update of the whole global batch, for any W x A."""
        # Layer randomness (dropout) is reseeded per (step, rank): resume stays exact.
        torch.manual_seed(mix_seed(self.cfg.seed, step, "layers", self.world.rank))
        self.schedules.apply(step, {"generator": self.opt_g, "critic": self.opt_c}, self.loss, self.lr_scale)
        a, mb, n_critic = self.layout.accumulation, self.layout.micro_batch, self.cfg.loss.n_critic
        critic_stats = 0.0
        for i in range(n_critic):
            if i < self.batches_per_step:
                real, labels = self.stream.next()
                onehot = self._onehot(labels)
            z, _, alpha = self._draw(step, f"critic{i}")
            self.opt_c.zero_grad(set_to_none=True)
            for m, part in enumerate(micro_batches(a, mb)):
                self.micro_start.begin(m)
                oh = None if onehot is None else onehot[part]
                with torch.no_grad(), torch.autocast(**self.autocast):  # no generator graph, no all-reduce
                    fake = self.generator(z[part], oh).float()
                if self.augment is not None:
                    self.augment.begin(step, f"critic{i}", part, observe=True)
                with reduce_last(self.critic_ddp, m, a):
                    with torch.autocast(**self.autocast):
                        loss, stats = self.loss.critic_loss(self.critic_phase_critic, real[part], fake, oh,
                                                            alpha[part], update=step * n_critic + i)
                    (loss / a).backward()  # ONE backward of the summed terms per micro-batch
                critic_stats = critic_stats + stats / a
            self.opt_c.step()

        z, labels, _ = self._draw(step, "generator")
        # RpGAN pairs each fake with the real of its row (the last critic round's: no extra
        # fetch), made with that real's labels; the other losses draw the labels
        sees_real = getattr(self.loss, "generator_sees_real", False)
        onehot = onehot if sees_real else self._onehot(labels)
        loss_g = 0.0
        self.opt_g.zero_grad(set_to_none=True)
        with frozen(self.critic):  # the bare critic: no critic all-reduce in this phase
            for m, part in enumerate(micro_batches(a, mb)):
                self.micro_start.begin(m)  # the frozen critic is in training mode: its power iteration runs
                oh = None if onehot is None else onehot[part]
                if self.augment is not None:
                    self.augment.begin(step, "generator", part)
                with reduce_last(self.generator_ddp, m, a):
                    with torch.autocast(**self.autocast):
                        loss = self.loss.generator_loss(self.generator_phase_critic, self.generator_ddp(z[part], oh),
                                                        oh, real[part])
                    (loss / a).backward()
                loss_g = loss_g + loss.detach() / a
        self.opt_g.step()
        if self.ema is not None:
            self.ema.update(self.generator, step)
        if self.augment is not None:
            self.augment.adjust(step + 1)  # ADA: every augment.interval steps, one all-reduce
        return torch.cat([critic_stats / n_critic, loss_g.view(1)])

    # ---- the loop -----------------------------------------------------------------------
    def fit(self) -> str:
        """Train to train.steps. Returns "finished", or "stopped" after a signal (the stop
        step is saved; `self.preemption.name` says which signal)."""
        cfg, world = self.cfg, self.world
        self.tracker = Tracker(cfg, world.is_main, resume_step=self.step, run_id=self.wandb_run_id)
        self.wandb_run_id = self.tracker.run_id or self.wandb_run_id
        self.sample_z, self.sample_onehot, self.sample_nrow = samples.fixed_inputs(
            cfg.model.z_dim, self.num_classes, cfg.seed)
        own = not self.preemption.installed  # the CLI installs it earlier, before start-up
        if own:
            self.preemption.install()
        try:
            return self._loop()
        finally:
            if own:
                self.preemption.uninstall()
            self.tracker.close()

    def _loop(self) -> str:
        cfg, world = self.cfg, self.world
        # what every rank of a job pays before it trains: interpreter, imports, data, models, resume
        self.startup_s = clock.process_age()
        budget = cfg.train.max_time_s  # train_seconds is the checkpoint's: the same on every rank
        if self.step >= cfg.train.steps or (budget and self.train_seconds >= budget):
            self.tracker.info(f"nothing to do: {self.run_dir.path} is at step {self.step} (train.steps={cfg.train.steps}"
                              + (f", {self.train_seconds:.0f} s of train.max_time_s={cfg.train.max_time_s:g} spent)"
                                 if cfg.train.max_time_s else ")"))
            return "finished"
        self.tracker.info(f"training {cfg.model.kind}/{cfg.loss.kind} on {cfg.data.name}: steps {self.step}->"
                          f"{cfg.train.steps}, global batch {cfg.train.batch_size} on {world.world_size} rank(s), "
                          f"{torch.get_num_threads()} thread(s) each, device {world.device}{self._ddp_note()}; per rank "
                          f"{self.layout.accumulation} micro-batch(es) of {self.layout.micro_batch}; start-up "
                          f"{self.startup_s:.1f} s (process start to first step)")
        self.window.reset()
        self.started, self.preemption.time_up = time.monotonic(), False
        while self.step < cfg.train.steps:
            self.window.add(self.train_step(self.step), self.step)
            self.step += 1
            self.tracker.advance()
            # The one per-step collective: a CPU all-reduce of the signal flags (and of "this rank's
            # clock has spent train.max_time_s"), so every rank stops at the same step even when
            # only some ranks received the signal or some clocks run ahead.
            agreed = self.preemption.agree(world, time_up=bool(budget) and self.spent_s >= budget)
            last = self.step == cfg.train.steps or self.preemption.time_up
            stop = agreed > 0 and not last
            save_now = last or stop or self.step % cfg.train.checkpoint_every == 0
            eval_now = bool(self.eval_every) and (last or self.step % self.eval_every == 0)
            # What is saved or evaluated was judged first: a window gone non-finite diverges here
            if (save_now or eval_now or self.step % cfg.train.log_every == 0) and not self._log_window():
                continue  # rolled back: a signal's flag stays up for the next step
            if last or self.step % cfg.train.sample_every == 0:
                self.save_samples()
            if eval_now and self.evaluate() is None:
                continue  # the sample generator diverged: rolled back
            if save_now:
                self.save_checkpoint()
            if stop:
                return self._stop()
            if last:
                break
        if cfg.train.max_time_s and self.step < cfg.train.steps:
            self.tracker.info(f"train.max_time_s={cfg.train.max_time_s:g} reached at step {self.step} (saved)")
        return "finished"

    @property
    def spent_s(self) -> float:
        """Seconds of training so far, over every start of this run (start-up not counted)."""
        return self.train_seconds + (time.monotonic() - self.started if self.started is not None else 0.0)

    def _ddp_note(self) -> str:
        if not self.world.distributed:
            return ""
        sync = any(isinstance(m, torch.nn.SyncBatchNorm) for m in self.generator.modules())
        return f", DDP over {self.world.backend}" + (", SyncBatchNorm" if sync else "")

    def _stop(self) -> str:
        """Every rank is here at the same step, that step saved."""
        self.deferred_exit = self.preemption.stop(self.world)
        self.tracker.info(f"stopped by {self.preemption.name} at step {self.step} (saved); "
                          "the same command resumes from there")
        return "stopped"

    def _log_window(self) -> bool:
        """Average the stats since the last log over steps and ranks (one all-reduce) and log
        them. False when the window diverged and every rank rolled back (see _diverged)."""
        cfg = self.cfg
        means, first_bad = self.window.reduce(self.world)
        norms = grad_norms(critic=self.critic, generator=self.generator)
        # Means and gradient norms are the same on every rank: so is the verdict.
        reason = self.monitor.check({**means, **norms}, first_bad)
        if reason is not None:
            self._diverged(f"{reason} (means since the last log: {', '.join(f'{n}={v:.4g}' for n, v in means.items())})")
            return False
        elapsed, steps = self.window.elapsed, self.window.steps
        # Images through the critic: real + fake per critic update, the fakes of the generator update.
        images = steps * cfg.train.batch_size * (2 * cfg.loss.n_critic + 1)
        self.last_metrics = {**means, **norms, "epoch": self.stream.epoch, "lr": self.opt_g.param_groups[0]["lr"],
                             "lr_critic": self.opt_c.param_groups[0]["lr"], "accumulation": self.layout.accumulation,
                             "images_per_sec": images / elapsed, "step_time": elapsed / steps,
                             **self.schedules.metrics(max(self.step - 1, 0), self.lr_scale),  # what the last step used
                             **({"ema_halflife_kimg": self.ema.halflife_kimg(max(self.step - 1, 0))} if self.ema else {}),
                             **(self.augment.metrics() if self.augment is not None else {}),
                             **({"startup_s": self.startup_s} if self.startup_s is not None else {})}
        self.startup_s = None  # in the first row after a start only
        self.tracker.log(self.step, self.last_metrics)
        self.window.reset()
        return True

    @property
    def sample_generator(self) -> torch.nn.Module:
        """The generator for grids and evaluation: the EMA one unless eval.use_ema=false."""
        return self.ema.module if self.ema is not None and self.cfg.eval.use_ema else self.generator

    def save_samples(self) -> None:
        if not self.world.is_main:
            return
        images = samples.generate(self.sample_generator, self.sample_z, self.sample_onehot)
        path = self.run_dir.samples / f"step_{self.step:08d}.png"
        try:
            samples.save_grid(images, path, self.sample_nrow)
        except OSError as e:  # a full disk: a grid is not worth stopping for (the checkpoint is)
            self.tracker.warn(f"could not write {path} ({e.strerror or e})")
        self.tracker.log_image(self.step, "samples", samples.to_uint8_grid(images, self.sample_nrow))

    def evaluate(self) -> Optional[dict]:
        """Quality of the sampler (EMA by default): every rank generates its share. Keeps
        checkpoints/best.pt when the train.keep_best metric improved (the same on every rank).
        None when its images were not finite: a divergence (stopped, or rolled back)."""
        cfg = self.cfg
        try:
            result = evaluation.evaluate(self.sample_generator, self.feature_net, self.reference, cfg.eval, self.num_classes,
                                         cfg.model.z_dim, cfg.seed, self.world)
        except evaluation.NotFinite as e:  # judged on gathered features: the same on every rank
            self._diverged(f"{e} at step {self.step}")
            return None
        self.tracker.log(self.step, result)
        value = result.get(cfg.train.keep_best) if self.best is not None else None
        if value is not None and self.best.improves(value, self.world):
            self.best.value, self.best.step = value, self.step
            self.save_checkpoint(BEST)
        return result

    def state_dict(self) -> dict:
        return {**{name: part.state_dict() for name, part in self.parts.items()}, "step": self.step,
                "world_size": self.world.world_size, "config": to_dict(self.cfg), "data_info": dataclasses.asdict(self.info),
                "data_fingerprint": self.fingerprint, "micro_batch": self.layout.micro_batch,
                "schedule_steps": self.schedules.total, "train_seconds": self.spent_s,
                "wandb_run_id": self.wandb_run_id}

    def save_checkpoint(self, name: str = "") -> None:
        """The step's checkpoint, or checkpoints/NAME (best.pt)."""
        if self.augment is not None:
            self.augment.gather_counts()  # ADA's interval so far, whole in rank 0's checkpoint
        check_consistency(self.world, self.generator, self.critic,
                          tensors=[self.augment.p] if self.augment is not None else [])

        def save():
            path = checkpoint.save(self.run_dir.path, self.state_dict(), self.cfg.train.keep_checkpoints, name)
            self.run_dir.write_config(dump(self.cfg))  # the settings the saved weights were trained under
            return path
        # rank 0 saves; whatever it fails with stops every rank at once (none waits alone)
        path = distributed.on_main(save, self.world, f"checkpoint at step {self.step}")
        self.tracker.info(f"saved {path}")
