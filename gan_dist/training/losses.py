"""Loss strategies: WGAN-GP (Gulrajani et al. 2017, Algorithm 1), the non-saturating BCE GAN
of book chapter 4, hinge (SAGAN, BigGAN), non-saturating with R1 on real images (StyleGAN2)
and the relativistic pairing loss with R1 and R2 (RpGAN, R3GAN: Huang et al. 2024). The
training loop is the same for all; only these differ.

critic_loss returns (loss, stats): `loss` gets ONE backward (one DDP all-reduce; a backward
per term or static_graph=True silently desynchronizes ranks under the penalty's double
backward), `stats` is a detached 1-D tensor named by `stat_names`, accumulated on device.
generator_loss(critic, fake, onehot, real) gets the reals of the step's last critic round
(this micro-batch's rows): RpGAN pairs each fake with the real of its row; the others ignore
them. A loss with `generator_sees_real` also has its fakes made with those reals' labels.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def gradient_penalty(scores: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """mean_i (||d scores_i / d inputs_i||_2 - 1)^2, the gradient flattened PER SAMPLE
    (a norm over dim 1 of an image tensor is a known wrong version). `inputs` must require
    grad; create_graph so the penalty itself can be differentiated w.r.t. the critic."""
    (grad,) = torch.autograd.grad(scores.float().sum(), inputs, create_graph=True)
    with torch.autocast(grad.device.type, enabled=False):  # under bf16 autocast: the norm in fp32
        return ((grad.float().flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()


def squared_grad_norms(scores: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """||d scores_i / d inputs_i||^2 per sample (in fp32), create_graph: the zero-centred
    penalties (R1 on reals, R2 on fakes) differentiate it w.r.t. the critic."""
    (grad,) = torch.autograd.grad(scores.float().sum(), inputs, create_graph=True)
    with torch.autocast(grad.device.type, enabled=False):
        return grad.float().flatten(1).pow(2).sum(1)


def r1_penalty(scores: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """mean_i ||d scores_i / d real_i||^2 (Mescheder et al. 2018)."""
    return squared_grad_norms(scores, inputs).mean()


def _repeat(onehot: Optional[torch.Tensor], n: int) -> Optional[torch.Tensor]:
    return None if onehot is None else onehot.repeat(n, 1)


class WGANGP:
    stat_names = ("loss_critic", "gp", "wasserstein")

    def __init__(self, gp_lambda: float, gp_every: int = 1):
        self.gp_lambda, self.gp_every = gp_lambda, gp_every

    needs_double_backward = True  # the penalty differentiates a gradient: torch.compile cannot
    scores_defined_up_to_a_constant = True  # ADA's statistic compares real with fake (augment.py)

    def critic_loss(self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                    onehot: Optional[torch.Tensor], alpha: torch.Tensor, update: int = 0):
        """`update` counts critic updates; with gp_every=k the penalty is computed on every k-th
        only and weighted by k (lazy regularization, as StyleGAN2's R1)."""
        b = real.shape[0]
        if update % self.gp_every:
            scores = critic(torch.cat([real, fake]), _repeat(onehot, 2)).float()
            wasserstein = scores[:b].mean() - scores[b:].mean()
            return -wasserstein, torch.stack([-wasserstein, torch.zeros_like(wasserstein), wasserstein]).detach()
        # Interpolates share the real images' labels. Two critic forwards: real+fake together,
        # the interpolates alone, so the penalty's gradient and double backward run over b
        # images; one forward over all three parts makes both traverse the real and fake rows
        # too (at zero gradient): measured 1.7x slower per critic update. Still ONE backward.
        interp = (alpha * real + (1.0 - alpha) * fake).requires_grad_(True)
        scores = critic(torch.cat([real, fake]), _repeat(onehot, 2)).float()
        s_real, s_fake = scores[:b], scores[b:]
        gp = gradient_penalty(critic(interp, onehot), interp) * self.gp_every  # logged scaled: mean over k updates = gp
        wasserstein = s_real.mean() - s_fake.mean()
        loss = -wasserstein + self.gp_lambda * gp
        return loss, torch.stack([loss, gp, wasserstein]).detach()

    def generator_loss(self, critic: nn.Module, fake: torch.Tensor, onehot: Optional[torch.Tensor],
                       real: Optional[torch.Tensor] = None):
        return -critic(fake, onehot).float().mean()


class BCE:
    """Logits + BCEWithLogitsLoss (stable); the generator's loss is the non-saturating one."""
    stat_names = ("loss_critic", "p_real", "p_fake")  # sigmoid(D): probabilities
    needs_double_backward = False

    def critic_loss(self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                    onehot: Optional[torch.Tensor], alpha: torch.Tensor, update: int = 0):
        b = real.shape[0]
        logits = critic(torch.cat([real, fake]), _repeat(onehot, 2)).float()
        target = torch.cat([torch.ones(b, device=real.device), torch.zeros(b, device=real.device)])
        loss = F.binary_cross_entropy_with_logits(logits, target) * 2.0  # sum of the two means
        prob = torch.sigmoid(logits.detach())
        return loss, torch.stack([loss.detach(), prob[:b].mean(), prob[b:].mean()])

    def generator_loss(self, critic: nn.Module, fake: torch.Tensor, onehot: Optional[torch.Tensor],
                       real: Optional[torch.Tensor] = None):
        logits = critic(fake, onehot).float()
        return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


class Hinge:
    """The hinge loss of SAGAN and BigGAN: relu(1 - D(real)) + relu(1 + D(fake)) for the
    critic, -D(fake) for the generator. Usually with a spectral-norm critic."""
    stat_names = ("loss_critic", "score_real", "score_fake")  # raw D scores
    needs_double_backward = False

    def critic_loss(self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                    onehot: Optional[torch.Tensor], alpha: torch.Tensor, update: int = 0):
        b = real.shape[0]
        scores = critic(torch.cat([real, fake]), _repeat(onehot, 2)).float()
        loss = F.relu(1.0 - scores[:b]).mean() + F.relu(1.0 + scores[b:]).mean()
        return loss, torch.stack([loss.detach(), scores[:b].mean().detach(), scores[b:].mean().detach()])

    def generator_loss(self, critic: nn.Module, fake: torch.Tensor, onehot: Optional[torch.Tensor],
                       real: Optional[torch.Tensor] = None):
        return -critic(fake, onehot).float().mean()


class NonSaturatingR1:
    """StyleGAN2's loss: softplus(D(fake)) + softplus(-D(real)) for the critic, softplus(-D(fake))
    for the generator, and gamma/2 * R1 on the real images, lazily: every k-th critic update
    weighted by k (loss.gp_every), the update without it being one forward over real+fake."""
    stat_names = ("loss_critic", "r1", "score_real", "score_fake")  # raw D scores (logits)

    needs_double_backward = True  # R1 differentiates a gradient

    def __init__(self, gamma: float, every: int = 1):
        self.gamma, self.every = gamma, every

    def critic_loss(self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                    onehot: Optional[torch.Tensor], alpha: torch.Tensor, update: int = 0):
        b = real.shape[0]
        if update % self.every:
            scores = critic(torch.cat([real, fake]), _repeat(onehot, 2)).float()
            s_real, s_fake, r1 = scores[:b], scores[b:], torch.zeros((), device=real.device)
        else:  # real alone: R1's gradient and double backward run over b images, not 2b
            real = real.detach().requires_grad_(True)
            s_real, s_fake = critic(real, onehot).float(), critic(fake, onehot).float()
            r1 = r1_penalty(s_real, real) * self.every  # logged scaled: mean over k updates = r1
        loss = F.softplus(s_fake).mean() + F.softplus(-s_real).mean() + 0.5 * self.gamma * r1
        return loss, torch.stack([loss, r1, s_real.mean(), s_fake.mean()]).detach()

    def generator_loss(self, critic: nn.Module, fake: torch.Tensor, onehot: Optional[torch.Tensor],
                       real: Optional[torch.Tensor] = None):
        return F.softplus(-critic(fake, onehot).float()).mean()


class RpGAN:
    """The relativistic pairing loss (Jolicoeur-Martineau 2018; R3GAN's baseline): the critic
    minimises softplus(-(D(real_i) - D(fake_i))) over the pairs of one global row i, the
    generator softplus(-(D(fake_i) - D(real_i))), with gamma/2 * (R1 + R2), the squared
    gradient norms on the real AND the fake images (zero-centred, per sample), lazily every
    k-th critic update weighted by k (loss.gp_every). Row i's real and fake share the row's
    labels, so the pairing never depends on W, A or the rank. Scores are defined up to a
    constant (only differences enter): ADA counts sign(D(real_i) - D(fake_i))."""
    stat_names = ("loss_critic", "r1", "r2", "score_real", "score_fake")

    needs_double_backward = True  # R1 and R2 differentiate a gradient
    scores_defined_up_to_a_constant = True
    generator_sees_real = True  # the generator phase pairs its fakes with the last critic round's reals

    def __init__(self, gamma: float, every: int = 1):
        self.gamma, self.every = gamma, every

    def critic_loss(self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                    onehot: Optional[torch.Tensor], alpha: torch.Tensor, update: int = 0):
        b = real.shape[0]
        x = torch.cat([real, fake])
        penalised = update % self.every == 0
        if penalised:  # one forward over both halves; R1 and R2 from one gradient w.r.t. it
            x = x.detach().requires_grad_(True)
        scores = critic(x, _repeat(onehot, 2)).float()
        s_real, s_fake = scores[:b], scores[b:]
        r1 = r2 = torch.zeros((), device=real.device)
        if penalised:
            norms = squared_grad_norms(scores, x)
            r1, r2 = norms[:b].mean() * self.every, norms[b:].mean() * self.every  # logged scaled, as R1
        loss = F.softplus(-(s_real - s_fake)).mean() + 0.5 * self.gamma * (r1 + r2)
        return loss, torch.stack([loss, r1, r2, s_real.mean(), s_fake.mean()]).detach()

    def generator_loss(self, critic: nn.Module, fake: torch.Tensor, onehot: Optional[torch.Tensor],
                       real: Optional[torch.Tensor] = None):
        b = fake.shape[0]
        scores = critic(torch.cat([fake, real.detach()]), _repeat(onehot, 2)).float()
        return F.softplus(-(scores[:b] - scores[b:])).mean()


RPGAN_GAMMA = 0.05  # R3GAN's CIFAR-10 value (32x32); it scales with the data: FFHQ-64 takes 2


def build_loss(loss):
    """loss.* settings (LossConfig) -> strategy."""
    if loss.kind == "wgan_gp":
        return WGANGP(loss.gp_lambda, loss.gp_every)
    if loss.kind == "ns_r1":
        return NonSaturatingR1(10.0 if loss.r1_gamma is None else loss.r1_gamma, loss.gp_every)
    if loss.kind == "rpgan":
        return RpGAN(RPGAN_GAMMA if loss.r1_gamma is None else loss.r1_gamma, loss.gp_every)
    return Hinge() if loss.kind == "hinge" else BCE()
