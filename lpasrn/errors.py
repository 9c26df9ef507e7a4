"""User-facing errors: the CLI prints these as one clear line (no traceback) and exits 2."""


class LpasrnError(Exception):
    """An error caused by the user's input (path, format, config, checkpoint); the message says what
    is wrong and, where possible, how to fix it."""
