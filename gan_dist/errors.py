"""The one error type a user sees as a single line (bad config, path, checkpoint...)."""


class UserError(Exception):
    """A problem with the user's input. The CLI prints `gan_dist: error: <message>` and exits 2."""
