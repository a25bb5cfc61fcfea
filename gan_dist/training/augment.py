"""Differentiable augmentation of everything the critic sees (augment.kind): DiffAugment (Zhao
et al. 2020: each operation on every critic input, real and fake alike) and ADA (Karras et al.
2020: each operation with a probability p tuned from the critic's overfitting).

The project's rule applied to one more random draw: every parameter is drawn for the GLOBAL
batch from a generator seeded by (seed, step, phase, call) and each rank keeps its rows
(distributed.rows; micro-batch m its m-th slice of them), so W ranks x A micro-batches compute
what one process computes, and a resumed run what a straight one computes. The draw does not
depend on p (a sample's operation applies when its uniform draw is below p), so the trajectory
of p does not shift anyone's randomness.

The augmentation sits inside the critic's evaluation (AugmentedCritic): the gradient penalty and
R1 differentiate the critic's score with respect to the un-augmented input, through the
augmentation (as stylegan2-ada does for R1). Interpolates get their own draw, like real and
fake: the 1-Lipschitz constraint then holds for the function the loss trains (critic after
augmentation) over the augmented images it meets.

ADA's overfitting statistic r_t (stylegan2-ada's E[sign(D(real))] on the critic phase's real
images) is counted on the device as integers (the sum of signs and the number of samples), so
one all-reduce per interval makes it exact and p bitwise the same for any world size. Under
WGAN-GP the critic is defined up to a constant and the sign of its raw score means nothing:
there r_t = E[sign(D(real_i) - D(fake_i))] over the pairs of one global row (each rank holds
both halves of its rows), which the constant cancels: the share of pairs the critic orders
correctly, 2 * P(real above fake) - 1, that rises to 1 when it memorizes the training images.

Operations on images in [-1, 1]: translation (integer pixels, up to 1/8 of the size, zero
padding, DiffAugment's), scale (isotropic, lognormal with sigma 0.2 ln 2, ADA's) and rotation
(uniform, +-180 degrees, ADA's; one warp with reflection padding, warp.py: no black corners
for the critic to spot), cutout (a square of half the size, DiffAugment's), brightness,
contrast, saturation (DiffAugment's, without clamping: the generator's tanh output meets them
whole) and xflip (off by default: a flipped image can be another class)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from gan_dist.config import augment_operations
from gan_dist.distributed import World, rows
from gan_dist.distributed.seeding import seeded_generator
from gan_dist.training.warp import scale_rotate

# Each operation's uniform draws per sample, after the one that decides whether it applies.
DRAWS = {"translation": 2, "scale": 1, "rotation": 1, "cutout": 2, "brightness": 1, "contrast": 1,
         "saturation": 1, "xflip": 0}


def _translation(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Integer shifts of up to 1/8 of the size in each direction, zero padding (DiffAugment)."""
    n, _, h, w = x.shape
    sy, sx = (int(h * 0.125 + 0.5), int(w * 0.125 + 0.5))
    dy = (u[:, 0] * (2 * sy + 1)).floor().long().clamp_(0, 2 * sy) - sy
    dx = (u[:, 1] * (2 * sx + 1)).floor().long().clamp_(0, 2 * sx) - sx
    ys = (torch.arange(h, device=x.device).view(1, h, 1) + dy.view(n, 1, 1) + 1).clamp_(0, h + 1)
    xs = (torch.arange(w, device=x.device).view(1, 1, w) + dx.view(n, 1, 1) + 1).clamp_(0, w + 1)
    padded = nn.functional.pad(x, [1, 1, 1, 1])
    flat = padded.flatten(2)  # [n, c, (h+2)(w+2)]: one gather of every output pixel's source
    index = (ys * (w + 2) + xs).view(n, 1, h * w).expand(-1, x.shape[1], -1)
    return flat.gather(2, index).view_as(x)


def _affine(x: torch.Tensor, scale: Optional[torch.Tensor], angle: Optional[torch.Tensor]) -> torch.Tensor:
    """Isotropic scale and rotation about the center, one warp with reflection padding (warp.py:
    differentiable twice on every torch, for the penalties)."""
    n = x.shape[0]
    s = torch.ones(n, device=x.device, dtype=x.dtype) if scale is None else scale
    a = torch.zeros(n, device=x.device, dtype=x.dtype) if angle is None else angle
    return scale_rotate(x, s, a)


