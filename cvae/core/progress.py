"""Progress for long steps: a bar in a terminal, plain lines in logs (CI, Dagster, DVC)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
LOG_LINES = 10  # plain lines per step when the output is not a terminal
LOG_BYTES_UNKNOWN_TOTAL = 64 * 2**20  # a plain line every 64 MiB when the size is unknown


def progress(items: Iterable[T], total: int, desc: str) -> Iterator[T]:
    if sys.stderr.isatty():
        yield from tqdm(items, total=total, desc=desc, unit="it", leave=False)
        return
    step = max(1, total // LOG_LINES)
    for done, item in enumerate(items, start=1):
        yield item
        if done % step == 0 or done == total:
            print(f"{desc}: {done}/{total}", file=sys.stderr, flush=True)


@contextmanager
def byte_progress(total: int | None, desc: str, initial: int = 0) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n_bytes)` for a stream of bytes; `initial` counts bytes already there."""
    if sys.stderr.isatty():
        with tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True,
                  unit_divisor=1024, leave=False) as bar:
            yield bar.update
        return
    step = max(1, total // LOG_LINES) if total else LOG_BYTES_UNKNOWN_TOTAL
    done = initial
    next_line = (done // step + 1) * step

    def advance(n_bytes: int) -> None:
        nonlocal done, next_line
        done += n_bytes
        if done >= next_line or done == total:
            of_total = f" of {_size(total)}" if total else ""
            print(f"{desc}: {_size(done)}{of_total}", file=sys.stderr, flush=True)
            next_line = (done // step + 1) * step

    yield advance


def _size(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n_bytes < 1024:
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.2f} GiB"
