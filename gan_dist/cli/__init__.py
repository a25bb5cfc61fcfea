"""The command lines: thin callers of the library, one module each (train, sample, export,
plot, bench, check, digits_classifier; `python -m gan_dist.NAME` keeps working). What they
share lives here: a parser whose errors are one line in the house form, and the wrapper that
turns bad input (UserError) into `gan_dist: error: ...` on stderr and exit code 2."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from gan_dist.errors import UserError, setup_logging


class ArgumentParser(argparse.ArgumentParser):
    def __init__(self, *args, error_prefix: str = "gan_dist", **kwargs):
        super().__init__(*args, **kwargs)
        self.error_prefix = error_prefix

    def error(self, message: str):  # unknown flags, missing or badly typed arguments
        self.exit(2, f"{self.error_prefix}: error: {message} (see {self.prog} --help)\n")


def print_error(message: str, prefix: str = "gan_dist") -> int:
    """The one line a bad input gets (naming the rank on ranks other than 0); the exit code."""
    rank = int(os.environ.get("RANK", "0") or 0)
    where = f"[rank {rank}] " if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and rank else ""
    print(f"{prefix}: error: {where}{message}", file=sys.stderr, flush=True)
    return 2


def run(command: Callable[[], int], prefix: str = "gan_dist") -> int:
    """Run a command's body: UserError -> one line, exit 2; warnings as one line each."""
    setup_logging(int(os.environ.get("RANK", "0") or 0))
    try:
        return command()
    except UserError as e:
        return print_error(str(e), prefix)
