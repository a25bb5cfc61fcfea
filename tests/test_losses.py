import torch

from gan_dist.training.losses import BCE, WGANGP, gradient_penalty


def test_gradient_penalty_linear_critic_closed_form():
    # f(x) = <w, x>: the input gradient is w for every sample, so GP = (||w|| - 1)^2
    w = torch.randn(3, 4, 4, requires_grad=True)
    x = torch.randn(5, 3, 4, 4, requires_grad=True)
    gp = gradient_penalty((x * w).flatten(1).sum(1), x)
    norm = w.detach().norm()
    assert torch.allclose(gp, (norm - 1) ** 2, rtol=1e-5)
    # create_graph: the penalty is differentiable w.r.t. the critic: d/dw = 2(||w||-1) w/||w||
    (dw,) = torch.autograd.grad(gp, w)
    assert torch.allclose(dw, 2 * (norm - 1) * w.detach() / norm, rtol=1e-4, atol=1e-6)


def test_gradient_penalty_flattens_per_sample():
    # f(x) = 0.5 ||x||^2 per sample: gradient x_i, so GP = mean_i (||x_i|| - 1)^2 over the
    # WHOLE flattened sample (a norm over dim 1 of the image tensor would give another value)
    x = torch.randn(6, 2, 3, 3, requires_grad=True)
    gp = gradient_penalty(0.5 * (x ** 2).flatten(1).sum(1), x)
    expected = ((x.detach().flatten(1).norm(dim=1) - 1) ** 2).mean()
    wrong = ((x.detach().norm(2, dim=1) - 1) ** 2).mean()
    assert torch.allclose(gp, expected, rtol=1e-5)
    assert not torch.allclose(gp, wrong, rtol=1e-2)


class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(1, 2, 2))

    def forward(self, x, onehot=None):
        return (x * self.w).flatten(1).sum(1)


def test_wgan_gp_critic_loss_terms():
    critic, real, fake = Linear(), torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2, 2)
    alpha = torch.rand(4, 1, 1, 1)
    loss, stats = WGANGP(10.0).critic_loss(critic, real, fake, None, alpha)
    w = critic.w.detach()
    wass = (real * w).flatten(1).sum(1).mean() - (fake * w).flatten(1).sum(1).mean()
    gp = (w.norm() - 1) ** 2
    assert torch.allclose(stats, torch.stack([-wass + 10 * gp, gp, wass]), rtol=1e-5)
    assert torch.allclose(loss, -wass + 10 * gp, rtol=1e-5)
    gen = WGANGP(10.0).generator_loss(critic, fake, None)
    assert torch.allclose(gen, -(fake * w).flatten(1).sum(1).mean())


def test_bce_uses_logits():
    critic = Linear()
    real, fake = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2)
    loss, stats = BCE().critic_loss(critic, real, fake, None, None)
    lr, lf = critic(real).detach(), critic(fake).detach()
    expected = torch.nn.functional.softplus(-lr).mean() + torch.nn.functional.softplus(lf).mean()
    assert torch.allclose(loss, expected, rtol=1e-5)
    assert torch.allclose(stats[1], torch.sigmoid(lr).mean()) and torch.allclose(stats[2], torch.sigmoid(lf).mean())
    assert torch.allclose(BCE().generator_loss(critic, fake, None), torch.nn.functional.softplus(-lf).mean(), rtol=1e-5)
