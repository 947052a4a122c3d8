"""The one exception type for errors a user can cause.

Every ``SegkitError`` message is one sentence that names the file or key at fault and says what to
do about it. The command line prints it on stderr without a traceback and exits with status 2.
Programming errors inside segkit stay ordinary Python exceptions.
"""

from __future__ import annotations

__all__ = ["SegkitError", "positive_int"]


class SegkitError(Exception):
    """A problem with the user's input: a config key, a file, a folder, a checkpoint, an argument."""


def positive_int(value: object, message: str) -> int:
    """``value`` as a plain int when it is a positive integer (numpy's ``int64`` too, not a bool or a
    float), else a SegkitError with ``message``."""
    import operator

    try:
        number = operator.index(value)  # type: ignore[call-overload]
    except TypeError:
        raise SegkitError(message) from None
    if isinstance(value, bool) or number < 1:
        raise SegkitError(message)
    return number
