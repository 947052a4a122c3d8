"""The one exception type for errors a user can cause.

Every ``SegkitError`` message is one sentence that names the file or key at fault and says what to
do about it. The command line prints it on stderr without a traceback and exits with status 2.
Programming errors inside segkit stay ordinary Python exceptions.
"""

from __future__ import annotations

__all__ = ["SegkitError", "check_tile_options", "positive_int"]


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


def check_tile_options(tile: int | None, overlap: float, batch_size: int | None = None) -> None:
    """SegkitErrors for inference values (``--tile``, ``--overlap``, ``--batch-size``; ``tile=`` ... in
    Python) that cannot work. Here, without torch, so that the command line answers at once."""
    import math

    if batch_size is not None:
        positive_int(batch_size, f"--batch-size (batch_size=) must be a positive integer; got {batch_size!r}.")
    if tile is not None:
        positive_int(tile, f"--tile (tile=) must be a positive number of pixels; got {tile!r}.")
    if not 0.0 <= overlap < 1.0 or math.isnan(overlap):
        raise SegkitError(f"--overlap must lie in [0, 1) (a fraction of the tile); got {overlap}.")
