"""Pixels: how an image file becomes the uint8 tensor [C, H, W] training sees. One pipeline
for the ImageFolder loader and the dataset tool (so a zip the tool made from a folder holds
exactly the pixels the folder loads as), decoding from bytes, and the conversion to [-1, 1]
that the loop makes on the device (uint8 through the loader: 4x less host-to-device traffic
than float32)."""
from __future__ import annotations

import io
import warnings
from typing import Callable, Optional

import torch
from PIL import Image

# torchvision is imported where it is used: its import costs 2.3 s (it loads torch._dynamo),
# which every rank of a run on an in-memory dataset would pay for nothing.

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff", ".gif")
GRAYSCALE_MODES = ("1", "L", "LA", "La", "I", "F") + tuple(m for m in Image.MODES if m.startswith("I;16"))


def is_image(name: str) -> bool:
    """An image file by its name; not macOS's resource forks (._NAME, __MACOSX/), which every
    image tool ignores."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return name.lower().endswith(IMAGE_EXTENSIONS) and not base.startswith("._") and "__MACOSX/" not in name


def to_8bit(img: Image.Image) -> Image.Image:
    """The image at 8 bits per channel, its values scaled, not clipped (PIL's convert clips a
    16-bit image to 0/255): 16-bit (I;16*), 32-bit integer (I: how PIL opens some 16-bit PNGs)
    and float (F: [0, 1], [0, 255] or 16-bit) grayscale become L; a palette with transparency
    goes through RGBA (PIL warns otherwise); the rest (LA, CMYK, ...) stays for convert."""
    if img.mode in ("L", "RGB"):
        return img
    if img.mode.startswith("I") or img.mode == "F":
        import numpy as np

        a = np.asarray(img, dtype=np.float64)
        peak = float(a.max()) if a.size else 0.0
        if img.mode == "F" and peak <= 1.0:  # a float image in [0, 1]
            top = 1.0
        elif img.mode.startswith("I;16") or peak > 255:  # 16 bits (I and F holding them)
            top = 65535.0
        else:  # 8-bit values in a wider mode
            top = 255.0
        return Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P":
        return img.convert("RGBA" if "transparency" in img.info else "RGB")
    return img


def load_image(path) -> Image.Image:
    """data.name=image_folder's loader (torchvision's, every image RGB) at 8 bits per channel."""
    with open(path, "rb") as f:
        img = Image.open(f)
        img.load()
    return to_8bit(img).convert("RGB")


def _as_it_is(img: Image.Image) -> Image.Image:
    return img


def center_crop(size: Optional[int], channels: int) -> Callable[[Image.Image], Image.Image]:
    """data.name=image_folder's transform of a PIL image: grayscale when channels=1, the short
    side resized to `size` (antialiased bilinear), then the center size x size square (None:
    the image as it is). Picklable (workers under spawn and forkserver receive it)."""
    from torchvision import transforms

    steps = [transforms.Grayscale(1)] if channels == 1 else []
    if size is not None:
        steps += [transforms.Resize(size, antialias=True), transforms.CenterCrop(size)]
    return transforms.Compose(steps) if steps else _as_it_is


class ToItem:
    """crop, then uint8 [C, H, W] (to_tensor): an ImageFolder item's transform, picklable."""

    def __init__(self, crop: Callable, channels: int):
        self.crop, self.channels = crop, channels

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return to_tensor(self.crop(img), self.channels)


def to_tensor(img: Image.Image, channels: int) -> torch.Tensor:
    """uint8 [C, H, W]; a grayscale image of an RGB run becomes RGB, and the reverse; other
    depths scaled to 8 bits (to_8bit), alpha dropped."""
    from torchvision import transforms

    mode = "L" if channels == 1 else "RGB"
    img = to_8bit(img)
    return transforms.functional.pil_to_tensor(img if img.mode == mode else img.convert(mode))


def decode(data: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 [C, H, W] from a file's bytes (a uint8 tensor), with torchvision.io: 1.3-3.3x
    faster than PIL for PNG and JPEG at 64 and 256 pixels (docs/performance.md); PIL for
    what it does not read (BMP, TIFF). torchvision 0.29 deprecates its decoders for TorchCodec,
    which is not a dependency yet: the warning is silenced here, the fallback stays."""
    from torchvision.io import ImageReadMode, decode_image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            image = decode_image(data, mode=ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB)
            if image.dtype == torch.uint16:  # a 16-bit PNG: scaled to 8 bits, rounded as to_8bit rounds
                image = ((image.to(torch.int32) * 255 + 32767) // 65535).to(torch.uint8)
            return image
        except RuntimeError:
            pass
    return to_tensor(Image.open(io.BytesIO(data.numpy().tobytes())), channels)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] as float: uint8 pixels p -> p / 127.5 - 1 (what ToTensor and
    Normalize(0.5, 0.5) compute); float images pass as they are."""
    if images.dtype == torch.uint8:
        return images.float().div_(127.5).sub_(1.0)
    return images


class Skips:
    """The images a reader skipped: the first few named in a warning each, then counted only (a
    broken folder or a zip full of bad members is one warning each for the first, not a flood)."""
    NAMED = 5

    def __init__(self, what: str, then: str = "the next image takes its place"):
        self.what, self.then, self.seen = what, then, set()

    def skip(self, name: str, error) -> None:
        """Said once per name; error: the exception, or the reason as text."""
        import logging

        from gan_dist.errors import first_line

        if name in self.seen:
            return
        self.seen.add(name)
        log = logging.getLogger("gan_dist")
        if len(self.seen) <= self.NAMED:
            log.warning("skipping %s%s (%s); %s", self.what and self.what + " ", name,
                        error if isinstance(error, str) else first_line(error), self.then)
        if len(self.seen) == self.NAMED:
            log.warning("%d skipped: further ones are skipped without a line each (this process)", self.NAMED)
