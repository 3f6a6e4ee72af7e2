"""Find a CelebA dataset in a folder and install it in the canonical layout.

Recognised, at the folder's top or in its one subfolder (how most zips are made): the
canonical layout (`list_attr_celeba.txt`, optional `list_eval_partition.txt`,
`img_align_celeba/`) and the Kaggle variant (`list_attr_celeba.csv`,
`list_eval_partition.csv`, images nested as `img_align_celeba/img_align_celeba/`). The
Kaggle CSVs are rewritten in CelebA's text format token by token: an odd value reaches
the validate stage as it was, to be reported there.
"""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cvae.core.celeba import ATTRIBUTE_FILE, IMAGE_DIR, IMAGE_ID_COLUMN, PARTITION_FILE
from cvae.core.errors import CvaeError

KAGGLE_ATTRIBUTE_FILE = "list_attr_celeba.csv"
KAGGLE_PARTITION_FILE = "list_eval_partition.csv"
LISTED_ENTRIES = 20  # how much of a folder an error message shows


@dataclass(frozen=True)
class Layout:
    images: Path  # the folder holding the image files
    attributes: Path  # CelebA's .txt or Kaggle's .csv
    partition: Path | None


def find_layout(root: Path, described_as: str, beside: Path | None = None) -> Layout:
    """The dataset in `root`; without an attribute file there, the text files may lie in `beside`.

    `beside` serves the official `img_align_celeba.zip`, which holds only the images: its
    text files come as separate downloads in the archive's folder.
    """
    folder = _dataset_folder(root)
    images = folder / IMAGE_DIR
    if (images / IMAGE_DIR).is_dir():  # the Kaggle variant nests the image folder
        images = images / IMAGE_DIR
    attributes = _first_file(folder, ATTRIBUTE_FILE, KAGGLE_ATTRIBUTE_FILE)
    partition = _first_file(folder, PARTITION_FILE, KAGGLE_PARTITION_FILE)
    if attributes is None and beside is not None:
        attributes = _first_file(beside, ATTRIBUTE_FILE, KAGGLE_ATTRIBUTE_FILE)
        partition = _first_file(beside, PARTITION_FILE, KAGGLE_PARTITION_FILE)
    missing = []
    if not images.is_dir():
        missing.append(f"{IMAGE_DIR}/")
    if attributes is None:
        missing.append(f"{ATTRIBUTE_FILE} (or {KAGGLE_ATTRIBUTE_FILE})")
    if missing:
        beside_too = f" (nor beside it, in {beside.resolve()})" if beside is not None else ""
        raise CvaeError(
            f"{described_as}: no CelebA layout: found no {' and no '.join(missing)}{beside_too};"
            f" it holds: {_listing(root, folder)}"
        )
    return Layout(images, attributes, partition)


def install(layout: Layout, destination: Path, move_images: bool) -> None:
    """Write `layout` into `destination` in the canonical layout.

    `move_images` is for a throwaway source (a freshly unpacked archive on the same file
    system); a user's folder is copied, never linked: DVC makes its cache read-only, and a
    hard link would make the user's own files read-only with it.
    """
    if move_images:
        os.replace(layout.images, destination / IMAGE_DIR)
    else:
        shutil.copytree(layout.images, destination / IMAGE_DIR)
    _install_text(layout.attributes, destination / ATTRIBUTE_FILE, _attribute_lines)
    if layout.partition is not None:
        _install_text(layout.partition, destination / PARTITION_FILE, _partition_lines)


def _dataset_folder(root: Path) -> Path:
    if _holds_dataset(root):
        return root
    subfolders = [
        entry for entry in root.iterdir()
        if entry.is_dir() and not entry.name.startswith((".", "__MACOSX"))  # macOS zip debris
    ]
    return subfolders[0] if len(subfolders) == 1 else root


def _holds_dataset(folder: Path) -> bool:
    names = (IMAGE_DIR, ATTRIBUTE_FILE, KAGGLE_ATTRIBUTE_FILE)
    return any((folder / name).exists() for name in names)


def _first_file(folder: Path, *names: str) -> Path | None:
    return next((folder / name for name in names if (folder / name).is_file()), None)


def _listing(root: Path, folder: Path) -> str:
    entries = [entry for searched in dict.fromkeys((root, folder)) for entry in searched.iterdir()]
    names = sorted(str(entry.relative_to(root)) + ("/" if entry.is_dir() else "") for entry in entries)
    if not names:
        return "nothing"
    more = f", ... and {len(names) - LISTED_ENTRIES} more" if len(names) > LISTED_ENTRIES else ""
    return ", ".join(names[:LISTED_ENTRIES]) + more


def _install_text(source: Path, target: Path, csv_to_lines: Callable[[Path], list[str]]) -> None:
    if source.suffix == ".csv":
        target.write_text("".join(line + "\n" for line in csv_to_lines(source)), encoding="utf-8")
    else:
        shutil.copyfile(source, target)


def _attribute_lines(path: Path) -> list[str]:
    """CelebA's format: the image count, the names with a trailing space, aligned values."""
    header, rows = _csv_table(path)
    lines = [str(len(rows)), " ".join(header[1:]) + " "]
    lines += [image_id + "".join(f" {token:>2}" for token in tokens) for image_id, *tokens in rows]
    return lines


def _partition_lines(path: Path) -> list[str]:
    # Every token is carried, so a row with extra columns reaches the validate stage as it is.
    _, rows = _csv_table(path)
    return [" ".join(row) for row in rows]


def _csv_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a Kaggle CSV whose first column is the image id, cells stripped."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as file:  # -sig: a BOM is no part of a name
            reader = csv.reader(file)
            table = [(reader.line_num, [cell.strip() for cell in row]) for row in reader if row]
    except UnicodeDecodeError as error:
        raise CvaeError(f"{path}: not a text file ({error.reason} at byte {error.start})") from None
    except csv.Error as error:
        raise CvaeError(f"{path}: not a readable CSV file ({error})") from None
    header = table[0][1] if table else []
    if header[:1] != [IMAGE_ID_COLUMN]:
        raise CvaeError(
            f"{path}: expected a header whose first column is {IMAGE_ID_COLUMN!r}, found {header[:1]}"
        )
    for line, row in table[1:]:
        for column, cell in enumerate(row):
            # The text format splits on whitespace: an empty cell would shift every later
            # value into the wrong column, so it cannot be carried through.
            if not cell or len(cell.split()) > 1:
                name = header[column] if column < len(header) else f"column {column + 1}"
                raise CvaeError(f"{path}:{line}: {name} holds {cell!r}, which is not one value")
    return header, [row for _, row in table[1:]]
