"""User-facing errors."""


class SlasError(ValueError):
    """A user-facing error: one clear message naming the field/file/line and the fix.

    The CLI prints ``str(error)`` on one line and exits with status 2, never a traceback.
    """
