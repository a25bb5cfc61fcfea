"""The one error type a user sees as a single line (bad config, path, checkpoint...)."""


class UserError(Exception):
    """A problem with the user's input. The CLI prints `gan_dist: error: <message>` and exits 2."""


def first_line(e: BaseException) -> str:
    """How an exception is named inside a one-line error: "Type: the first line of its message"."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__
