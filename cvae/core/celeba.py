"""The CelebA file layout: attribute and partition files, read and written.

Two readers on purpose: `read_attribute_frame` is lenient and keeps whatever the file
holds (short rows become nulls, odd tokens stay strings) so that validation can report
every defect; `load_attributes` is strict and is what later stages use on data that
passed validation.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cvae.core.errors import CvaeError

IMAGE_DIR = "img_align_celeba"
ATTRIBUTE_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IMAGE_ID_COLUMN = "image_id"
SPLITS = ("train", "val", "test")  # partition codes 0, 1, 2

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings",
    "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip


@dataclass(frozen=True)
class AttributeFile:
    """What an attribute file says, before any judgement of it."""

    path: Path
    declared_count: str  # line 1, as written
    names: list[str]
    frame: pd.DataFrame  # image_id + one column per name; short rows hold None


@dataclass(frozen=True)
class Attributes:
    """A validated attribute table: ids, names and a {-1, 1} int8 matrix."""

    image_ids: list[str]
    names: list[str]
    values: np.ndarray  # (n_images, n_attributes), int8

    def subset(self, rows: np.ndarray) -> Attributes:
        return Attributes([self.image_ids[i] for i in rows], self.names, self.values[rows])


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CvaeError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise CvaeError(f"{path}: not a text file ({exc.reason} at byte {exc.start})") from None
    # splitlines() handles the CRLF line ends that some CelebA copies have.
    return [line for line in text.splitlines() if line.strip()]


def _token(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text


def read_attribute_frame(path: str | Path) -> AttributeFile:
    path = Path(path)
    lines = _lines(path)
    if len(lines) < 2:
        raise CvaeError(
            f"{path}: expected an image count on line 1 and attribute names on line 2,"
            f" found {len(lines)} non-empty line(s)"
        )
    names = lines[1].split()  # the real header ends in a space; split() ignores it
    frame = _lenient_frame([line.split() for line in lines[2:]], names)
    return AttributeFile(path, lines[0].strip(), names, frame)


def read_partition_frame(path: str | Path, column: str = "partition") -> pd.DataFrame:
    """The partition file as written, leniently: image_id, `column` and any extra values."""
    return _lenient_frame([line.split() for line in _lines(Path(path))], [column])


def _lenient_frame(rows: list[list[str]], names: list[str]) -> pd.DataFrame:
    # Short rows are padded with nulls; values beyond the header land in extra columns,
    # so that validation sees both instead of the reader guessing.
    width = max([len(names)] + [len(row) - 1 for row in rows])
    extra = [f"extra_value_{k}" for k in range(1, width - len(names) + 1)]
    records = [[row[0], *map(_token, row[1:]), *[None] * (width + 1 - len(row))] for row in rows]
    return pd.DataFrame(records, columns=[IMAGE_ID_COLUMN, *names, *extra], dtype=object)


def load_attributes(path: str | Path) -> Attributes:
    """Strict reader: every problem is an error naming the file and the line.

    Streams the file and packs values straight into int8, so a 200,000-row table costs
    a few megabytes, not a list of Python ints per row.
    """
    path = Path(path)
    lines = _numbered_lines(path)
    next(lines, None)  # the image count: validation has checked it against the rows
    header = next(lines, None)
    if header is None:
        raise CvaeError(f"{path}: expected a count line and a header line")
    names = header[1].split()
    ids: list[str] = []
    values = array("b")
    for number, line in lines:
        image_id, *row = line.split()
        if len(row) != len(names):
            raise CvaeError(f"{path}:{number}: expected {len(names)} values after {image_id}, got {len(row)}")
        try:
            parsed = [int(token) for token in row]  # as validation reads them: "+1" is 1
        except ValueError:
            parsed = []
        if len(parsed) != len(row) or any(value not in (-1, 1) for value in parsed):
            raise CvaeError(f"{path}:{number}: values must be -1 or 1: {line.strip()!r}")
        ids.append(image_id)
        values.extend(parsed)
    return Attributes(ids, names, np.frombuffer(values, dtype=np.int8).reshape(len(ids), len(names)).copy())


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number in the file, line) for each non-empty line, read as a stream."""
    try:
        with path.open(encoding="utf-8") as handle:  # universal newlines: CRLF copies too
            yield from ((number, line) for number, line in enumerate(handle, start=1) if line.strip())
    except FileNotFoundError:
        raise CvaeError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise CvaeError(f"{path}: not a text file ({exc.reason} at byte {exc.start})") from None


def write_attributes(path: str | Path, attributes: Attributes) -> None:
    """Write in CelebA's own format: count, names with a trailing space, aligned values."""
    lines = [str(len(attributes.image_ids)), " ".join(attributes.names) + " "]
    for image_id, row in zip(attributes.image_ids, attributes.values, strict=True):
        lines.append(image_id + " " + " ".join(f"{int(value):2d}" for value in row))
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_partition(path: str | Path) -> dict[str, int]:
    path = Path(path)
    partition = {}
    for number, line in enumerate(_lines(path), start=1):
        fields = line.split()
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise CvaeError(f"{path}:{number}: expected '<image_id> 0|1|2', got {line.strip()!r}")
        partition[fields[0]] = int(fields[1])
    return partition


def write_partition(path: str | Path, partition: dict[str, int]) -> None:
    text = "".join(f"{image_id} {code}\n" for image_id, code in partition.items())
    Path(path).write_text(text, encoding="utf-8")


def deterministic_partition(ids: list[str], seed: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """A deterministic train/val/test assignment (0/1/2) for ids, drawn from `seed`."""
    order = np.random.default_rng([seed, 0xC0DE]).permutation(len(ids))
    n_val = round(len(ids) * val_fraction)
    n_test = round(len(ids) * test_fraction)
    codes = np.zeros(len(ids), dtype=np.int64)
    codes[order[:n_val]] = 1
    codes[order[n_val:n_val + n_test]] = 2
    return {image_id: int(code) for image_id, code in zip(ids, codes, strict=True)}
