"""Progress for long steps: a bar in a terminal, plain lines in logs (CI, Dagster, DVC)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
LOG_LINES = 10  # plain lines per step when the output is not a terminal


def progress(items: Iterable[T], total: int, desc: str) -> Iterator[T]:
    if sys.stderr.isatty():
        yield from tqdm(items, total=total, desc=desc, unit="it", leave=False)
        return
    step = max(1, total // LOG_LINES)
    for done, item in enumerate(items, start=1):
        yield item
        if done % step == 0 or done == total:
            print(f"{desc}: {done}/{total}", file=sys.stderr, flush=True)
