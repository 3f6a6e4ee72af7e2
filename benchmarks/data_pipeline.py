"""The data path, measured side by side in one run (figures, not pass/fail).

1. Throughput on the same CelebA-sized JPEGs (178x218), page cache warm for all:
   the original tutorial's loader (per batch, read each JPEG and resize it with
   scikit-image, one process), the decode-only limit (JPEG decode alone on all cores:
   Pillow and OpenCV at full size, and OpenCV at the reduced DCT scale that `prepare`
   asks libjpeg for), the project's `prepare`, and the training input read alone.
2. Peak memory (PSS, the proportional set size: resident pages, each shared page split
   between the processes sharing it, summed over the process and its workers, so forked
   workers are not counted twice) and wall time of
   `cvae validate`, `cvae prepare` and one training epoch at 1,000, 10,000 and 100,000
   small images, each stage a real `cvae` subprocess.

    .venv/bin/python benchmarks/data_pipeline.py            # the figures of docs/performance.md
    .venv/bin/python benchmarks/data_pipeline.py --quick    # smaller, for a smoke run
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import psutil
from PIL import Image

from cvae.core.celeba import ATTRIBUTE_FILE, IMAGE_DIR, Attributes, load_attributes, write_attributes
from cvae.core.config import load_params
from cvae.core.parallel import usable_cores
from cvae.data.prepare import REDUCED_DECODE, decode_reduction, load_square, prepare
from cvae.source.synthetic import generate
from cvae.validation.validate import validate

PROJECT = Path(__file__).resolve().parent.parent
CVAE = str(Path(sys.executable).parent / "cvae")
BATCH = 64  # the tutorial generator's batch size
ROUNDS = 5  # turns of every contender; the median counts
TUTORIAL_IMAGES = 2000  # the tutorial loader is slow: it runs on the first 2,000 files
SMALL_SIDE = (44, 54)  # the small images of the memory runs: CelebA's shape, a quarter the size
THROUGHPUT_LABELS = {
    "tutorial": "tutorial loader (skimage, 1 process)",
    "decode_pillow": f"decode only, Pillow, full size ({usable_cores()} processes)",
    "decode_full": f"decode only, OpenCV, full size ({usable_cores()} processes)",
    "decode_scaled": f"decode only, OpenCV, DCT-scaled as prepare asks ({usable_cores()} processes)",
    "prepare": "cvae prepare (decode, crop, resize, write shards)",
    "training_input": "training input alone (tf.data over the shards, shuffled)",
}
MEMORY_SETTINGS = [  # the memory runs: 16 px images and a small model, so 100,000 images fit the time
    "data.crop=40", "data.image_size=16", "validate.min_image_size=16", "validate.prevalence={}",
    "train.epochs=1", "train.batch_size=256", "train.filters=[16,32]", "train.latent_dim=8",
]


def tutorial_loader(paths: list[str], crop: int, size: int) -> int:
    """The original tutorial's way: per batch, imread each file and resize it with scikit-image."""
    from skimage.io import imread
    from skimage.transform import resize

    done = 0
    for start in range(0, len(paths), BATCH):
        batch = []
        for path in paths[start:start + BATCH]:
            image = imread(path)
            top, left = (image.shape[0] - crop) // 2, (image.shape[1] - crop) // 2
            batch.append(resize(image[top:top + crop, left:left + crop], (size, size)))
        done += len(np.stack(batch))
    return done


def _decode_pillow(paths: list[str]) -> int:
    for path in paths:
        with Image.open(path) as image:
            image.load()
    return len(paths)


def _decode_opencv(job: tuple[list[str], int]) -> int:
    paths, reduction = job
    cv2.setNumThreads(1)
    for path in paths:
        cv2.imread(path, REDUCED_DECODE[reduction])
    return len(paths)


def decode_on_all_cores(function, jobs: list) -> int:
    with ProcessPoolExecutor(usable_cores()) as pool:
        return sum(pool.map(function, jobs))


