"""gan_dist.metrics: KID against torchmetrics (same subsets), precision/recall against a
brute-force reference and torch-fidelity, closed-form cases, per-class Frechet distance, and
the one-line errors for bad input."""
import pytest
import torch
from torch_fidelity.metric_prc import calculate_precision_recall_part
from torchmetrics.image.kid import KernelInceptionDistance

from gan_dist.errors import UserError
from gan_dist.quality.metrics import class_frechet, kid, precision_recall


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def torchmetrics_kid(gen, real, subsets, subset_size, seed):
    """torchmetrics' KID on ready-made features (nn.Identity as the feature extractor), its
    global-RNG subset draws seeded with `seed`."""
    metric = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=subsets, subset_size=subset_size)
    metric.update(real, real=True)
    metric.update(gen, real=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance`")
def test_kid_matches_torchmetrics_on_all_rows():
    # subset_size = n: torchmetrics' one subset is a permutation of all rows, and MMD^2 does
    # not depend on the order, whatever its global RNG draws
    gen, real = randn(64, 12, seed=1) * 1.3 + 0.2, randn(64, 12, seed=2)
    ours = kid(gen, real, subsets=1, subset_size=64, seed=123)
    ref = torchmetrics_kid(gen, real, subsets=1, subset_size=64, seed=7)
    assert ours[0] == pytest.approx(ref[0], rel=1e-6) and ours[0] > 0.01
    assert ours[1] == ref[1] == 0.0  # one subset: population std 0


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance`")
def test_kid_matches_torchmetrics_with_the_same_random_subsets():
    # real before generated per subset, as torchmetrics draws them: same seed, same subsets
    gen, real = randn(50, 6, seed=3) + 0.3, randn(40, 6, seed=4)
    for seed in (0, 5):
        ours = kid(gen, real, subsets=8, subset_size=25, seed=seed)
        ref = torchmetrics_kid(gen, real, subsets=8, subset_size=25, seed=seed)
        assert ours == pytest.approx(ref, rel=1e-9)
        assert ours[1] > 0  # several different subsets: a real spread, population std as theirs
    # float32 features (what torchmetrics keeps from a float32 network): we compute in float64
    ref32 = torchmetrics_kid(gen.float(), real.float(), subsets=8, subset_size=25, seed=0)
    assert kid(gen.float(), real.float(), subsets=8, subset_size=25)[0] == pytest.approx(ref32[0], rel=1e-4)


def test_kid_same_distribution_near_zero_shifted_clearly_not():
    a, b = randn(500, 16, seed=5), randn(500, 16, seed=6)
    same_mean, same_std = kid(a, b, subsets=50, subset_size=200)
    shift_mean, shift_std = kid(a + 0.5, b, subsets=50, subset_size=200)
    assert abs(same_mean) < 3 * same_std  # unbiased: centred on 0 for equal distributions
    assert shift_mean > 10 * max(same_std, abs(same_mean)) and shift_mean > 3 * shift_std


def test_kid_is_a_function_of_inputs_and_seed():
    a, b = randn(120, 8, seed=7), randn(90, 8, seed=8) + 0.2
    first = kid(a, b, subsets=10, subset_size=50, seed=3)
    torch.manual_seed(999)  # the global RNG plays no part
    assert kid(a, b, subsets=10, subset_size=50, seed=3) == first
    assert kid(a, b, subsets=10, subset_size=50, seed=4) != first
    # subset_size larger than either set: clipped to the smaller set (90 rows)
    assert kid(a, b, subsets=1, subset_size=10_000)[1] == 0.0
    assert kid(a[:90], b, subsets=1, subset_size=10_000)[0] == pytest.approx(kid(a[:90], b, 1, 90)[0], rel=1e-12)


def brute_force_pr(gen, real, k):
    """Plain reference: full distance matrices (direct differences, no matrix-product
    formula), sorted rows, column k = k-th nearest other row (column 0 is the row itself)."""
    def dist(a, b):
        return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")

    real_r = dist(real, real).sort(1).values[:, k]
    gen_r = dist(gen, gen).sort(1).values[:, k]
    d = dist(gen, real)
    return (d <= real_r[None]).any(1).double().mean().item(), (d <= gen_r[:, None]).any(0).double().mean().item()


def test_precision_recall_matches_brute_force_and_torch_fidelity_for_any_chunk_size():
    gen, real = randn(103, 5, seed=9) * 1.2 + 0.3, randn(89, 5, seed=10)
    perm_g, perm_r = torch.randperm(103, generator=torch.Generator().manual_seed(0)), torch.randperm(89, generator=torch.Generator().manual_seed(1))
    for k in (1, 3, 5):
        ref = brute_force_pr(gen, real, k)
        assert 0.3 < ref[0] < 1 and 0.3 < ref[1] < 1  # neither trivially 0 nor 1
        # 7 divides neither 103 nor 89; 2048 is one chunk; 103 = all generated rows exactly
        for batch in (7, 103, 2048):
            assert precision_recall(gen, real, k=k, batch=batch) == ref, (k, batch)
        assert calculate_precision_recall_part(gen, real, neighborhood=k) == pytest.approx(ref, abs=1e-6)  # float32 mean
        # row order (e.g. how ranks' features were gathered) cannot matter
        assert precision_recall(gen[perm_g], real[perm_r], k=k, batch=7) == ref


def test_precision_recall_identical_and_disjoint_sets():
    x = randn(300, 8, seed=11)
    assert precision_recall(x, x.clone()) == (1.0, 1.0)
    assert precision_recall(x + 100, x) == (0.0, 0.0)


def test_precision_recall_mode_dropping():
    # 4 well-separated real modes; the generator covers only the first 2
    centres = torch.tensor([[10.0, 0], [-10, 0], [0, 10], [0, -10]], dtype=torch.float64)
    real = (centres[:, None] + randn(4, 200, 2, seed=12)).reshape(-1, 2)
    dropped = (centres[:2, None] + randn(2, 200, 2, seed=13)).reshape(-1, 2)
    covered = (centres[:, None] + randn(4, 100, 2, seed=14)).reshape(-1, 2)
    precision, recall = precision_recall(dropped, real)
    assert precision >= 0.95  # what it makes looks real...
    assert 0.4 <= recall <= 0.5  # ...but half the real modes (no real point of theirs) are missed
    p_all, r_all = precision_recall(covered, real)
    assert p_all >= 0.95 and r_all >= 0.9


def test_precision_recall_boundary_counts_as_inside():
    # 1-d, exact in float64: real 0, 1, 2, 3 have k=1 radius 1; generated 4 and -1 lie exactly
    # on a radius (inside with `<=`, as the reference code), 5 outside, 1.5 inside
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    gen = torch.tensor([[4.0], [5.0], [-1.0], [1.5]])
    assert precision_recall(gen, real, k=1)[0] == 0.75  # `<` would give 0.25
    assert brute_force_pr(gen.double(), real.double(), 1)[0] == 0.75


def test_precision_recall_k_validation():
    gen, real = randn(5, 3, seed=15), randn(8, 3, seed=16)
    assert precision_recall(gen, real, k=4)  # k = rows - 1: the farthest other row, allowed
    with pytest.raises(UserError, match=r"k=5 must be less than the number of generated rows \(5\)"):
        precision_recall(gen, real, k=5)
    with pytest.raises(UserError, match=r"k=8 must be less than the number of real rows \(8\)"):
        precision_recall(randn(10, 3), real, k=8)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(UserError, match="k must be an integer >= 1"):
            precision_recall(gen, real, k=bad)
    with pytest.raises(UserError, match="batch must be an integer >= 1"):
        precision_recall(gen, real, batch=0)


def test_class_frechet():
    d = 6
    real = randn(130, d, seed=17) @ randn(d, d, seed=18)
    real_labels = torch.tensor([0] * 50 + [1] * 50 + [2] * 30)
    shift = randn(d, seed=19)
    gen = torch.cat([real[:50], real[50:100] + shift, real[100:101]])  # class 2: one generated row
    gen_labels = torch.tensor([0] * 50 + [1] * 50 + [2])
    out = class_frechet(gen, gen_labels, real, real_labels, num_classes=4)
    assert set(out) == {0, 1}  # class 2: 1 generated row; class 3: no rows at all
    scale = float(real.var(0).sum())
    assert abs(out[0]) < 1e-9 * scale  # same features
    # same covariance, means apart by `shift`: the distance is ||shift||^2
    assert out[1] == pytest.approx(float(shift @ shift), abs=1e-9 * scale)
    assert class_frechet(gen, gen_labels, real, real_labels, num_classes=3) == out  # no class 3: same
    assert class_frechet(gen[:1], gen_labels[:1], real, real_labels, num_classes=4) == {}


@pytest.mark.parametrize("call, cause", [
    (lambda: kid(randn(1, 4), randn(10, 4)), r"kid: 1 generated feature row\(s\), need at least 2"),
    (lambda: kid(randn(10, 4), randn(10, 5)), r"kid: feature dimensions differ \(generated 4, real 5\)"),
    (lambda: kid(randn(10), randn(10, 1)), r"kid: generated features must be a \[rows, D\] tensor, got \(10,\)"),
    (lambda: kid(randn(10, 4), randn(10, 4), subsets=0), "kid: subsets must be an integer >= 1"),
    (lambda: kid(randn(10, 4), randn(10, 4), subset_size=1), "kid: subset_size must be an integer >= 2"),
    (lambda: precision_recall(randn(10, 4), randn(1, 4)),
     r"precision_recall: 1 real feature row\(s\), need at least 2"),
    (lambda: precision_recall(randn(10, 4), [[0.0] * 4] * 10), "real features must be a .* got list"),
    (lambda: class_frechet(randn(4, 2), torch.zeros(3, dtype=torch.long), randn(4, 2), torch.zeros(4, dtype=torch.long), 2),
     "generated labels must be a 1-d tensor of 4 entries, got \\(3,\\)"),
    (lambda: class_frechet(randn(4, 2), torch.zeros(4, dtype=torch.long), randn(4, 2), torch.tensor([0, 1, 2, 5]), 3),
     r"real labels must lie in \[0, 3\), got \[0, 5\]"),
    (lambda: class_frechet(randn(4, 2), torch.zeros(4), randn(4, 2), torch.zeros(4, dtype=torch.long), 2),
     "generated labels must be integers"),
    (lambda: class_frechet(randn(4, 2), torch.zeros(4, dtype=torch.long), randn(4, 3), torch.zeros(4, dtype=torch.long), 2),
     r"feature dimensions differ \(generated 2, real 3\)"),
])
def test_bad_input_is_a_one_line_user_error(call, cause):
    with pytest.raises(UserError, match=cause) as e:
        call()
    assert "\n" not in str(e.value)
