import pytest
import torch
from torch.utils.data import DistributedSampler, TensorDataset

from gan_dist import config
from gan_dist.data import BatchStream, DataInfo, ResumableSampler, build_dataset
from gan_dist.distributed import World
from gan_dist.errors import UserError
from helpers import write_fashion_mnist, write_image_folder


def test_digits_is_the_real_sklearn_dataset_resized():
    ds, info = build_dataset(config.load(None, ["data.image_size=16"]))
    images, labels = ds.tensors
    assert len(ds) == 1797 and images.shape == (1797, 1, 16, 16)
    assert (info.num_classes, info.channels, info.image_size) == (10, 1, 16)
    assert images.min() >= -1 and images.max() <= 1 and images.min() < -0.99 and images.max() > 0.9
    assert sorted(labels.unique().tolist()) == list(range(10))


def test_fashion_mnist_loader_reads_idx_files(tmp_path):
    write_fashion_mnist(tmp_path, n=32)
    ds, info = build_dataset(config.load(None, ["data.name=fashion_mnist", f"data.root={tmp_path}",
                                                "data.image_size=28", "model.kind=mlp", "train.batch_size=8"]))
    x, y = ds[3]
    assert len(ds) == 32 and x.shape == (1, 28, 28) and x.dtype == torch.uint8 and y == 3  # pixels: [-1, 1] on the device
    assert info.num_classes == 10
    resized, _ = build_dataset(config.load(None, ["data.name=fashion_mnist", f"data.root={tmp_path}",
                                                  "data.image_size=16", "train.batch_size=8"]))
    assert resized[0][0].shape == (1, 16, 16)


def test_mnist_reads_the_train_files_as_torchvision_does_and_needs_no_test_files(tmp_path):
    from torchvision.datasets import MNIST
    from torchvision.transforms.functional import pil_to_tensor

    write_fashion_mnist(tmp_path / "full", n=24, folder="MNIST")
    write_fashion_mnist(tmp_path / "train_only", n=24, folder="MNIST", splits=("train",))
    reference = MNIST(str(tmp_path / "full"), train=True, transform=pil_to_tensor)
    ds, info = build_dataset(config.load(None, ["data.name=mnist", f"data.root={tmp_path / 'train_only'}",
                                                "data.image_size=28", "model.kind=mlp", "train.batch_size=8"]))
    assert len(ds) == 24 and info == DataInfo(10, 1, 28)
    for i in (0, 5, 23):
        assert torch.equal(ds[i][0], reference[i][0]) and ds[i][1] == reference[i][1]
    with pytest.raises(UserError, match="no MNIST in .*MNIST/raw/train-images-idx3-ubyte not found"):
        build_dataset(config.load(None, ["data.name=mnist", f"data.root={tmp_path}", "train.batch_size=8"]))


@pytest.mark.parametrize("size", [28, 16])
def test_idx_datasets_pickle_for_spawn_and_forkserver_workers(tmp_path, size):
    """Those workers receive the dataset pickled: a lambda in it ended the run in a traceback."""
    import pickle

    write_fashion_mnist(tmp_path, n=16, splits=("train",))
    for name in ("data.name=fashion_mnist", "data.name=gan_dist.data.datasets:fashion_mnist"):
        ds, _ = build_dataset(config.load(None, [name, f"data.root={tmp_path}", f"data.image_size={size}",
                                                 "model.kind=mlp", "train.batch_size=8"]))
        copy = pickle.loads(pickle.dumps(ds))
        assert torch.equal(copy[3][0], ds[3][0]) and copy[3][0].shape == (1, size, size)


def test_fashion_mnist_missing_files_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="data.root"):
        build_dataset(config.load(None, ["data.name=fashion_mnist", f"data.root={tmp_path}"]))


@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder_one_subfolder_per_class(tmp_path, channels):
    write_image_folder(tmp_path, per_class=3)
    ds, info = build_dataset(config.load(None, ["data.name=image_folder", f"data.root={tmp_path}",
                                                "data.image_size=16", f"data.channels={channels}",
                                                "train.batch_size=4"]))
    x, y = ds[4]
    assert len(ds) == 6 and info.num_classes == 2 and x.shape == (channels, 16, 16) and y == 1
    assert x.dtype == torch.uint8  # pixels, made [-1, 1] on the device (gan_dist.data.images.to_unit)


def test_batch_larger_than_dataset_is_a_user_error(tmp_path):
    write_image_folder(tmp_path, per_class=2)
    with pytest.raises(UserError, match="train.batch_size"):
        build_dataset(config.load(None, ["data.name=image_folder", f"data.root={tmp_path}",
                                         "data.image_size=8", "train.batch_size=64"]))


def _shards(n: int, world: int, epoch: int, batch: int = 8, start: int = 0) -> list[list[int]]:
    ds = TensorDataset(torch.arange(n))
    out = []
    for r in range(world):
        s = ResumableSampler(ds, World(rank=r, world_size=world), seed=0, batch_size=batch)
        s.set_epoch(epoch)
        s.start = start
        out.append(list(s))
        assert len(s) == len(out[-1])
    return out


