"""The `download` stage: put the raw dataset, in CelebA layout, into `data/raw/`.

Sources (`data.source`): `synthetic` draws the built-in face set; a local directory in
CelebA layout is copied (copied, not linked: DVC makes its cache read-only, and a hard
link would make the user's own files read-only with it). The result appears at once,
complete, or not at all.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cvae.atomic import replace_directory
from cvae.celeba import ATTRIBUTE_FILE, IMAGE_DIR, PARTITION_FILE
from cvae.config import Params
from cvae.errors import CvaeError
from cvae.synthetic import generate

SYNTHETIC = "synthetic"


def download(params: Params, raw_dir: str | Path) -> Path:
    raw_dir = Path(raw_dir)
    source = params.data.source
    with replace_directory(raw_dir) as staging:
        if source == SYNTHETIC:
            generate(
                staging,
                num_images=params.data.synthetic_images,
                seed=params.seed,
                val_fraction=params.data.val_fraction,
                test_fraction=params.data.test_fraction,
            )
        else:
            _copy_local_layout(Path(source).expanduser(), staging)
    return raw_dir


def _copy_local_layout(source: Path, staging: Path) -> None:
    if not source.is_dir():
        raise CvaeError(
            f"data.source: {source} is neither 'synthetic' nor a directory in CelebA layout"
        )
    missing = [name for name in (IMAGE_DIR, ATTRIBUTE_FILE) if not (source / name).exists()]
    if missing:
        raise CvaeError(f"data.source: {source} lacks {', '.join(missing)} (expected CelebA layout)")
    shutil.copytree(source / IMAGE_DIR, staging / IMAGE_DIR)
    shutil.copy2(source / ATTRIBUTE_FILE, staging / ATTRIBUTE_FILE)
    if (source / PARTITION_FILE).exists():
        shutil.copy2(source / PARTITION_FILE, staging / PARTITION_FILE)
