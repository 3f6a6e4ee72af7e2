"""What each CPU speed-up of the model gives, end to end, measured side by side in one run.

The model computes the same function with plain Keras parts; `cvae.model.speedups` swaps
in faster ones on a CPU. Each contender trains the default model (params.yaml) on the
built-in drawn faces at 64 px, in a fresh process, as `cvae train` does on a CPU; the
contenders take turns, round after round, and each one's median round counts:

- all: every speed-up on (what `cvae train` runs);
- without one speed-up each (it replaced by the plain Keras part);
- none: every speed-up off.

    .venv/bin/python benchmarks/cpu_speedups.py            # ~10 minutes on 2 cores
    .venv/bin/python benchmarks/cpu_speedups.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cvae.core.config import load_params
from cvae.data.prepare import prepare
from cvae.source.synthetic import generate
from cvae.validation.validate import validate

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROJECT = Path(__file__).resolve().parent.parent
SETTINGS = ["validate.prevalence={}"]  # a few hundred drawn faces may miss the default bounds


def contenders() -> list[str]:
    from cvae.model.speedups import SPEEDUPS

    return ["all", *[f"without {name}" for name in SPEEDUPS], "none"]


def prepared_faces(work: Path, images: int) -> Path:
    params = load_params(PROJECT / "params.yaml", SETTINGS)
    raw = work / "raw"
    generate(raw, num_images=images, seed=params.seed, val_fraction=params.data.val_fraction,
             test_fraction=params.data.test_fraction)
    if not validate(params, raw, work / "validation").success:
        raise SystemExit(f"the drawn faces in {raw} failed validation")
    prepare(params, raw, work / "validation", work / "prepared")
    return work / "prepared"


def turn(contender: str, prepared: Path, warmup: int, steps: int) -> dict:
    """One contender's training steps in this (fresh) process: images/s of the timed ones."""
    import keras

    from cvae.core.seeding import seed_everything
    from cvae.data.dataset import load_split
    from cvae.model import speedups
    from cvae.model.train import (
        configure_cpu_threads,
        make_optimizer,
        new_model,
        steps_per_execution,
        training_batches,
    )

    off = set(speedups.SPEEDUPS) if contender == "none" else {contender.removeprefix("without ")} - {"all"}
    configure_cpu_threads()
    params = load_params(PROJECT / "params.yaml", SETTINGS)
    seed_everything(params.seed)
    split = load_split(prepared, "train")
    steps_per_epoch = math.ceil(len(split) / params.train.batch_size)
    with speedups.turned_off(off):
        model = new_model(params, split, steps_per_epoch)
        model.compile(optimizer=make_optimizer(params.train, steps_per_epoch),
                      steps_per_execution=steps_per_execution(steps_per_epoch))
        per_call = model.steps_per_execution
        warmup, steps = math.ceil(warmup / per_call) * per_call, math.ceil(steps / per_call) * per_call
        ends = {}

        class Clock(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                ends[batch] = time.perf_counter()

        model.fit(training_batches(split, params.train, params.seed, first_epoch=0), epochs=1,
                  steps_per_epoch=warmup + steps, shuffle=False, verbose=0, callbacks=[Clock()])
    seconds = ends[warmup + steps - 1] - ends[warmup - 1]
    return {"images_per_s": steps * params.train.batch_size / seconds, "off": sorted(off)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every figure to PATH as JSON")
    parser.add_argument("--turn", help=argparse.SUPPRESS)
    parser.add_argument("--prepared", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.turn:
        print(json.dumps(turn(args.turn, args.prepared, args.warmup, args.steps)))
        return
    images, rounds, warmup, steps = (400, 1, 4, 6) if args.quick else (2000, 3, 10, 40)
    with tempfile.TemporaryDirectory(prefix="cvae-bench-speedups-") as scratch:
        prepared = prepared_faces(Path(scratch), images)  # before TensorFlow loads: it forks workers
        names = contenders()
        rates: dict[str, list[float]] = {name: [] for name in names}
        for number in range(rounds):
            for name in names:
                result = subprocess.run([sys.executable, __file__, "--turn", name, "--prepared", str(prepared),
                                         "--warmup", str(warmup), "--steps", str(steps)],
                                        capture_output=True, text=True)
                if result.returncode:
                    raise SystemExit(f"{name} failed:\n{(result.stdout + result.stderr)[-3000:]}")
                rates[name].append(json.loads(result.stdout.strip().splitlines()[-1])["images_per_s"])
            print(f"round {number + 1}/{rounds}: " + ", ".join(f"{name} {values[-1]:.0f}"
                                                              for name, values in rates.items()), flush=True)
    median = {name: float(np.median(values)) for name, values in rates.items()}
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"\n{cpu}, {os.cpu_count()} cores; {rounds} rounds of {warmup} + {steps} steps of"
          f" {load_params(PROJECT / 'params.yaml').train.batch_size} images at 64 px\n")
    print(f"{'contender':<28}{'images/s':>10}{'all / it':>10}")
    for name in names:
        print(f"{name:<28}{median[name]:>10.0f}{median['all'] / median[name]:>10.3f}")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu, "rounds": rates, "median": median}, indent=1) + "\n")


if __name__ == "__main__":
    main()
