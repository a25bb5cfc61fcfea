"""data.name=zip as users meet it: on 2 ranks with loader workers (fork and spawn), resumed
mid-epoch bitwise and on another world size, a zip written the way stylegan2-ada's tool
writes it, bad labels and sizes in one line, a resume that switches between an ImageFolder and
the zip made from it, decoding on the device (the CPU runs that path), and 20,000 images
end to end."""
import io
import json
import zipfile

import pytest
import torch
from PIL import Image

from gan_dist import config
from gan_dist.data import stream
from gan_dist.data.dataset_tool import convert
from gan_dist.data.zipdata import ZipImages, decode_batch
from gan_dist.distributed import World
from helpers import (
    DEVICES,
    TINY,
    assert_same_state,
    device_args,
    device_env,
    latest_ckpt,
    ok,
    one_line_error,
    train,
    write_image_folder,
)

ZIP = ["data.name=zip", "model.norm=none", "optim.eps=1e-6"]


def _zip(tmp_path, per_class=24, fmt="png"):
    root = write_image_folder(tmp_path / "folder", classes=tuple("abcd"), per_class=per_class, size=(12, 10))
    convert(root, tmp_path / "data.zip", "8", format=fmt, workers=2)
    return root, tmp_path / "data.zip"


def test_zip_on_two_ranks_with_workers_resumes_bitwise_and_on_another_world_size(tmp_path):
    _, data = _zip(tmp_path)  # 96 images, 4 classes, RGB 8x8: an epoch every 6 batches of 16
    args = TINY + ZIP + [f"data.root={data}", "train.checkpoint_every=3"]
    fork = ["data.num_workers=2", "data.start_method=fork"]
    ok(train(args + fork + ["train.steps=3", f"run.dir={tmp_path}/resumed"], 2))
    out = ok(train(args + ["data.num_workers=1", "data.start_method=spawn", "train.steps=6",
                           f"run.dir={tmp_path}/resumed"], 2))[0].out
    assert "resuming from" in out and "zip" in out
    ok(train(args + fork + ["train.steps=6", f"run.dir={tmp_path}/straight"], 2))
    state = latest_ckpt(tmp_path / "resumed")
    assert state["data_info"] == {"num_classes": 4, "channels": 3, "image_size": 8}
    assert state["config"]["data"]["image_size"] == 8 and state["config"]["data"]["channels"] == 3  # the zip's
    assert_same_state(state, latest_ckpt(tmp_path / "straight"))  # fork or spawn, resumed or not
    # the same run resumed on 1 rank: the epoch goes on; within float tolerance of 2 ranks throughout
    ok(train(args + ["train.steps=9", f"run.dir={tmp_path}/resumed"], 1))
    ok(train(args + fork + ["train.steps=9", f"run.dir={tmp_path}/straight"], 2))
    a, b = latest_ckpt(tmp_path / "resumed"), latest_ckpt(tmp_path / "straight")
    assert a["data"] == b["data"]
    for net in ("generator", "critic"):
        for k, v in a[net].items():
            assert torch.allclose(v, b[net][k], atol=1e-4, rtol=0), (net, k)


def _stylegan_zip(path, labels):
    """A zip as NVlabs' dataset_tool.py writes it: uncompressed PNGs (compress_level 0) under
    00000/img00000000.png, ZIP_STORED, dataset.json {"labels": [[name, label], ...] or null}."""
    g = torch.Generator().manual_seed(0)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        entries = []
        for idx in range(32):
            s = f"{idx:08d}"
            name = f"{s[:5]}/img{s}.png"
            pixels = torch.randint(0, 256, (8, 8), generator=g, dtype=torch.uint8).numpy()
            buf = io.BytesIO()
            Image.fromarray(pixels, "L").save(buf, format="png", compress_level=0, optimize=False)
            z.writestr(name, buf.getbuffer())
            entries.append([name, idx % 3] if labels else None)
        z.writestr("dataset.json", json.dumps({"labels": entries if labels else None}))


@pytest.mark.parametrize("labels", [True, False], ids=["conditional", "unconditional"])
def test_a_zip_made_by_stylegan2_adas_tool_trains_as_it_is(tmp_path, labels):
    _stylegan_zip(tmp_path / "sg.zip", labels)
    extra = [] if labels else ["model.conditional=false"]
    ok(train(TINY + ["data.name=zip", f"data.root={tmp_path / 'sg.zip'}", "train.steps=2", *extra,
                     f"run.dir={tmp_path}/run"]))
    assert latest_ckpt(tmp_path / "run")["data_info"] == {"num_classes": 3 if labels else 0, "channels": 1,
                                                          "image_size": 8}


