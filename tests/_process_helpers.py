"""Waiting on a process group started with ``start_new_session=True`` (a command and its loader workers)."""

from __future__ import annotations

import os
import time


def group_empties(pgid: int, seconds: float) -> bool:
    """Whether every process of group ``pgid`` is gone within ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
