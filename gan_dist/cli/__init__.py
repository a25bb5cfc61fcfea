"""What every command line shares: an argparse parser whose errors are one line in the house
form (`gan_dist: error: ...`, exit code 2) instead of argparse's usage + error lines."""
from __future__ import annotations

import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
    def __init__(self, *args, error_prefix: str = "gan_dist", **kwargs):
        super().__init__(*args, **kwargs)
        self.error_prefix = error_prefix

    def error(self, message: str):  # unknown flags, missing or badly typed arguments
        self.exit(2, f"{self.error_prefix}: error: {message} (see {self.prog} --help)\n")


def print_error(message: str, prefix: str = "gan_dist") -> int:
    """The one line a bad input gets; returns the exit code for it."""
    print(f"{prefix}: error: {message}", file=sys.stderr, flush=True)
    return 2