def test_labels_and_sizes_that_do_not_fit_are_one_line(tmp_path):
    _stylegan_zip(tmp_path / "sg.zip", True)
    base = TINY + ["data.name=zip", f"data.root={tmp_path / 'sg.zip'}", f"run.dir={tmp_path}/run"]
    one_line_error(train(base + ["data.image_size=16"])[0], "data.image_size=16", "image size 8",
                   "leave data.image_size unset")
    with zipfile.ZipFile(tmp_path / "sg.zip") as z:
        members = {n: z.read(n) for n in z.namelist()}
    for labels, needle in [([["00000/img00000000.png", 1]], "dataset.json has no label for 00000/img00000001.png"),
                           ([[n, [0.5, 0.5]] for n in members if n.endswith(".png")], "gan_dist takes class labels")]:
        with zipfile.ZipFile(tmp_path / "bad.zip", "w") as z:
            for n, data in members.items():
                z.writestr(n, json.dumps({"labels": labels}) if n == "dataset.json" else data)
        one_line_error(train(TINY + ["data.name=zip", f"data.root={tmp_path / 'bad.zip'}",
                                     f"run.dir={tmp_path}/run"])[0], needle)
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    one_line_error(train(TINY + ["data.name=zip", f"data.root={tmp_path / 'junk.zip'}", f"run.dir={tmp_path}/r"])[0],
                   "is not a readable zip")
    one_line_error(train(TINY + ["data.name=zip", f"run.dir={tmp_path}/r"])[0], "data.root: required for data.name=zip")


def test_a_resume_may_switch_between_a_folder_and_the_zip_made_from_it(tmp_path):
    root, data = _zip(tmp_path)
    folder = TINY + ["data.name=image_folder", f"data.root={root}", "data.channels=3", "data.image_size=8",
                     "train.checkpoint_every=2"]
    ok(train(folder + ["train.steps=2", f"run.dir={tmp_path}/switched"]))
    out = ok(train(TINY + ["data.name=zip", f"data.root={data}", "train.checkpoint_every=2", "train.steps=4",
                           f"run.dir={tmp_path}/switched"]))[0].out
    assert "data.name image_folder -> zip (the same 96 images, labels, size and pixels)" in out
    ok(train(folder + ["train.steps=4", f"run.dir={tmp_path}/folder"]))
    assert_same_state(latest_ckpt(tmp_path / "switched"), latest_ckpt(tmp_path / "folder"))  # the same pixels
    convert(root, tmp_path / "fewer.zip", "8", max_images=80, workers=1)  # other images: refused
    one_line_error(train(TINY + ["data.name=zip", f"data.root={tmp_path / 'fewer.zip'}", "train.steps=6",
                                 f"run.dir={tmp_path}/folder"])[0], "data.name='image_folder'",
                   "only to the same images: count 96 -> 80")


@pytest.mark.parametrize("device", DEVICES)
def test_decoding_on_the_device_is_the_cpu_decoding(tmp_path, device):
    _, data = _zip(tmp_path, per_class=8, fmt="jpg")
    # the pixels: decoded whole batches on the device (nvjpeg on CUDA) against one by one in a worker
    images = ZipImages(data)
    index = list(range(len(images)))
    on_device = decode_batch(images, index, [images._bytes(i) for i in index], torch.tensor(images.targets),
                             torch.device(device))[0].cpu()
    in_worker = torch.stack([images[i][0] for i in index])
    levels = (on_device.int() - in_worker.int()).abs()
    print(f"{device} decoding vs the CPU's: max {levels.max().item()} levels, mean {levels.float().mean().item():.3f}")
    if device == "cpu":
        assert torch.equal(on_device, in_worker)
    else:  # nvjpeg's IDCT and upsampling round otherwise than libjpeg-turbo's
        assert levels.max() <= 8 and levels.float().mean() < 1.0
    args = TINY + ZIP + [f"data.root={data}", "train.steps=2", *device_args(device)]
    ok(train(args + ["data.decode=device", f"run.dir={tmp_path}/device"], env=device_env(device)))
    ok(train(args + [f"run.dir={tmp_path}/cpu"], env=device_env(device)))
    if device == "cpu":
        assert_same_state(latest_ckpt(tmp_path / "device"), latest_ckpt(tmp_path / "cpu"))
    one_line_error(train(TINY + ZIP + [f"data.root={_zip(tmp_path / 'p', per_class=4)[1]}", "data.decode=device",
                                       f"run.dir={tmp_path}/x"])[0], "data.decode=device", "data.decode=cpu")


