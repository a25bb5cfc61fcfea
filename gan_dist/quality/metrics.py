"""Sample-quality metrics on feature matrices [rows, D]: no networks and no distributed code here;
callers extract and gather the features first, and every function depends only on its inputs
(and seed), so every rank of any world size gets the same numbers from the same gathered rows.

  kid               Kernel Inception Distance: Binkowski, Sutherland, Arbel, Gretton,
                    "Demystifying MMD GANs", ICLR 2018 (arXiv:1801.01401)
  precision_recall  improved precision and recall: Kynkaanniemi, Karras, Laine, Lehtinen, Aila,
                    "Improved Precision and Recall Metric for Assessing Generative Models",
                    NeurIPS 2019 (arXiv:1904.06991)
  class_frechet     Frechet distance per class ("intra-FID": Miyato, Koyama, "cGANs with
                    Projection Discriminator", ICLR 2018), FID itself from Heusel et al.,
                    "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
                    Equilibrium", NeurIPS 2017 (arXiv:1706.08500)
"""
from __future__ import annotations

import torch
from torch import Tensor

from gan_dist.errors import UserError

K_NN = 3  # improved precision/recall's k (the paper's): a set needs more than K_NN rows


def feature_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [D], unbiased covariance [D, D]) in float64, as numpy.cov(rowvar=False)."""
    if features.dim() != 2 or features.shape[0] < 2:
        raise UserError(f"feature statistics need at least 2 feature rows, got shape {tuple(features.shape)}")
    x = features.detach().to("cpu", torch.float64)
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    Tr((S1 S2)^(1/2)) equals the sum of square roots of the eigenvalues of the SYMMETRIC PSD
    matrix sqrt(S1) S2 sqrt(S1) (same spectrum as S1 S2). eigvalsh of that is stable where
    sqrtm(S1 @ S2) of a non-symmetric product goes complex or inaccurate (rank-deficient
    covariances: fewer samples than feature dimensions)."""
    mu1, mu2, s1, s2 = (torch.as_tensor(t).to("cpu", torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    if s1.shape != s2.shape or mu1.shape != mu2.shape or s1.shape != (mu1.numel(), mu1.numel()):
        raise UserError(f"frechet_distance: shapes do not match ({tuple(mu1.shape)}, {tuple(s1.shape)}, "
                        f"{tuple(mu2.shape)}, {tuple(s2.shape)})")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    w, v = torch.linalg.eigh(s1)
    root1 = (v * w.clamp(min=0).sqrt()) @ v.T
    m = root1 @ s2 @ root1
    tr_covmean = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + torch.trace(s1) + torch.trace(s2) - 2 * tr_covmean)


def _pair(name: str, gen: Tensor, real: Tensor, min_rows: int = 2) -> tuple[Tensor, Tensor]:
    """Both feature matrices as float64 on gen's device, after checking their shapes."""
    for what, x in (("generated", gen), ("real", real)):
        if not isinstance(x, Tensor) or x.dim() != 2:
            raise UserError(f"{name}: {what} features must be a [rows, D] tensor, got "
                            f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        if x.shape[0] < min_rows:
            raise UserError(f"{name}: {x.shape[0]} {what} feature row(s), need at least {min_rows}")
    if gen.shape[1] != real.shape[1]:
        raise UserError(f"{name}: feature dimensions differ (generated {gen.shape[1]}, real {real.shape[1]})")
    return gen.detach().to(torch.float64), real.detach().to(gen.device, torch.float64)


def _positive_int(name: str, arg: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{name}: {arg} must be an integer >= {minimum}, got {value!r}")
    return value


def _poly_mmd2(x: Tensor, y: Tensor) -> Tensor:
    """Unbiased MMD^2 estimate with k(a, b) = (a.b / D + 1)^3 (the paper's KID kernel)."""
    m, d = x.shape
    k_xx = (x @ x.T / d + 1) ** 3
    k_yy = (y @ y.T / d + 1) ** 3
    k_xy = (x @ y.T / d + 1) ** 3
    # Within-set sums drop the diagonal (k(x_i, x_i) is not a sample of E k(x, x')); the
    # cross term keeps it: x_i and y_i are independent.
    within = k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()
    return within / (m * (m - 1)) - 2 * k_xy.sum() / (m * m)


def kid(gen: Tensor, real: Tensor, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """(mean, std) of the unbiased polynomial-kernel MMD^2 over `subsets` random subsets.

    Unlike FID, the estimator is unbiased, so values from different sample counts compare.
    Each subset draws m = min(subset_size, N, M) rows WITHOUT replacement from each set, from
    torch.Generator().manual_seed(seed): the result depends only on the inputs and the seed.
    Per subset the real rows are drawn before the generated ones, torchmetrics' order, so
    KernelInceptionDistance after torch.manual_seed(seed) uses the very same subsets."""
    gen, real = _pair("kid", gen, real)
    _positive_int("kid", "subsets", subsets)
    _positive_int("kid", "subset_size", subset_size, 2)
    m = min(subset_size, len(gen), len(real))
    g = torch.Generator().manual_seed(seed)
    scores = []
    for _ in range(subsets):
        r = real[torch.randperm(len(real), generator=g)[:m].to(real.device)]
        f = gen[torch.randperm(len(gen), generator=g)[:m].to(gen.device)]
        scores.append(_poly_mmd2(f, r))
    scores = torch.stack(scores)
    # Population std (ddof=0), as torchmetrics (std(unbiased=False)), torch-fidelity (np.std)
    # and the paper's code; 0 for a single subset.
    return float(scores.mean()), float(scores.std(unbiased=False))


def _sq_dists(a: Tensor, a_sq: Tensor, b: Tensor, b_sq: Tensor) -> Tensor:
    """Squared Euclidean distances [len(a), len(b)] via one matrix product (float64)."""
    return (a @ b.T).mul_(-2).add_(a_sq[:, None]).add_(b_sq[None, :]).clamp_(min=0)


def _knn_radii(x: Tensor, x_sq: Tensor, k: int, batch: int) -> Tensor:
    """Squared distance from each row to its k-th nearest other row of x."""
    radii = []
    for i in range(0, len(x), batch):
        d = _sq_dists(x[i:i + batch], x_sq[i:i + batch], x, x_sq)
        rows = torch.arange(len(d), device=x.device)
        # Self is excluded by position rather than by taking the (k+1)-th smallest as the
        # reference code does: a matrix-product distance to itself need not be exactly 0.
        # Duplicates of a row still count as neighbours at distance 0, as there.
        d[rows, rows + i] = float("inf")
        radii.append(d.topk(k, dim=1, largest=False).values[:, -1])  # = kthvalue(k), 5x faster
    return torch.cat(radii)


def precision_recall(gen: Tensor, real: Tensor, k: int = K_NN, batch: int = 2048) -> tuple[float, float]:
    """(precision, recall) with k-NN balls as manifold estimates.

    precision: share of generated rows inside at least one real row's ball, radius the
    distance to that real row's k-th nearest real neighbour (itself excluded): quality.
    recall: share of real rows inside at least one generated row's ball: coverage.
    A point on a ball's boundary counts as inside (`<=`, as the reference code).

    Distances are computed `batch` rows at a time (memory O(batch * max(N, M))), in float64,
    so the chunking cannot change which side of a radius a point falls on in practice.
    Compared squared: radii are squared distances from the same formula, so a tie stays a tie."""
    gen, real = _pair("precision_recall", gen, real)
    _positive_int("precision_recall", "k", k)
    _positive_int("precision_recall", "batch", batch)
    for what, n in (("generated", len(gen)), ("real", len(real))):
        if k >= n:
            raise UserError(f"precision_recall: k={k} must be less than the number of {what} rows ({n})")
    gen_sq, real_sq = (gen * gen).sum(1), (real * real).sum(1)
    real_radii = _knn_radii(real, real_sq, k, batch)
    gen_radii = _knn_radii(gen, gen_sq, k, batch)
    # One pass over the generated-to-real distances serves both: rows for precision, columns
    # for recall.
    precise = 0
    recalled = torch.zeros(len(real), dtype=torch.bool, device=real.device)
    for i in range(0, len(gen), batch):
        d = _sq_dists(gen[i:i + batch], gen_sq[i:i + batch], real, real_sq)
        precise += int((d <= real_radii[None, :]).any(1).sum())
        recalled |= (d <= gen_radii[i:i + batch, None]).any(0)
    return precise / len(gen), float(recalled.sum()) / len(real)


def class_frechet(gen_feats: Tensor, gen_labels: Tensor, real_feats: Tensor, real_labels: Tensor,
                  num_classes: int) -> dict[int, float]:
    """{class: Frechet distance between that class's generated and real features} (intra-FID).

    A class with fewer than 2 generated or fewer than 2 real rows has no covariance estimate
    and is left out of the dict (no entry, rather than a NaN that would poison an average).
    Few rows per class give a strongly biased estimate: compare values at equal counts only."""
    gen_feats, real_feats = _pair("class_frechet", gen_feats, real_feats, min_rows=0)
    _positive_int("class_frechet", "num_classes", num_classes)
    labels = []
    for what, feats, lab in (("generated", gen_feats, gen_labels), ("real", real_feats, real_labels)):
        if not isinstance(lab, Tensor) or lab.dim() != 1 or len(lab) != len(feats):
            raise UserError(f"class_frechet: {what} labels must be a 1-d tensor of {len(feats)} entries, got "
                            f"{tuple(lab.shape) if isinstance(lab, Tensor) else type(lab).__name__}")
        if lab.is_floating_point() or lab.is_complex():
            raise UserError(f"class_frechet: {what} labels must be integers, got {lab.dtype}")
        lab = lab.to(feats.device)
        if len(lab) and (int(lab.min()) < 0 or int(lab.max()) >= num_classes):
            raise UserError(f"class_frechet: {what} labels must lie in [0, {num_classes}), got "
                            f"[{int(lab.min())}, {int(lab.max())}]")
        labels.append(lab)
    out = {}
    for c in range(num_classes):
        g, r = gen_feats[labels[0] == c], real_feats[labels[1] == c]
        if len(g) >= 2 and len(r) >= 2:
            out[c] = frechet_distance(*feature_stats(g), *feature_stats(r))
    return out
