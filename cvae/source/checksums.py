"""File checksums written as "<algorithm>:<hex>" (the form `data.checksum` takes)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

ALGORITHMS = ("md5", "sha256")


@dataclass(frozen=True)
class Checksum:
    algorithm: str
    hexdigest: str

    @classmethod
    def parse(cls, text: str) -> Checksum:
        algorithm, _, hexdigest = text.partition(":")
        if algorithm not in ALGORITHMS or not hexdigest:
            raise ValueError(f"checksum {text!r}: expected md5:<hex> or sha256:<hex>")
        return cls(algorithm, hexdigest.lower())

    def of_file(self, path: Path) -> Checksum:
        """The checksum of `path` computed with this checksum's algorithm."""
        with path.open("rb") as file:
            return Checksum(self.algorithm, hashlib.file_digest(file, self.algorithm).hexdigest())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"
