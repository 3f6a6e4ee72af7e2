"""Work spread over the CPU cores, with a bound on what is in flight."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor


def usable_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def bounded_map(pool: Executor, function: Callable, jobs: Iterable, window: int) -> Iterator:
    """`pool.map` in order, with at most `window` jobs submitted and not yet consumed
    (Executor.map submits everything at once, and finished results would pile up)."""
    pending: deque = deque()
    for job in jobs:
        pending.append(pool.submit(function, job))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