def _cutout(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Zero (mid-gray) over a square of half the size at a uniform center (DiffAugment)."""
    n, _, h, w = x.shape
    ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
    y0 = (u[:, 0] * (h + (1 - ch % 2))).floor().long().view(n, 1, 1) - ch // 2
    x0 = (u[:, 1] * (w + (1 - cw % 2))).floor().long().view(n, 1, 1) - cw // 2
    ys, xs = torch.arange(h, device=x.device).view(1, h, 1), torch.arange(w, device=x.device).view(1, 1, w)
    hole = (ys >= y0) & (ys < y0 + ch) & (xs >= x0) & (xs < x0 + cw)
    return x * (~hole).unsqueeze(1).to(x.dtype)


def apply(x: torch.Tensor, ops: tuple[str, ...], draws: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """x [n, C, H, W] in [-1, 1]; draws [n, K] uniform in [0, 1) (per operation: whether it
    applies, then its parameters); p: each operation's probability (a device scalar). Scale and
    rotation share one warp, at the later of the two."""
    geometric = [op for op in ops if op in ("scale", "rotation")]
    scale = angle = warp = None
    col = 0
    for op in ops:
        on, u = draws[:, col] < p, draws[:, col + 1:col + 1 + DRAWS[op]]
        col += 1 + DRAWS[op]
        if op == "translation":
            x = _where(on, _translation(x, u), x)
        elif op == "scale":  # lognormal, sigma 0.2 ln 2: 2 ** N(0, 0.2^2)
            normal = torch.erfinv(u[:, 0].clamp(1e-6, 1 - 1e-6) * 2 - 1) * math.sqrt(2)
            scale = torch.where(on, torch.exp2(normal * 0.2), 1.0)
        elif op == "rotation":
            angle = torch.where(on, (u[:, 0] * 2 - 1) * 180.0, 0.0)
        elif op == "cutout":
            x = _where(on, _cutout(x, u), x)
        elif op == "brightness":
            x = _where(on, x + (u[:, 0] - 0.5).view(-1, 1, 1, 1), x)
        elif op == "saturation" and x.shape[1] > 1:  # grayscale: nothing to saturate
            mean = x.mean(dim=1, keepdim=True)
            x = _where(on, (x - mean) * (u[:, 0] * 2).view(-1, 1, 1, 1) + mean, x)
        elif op == "contrast":
            mean = x.mean(dim=[1, 2, 3], keepdim=True)
            x = _where(on, (x - mean) * (u[:, 0] + 0.5).view(-1, 1, 1, 1) + mean, x)
        elif op == "xflip":
            x = _where(on, x.flip(3), x)
        if op in geometric:
            warp = on if warp is None else warp | on
            if op == geometric[-1]:
                x = _where(warp, _affine(x, scale, angle), x)
    return x


def _where(on: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(on.view(-1, 1, 1, 1), new, old)


class Augment:
    """The pipe of one run: the operations, p, and for ADA the overfitting statistic."""

    def __init__(self, cfg, world: World, pairs: bool = False):
        """pairs: r_t from sign(D(real) - D(fake)) (a loss whose scores are defined up to a constant)."""
        a, batch_size, n_critic = cfg.augment, cfg.train.batch_size, cfg.loss.n_critic
        self.kind, self.world, self.seed, self.batch, self.pairs = a.kind, world, cfg.seed, batch_size, pairs
        # this rank's rows of the global batch (distributed.rows), to index the global draw
        self.rank_rows = torch.arange(batch_size, device=world.device)[rows(world)]
        self.ops = augment_operations(a.kind, a.policy)
        self.width = sum(1 + DRAWS[op] for op in self.ops)
        start = (1.0 if a.kind == "diffaug" else 0.0) if a.p is None else a.p
        self.p = torch.tensor(start, device=world.device)
        self.target, self.interval = a.target, a.interval
        # stylegan2-ada's step: batch * interval / (speed_kimg * 1000), counting the real images
        # the critic saw: n_critic updates of the global batch per step
        self.step_size = batch_size * n_critic * a.interval / (a.speed_kimg * 1000.0)
        self.counts = torch.zeros(2, dtype=torch.long, device=world.device)  # sum of signs, samples
        self.rt = torch.zeros((), device=world.device)
        self.rows: Optional[torch.Tensor] = None
        self._key, self._calls, self._observe = None, 0, False

    @property
    def adaptive(self) -> bool:
        return self.kind == "ada"

    def begin(self, step: int, phase: str, part: slice, observe: bool = False) -> None:
        """Before a loss evaluation of one micro-batch (`part` of this rank's rows): the draw's
        key; observe: count the first critic call's real scores for ADA (critic phase)."""
        self.rows, self._key, self._calls, self._observe = self.rank_rows[part], (step, phase), 0, \
            observe and self.adaptive

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """A critic input of k segments of this micro-batch's rows (real, fake, ...): segment s
        row j takes global row s * batch + rows[j] of a draw for k global batches."""
        b = self.rows.numel()
        k = x.shape[0] // b
        g = seeded_generator(self.seed, *self._key, "augment", self._calls, device=x.device)
        self._calls += 1
        draws = torch.rand(k * self.batch, self.width, generator=g, device=x.device)
        index = torch.cat([s * self.batch + self.rows for s in range(k)])
        return apply(x, self.ops, draws[index], self.p.to(x.dtype))

    def observe(self, scores: torch.Tensor, b: int) -> None:
        """The first critic call of a critic-phase micro-batch: real rows first (every loss)."""
        if not self._observe or self._calls != 1:
            return
        s = scores.detach().flatten()
        sign = torch.sign(s[:b] - s[b:2 * b]) if self.pairs else torch.sign(s[:b])
        self.counts[0] += sign.sum().long()
        self.counts[1] += b  # a scalar kernel argument: no host-to-device copy

    def adjust(self, steps_done: int) -> None:
        """After a step: every `interval` steps, r_t over the interval from every rank (one
        all-reduce of two integers) and p moved by one step towards the target."""
        if not self.adaptive or steps_done % self.interval:
            return
        counts = self.counts.clone()
        if self.world.distributed:
            torch.distributed.all_reduce(counts)
        self.rt = counts[0].double().div(counts[1].clamp(min=1)).float()
        self.p = (self.p + torch.sign(self.rt - self.target) * self.step_size).clamp(0.0, 1.0)
        self.counts.zero_()

    def gather_counts(self) -> None:
        """Before a save (every rank): rank 0 holds the interval's counts of every rank, the
        others none, so the checkpoint has them whole and resumes on any world size."""
        if self.adaptive and self.world.distributed:
            torch.distributed.all_reduce(self.counts)
            if not self.world.is_main:
                self.counts.zero_()

    def metrics(self) -> dict:
        return {"augment_p": float(self.p), "augment_rt": float(self.rt)} if self.adaptive else {}

    def state_dict(self) -> dict:
        return {"p": self.p.cpu(), "counts": self.counts.cpu(), "rt": self.rt.cpu()}

    def load_state_dict(self, state: dict) -> None:
        """The saved p wins over augment.p; the interval's counts on rank 0 only (a rollback
        loads on every rank: the counts must not be counted W times)."""
        self.p = state["p"].to(self.world.device, torch.float32)
        self.rt = state["rt"].to(self.world.device, torch.float32)
        counts = state["counts"].to(self.world.device, torch.long)
        self.counts = counts if self.world.is_main else torch.zeros_like(counts)


def idle_operations(cfg, channels: int) -> list[str]:
    """The lines for operations augment.policy names that cannot act on this data: saturation of
    1-channel images (the mean over one channel is the image itself). Skipped, said once."""
    named = {n.strip() for n in cfg.augment.policy.split(",")}
    if cfg.augment.kind != "none" and "saturation" in named and channels == 1:
        return ["augment.policy: saturation does nothing to 1-channel images: the other operations apply"]
    return []


def resume_changes(state: dict, cfg) -> list[str]:
    """What a resume changes of the augmentation (its "changed:" entries): augment.kind, policy
    and target against the checkpoint's config, and an augment.p the checkpoint's p overrides."""
    from gan_dist.config import Config, is_set

    saved, default = state["config"].get("augment", {}), Config().augment
    changes = [f"augment.{key} {saved.get(key, getattr(default, key))!r} -> {getattr(cfg.augment, key)!r}"
               for key in ("kind", "policy", "target") if saved.get(key, getattr(default, key)) != getattr(cfg.augment, key)]
    if is_set(cfg, "augment.p") and "augment" in state and cfg.augment.kind == "ada":
        changes.append(f"augment.p={cfg.augment.p:g} not applied: the checkpoint's p "
                       f"{float(state['augment']['p']):.4g} goes on (ADA tunes it)")
    return changes


class AugmentedCritic(nn.Module):
    """critic(augment(x)): what the loss trains and the generator learns through."""

    def __init__(self, critic: nn.Module, augment: Augment):
        super().__init__()
        self.critic, self.augment = critic, augment
        self.num_classes = getattr(critic, "num_classes", 0)

    def forward(self, x: torch.Tensor, onehot: Optional[torch.Tensor] = None) -> torch.Tensor:
        scores = self.critic(self.augment(x), onehot)
        self.augment.observe(scores, self.augment.rows.numel())
        return scores