def test_num_workers_auto_follows_the_dataset_and_the_device(tmp_path, monkeypatch):
    _, data = _zip(tmp_path, per_class=4)
    cfg = config.load(None, ["data.name=zip", f"data.root={data}"])
    from gan_dist.data.zipdata import ZipImages

    zipped, digits = ZipImages(data), torch.utils.data.TensorDataset(torch.zeros(4, 1, 8, 8), torch.zeros(4))
    monkeypatch.setattr(stream, "default_threads", lambda world: 9)
    assert stream.num_workers(cfg, digits, World()) == 0  # in memory: no workers
    cuda = World(device=torch.device("cuda", 0))
    assert stream.num_workers(cfg, zipped, cuda) == 8  # CPUs of this rank but one, at most 8
    assert stream.num_workers(cfg, zipped, World()) == 0  # on the CPU the main process keeps up (docs/data.md)
    assert stream.num_workers(config.load(None, ["data.num_workers=3"]), digits, World()) == 3
    one_line_error(train(TINY + ["data.num_workers=many", f"run.dir={tmp_path}/r"])[0],
                   "data.num_workers: must be >= 0 or auto")


def test_twenty_thousand_images_from_folder_to_zip_to_two_ranks_and_a_resume(tmp_path):
    root = tmp_path / "big"
    g = torch.Generator().manual_seed(0)
    for c in range(2):
        (root / str(c)).mkdir(parents=True)
        for i in range(10_000):
            Image.fromarray(torch.randint(0, 256, (8, 8), generator=g, dtype=torch.uint8).numpy(), "L").save(
                root / str(c) / f"{i:05d}.png")
    r = convert(root, tmp_path / "big.zip", workers=2, channels=1)
    assert (r["images"], r["classes"], r["size"]) == (20_000, 2, 8)
    args = TINY + ["data.name=zip", f"data.root={tmp_path / 'big.zip'}", "train.checkpoint_every=2",
                   "data.num_workers=1"]
    ok(train(args + ["train.steps=2", f"run.dir={tmp_path}/run"], 2, timeout=300))
    ok(train(args + ["train.steps=4", f"run.dir={tmp_path}/run"], 2, timeout=300))
    state = latest_ckpt(tmp_path / "run")
    assert state["step"] == 4 and state["data"] == {"epoch": 0, "samples_in_epoch": 4 * 5 * 16}


def _break_members(path, stored: int, deflated: int) -> list[str]:
    """The zip with member `stored`'s local header overwritten and member `deflated` rewritten
    deflated with a broken stream: bytes that cannot be read (central directory intact)."""
    with zipfile.ZipFile(path) as z:
        items = [(i, z.read(i.filename)) for i in z.infolist()]
    names = [i.filename for i, _ in items if i.filename.endswith(".jpg")]
    with zipfile.ZipFile(path, "w") as z:
        for info, data in items:
            z.writestr(info.filename, data, zipfile.ZIP_DEFLATED if info.filename == names[deflated] else zipfile.ZIP_STORED)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        bad_header, bad_stream = z.getinfo(names[stored]), z.getinfo(names[deflated])
    raw[bad_header.header_offset:bad_header.header_offset + 4] = b"XXXX"
    start = bad_stream.header_offset + 30 + len(bad_stream.filename.encode()) + len(bad_stream.extra)
    raw[start] = 0xFF  # deflate block type 3: "invalid block type"
    path.write_bytes(bytes(raw))
    return [names[stored], names[deflated]]


def test_members_whose_bytes_cannot_be_read_are_skipped_alike_by_both_decoders_on_two_ranks(tmp_path):
    # a bad local header and a zlib error: the CPU path skipped them, decoding on the device killed
    # the rank that met one while the other waited
    _, data = _zip(tmp_path, per_class=8, fmt="jpg")
    broken = _break_members(data, stored=5, deflated=9)
    args = TINY + ZIP + [f"data.root={data}", "train.steps=2"]
    device = ok(train(args + ["data.decode=device", f"run.dir={tmp_path}/device"], 2))
    cpu = ok(train(args + [f"run.dir={tmp_path}/cpu"], 2))
    for results in (device, cpu):
        said = "".join(r.err for r in results)
        assert all(f"skipping {name}" in said for name in broken), said
    assert_same_state(latest_ckpt(tmp_path / "device"), latest_ckpt(tmp_path / "cpu"))
