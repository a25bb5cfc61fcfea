"""The files users bring, through the dataset tool, the zip reader and data.name=image_folder:
every built-in dataset under spawn and forkserver workers; 16-bit and other PIL modes scaled
to 8 bits; a first member that does not decode and a size outlier first; dataset.json that is
no JSON object; stray files and empty class folders; grayscale sources; labels with gaps; an
unbounded --resolution; bad destinations and signals; a zip replaced under a run; macOS
members; a flood of bad members. Small files made here, read in this process where the
property allows (one training run on the worst zip)."""
import io
import json
import logging
import multiprocessing
import os
import pickle
import socket
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader

from gan_dist import config, registry
from gan_dist.data import fingerprint
from gan_dist.data.dataset_tool import convert
from gan_dist.data.folder import image_folder
from gan_dist.data.zipdata import ZipImages
from gan_dist.errors import UserError
from gan_dist.runs import checkpoint
from helpers import TINY, ok, one_line_error, tool_here, train, write_fashion_mnist, write_image_folder


class Said(logging.Handler):
    """gan_dist's warnings, caught at its logger (whether or not it propagates to pytest's)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    @property
    def text(self):
        return "\n".join(self.lines)


@pytest.fixture
def said():
    handler, log = Said(), logging.getLogger("gan_dist")
    log.addHandler(handler)
    yield handler
    log.removeHandler(handler)


def cfg_of(*overrides):
    return config.load(None, ["train.batch_size=4", *overrides])


def folder_items(root, channels, size):
    ds, _ = image_folder(cfg_of("data.name=image_folder", f"data.root={root}", f"data.channels={channels}",
                                f"data.image_size={size}"))
    return ds


def write_zip(path, members: dict, meta=None):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        if meta is not None:
            z.writestr("dataset.json", meta if isinstance(meta, bytes) else json.dumps(meta))
    return path


def png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def gray(size=16, value=None, seed=0) -> Image.Image:
    g = np.random.default_rng(seed)
    a = np.full((size, size), value, np.uint8) if value is not None else g.integers(0, 256, (size, size), np.uint8)
    return Image.fromarray(a, mode="L")


# ---- 1. workers: every built-in dataset pickles ---------------------------------------------
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_every_built_in_dataset_loads_in_spawn_and_forkserver_workers(tmp_path, method):
    root = write_image_folder(tmp_path / "folder", per_class=4, size=(10, 12))
    convert(root, tmp_path / "d.zip", "8", workers=1)
    write_fashion_mnist(tmp_path / "fm", n=16)
    write_fashion_mnist(tmp_path / "mn", n=16, folder="MNIST")
    roots = {"digits": None, "fashion_mnist": tmp_path / "fm", "mnist": tmp_path / "mn", "image_folder": root,
             "zip": tmp_path / "d.zip"}
    assert set(roots) == set(registry.DATASETS)  # a new built-in joins this test
    sets = []
    for name, where in roots.items():
        ds, _ = registry.dataset_factory(name)(cfg_of(f"data.name={name}", "data.image_size=8",
                                                      *([f"data.root={where}"] if where else []),
                                                      *(["data.channels=3"] if name == "image_folder" else [])))
        pickle.loads(pickle.dumps(ds))
        sets.append(ds)
    starts = [0] + [int(n) for n in np.cumsum([len(d) for d in sets])[:-1]]
    loader = DataLoader(ConcatDataset(sets), batch_size=None, sampler=starts, num_workers=1,
                        multiprocessing_context=multiprocessing.get_context(method), timeout=120)
    items = list(loader)
    for (image, label), ds in zip(items, sets):
        want = ds[0]
        assert torch.equal(torch.as_tensor(image), torch.as_tensor(want[0])) and int(label) == int(want[1])


# ---- 2. 16-bit and other modes --------------------------------------------------------------
def _modes_folder(root):
    """One class folder of 8x8 images in the modes PIL opens, with values an 8-bit clip would ruin."""
    (root / "a").mkdir(parents=True)
    ramp = np.linspace(0, 65535, 64).reshape(8, 8).astype(np.uint16)
    Image.fromarray(ramp).save(root / "a" / "gray16.png")                                   # I;16
    Image.fromarray(ramp.astype(np.int32), mode="I").save(root / "a" / "int32.tif")          # I
    Image.fromarray((ramp / 65535.0).astype(np.float32), mode="F").save(root / "a" / "float.tif")  # F in [0, 1]
    Image.new("LA", (8, 8), (100, 50)).save(root / "a" / "la.png")
    Image.new("CMYK", (8, 8), (0, 255, 0, 0)).save(root / "a" / "cmyk.jpg")
    p = Image.new("P", (8, 8), 1)
    p.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    p.info["transparency"] = 0
    p.save(root / "a" / "palette.png", transparency=0)
    return root, np.rint(ramp * (255 / 65535)).astype(np.uint8)


def test_16_bit_and_other_modes_are_scaled_to_8_bits_alike_in_the_tool_the_folder_and_the_zip(tmp_path):
    root, want = _modes_folder(tmp_path / "modes")
    names = sorted(p.name for p in (root / "a").iterdir())
    items = folder_items(root, 1, 8)
    by_name = {n: items[i][0][0] for i, n in enumerate(names)}
    for name in ("gray16.png", "int32.tif", "float.tif"):  # scaled, not clipped to 0/255
        assert torch.equal(by_name[name], torch.from_numpy(want)), name
    r = convert(root, tmp_path / "m.zip", "8", channels=1, workers=1)
    assert r["images"] == len(names) and r["skipped"] == 0
    zipped = ZipImages(tmp_path / "m.zip")
    for i in range(len(names)):  # the tool's pixels are the folder's
        assert torch.equal(zipped[i][0], items[i][0]), names[i]
    rgb = folder_items(root, 3, 8)
    assert {tuple(rgb[names.index("palette.png")][0][:, 0, 0].tolist())} == {(200, 100, 50)}
    assert rgb[names.index("cmyk.jpg")][0][0].float().mean() > 200  # CMYK's cyan-free magenta: red high

    # A zip of raw members mixing 8- and 16-bit PNGs (not through the tool) reads as uint8, scaled
    mixed = write_zip(tmp_path / "mixed.zip", {"a.png": png(gray(8, 128)), "b.png": png(Image.fromarray(
        np.full((8, 8), 32768, np.uint16))), "c.png": png(gray(8, 7))})
    ds = ZipImages(mixed)
    assert [ds[i][0].dtype for i in range(3)] == [torch.uint8] * 3 and int(ds[1][0].max()) == 128


# ---- 3, 4, 10, 11: the zip reader ------------------------------------------------------------
def _worst_zip(path):
    """A bad first member, a 32x32 outlier next, 16-bit members, macOS's members, 60 good 16x16
    images of 3 classes, labels in dataset.json (no size: the reader must find it)."""
    members = {"00000/img00000000.png": b"not an image", "00000/img00000001.png": png(gray(32, 9)),
               "__MACOSX/00000/._img00000002.png": b"\x00\x05\x16\x07", "00000/._img00000003.png": b"\x00"}
    for i in range(2, 62):
        img = gray(16, seed=i) if i % 5 else Image.fromarray((np.asarray(gray(16, seed=i), np.uint16) * 257))
        members[f"00000/img{i:08d}.png"] = png(img)
    labels = [[n, i % 3] for i, n in enumerate(sorted(m for m in members if "._" not in m))]
    return write_zip(path, members, {"labels": labels})


def test_a_zip_with_a_bad_first_member_an_outlier_first_and_macos_members_trains(tmp_path, said):
    path = _worst_zip(tmp_path / "worst.zip")
    ds = ZipImages(path)
    assert (ds.size, ds.channels, len(ds), ds.num_classes) == (16, 1, 62, 3)  # the majority; ._ members are none
    assert "00000/img00000001.png" in said.text and "skipped" in said.text  # the outlier named
    image, _ = ds[0]  # member 0 does not decode, member 1 is the outlier: member 2 takes their place
    assert torch.equal(image, ds[2][0])
    out = ok(train(TINY + ["data.name=zip", f"data.root={path}", "data.image_size=16", "train.steps=2",
                           "model.norm=none", f"run.dir={tmp_path}/run"]))[0]
    assert "Traceback" not in out.err and out.err.count("skipping") == 2, out.err

    # dataset.json's own size and channels win over the members (gan_dist's tool writes them)
    sized = write_zip(tmp_path / "said.zip", {"a.png": png(gray(32)), "b.png": png(gray(16)), "c.png": png(gray(16))},
                     {"labels": None, "image_size": 32, "channels": 1})
    assert ZipImages(sized).size == 32


@pytest.mark.parametrize("meta, needle", [([1, 2], "holds a JSON list, not an object"),
                                          (b"{labels: none", "is not valid JSON"),
                                          ('{"labels": null, "n": "\xe9"}'.encode("latin-1"), "is not UTF-8"),
                                          ({"labels": [["a.png", 0], ["b.png", 0]], "class_names": "cat"},
                                           "list of strings"),
                                          ({"labels": [["a.png", 3], ["b.png", 0]], "class_names": ["x"]},
                                           "names 1 classes")])
def test_a_bad_dataset_json_is_one_line_in_the_reader_and_the_tool(tmp_path, capsys, meta, needle):
    path = write_zip(tmp_path / "bad.zip", {"a.png": png(gray(8)), "b.png": png(gray(8))}, meta)
    with pytest.raises(UserError, match=needle) as e:
        ZipImages(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    one_line_error(tool_here(capsys, "--source", path, "--dest", tmp_path / "o.zip"), needle)
    flat = tmp_path / "flat"
    flat.mkdir()
    for n in ("a.png", "b.png"):
        gray(8).save(flat / n)
    (flat / "dataset.json").write_bytes(meta if isinstance(meta, bytes) else json.dumps(meta).encode())
    one_line_error(tool_here(capsys, "--source", flat, "--dest", tmp_path / "o.zip"), needle)


def test_a_zip_replaced_after_start_up_is_read_as_listed_or_refused_in_one_line(tmp_path):
    path = write_zip(tmp_path / "d.zip", {f"{i}.png": png(gray(8, 10 * i)) for i in range(4)})
    ds = ZipImages(path)
    spawned = pickle.loads(pickle.dumps(ds))  # what a spawn worker receives, before it reads
    write_zip(tmp_path / "new.zip", {f"{i}.png": png(gray(16, 200)) for i in range(9)})
    os.replace(tmp_path / "new.zip", path)
    assert int(ds[3][0].max()) == 30  # this process reads the file it listed (one descriptor)
    with pytest.raises(UserError, match="changed since start-up"):
        spawned[3]


def test_a_flood_of_bad_members_is_summarised(tmp_path, said):
    members = {f"{i:03d}.png": b"broken" for i in range(30)}
    members.update({f"{i:03d}.png": png(gray(8)) for i in range(30, 34)})
    ds = ZipImages(write_zip(tmp_path / "f.zip", members))
    ds[0]
    lines = [m for m in said.lines if "skipping" in m]
    assert len(lines) == 5 and "further ones are skipped" in said.text


# ---- 5, 6, 7: the tool's reading of folders ---------------------------------------------------
def test_stray_files_and_empty_class_folders_are_read_alike_by_the_tool_and_the_folder(tmp_path, said):
    root = write_image_folder(tmp_path / "tree", classes=("a", "b", "c"), per_class=3, size=(8, 8))
    gray(8).convert("RGB").save(root / "stray.png")
    (root / "empty").mkdir()
    (root / "a" / "._0.png").write_bytes(b"\x00\x05")  # macOS's resource fork
    r = convert(root, tmp_path / "t.zip", workers=1)
    assert (r["images"], r["classes"], r["source"]) == (9, 3, "image_folder")
    assert "stray.png" in said.text and "empty" in said.text
    items = folder_items(root, 3, 8)
    zipped = ZipImages(tmp_path / "t.zip")
    assert items.classes == zipped.classes == ["a", "b", "c"] and items.targets == zipped.targets


@pytest.mark.parametrize("source_mode", ["L", "RGB"])
def test_the_tool_keeps_the_sources_channels_and_the_folders_pixels(tmp_path, source_mode):
    root = tmp_path / "src"
    g = np.random.default_rng(1)
    for c in ("x", "y"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            shape = (13, 11) if source_mode == "L" else (13, 11, 3)
            Image.fromarray(g.integers(0, 256, shape, np.uint8), mode=source_mode).save(root / c / f"{i}.png")
    want = 1 if source_mode == "L" else 3
    r = convert(root, tmp_path / "z.zip", "8", workers=1)  # no --channels: the source's
    assert r["channels"] == want
    for channels in (1, 3):
        made = convert(root, tmp_path / f"z{channels}.zip", "8", channels=channels, workers=1)
        assert made["channels"] == channels
        items, zipped = folder_items(root, channels, 8), ZipImages(tmp_path / f"z{channels}.zip")
        assert all(torch.equal(items[i][0], zipped[i][0]) for i in range(len(items)))  # gray first, then resize
    with pytest.raises(UserError, match=f"data.channels={4 - want}, but .* holds {want}-channel"):
        registry.dataset_factory("zip")(cfg_of("data.name=zip", f"data.root={tmp_path / 'z.zip'}",
                                               f"data.channels={4 - want}"))


def test_a_resume_switches_datasets_only_to_the_same_pixels(tmp_path):
    root = write_image_folder(tmp_path / "f", classes=("a", "b"), per_class=8, size=(10, 10))
    folder_cfg = cfg_of("data.name=image_folder", f"data.root={root}", "data.channels=3", "data.image_size=8")
    folder_ds, info = image_folder(folder_cfg)
    state = {"config": config.to_dict(folder_cfg), "data_fingerprint": fingerprint(folder_ds, info)}
    for fmt, accepted in (("png", True), ("jpg", False)):
        convert(root, tmp_path / f"d.{fmt}.zip", "8", format=fmt, workers=1)
        cfg = cfg_of("data.name=zip", f"data.root={tmp_path / f'd.{fmt}.zip'}", "data.channels=3",
                     "data.image_size=8")
        ds, zinfo = registry.dataset_factory("zip")(cfg)
        mine = fingerprint(ds, zinfo)
        assert {k: v for k, v in mine.items() if k != "pixels"} == \
            {k: v for k, v in state["data_fingerprint"].items() if k != "pixels"}  # only the pixels tell
        if accepted:
            assert "pixels" in checkpoint.check_compatible(state, cfg, tmp_path / "c.pt", mine)[0]
        else:
            with pytest.raises(UserError, match="the pixels of a sample of images differ"):
                checkpoint.check_compatible(state, cfg, tmp_path / "c.pt", mine)


def test_labels_with_gaps_are_said_and_classes_are_counted_from_them(tmp_path, said, capsys):
    members = {f"{i}.png": png(gray(8, i)) for i in range(12)}
    typo = write_zip(tmp_path / "typo.zip", members, {"labels": [[f"{i}.png", 1000 if i == 5 else i % 10]
                                                                 for i in range(12)]})
    assert ZipImages(typo).num_classes == 1001
    assert "without an image" in said.text and "typo" in said.text
    ada = write_zip(tmp_path / "ada.zip", members, {"labels": [[f"{i}.png", i % 4] for i in range(12)]})
    assert convert(ada, tmp_path / "ada2.zip", workers=1)["classes"] == 4  # stylegan2-ada's labels, no names
    tree = write_image_folder(tmp_path / "t", classes=tuple("abcdefghij"), per_class=30, size=(8, 8))
    r = convert(tree, tmp_path / "few.zip", max_images=20, workers=1)  # spread: every class keeps its share
    assert (r["images"], r["classes"]) == (20, 10)
    assert sorted(ZipImages(tmp_path / "few.zip").targets) == sorted(list(range(10)) * 2)
    out = tool_here(capsys, "--source", tree, "--dest", tmp_path / "few3.zip", "--max-images", "3")
    assert out.rc == 0 and "10 classes (3 with images)" in out.out, out  # the zip keeps the 10 names


# ---- 8, 9: resolution bound, destinations, signals -------------------------------------------
def test_an_unbounded_resolution_is_refused_before_work_and_upscaling_is_said(tmp_path, capsys, said):
    root = write_image_folder(tmp_path / "small", classes=("a",), per_class=3, size=(8, 8))
    one_line_error(tool_here(capsys, "--source", root, "--dest", tmp_path / "big.zip", "--resolution", "100000"),
                   "--resolution 100000: one 100000x100000x3 image needs about")
    assert not list(tmp_path.glob("*.zip")) and not list(tmp_path.glob(".*.tmp"))
    r = convert(root, tmp_path / "up.zip", "16", workers=1)
    assert r["upscaled"] == 3 and "3 of the 3 images were smaller than 16 and were upscaled" in said.text


def test_bad_destinations_and_virtual_sources_are_one_line_before_any_work(tmp_path, capsys):
    root = write_image_folder(tmp_path / "src", classes=("a",), per_class=2, size=(8, 8))
    (tmp_path / "dir.zip").mkdir()
    one_line_error(tool_here(capsys, "--source", root, "--dest", tmp_path / "dir.zip", "--force"), "is a directory")
    (tmp_path / "file").write_text("x")
    one_line_error(tool_here(capsys, "--source", root, "--dest", tmp_path / "file" / "d.zip"), "is a file, not a folder")
    one_line_error(tool_here(capsys, "--source", root, "--dest", tmp_path / ("x" * 300 + ".zip")), "--dest:")
    one_line_error(tool_here(capsys, "--source", "/proc", "--dest", tmp_path / "p.zip"), "kernel's proc filesystem")
    one_line_error(tool_here(capsys, "--source", root, "--dest", "/sys/d.zip"), "kernel's sys filesystem")
    if os.geteuid() != 0:  # root writes anywhere: the read-only folder needs another user
        (tmp_path / "ro").mkdir(mode=0o555)
        one_line_error(tool_here(capsys, "--source", root, "--dest", tmp_path / "ro" / "d.zip"), "cannot write in")
    # a stale temporary file of a dead conversion goes; a live process's stays
    host = socket.gethostname()
    dead, live = tmp_path / f".d.zip.{host}.999999999.tmp", tmp_path / f".d.zip.{host}.{os.getppid()}.tmp"
    dead.write_bytes(b"PK"), live.write_bytes(b"PK")
    assert convert(root, tmp_path / "d.zip", workers=1)["images"] == 2
    assert not dead.exists() and live.exists()
