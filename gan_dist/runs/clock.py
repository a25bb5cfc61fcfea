"""How long this process has been alive: the start-up figure (process start to first step) that
every rank of a job pays. Imports nothing heavy, so a bare `import torch` can be timed the same way."""
from __future__ import annotations

import os
import time
from pathlib import Path


def process_age() -> float:
    """Seconds since this process started (Linux: the kernel's start time, so the interpreter's
    own start-up and every import count; elsewhere: since gan_dist was imported)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        import gan_dist

        return time.monotonic() - gan_dist.IMPORTED