def rate(images: int, function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return images / (time.perf_counter() - start)


def throughput(work: Path, images: int) -> dict[str, float]:
    raw = work / "throughput"
    generate(raw, num_images=images, seed=0, val_fraction=0.1, test_fraction=0.1)
    params = load_params(PROJECT / "params.yaml", ["validate.prevalence={}"])
    crop, size = params.data.crop, params.data.image_size
    paths = sorted(str(path) for path in (raw / IMAGE_DIR).iterdir())
    for path in paths:  # warm the page cache, so that every contender reads from memory
        Path(path).read_bytes()
    chunks = [paths[i:i + 128] for i in range(0, len(paths), 128)]
    assert validate(params, raw, work / "validation").success

    n = len(paths)
    reduction = decode_reduction(paths[0], crop, size)
    tutorial_paths = paths[:TUTORIAL_IMAGES]  # the slow one runs on a subset
    contenders = {
        "tutorial": (len(tutorial_paths), tutorial_loader, tutorial_paths, crop, size),
        "decode_pillow": (n, decode_on_all_cores, _decode_pillow, chunks),
        "decode_full": (n, decode_on_all_cores, _decode_opencv, [(chunk, 1) for chunk in chunks]),
        "decode_scaled": (n, decode_on_all_cores, _decode_opencv, [(chunk, reduction) for chunk in chunks]),
        "prepare": (n, prepare, params, raw, work / "validation", work / "prepared"),
    }
    # This machine's speed drifts by a third from minute to minute: the contenders take
    # turns, round after round, and each one's median round counts.
    rounds = {key: [] for key in contenders}
    for _ in range(ROUNDS):
        for key, (count, function, *args) in contenders.items():
            rounds[key].append(rate(count, function, *args))
    rates = {key: float(np.median(values)) for key, values in rounds.items()}
    for key, values in rounds.items():
        print(f"  rounds of {key}: {', '.join(f'{value:.0f}' for value in values)} images/s", flush=True)
    # the same pixels either way? prepare must not be fast by doing less
    first = np.load(work / "prepared" / "train" / "images-00000.npy", mmap_mode="r")[0]
    train_id = (work / "prepared" / "train" / "image_ids.txt").read_text().split()[0]
    assert (first == load_square(raw / IMAGE_DIR / train_id, crop, size)).all()
    rates["training_input"] = input_pipeline(work / "prepared", params)
    return rates


def input_pipeline(prepared_dir: Path, params) -> int:
    """Images/s that `train` can be fed: the shuffled tf.data stream, three epochs, no model."""
    from cvae.data.dataset import load_split, tf_dataset

    split = load_split(prepared_dir, "train")
    batches = tf_dataset(split, params.train.batch_size, shuffle=True, seed=0)
    next(iter(batches))  # build the pipeline before the clock starts
    start = time.perf_counter()
    count = sum(len(images) for _ in range(3) for images, _ in batches)
    return count / (time.perf_counter() - start)


def small_dataset(source: Path, target: Path, images: int) -> None:
    """`images` small JPEGs in CelebA layout, recycling the pixels and attributes of `source`."""
    base = load_attributes(source / ATTRIBUTE_FILE)
    encoded = []
    for image_id in base.image_ids:
        with Image.open(source / IMAGE_DIR / image_id) as image:
            small = image.resize(SMALL_SIDE)
        path = target / "tmp.jpg"
        target.mkdir(parents=True, exist_ok=True)
        small.save(path, quality=90)
        encoded.append(path.read_bytes())
    path.unlink()
    (target / IMAGE_DIR).mkdir()
    ids = [f"{index:06d}.jpg" for index in range(1, images + 1)]
    for index, image_id in enumerate(ids):
        (target / IMAGE_DIR / image_id).write_bytes(encoded[index % len(encoded)])
    rows = np.arange(images) % len(base.image_ids)
    write_attributes(target / ATTRIBUTE_FILE, Attributes(ids, base.names, base.values[rows]))


def peak_memory(command: list[str], cwd: Path) -> tuple[float, float]:
    """Run `command`; return (wall seconds, peak PSS in MiB summed over it and its children)."""
    start = time.perf_counter()
    process = psutil.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            try:
                tree = [process, *process.children(recursive=True)]
                peak = max(peak, sum(p.memory_full_info().pss for p in tree))
            except psutil.Error:
                pass
            stop.wait(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    _, errors = process.communicate()
    stop.set()
    sampler.join()
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{errors}")
    return time.perf_counter() - start, peak / 2**20


def memory(work: Path, sizes: list[int]) -> list[tuple[int, str, float, float]]:
    source = work / "faces"
    generate(source, num_images=500, seed=1, val_fraction=0.1, test_fraction=0.1)
    shutil.copy(PROJECT / "params.yaml", work / "params.yaml")
    settings = [argument for setting in MEMORY_SETTINGS for argument in ("--set", setting)]
    rows = []
    for images in sizes:
        raw, out = work / f"raw-{images}", work / f"out-{images}"
        small_dataset(source, raw, images)
        stages = {
            "validate": ["validate", "--raw", raw, "--report", out / "validation"],
            "prepare": ["prepare", "--raw", raw, "--validation", out / "validation", "--out", out / "prepared"],
            "train, one epoch": ["train", "--prepared", out / "prepared", "--model", out / "cvae.keras",
                                 "--history", out / "train"],
        }
        runs = [(stage, arguments, settings) for stage, arguments in stages.items()]
        if images == sizes[1]:
            # the control: as many training steps as the largest size's epoch, on fewer
            # images; equal peaks mean memory follows steps (allocator warm-up), not images
            epochs = sizes[-1] // images
            runs.append((f"train, {epochs} epochs", stages["train, one epoch"],
                         [*settings, "--set", f"train.epochs={epochs}"]))  # the last --set of a key wins
        for stage, arguments, overrides in runs:
            seconds, mib = peak_memory([CVAE, *map(str, arguments), *overrides], work)
            rows.append((images, stage, seconds, mib))
            print(f"  {images:>7,} images  {stage:<17} {seconds:7.1f} s  {mib:7.0f} MiB", flush=True)
        shutil.rmtree(raw)
        shutil.rmtree(out)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    throughput_images, sizes = (400, [500, 2000]) if args.quick else (10_000, [1_000, 10_000, 100_000])
    print(f"machine: {usable_cores()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB;"
          f" python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="cvae-bench-") as scratch:
        work = Path(scratch)
        print(f"\nthroughput on {throughput_images:,} CelebA-sized JPEGs (178x218 -> crop 148 -> 64 px),"
              f" median of {ROUNDS} rounds:")
        rates = throughput(work, throughput_images)
        for key, label in THROUGHPUT_LABELS.items():
            print(f"  {label:<62} {rates[key]:8.0f} images/s  ({rates[key] / rates['tutorial']:5.1f}x tutorial)")
        limit = max(rates["decode_pillow"], rates["decode_full"])  # the faster full decode
        print(f"  prepare / decode-only full size (fastest library): {rates['prepare'] / limit:.0%};"
              f" prepare / decode-only DCT-scaled: {rates['prepare'] / rates['decode_scaled']:.0%}")
        print(f"\npeak memory, {SMALL_SIDE[0]}x{SMALL_SIDE[1]} JPEGs -> 16 px:")
        memory_rows = memory(work, sizes)
        print("\n" + json.dumps({"throughput_images_per_s": rates,
                                 "memory": [dict(zip(("images", "stage", "seconds", "peak_mib"), row))
                                            for row in memory_rows]}, indent=1))


if __name__ == "__main__":
    main()
