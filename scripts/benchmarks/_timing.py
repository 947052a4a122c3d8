"""Shared timing helpers for the benchmarks: alternate the candidates in one process, take medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def time_alternating(
    candidates: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    synchronize: Callable[[], None] | None = None,
    clock: str = "wall",
) -> dict[str, float]:
    """Median time in seconds of each candidate (:func:`time_rounds`' times, reduced)."""
    rounds = time_rounds(candidates, repeats, warmup, synchronize, clock)
    return {name: statistics.median(values) for name, values in rounds.items()}


def time_rounds(
    candidates: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    synchronize: Callable[[], None] | None = None,
    clock: str = "wall",
) -> dict[str, list[float]]:
    """Each candidate's time in seconds in each of ``repeats`` rounds (lists in round order).

    Each round runs every candidate once, the order rotating from round to round, so slow drifts
    of the machine (frequency, other load) fall on all candidates alike. ``synchronize`` (e.g.
    ``torch.cuda.synchronize``) runs before each clock read. ``clock``: "wall"
    (``time.perf_counter``) or "cpu" (``time.process_time``: this process's CPU time, all threads
    summed; steadier than wall time on a shared machine, comparable across candidates only when
    they use the same number of threads, e.g. one).
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {', '.join(CLOCKS)}; got {clock!r}.")
    now = CLOCKS[clock]
    sync = synchronize or (lambda: None)
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            sync()
            start = now()
            candidates[name]()
            sync()
            times[name].append(now() - start)
    return times


def paired_speedup(segkit_times: list[float], peer_times: list[float]) -> float:
    """The median over rounds of peer / segkit time, each ratio taken within one round.

    On a shared machine whose speed moves by 10-30 % over a few seconds, the two times of one round
    see the same speed, so their ratio is steadier than the ratio of the two medians.
    """
    return statistics.median(peer / own for own, peer in zip(segkit_times, peer_times, strict=True))


def comparison_row(case: str, segkit_s: float, peer: str, peer_s: float, **extra: Any) -> dict[str, Any]:
    """One table row: median milliseconds of segkit and the peer, and the peer / segkit time ratio."""
    return {"case": case, "segkit_ms": segkit_s * 1e3, "peer": peer, "peer_ms": peer_s * 1e3,
            "speedup": peer_s / segkit_s, **extra}
