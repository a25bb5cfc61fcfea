"""The augmentation's geometric warp (scale and rotation about the center, bilinear, reflection
padding), differentiable to the second order on every torch: WGAN-GP's and R1's penalties
differentiate the critic's input gradient, which runs back through the warp, and torch before
2.14 has no derivative for grid_sampler_2d_backward ("derivative for
aten::grid_sampler_2d_backward is not implemented", seen on torch 2.11, the GPU image's). The
geometry is kornia's (the rotation matrix, its normalization to grid coordinates); the sampler
is torch's grid_sample with a backward of its own that autograd can differentiate again, as
stylegan2-ada's grid_sample_gradfix does: the input gradient is linear in the output gradient,
so its derivative is the forward sampling itself."""
from __future__ import annotations

import torch
import torch.nn.functional as F

BILINEAR, REFLECTION = 0, 2  # aten::grid_sampler_2d's interpolation and padding modes


class _GridSample(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, grid)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, grid = ctx.saved_tensors
        return _GridSampleBackward.apply(grad_out, x, grid)


class _GridSampleBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grad_out: torch.Tensor, x: torch.Tensor, grid: torch.Tensor):
        ctx.set_materialize_grads(False)  # an unused grad_grid comes back as None, not zeros
        ctx.save_for_backward(grid)
        return torch.ops.aten.grid_sampler_2d_backward(grad_out, x, grid, BILINEAR, REFLECTION, True, [True, True])

    @staticmethod
    def backward(ctx, grad2_x: torch.Tensor, grad2_grid: torch.Tensor):
        # d(grad_x)/d(grad_out) is the sampling; bilinear grad_x does not depend on x. The warps
        # here come from random draws: no second-order term through the grid exists to be lost.
        if ctx.needs_input_grad[2] or grad2_grid is not None:
            raise NotImplementedError("second-order gradients through the sampling grid")
        (grid,) = ctx.saved_tensors
        sampled = _GridSample.apply(grad2_x, grid) if grad2_x is not None and ctx.needs_input_grad[0] else None
        return sampled, None, None


def grid_sample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """F.grid_sample(x, grid, bilinear, reflection padding, align_corners=True), differentiable
    twice with respect to x."""
    return _GridSample.apply(x, grid)


def scale_rotate(x: torch.Tensor, scale: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """x [N, C, H, W] scaled by scale [N] and rotated by angle [N] (degrees) about the center,
    bilinear, reflection padding (no black corners for the critic to spot)."""
    import kornia.geometry.conversions as kc
    import kornia.geometry.transform as kt

    n, c, h, w = x.shape
    center = torch.tensor([[(w - 1) / 2.0, (h - 1) / 2.0]], device=x.device, dtype=x.dtype).expand(n, 2)
    dst_from_src = kc.convert_affinematrix_to_homography(kt.get_rotation_matrix2d(center, angle,
                                                                                   scale.view(n, 1).expand(n, 2)))
    src_from_dst = torch.linalg.inv(kc.normalize_homography(dst_from_src, (h, w), (h, w)))  # grid coordinates
    grid = F.affine_grid(src_from_dst[:, :2], [n, c, h, w], align_corners=True)
    return grid_sample(x, grid)
