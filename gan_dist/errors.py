"""What a user sees when something is wrong: UserError, the one error type shown as a single line
(bad config, path, checkpoint...), and warnings as one line each on stderr. Nothing heavy is
imported here: a config error or `--help` costs no torch import."""
from __future__ import annotations

import logging
import sys

log = logging.getLogger("gan_dist")


class UserError(Exception):
    """A problem with the user's input. The CLI prints `gan_dist: error: <message>` and exits 2."""


def first_line(e: BaseException) -> str:
    """How an exception is named inside a one-line error: "Type: the first line of its message"."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


class _OneLine(logging.Formatter):
    def __init__(self, rank: int):
        super().__init__()
        self.prefix = f"[rank {rank}] " if rank else ""

    def format(self, record: logging.LogRecord) -> str:
        text = f"gan_dist: {record.levelname.lower()}: {self.prefix}{record.getMessage()}"
        return text + ("\n" + self.formatException(record.exc_info) if record.exc_info else "")


def setup_logging(rank: int = 0) -> None:
    """The "gan_dist" logger's warnings on stderr as `gan_dist: warning: [rank r] ...`."""
    handler = next((h for h in log.handlers if isinstance(h.formatter, _OneLine)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        log.addHandler(handler)
        log.propagate = False
    handler.setFormatter(_OneLine(rank))
    log.setLevel(logging.WARNING)
