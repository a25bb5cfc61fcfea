"""TorchScript files, quietly: torch.jit is deprecated in torch 2.14 and warns on every use, but
it is the book's format and still works. One place loads, scripts and saves them."""
from __future__ import annotations

import io
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Union

import torch


@contextmanager
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning, torch.jit.TracerWarning))
        yield


def load(source: Union[str, Path, bytes], map_location="cpu") -> torch.jit.ScriptModule:
    """A TorchScript module (eval mode) from a file or its bytes; raises what torch.jit raises."""
    with quiet():
        f = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else str(source)
        return torch.jit.load(f, map_location=map_location).eval()


def to_bytes(module: torch.jit.ScriptModule) -> bytes:
    """The file of a scripted or traced module, in memory."""
    buffer = io.BytesIO()
    with quiet():
        torch.jit.save(module, buffer)
    return buffer.getvalue()
