"""Where a training step's time goes: TensorFlow's profiler over the real `train_step`.

Builds the model `cvae train` builds (params.yaml, or `--set` overrides), runs warm-up
steps on the prepared shards, times some steps, then profiles more and prints the op
types and the single ops with the most self time per step, from the profiler's
`framework_op_stats` table (read with the profiler plugin bundled with TensorFlow, so no
TensorBoard is needed). It runs on the threads `train` runs on (`cvae.model.train.configure_cpu_threads`)
and as many steps per call as `train` (`cvae.model.train.steps_per_execution`). The ops' times
add up over the cores, so on 2 cores they can sum to twice the wall time of a step.

Last, from the profiler's trace: how long per step all of TensorFlow's inter-op threads
ran an op at once, how long only some did and how long none did, and which parts of the
model ran while a thread waited (the step's critical path). Figures, not pass/fail.

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

from cvae.core.config import load_params  # noqa: E402
from cvae.core.seeding import seed_everything  # noqa: E402
from cvae.data.dataset import load_split  # noqa: E402
from cvae.model.train import (  # noqa: E402
    configure_cpu_threads,
    make_optimizer,
    new_model,
    steps_per_execution,
    training_batches,
)


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
    per_call = steps_per_execution(steps_per_epoch)
    model.compile(optimizer=make_optimizer(params.train, steps_per_epoch), steps_per_execution=per_call)
    batches = iter(training_batches(split, params.train, params.seed, 0).repeat())
    model.make_train_function()
    call = model.train_function
    calls = max(1, math.ceil(args.steps / per_call))
    steps = calls * per_call  # whole calls

    for _ in range(max(1, math.ceil(5 / per_call))):  # tracing and the allocator's warm-up
        call(batches)
    start = time.perf_counter()
    for _ in range(calls):
        call(batches)
    wall_ms = (time.perf_counter() - start) / steps * 1000

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(calls):
            call(batches)
        tf.profiler.experimental.stop()
        rows = op_stats(Path(logdir))
        lanes = inter_op_lanes(Path(logdir))

    def per_step(microseconds: float) -> float:
        return microseconds / steps / 1000

    total = sum(row["total_self_time"] for row in rows)
    print(f"batch {params.train.batch_size}: {wall_ms:.1f} ms per step (wall, {steps} steps, {per_call} a call);"
          f" op self time {per_step(total):.1f} ms per step, summed over the cores; {threads}")
    by_type: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for row in rows:
        by_type[row["type"]][0] += row["total_self_time"]
        by_type[row["type"]][1] += row["occurrences"]
    print("\n| op type | ms per step | share | calls per step |\n|---|---|---|---|")
    for name, (self_time, op_calls) in sorted(by_type.items(), key=lambda item: -item[1][0])[:args.top]:
        print(f"| {name} | {per_step(self_time):.2f} | {self_time / total:.1%} | {op_calls / steps:.0f} |")
    print("\n| op | type | ms per step |\n|---|---|---|")
    for row in sorted(rows, key=lambda row: -row["total_self_time"])[:args.top]:
        name = re.sub(r"^StatefulPartitionedCall/", "", row["operation"])
        print(f"| {name} | {row['type']} | {per_step(row['total_self_time']):.2f} |")
    print_lanes(lanes, steps, args.top)


def inter_op_lanes(logdir: Path) -> dict[str, list[tuple[int, int, str]]]:
    """Per inter-op thread of TensorFlow (`tf_Compute`), the ops it ran: (start, end, name)
    in picoseconds, from the profiler's trace (the trace viewer's data, a `Trace` proto)."""
    from tensorflow.tsl.profiler.protobuf import trace_events_pb2

    spaces = [str(path) for path in logdir.rglob("*.xplane.pb")]
    data, ok = profiler_plugin.xspace_to_tools_data(spaces, "trace_viewer", {})
    if not ok:
        sys.exit(f"step_profile: the profiler could not convert {spaces} to a trace")
    trace = trace_events_pb2.Trace()
    trace.ParseFromString(data)
    names = {(device_id, resource_id): resource.name for device_id, device in trace.devices.items()
             for resource_id, resource in device.resources.items()}
    lanes: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for event in trace.trace_events:
        lane = names.get((event.device_id, event.resource_id), "")
        op = event.args.get("long_name")  # ops only: the executor's own events have none
        if lane.startswith("tf_Compute") and op and event.duration_ps > 0:
            lanes[lane].append((event.timestamp_ps, event.timestamp_ps + event.duration_ps, op))
    return lanes


def model_part(op: str) -> str:
    """The part of the model an op belongs to, from its name: the Keras call's scope
    (`decoder_1`, `critic_3`, ...), "gradient of" it, the optimizer, or the op itself."""
    name = re.sub(r".*StatefulPartitionedCall/", "", op.split(":")[0])
    gradient = name.startswith("gradient_tape/")
    scope = name.removeprefix("gradient_tape/").split("/")[0]
    return f"gradient of {scope}" if gradient else scope


def print_lanes(lanes: dict[str, list[tuple[int, int, str]]], steps: int, top: int) -> None:
    """Per step: how long all, some and none of the inter-op threads ran an op, and the
    parts that ran while a thread waited."""
    if not lanes:
        print("\nno inter-op thread in the trace")
        return
    changes = sorted((time, +1 if is_start else -1, lane, op) for lane, events in lanes.items()
                     for start, end, op in events for time, is_start in ((start, True), (end, False)))
    busy: dict[str, list[str]] = defaultdict(list)  # lane -> ops running (nested ones too)
    by_count: dict[int, float] = defaultdict(float)
    alone: dict[str, float] = defaultdict(float)
    last = changes[0][0]
    for time, change, lane, op in changes:
        running = [ops[0] for ops in busy.values() if ops]
        by_count[len(running)] += time - last
        if 0 < len(running) < len(lanes):
            for outer in running:
                alone[model_part(outer)] += (time - last) / len(running)
        last = time
        if change > 0:
            busy[lane].append(op)
        else:
            busy[lane].remove(op)

    def ms(picoseconds: float) -> str:
        return f"{picoseconds / steps / 1e9:.2f}"

    print(f"\n{len(lanes)} inter-op threads; per step, ms with this many running an op:")
    print("\n| threads busy | ms per step |\n|---|---|")
    for count in sorted(by_count, reverse=True):
        print(f"| {count} | {ms(by_count[count])} |")
    print("\n| part of the model running while a thread waited | ms per step |\n|---|---|")
    for part, picoseconds in sorted(alone.items(), key=lambda item: -item[1])[:top]:
        print(f"| {part} | {ms(picoseconds)} |")


if __name__ == "__main__":
    main()