def test_sampler_shards_disjoint_cover_and_reshuffle_per_epoch():
    e0, e1 = _shards(40, 2, 0), _shards(40, 2, 1)
    assert not set(e0[0]) & set(e0[1])
    assert sorted(e0[0] + e0[1]) == list(range(40))
    assert e0 != e1 and sorted(e1[0] + e1[1]) == list(range(40))
    # rank r holds global positions r, r+W, ... of the 1-rank order (the equivalence principle)
    (one,) = _shards(40, 1, 0)
    assert one[0::2] == e0[0] and one[1::2] == e0[1]
    # ... which is DistributedSampler's own layout
    for r in range(2):
        ref = DistributedSampler(TensorDataset(torch.arange(40)), num_replicas=2, rank=r, seed=0, drop_last=True)
        assert list(ref) == e0[r]


def test_sampler_resumed_mid_epoch_shards_the_rest_for_any_batch_and_world():
    (one,) = _shards(36, 1, 3, batch=1)  # the epoch's whole order
    for world, batch, start in [(2, 4, 10), (3, 9, 6), (1, 5, 12), (2, 2, 35)]:
        shards = _shards(36, world, 3, batch=batch, start=start)
        full = (36 - start) // batch * batch  # whole global batches left in the epoch
        rest = [x for row in zip(*shards) for x in row]  # back in global order
        assert rest == one[start:start + full], (world, batch, start)


def _stream(world: World, batch: int = 8, **kw) -> BatchStream:
    ds = TensorDataset(torch.arange(36), torch.zeros(36, dtype=torch.long))
    cfg = config.load(None, [f"train.batch_size={batch}"])
    return BatchStream(ds, cfg, world, **kw)


def test_stream_ranks_split_each_global_batch_and_cross_epochs():
    one = _stream(World())
    ranks = [_stream(World(rank=r, world_size=2)) for r in range(2)]
    # 36 // 8 = 4 batches an epoch: the remainder is dropped every epoch, for any W
    for _ in range(10):  # 2.5 epochs
        g, _ = one.next()
        parts = [s.next()[0] for s in ranks]
        interleaved = torch.stack(parts, 1).flatten()
        assert torch.equal(interleaved, g)
    assert (one.epoch, one.position) == (2, 16) == (ranks[0].epoch, ranks[0].position)  # position in samples


def test_stream_resumes_mid_epoch_exactly():
    straight = _stream(World())
    for _ in range(6):
        straight.next()
    resumed = _stream(World(), epoch=straight.epoch, position=straight.position)
    for _ in range(7):
        assert torch.equal(straight.next()[0], resumed.next()[0])


@pytest.mark.parametrize("batch, world", [(4, 2), (12, 2), (8, 1), (16, 4)])
def test_stream_resumed_with_another_batch_and_world_size_continues_the_epoch(batch, world):
    # 3 batches of 8 on 1 rank (24 of 36 samples), then resumed as `world` ranks of batch/world:
    # the rest of the epoch is exactly the samples not yet seen, then the next epoch in full.
    first = _stream(World(), batch=8)
    seen = torch.cat([first.next()[0] for _ in range(3)])
    (epoch0,), (epoch1,) = _shards(36, 1, 0, batch=1), _shards(36, 1, 1, batch=1)
    assert seen.tolist() == epoch0[:24]
    ranks = [_stream(World(rank=r, world_size=world), batch=batch, epoch=first.epoch, position=first.position)
             for r in range(world)]
    got = []
    while ranks[0].epoch == 0:
        got += torch.stack([s.next()[0] for s in ranks], 1).flatten().tolist()
    assert got == epoch0[24:24 + (36 - 24) // batch * batch]  # nothing replayed, nothing skipped but the tail
    nxt = torch.stack([s.next()[0] for s in ranks], 1).flatten().tolist()
    assert nxt == epoch1[:batch]


def test_the_digits_read_without_scikit_learn_are_load_digits_resized_as_torchvision_does():
    # The digits come from load_digits' own file without importing scikit-learn (3 s per rank),
    # resized with torch's antialiased interpolate instead of torchvision's Resize (2.3 s).
    from sklearn.datasets import load_digits
    from torchvision.transforms.v2 import functional as F

    from gan_dist.data.datasets import digits

    ref = load_digits()
    for size in (8, 16, 64):
        ds, info = digits(config.load(None, [f"data.image_size={size}"]))
        images, labels = ds.tensors
        expect = torch.as_tensor(ref.images, dtype=torch.float32).unsqueeze(1) / 16.0
        if size != 8:
            expect = F.resize(expect, [size] * 2, antialias=True).clamp(0.0, 1.0)
        assert torch.equal(images, expect * 2.0 - 1.0) and torch.equal(labels, torch.as_tensor(ref.target)), size
        assert (info.num_classes, info.channels, info.image_size) == (10, 1, size)
