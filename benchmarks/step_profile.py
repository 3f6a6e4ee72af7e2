"""Where a training step's time goes: TensorFlow's profiler over the real `train_step`.

Builds the model `cvae train` builds (params.yaml, or `--set` overrides), runs warm-up
steps on the prepared shards, times some steps, then profiles more and prints the op
types and the single ops with the most self time per step, from the profiler's
`framework_op_stats` table (read with the profiler plugin bundled with TensorFlow, so no
TensorBoard is needed). It runs on the threads `train` runs on (`cvae.train.configure_cpu_threads`).
The ops' times add up over the cores, so on 2 cores they can sum to twice the wall time of
a step. Figures, not pass/fail.

    make run   # once, for data/prepared
    .venv/bin/python benchmarks/step_profile.py
    .venv/bin/python benchmarks/step_profile.py --set train.edge_weight=0   # what one part costs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as profiler_plugin  # noqa: E402

from cvae.config import load_params  # noqa: E402
from cvae.dataset import load_split  # noqa: E402
from cvae.train import (_training_batches, configure_cpu_threads, make_optimizer, new_model,  # noqa: E402
                        seed_everything)


def op_stats(logdir: Path) -> list[dict]:
    """The rows of the profiler's per-op table (one per op name), idle time left out."""
    spaces = [str(path) for path in logdir.rglob("*.xplane.pb")]
    data, ok = profiler_plugin.xspace_to_tools_data(spaces, "framework_op_stats", {})
    if not ok:
        sys.exit(f"step_profile: the profiler could not convert {spaces}: {data[:200]!r}")
    table = json.loads(data)[0]
    columns = [column["id"] for column in table["cols"]]
    rows = [{key: (cell or {}).get("v") for key, cell in zip(columns, row["c"])} for row in table["rows"]]
    return [row for row in rows if row["type"] != "IDLE"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", default="data/prepared", help="prepared shards (from `make run`)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a param")
    parser.add_argument("--steps", type=int, default=20, help="steps timed, and steps profiled")
    parser.add_argument("--top", type=int, default=15, help="rows of each table")
    args = parser.parse_args()

    threads = configure_cpu_threads()  # train's threads, set before anything starts the runtime
    params = load_params(args.params, args.set)
    if not Path(args.prepared, "train").is_dir():
        sys.exit(f"step_profile: no prepared training split under {args.prepared}; run `make run` first")
    seed_everything(params.seed)  # as `train` does on a CPU
    split = load_split(args.prepared, "train")
    steps_per_epoch = math.ceil(len(split) / params.train.batch_size)
    model = new_model(params, split, steps_per_epoch)
    model.compile(optimizer=make_optimizer(params.train, steps_per_epoch))
    batches = iter(_training_batches(split, params.train, params.seed, 0).repeat())
    model.make_train_function()  # Keras's compiled step (it returns nothing the first time)
    step = model.train_function

    for _ in range(5):  # tracing and the allocator's warm-up
        step(batches)
    start = time.perf_counter()
    for _ in range(args.steps):
        step(batches)
    wall_ms = (time.perf_counter() - start) / args.steps * 1000

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(args.steps):
            step(batches)
        tf.profiler.experimental.stop()
        rows = op_stats(Path(logdir))

    def per_step(microseconds: float) -> float:
        return microseconds / args.steps / 1000

    total = sum(row["total_self_time"] for row in rows)
    print(f"batch {params.train.batch_size}: {wall_ms:.1f} ms per step (wall, {args.steps} steps);"
          f" op self time {per_step(total):.1f} ms per step, summed over the cores; {threads}")
    by_type: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for row in rows:
        by_type[row["type"]][0] += row["total_self_time"]
        by_type[row["type"]][1] += row["occurrences"]
    print("\n| op type | ms per step | share | calls per step |\n|---|---|---|---|")
    for name, (self_time, calls) in sorted(by_type.items(), key=lambda item: -item[1][0])[:args.top]:
        print(f"| {name} | {per_step(self_time):.2f} | {self_time / total:.1%} | {calls / args.steps:.0f} |")
    print("\n| op | type | ms per step |\n|---|---|---|")
    for row in sorted(rows, key=lambda row: -row["total_self_time"])[:args.top]:
        name = re.sub(r"^StatefulPartitionedCall/", "", row["operation"])
        print(f"| {name} | {row['type']} | {per_step(row['total_self_time']):.2f} |")


if __name__ == "__main__":
    main()
