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


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def center_crop(size: Optional[int], channels: int) -> Callable[[Image.Image], Image.Image]:
    """data.name=image_folder's transform of a PIL image: grayscale when channels=1, the short
    side resized to `size` (antialiased bilinear), then the center size x size square (None:
    the image as it is)."""
    from torchvision import transforms

    steps = [transforms.Grayscale(1)] if channels == 1 else []
    if size is not None:
        steps += [transforms.Resize(size, antialias=True), transforms.CenterCrop(size)]
    return transforms.Compose(steps) if steps else (lambda img: img)


def to_tensor(img: Image.Image, channels: int) -> torch.Tensor:
    """uint8 [C, H, W]; a grayscale image of an RGB run becomes RGB, and the reverse."""
    from torchvision import transforms

    mode = "L" if channels == 1 else "RGB"
    return transforms.functional.pil_to_tensor(img if img.mode == mode else img.convert(mode))


def decode(data: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 [C, H, W] from a file's bytes (a uint8 tensor), with torchvision.io: 1.3-3.3x
    faster than PIL for PNG and JPEG at 64 and 256 pixels (README, "Your own dataset"); PIL for
    what it does not read (BMP, TIFF). torchvision 0.29 deprecates its decoders for TorchCodec,
    which is not a dependency yet: the warning is silenced here, the fallback stays."""
    from torchvision.io import ImageReadMode, decode_image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return decode_image(data, mode=ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB)
        except RuntimeError:
            pass
    return to_tensor(Image.open(io.BytesIO(data.numpy().tobytes())), channels)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] as float: uint8 pixels p -> p / 127.5 - 1 (what ToTensor and
    Normalize(0.5, 0.5) compute); float images pass as they are."""
    if images.dtype == torch.uint8:
        return images.float().div_(127.5).sub_(1.0)
    return images
