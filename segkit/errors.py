"""The one exception type for errors a user can cause.

Every ``SegkitError`` message is one sentence that names the file or key at fault and says what to
do about it. The command line prints it on stderr without a traceback and exits with status 2.
Programming errors inside segkit stay ordinary Python exceptions.
"""

from __future__ import annotations

__all__ = ["SegkitError"]


class SegkitError(Exception):
    """A problem with the user's input: a config key, a file, a folder, a checkpoint, an argument."""
