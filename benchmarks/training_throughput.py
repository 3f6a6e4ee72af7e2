"""Training speed, measured side by side in one run (figures, not pass/fail).

1. Training throughput (images/s of the training loop, compile and warm-up excluded) of the
   default model at 64 px (params.yaml's `train` section, steer term and XCov included),
   on CelebA-sized synthetic JPEGs (178x218):
   (a) the original tutorial's way: plain `model.fit` on a `keras.utils.PyDataset` that, per
       batch, reads each JPEG with scikit-image, centre-crops 148 and resizes it to 64 px
       (one process, no workers; XLA off), with TensorFlow's own choice of CPU kernels;
   (b) the project's training path: the prepared uint8 shards through `cvae.data.dataset.tf_dataset`
       as `cvae.model.train` streams them, the same model and optimizer, XLA off, oneDNN's
       kernels on, two ops at once on half the cores each and 10 steps per call into the
       graph (what `train` does on a CPU: `import cvae` turns oneDNN on, `train` the rest);
       and, to show what each setting gives, with TensorFlow's default kernels, with XLA on,
       and in mixed_bfloat16.
   The contenders take turns, round after round, each turn in a fresh process (as `cvae
   train` runs): one contender's allocations must not slow the next (in one shared
   process the tutorial's float64 resizes left glibc returning and refaulting memory, and
   the project's path measured at half its own speed). Each one's median round counts, and
   the user and kernel CPU seconds of its timed steps are kept: where its time goes.
2. FLOPs per training image of the real `train_step` (forward, backward, and the steer
   term's second decode and two critic passes), counted on its traced TensorFlow graph.
3. The peak FLOP/s of this machine (a large float32 matrix product in TensorFlow, all
   cores, the better of oneDNN's and Eigen's), measured in every round in fresh processes
   too, and the share of it each contender reaches; the bfloat16 contender's share is of
   the peak of a bfloat16 product (oneDNN's), measured alike.
4. Peak RSS and wall time of real `cvae train` (one epoch) and `cvae evaluate` subprocesses
   on the synthetic set's 4,000 images and on ten times as many (the same faces repeated),
   everything else identical: the default model, but at 32 px (`--memory-image-size`), so
   that the 40,000-image epoch fits the run's time on 2 cores. A control trains on the
   4,000 images for as many steps as the 40,000 images' epoch: images or steps?

    .venv/bin/python benchmarks/training_throughput.py                  # the full run (~10 min on 2 cores)
    .venv/bin/python benchmarks/training_throughput.py --quick          # smaller, for a smoke run
    .venv/bin/python benchmarks/training_throughput.py --memory-only    # peak memory alone (~4 min)
    .venv/bin/python benchmarks/training_throughput.py --json out.json  # also dump every figure
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil

from cvae.core.celeba import ATTRIBUTE_FILE, IMAGE_DIR, Attributes, load_attributes, write_attributes
from cvae.core.config import load_params
from cvae.core.parallel import usable_cores
from cvae.data.prepare import prepare
from cvae.source.synthetic import generate, image_id
from cvae.validation.validate import validate

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # as `cvae` does: no CUDA probing chatter

PROJECT = Path(__file__).resolve().parent.parent
CVAE = str(Path(sys.executable).parent / "cvae")
SETTINGS = ["validate.prevalence={}"]  # the synthetic faces need no prevalence bounds here
# the memory runs: one epoch, a one-epoch classifier for evaluate to judge with
MEMORY_SETTINGS = [*SETTINGS, "train.epochs=1", "classifier.epochs=1"]  # and data.image_size
QUICK_SETTINGS = ["evaluate.fidelity_samples=32", "evaluate.edit_images=32"]  # --quick: a shorter evaluate
# the peak: square float32 products; the best size counts (4096, a power of two, runs at
# half the speed of 3072 here: cache-set aliasing)
MATMUL_SIDES = (2048, 3072, 4096)
MATMUL_REPEATS = 2  # of each size per round; the best one counts for the round
CONTENDERS = {
    "tutorial": "(a) tutorial: fit on a PyDataset, skimage read+resize per batch, XLA off,"
                " TensorFlow's default CPU kernels",
    "shards": "(b) prepared shards + tf_dataset, XLA off, oneDNN kernels on, two ops at once, 10 steps a call"
              " (cvae train on a CPU)",
    "shards_tf_kernels": "(b) without cvae's oneDNN switch: TensorFlow's default CPU kernels",
    "shards_xla": "(b) with XLA on (jit_compile=True), on TensorFlow's default threads",
    "shards_bf16": "(b) in mixed_bfloat16 (train.precision=mixed_bfloat16): oneDNN's bfloat16 kernels",
}
# the contenders that compute in bfloat16, measured against the bfloat16 peak: a CPU with
# AVX512_BF16 or AMX multiplies bfloat16 at twice its float32 rate or more
BFLOAT16_CONTENDERS = {"shards_bf16"}
# TensorFlow's own choice of CPU kernels, which `import cvae` overrides (TF_ENABLE_ONEDNN_OPTS=1):
# oneDNN's only on CPUs with these features (tensorflow/core/util/port.cc), else Eigen's
TF_ONEDNN_CPU_FLAGS = {"avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"}
TF_DEFAULT_KERNELS = ("tutorial", "shards_tf_kernels")


# --- data ---------------------------------------------------------------------------------

def repeated_faces(source: Path, target: Path, images: int) -> None:
    """`images` JPEGs in CelebA layout: hard links to `source`'s files in turn, with their
    attribute rows (no partition file: `prepare` draws the split from the seed)."""
    base = load_attributes(source / ATTRIBUTE_FILE)
    (target / IMAGE_DIR).mkdir(parents=True)
    ids = [image_id(index) for index in range(images)]
    for index, name in enumerate(ids):
        os.link(source / IMAGE_DIR / base.image_ids[index % len(base.image_ids)], target / IMAGE_DIR / name)
    rows = np.arange(images) % len(base.image_ids)
    write_attributes(target / ATTRIBUTE_FILE, Attributes(ids, base.names, base.values[rows]))


def validated_and_prepared(params, raw: Path, out: Path) -> Path:
    start = time.perf_counter()
    if not validate(params, raw, out / "validation").success:
        raise SystemExit(f"the synthetic set in {raw} failed validation ({out / 'validation'})")
    prepare(params, raw, out / "validation", out / "prepared")
    print(f"  {raw.name}: validated and prepared at {params.data.image_size} px in"
          f" {time.perf_counter() - start:.0f} s", flush=True)
    return out / "prepared"


def make_data(work: Path, base_images: int, sizes: list[int],
              memory_settings: list[str]) -> tuple[Path, Path, dict[int, Path]]:
    """The synthetic faces (raw) and their shards at 64 px for the throughput, and per size
    of the memory runs a set repeating them, prepared with `memory_settings`.

    Runs before TensorFlow is imported: `prepare` forks its workers."""
    params = load_params(PROJECT / "params.yaml", SETTINGS)
    faces = work / "faces"
    generate(faces, num_images=base_images, seed=params.seed, val_fraction=params.data.val_fraction,
             test_fraction=params.data.test_fraction)
    prepared = validated_and_prepared(params, faces, work / "faces-out")
    memory_params = load_params(PROJECT / "params.yaml", memory_settings)
    sets = {}
    for images in sizes:
        repeated_faces(faces, work / f"raw-{images}", images)
        sets[images] = validated_and_prepared(memory_params, work / f"raw-{images}", work / f"out-{images}")
    return faces, prepared, sets


# --- 1. throughput ------------------------------------------------------------------------

def tutorial_image(path: str, crop: int, size: int) -> np.ndarray:
    """The original tutorial's way: imread the file, centre crop, resize with scikit-image."""
    from skimage.io import imread
    from skimage.transform import resize

    image = imread(path)
    top, left = (image.shape[0] - crop) // 2, (image.shape[1] - crop) // 2
    return resize(image[top:top + crop, left:left + crop], (size, size))


def tutorial_batches(paths: list[str], attributes: np.ndarray, batch_size: int, crop: int, size: int):
    """The tutorial's per-batch loader as a Keras 3 PyDataset (one process, no workers)."""
    import keras

    class TutorialBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)

        def __len__(self):
            return len(paths) // batch_size

        def __getitem__(self, index):
            rows = slice(index * batch_size, (index + 1) * batch_size)
            images = np.stack([tutorial_image(path, crop, size) for path in paths[rows]])
            return images.astype(np.float32), attributes[rows]

    return TutorialBatches()


def step_clock():
    """A callback that notes when each call into the training graph ends (after the step
    Keras numbers `batch`: the last of the call's steps), and the process's CPU times then."""
    import keras

    class StepClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends: dict[int, float] = {}
            self.cpu: dict[int, os.times_result] = {}

        def on_train_batch_end(self, batch, logs=None):
            self.ends[batch] = time.perf_counter()
            self.cpu[batch] = os.times()

    return StepClock()


def whole_calls(steps: int, per_call: int) -> int:
    """`steps` rounded up to whole calls of `per_call` steps (Keras's steps_per_execution)."""
    return math.ceil(steps / per_call) * per_call


def timed_fit(model, data, batch_size: int, warmup: int, steps: int) -> dict:
    """Images/s of `steps` training steps of `model.fit`, after `warmup` steps (the first
    call's trace and compile among them) that the clock does not count; and the user and
    kernel CPU seconds (all threads) per timed step. Both counts are whole calls of the
    model's steps_per_execution."""
    clock = step_clock()
    model.fit(data, epochs=1, steps_per_epoch=warmup + steps, shuffle=False, verbose=0, callbacks=[clock])
    first, last = warmup - 1, warmup + steps - 1
    if first not in clock.ends or last not in clock.ends:
        raise SystemExit(f"no call into the graph ended after steps {first} and {last}: {sorted(clock.ends)}")
    return {"images_per_s": steps * batch_size / (clock.ends[last] - clock.ends[first]),
            "user_s_per_step": (clock.cpu[last].user - clock.cpu[first].user) / steps,
            "system_s_per_step": (clock.cpu[last].system - clock.cpu[first].system) / steps}


def matmul_operands(dtype: str = "float32") -> dict:
    """A pair of random square matrices of `dtype` per size, their product run once (the
    kernel chosen and the pages touched before any clock)."""
    import tensorflow as tf

    operands = {}
    for side in MATMUL_SIDES:
        operands[side] = tuple(tf.cast(tf.random.normal((side, side), seed=seed), dtype) for seed in (1, 2))
        tf.matmul(*operands[side])[0, 0].numpy()
    return operands


def matmul_flops(operands: dict) -> dict[int, float]:
    """FLOP/s of a matrix product on all cores, per size, the best of a few."""
    import tensorflow as tf

    rates = {}
    for side, (a, b) in operands.items():
        best = math.inf
        for _ in range(MATMUL_REPEATS):
            start = time.perf_counter()
            tf.matmul(a, b)[0, 0].numpy()  # eager CPU ops finish before returning; the read makes sure
            best = min(best, time.perf_counter() - start)
        rates[side] = 2 * side**3 / best
    return rates


def compiled_model(params, split, jit_compile: bool, precision: str = "float32", per_call: int | None = None):
    """A default model built and compiled the way `cvae.model.train.train` does (`per_call`:
    steps per call into the graph; None: as train)."""
    from cvae.model.train import make_optimizer, new_model, precision_policy, steps_per_execution

    steps_per_epoch = math.ceil(len(split) / params.train.batch_size)
    with precision_policy(precision):
        model = new_model(params, split, steps_per_epoch)
    model.compile(optimizer=make_optimizer(params.train, steps_per_epoch), jit_compile=jit_compile,
                  steps_per_execution=per_call or steps_per_execution(steps_per_epoch))
    return model


def contender_turn(key: str, raw: Path, prepared: Path, warmup: int, steps: int) -> dict:
    """One contender's turn, in this (fresh) process: its model, its data, the timed fit."""
    from cvae.core.seeding import seed_everything
    from cvae.data.dataset import load_split
    from cvae.model.train import configure_cpu_threads, training_batches

    # the project's path runs on train's threads (set before anything starts TensorFlow's
    # runtime); the tutorial's way on TensorFlow's defaults, and so does XLA: it runs the
    # step as one compiled program that splits its work over the cores itself, and on
    # train's threads it left a core idle (316 against 698 images/s for (b))
    threads = ("TensorFlow's default threads" if key in ("tutorial", "shards_xla")
               else configure_cpu_threads())
    params = load_params(PROJECT / "params.yaml", SETTINGS)
    p = params.train
    # as train does: op determinism on a CPU, but not with XLA (Keras would drop jit_compile)
    seed_everything(params.seed, deterministic_ops=key != "shards_xla")
    split = load_split(prepared, "train")
    if key == "tutorial" and len(split) // p.batch_size < warmup + steps:  # (b) streams all the epochs
        raise SystemExit(f"{len(split)} training images are too few for {warmup + steps} batches")
    if key == "tutorial":
        paths = [str(raw / IMAGE_DIR / name) for name in split.image_ids]
        for path in paths:  # the page cache warm, so that the tutorial reads from memory as the shards do
            Path(path).read_bytes()
        data = tutorial_batches(paths, np.asarray(split.attributes, dtype=np.float32), p.batch_size,
                                params.data.crop, params.data.image_size)
    else:
        data = training_batches(split, p, params.seed, first_epoch=0)  # what train streams
    # the tutorial calls into the graph once a step, as plain `fit` does; the project's path
    # as train does (several steps a call)
    model = compiled_model(params, split, jit_compile=key == "shards_xla",
                           precision="mixed_bfloat16" if key in BFLOAT16_CONTENDERS else "float32",
                           per_call=1 if key == "tutorial" else None)
    if model.jit_compile != (key == "shards_xla"):
        raise SystemExit(f"{key}: Keras compiled with jit_compile={model.jit_compile}")
    per_call = model.steps_per_execution
    warmup, steps = whole_calls(warmup, per_call), whole_calls(steps, per_call)
    return {**timed_fit(model, data, p.batch_size, warmup, steps), "threads": threads, "steps_per_call": per_call,
            "warmup_steps": warmup, "timed_steps": steps}


def tensorflow_default_onednn() -> str:
    """TF_ENABLE_ONEDNN_OPTS as TensorFlow decides it alone on this CPU."""
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    flags = next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), set())
    return "1" if flags & TF_ONEDNN_CPU_FLAGS else "0"


def in_fresh_process(arguments: list[str], onednn: str | None = None) -> dict:
    """Run this script with `arguments` in a new Python process (TF_ENABLE_ONEDNN_OPTS=`onednn`
    if given); its last stdout line (JSON)."""
    env = {**os.environ, **({"TF_ENABLE_ONEDNN_OPTS": onednn} if onednn is not None else {})}
    result = subprocess.run([sys.executable, __file__, *arguments], capture_output=True, text=True, env=env)
    if result.returncode:
        raise SystemExit(f"{' '.join(arguments)} failed:\n{(result.stdout + result.stderr)[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def throughput(raw: Path, prepared: Path, rounds: int, warmup: int, steps: int) -> dict:
    params = load_params(PROJECT / "params.yaml", SETTINGS)
    turns = {key: [] for key in CONTENDERS}
    matmul = {side: [] for side in MATMUL_SIDES}
    matmul_bf16 = {side: [] for side in MATMUL_SIDES}
    tf_default = tensorflow_default_onednn()
    for turn in range(rounds):
        for key in CONTENDERS:
            onednn = tf_default if key in TF_DEFAULT_KERNELS else None  # None: what `import cvae` sets
            arguments = ["--contender", key, "--raw", str(raw), "--prepared", str(prepared),
                         "--warmup", str(warmup), "--steps", str(steps)]
            turns[key].append(in_fresh_process(arguments, onednn))
        # the peak under either kernel library (oneDNN's and Eigen's matmuls differ): the better
        kernels = [in_fresh_process(["--peak"], onednn) for onednn in ("0", "1")]
        bf16 = in_fresh_process(["--peak", "--peak-dtype", "bfloat16"], "1")  # Eigen's has no fast bfloat16
        for side in MATMUL_SIDES:
            matmul[side].append(max(rates[str(side)] for rates in kernels))
            matmul_bf16[side].append(bf16[str(side)])
        print(f"  round {turn + 1}/{rounds}: " + ", ".join(
            f"{key} {values[-1]['images_per_s']:.0f}" for key, values in turns.items())
              + " images/s; matmul " + ", ".join(f"{side}: {values[-1] / 1e9:.0f}" for side, values in
                                                  matmul.items()) + " GFLOP/s; bfloat16 "
              + ", ".join(f"{side}: {values[-1] / 1e9:.0f}" for side, values in matmul_bf16.items())
              + " GFLOP/s", flush=True)
    results = {key: [turn["images_per_s"] for turn in values] for key, values in turns.items()}
    cpu = {key: {kind: float(np.median([turn[f"{kind}_s_per_step"] for turn in values]))
                 for kind in ("user", "system")} for key, values in turns.items()}
    matmul_median = {side: float(np.median(values)) for side, values in matmul.items()}
    round_peaks = [max(values[turn] for values in matmul.values()) for turn in range(rounds)]
    bf16_median = {side: float(np.median(values)) for side, values in matmul_bf16.items()}
    bf16_round_peaks = [max(values[turn] for values in matmul_bf16.values()) for turn in range(rounds)]
    return {
        "images_per_s": {key: float(np.median(values)) for key, values in results.items()},
        "rounds_images_per_s": results,
        "cpu_s_per_step": cpu,  # medians over the rounds, all threads of the contender's process
        "peak_flops": max(matmul_median.values()),  # the best size's median round
        "matmul_flops": matmul_median,
        "rounds_matmul_flops": matmul,
        "rounds_peak_flops": round_peaks,  # the best size in each round
        "peak_flops_bf16": max(bf16_median.values()),
        "matmul_flops_bf16": bf16_median,
        "rounds_matmul_flops_bf16": matmul_bf16,
        "rounds_peak_flops_bf16": bf16_round_peaks,
        "warmup_steps": warmup, "timed_steps": steps, "batch_size": params.train.batch_size, "rounds": rounds,
        "image_size": params.data.image_size,
        "onednn": {key: tf_default if key in TF_DEFAULT_KERNELS else os.environ["TF_ENABLE_ONEDNN_OPTS"]
                   for key in CONTENDERS},  # TF_ENABLE_ONEDNN_OPTS of each contender's process
        "threads": {key: values[0]["threads"] for key, values in turns.items()},  # TensorFlow's, per contender
        # per contender: steps per call into the graph, and the steps warmed up and timed
        # (whole calls, so at least the asked warmup_steps and timed_steps)
        "steps_per_call": {key: values[0]["steps_per_call"] for key, values in turns.items()},
        "contender_steps": {key: [values[0]["warmup_steps"], values[0]["timed_steps"]] for key, values in turns.items()},
    }


# --- 2. FLOPs -----------------------------------------------------------------------------

def graph_flops(graph) -> tuple[float, float, Counter]:
    """FLOPs of a traced graph by TensorFlow's per-op statistics (the registry that
    `tf.compat.v1.profiler`'s float_operation() sums): (executed, all ops, executed by op type).

    Executed: the ops the function runtime keeps, those that its outputs or its side effects
    (variable updates) depend on. The gradient of each op is written for all its inputs, so
    the graph also holds gradients no one reads (a first layer's input gradient, the critic's
    weights' gradient through the edited faces), which the runtime prunes."""
    from tensorflow.python.framework import ops
    from tensorflow.python.profiler.internal import flops_registry  # noqa: F401 (registers the counts)

    live, stack = set(), [tensor.op for tensor in graph.outputs] + list(graph.control_outputs)
    while stack:
        op = stack.pop()
        if op.name not in live:
            live.add(op.name)
            stack.extend(tensor.op for tensor in op.inputs)
            stack.extend(op.control_inputs)
    executed, total = Counter(), 0.0
    for op in graph.get_operations():
        try:
            flops = ops.get_stats_for_node_def(graph, op.node_def, "flops").value or 0
        except (ValueError, TypeError):  # an op whose shape the count needs is unknown
            flops = 0
        total += flops
        if op.name in live:
            executed[op.type] += flops
    return float(sum(executed.values())), total, executed


def conv_macs(network) -> list[int]:
    """Multiply-adds of each convolution of `network`, in order, per image (forward)."""
    import keras

    macs = []
    for layer in network.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
            k_h, k_w, c_in, c_out = layer.kernel.shape
            # a transposed conv spreads each input pixel over k*k outputs: count on its input side
            transposed = isinstance(layer, keras.layers.Conv2DTranspose)
            side = layer.input.shape if transposed else layer.output.shape
            macs.append(side[1] * side[2] * k_h * k_w * c_in * c_out)
    return macs


def default_model(params, prepared: Path):
    """The default model as the project's path trains it (XLA off), for the FLOP count."""
    from cvae.data.dataset import load_split

    return compiled_model(params, load_split(prepared, "train"), jit_compile=False)


def flops_per_image(model, batch_size: int, image_size: int) -> dict:
    import tensorflow as tf

    specs = (tf.TensorSpec((batch_size, image_size, image_size, 3), tf.float32),
             tf.TensorSpec((batch_size, model.n_attributes), tf.float32))
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)  # no variables may be made while tracing
    step = tf.function(lambda images, condition: model.train_step((images, condition)))
    executed, total, by_type = graph_flops(step.get_concrete_function(*specs).graph)
    forward = tf.function(lambda images, condition: model([images, condition]))
    inference, _, _ = graph_flops(forward.get_concrete_function(*specs).graph)
    # the check by hand, convolutions only: a layer's forward pass (f), its input gradient
    # (f) and its weight gradient (f), where the step needs them. The encoder: 3f but its first
    # layer's input gradient; both decodes (reconstruction, steer edit): 3f; the critic on the
    # edited faces: forward and input gradient (its weights learn from real faces only); the
    # critic on real faces: 3f but its first layer's input gradient; with the critic's lesson
    # on decoded faces (critic_fake_weight), the same again on the edited faces.
    encoder, decoder, critic = (conv_macs(net) for net in (model.encoder, model.decoder, model.critic))
    critic_learning_passes = 2 if model.loss_weights.critic_fake else 1
    by_hand = (3 * sum(encoder) - encoder[0] + 2 * 3 * sum(decoder) + 2 * sum(critic)
               + critic_learning_passes * (3 * sum(critic) - critic[0]))
    conv_types = ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter")
    return {
        "executed": executed / batch_size,
        "graph_total": total / batch_size,
        "executed_conv": sum(by_type[name] for name in conv_types) / batch_size,
        "executed_matmul": by_type["MatMul"] / batch_size,
        "analytic_conv": 2 * by_hand,
        "inference_forward": inference / batch_size,
        "method": "TensorFlow's per-op FLOP statistics (the registry tf.compat.v1.profiler's"
                  " float_operation() sums) over the traced graph of the model's train_step on a"
                  f" batch of {batch_size}, counting the ops the runtime executes",
    }


# --- 4. memory ----------------------------------------------------------------------------

def peak_rss(command: list[str], cwd: Path) -> tuple[float, float]:
    """Run `command`; return (wall seconds, peak RSS in MiB).

    The peak is the kernel's own high-water mark of the process's resident memory (VmHWM,
    which exec starts afresh), read every 20 ms: only growth in its last 20 ms could be
    missed. (wait4's ru_maxrss would not do: it keeps the high-water mark of the forked copy
    of this process, TensorFlow and all, from before the exec.)"""
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=errors)
        status, peak_kib = Path(f"/proc/{process.pid}/status"), 0  # Popen returns once exec is done
        while process.poll() is None:
            try:
                high_water = re.search(r"^VmHWM:\s+(\d+) kB", status.read_text(), re.MULTILINE)
            except OSError:  # exited between poll and read
                high_water = None
            if high_water:  # None once it is a zombie (its memory is gone)
                peak_kib = max(peak_kib, int(high_water.group(1)))
            time.sleep(0.02)
        seconds = time.perf_counter() - start
        if process.returncode:
            errors.seek(0)
            raise SystemExit(f"{' '.join(command)} failed:\n{errors.read().decode(errors='replace')[-4000:]}")
    return seconds, peak_kib / 1024


def memory(work: Path, sets: dict[int, Path], memory_settings: list[str]) -> list[dict]:
    shutil.copy(PROJECT / "params.yaml", work / "params.yaml")  # the `cvae` runs' cwd is work/
    settings = [argument for setting in memory_settings for argument in ("--set", setting)]
    smallest, largest = min(sets), max(sets)
    classifier = sets[smallest].parent / "classifier.keras"
    rows = []
    for images, prepared in sorted(sets.items()):
        out = prepared.parent
        train = ["train", "--prepared", prepared, "--model", out / "cvae.keras", "--history", out / "train",
                 "--checkpoints", out / "checkpoints", *settings]
        runs = [("train, 1 epoch", train)]
        if images == smallest:
            # one classifier for every size: trained once, on the smallest set
            runs.append(("train-classifier, 1 epoch", [
                "train-classifier", "--prepared", prepared, "--model", classifier,
                "--report", out / "classifier.json", *settings]))
        runs.append(("evaluate", ["evaluate", "--prepared", prepared, "--model", out / "cvae.keras",
                                  "--classifier", classifier, "--metrics", out / "metrics.json", *settings]))
        if images == smallest and largest > smallest:
            # the control: as many steps as the largest set's epoch, on the fewest images (the last
            # --set of a key wins; no early stopping, which could end it sooner); a peak like the
            # largest set's means memory follows the steps taken (allocator growth), not the images
            epochs = largest // smallest
            runs.append((f"train, {epochs} epochs (control)", [
                *train, "--set", f"train.epochs={epochs}", "--set", "train.early_stopping_patience=0"]))
        for stage, arguments in runs:
            seconds, mib = peak_rss([CVAE, *map(str, arguments)], work)
            rows.append({"images": images, "stage": stage, "seconds": seconds, "peak_rss_mib": mib})
            print(f"  {images:>7,} images  {stage:<28} {seconds:6.1f} s  {mib:7.0f} MiB", flush=True)
    return rows


# --- the report ---------------------------------------------------------------------------

def machine() -> dict:
    import keras
    import tensorflow as tf

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    memory_gib = round(psutil.virtual_memory().total / 2**30, 1)
    return {"cpu": cpu, "cores": usable_cores(), "memory_gib": memory_gib,
            "python": sys.version.split()[0], "tensorflow": tf.__version__, "keras": keras.__version__,
            "load_average": Path("/proc/loadavg").read_text().split()[:3]}


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def print_report(report: dict, memory_params) -> None:
    about, speed, flops, memory_rows = (report[key] for key in ("machine", "throughput", "flops_per_image",
                                                                 "memory"))
    loads = " / ".join(" ".join(about[key]) for key in ("load_average_before", "load_average_after"))
    sections = ", ".join(f"{name} {seconds} s" for name, seconds in about["section_seconds"].items())
    print("\n## Machine\n")
    print(table(["", ""], [
        ["CPU", about["cpu"]], ["cores (usable)", about["cores"]], ["memory", f"{about['memory_gib']} GiB"],
        ["Python", about["python"]], ["TensorFlow", about["tensorflow"]], ["Keras", about["keras"]],
        *([["TensorFlow's threads per contender", ", ".join(f"{key}: {value}" for key, value in
                                                           speed["threads"].items())],
           ["TF_ENABLE_ONEDNN_OPTS per contender",
            ", ".join(f"{key} {value}" for key, value in speed["onednn"].items())]] if speed else []),
        ["load average before / after (1, 5, 15 min)", loads],
        ["benchmark wall time", f"{about['benchmark_seconds']} s ({sections})"],
    ]))
    if speed:
        print_speed(speed, flops)
    print_memory(memory_rows, memory_params)


def print_speed(speed: dict, flops: dict) -> None:
    rates, peak, per_image = speed["images_per_s"], speed["peak_flops"], flops["executed"]

    def peak_of(key: str, rounds: bool = False):
        suffix = "_bf16" if key in BFLOAT16_CONTENDERS else ""
        return speed[f"rounds_peak_flops{suffix}" if rounds else f"peak_flops{suffix}"]

    # the machine's speed drifts (it is shared): each round's rate over that round's peak as well
    round_shares = {
        key: float(np.median([rate * per_image / round_peak for rate, round_peak
                              in zip(speed["rounds_images_per_s"][key], peak_of(key, rounds=True))]))
        for key in CONTENDERS
    }
    speed["share_of_peak"] = {key: rates[key] * per_image / peak_of(key) for key in CONTENDERS}
    speed["share_of_peak_per_round_median"] = round_shares
    print(f"\n## Training throughput, default model at {speed['image_size']} px (batch {speed['batch_size']};"
          f" median of {speed['rounds']} rounds of {speed['timed_steps']} steps after {speed['warmup_steps']}"
          " warm-up, each turn a fresh process; rounded up to whole calls into the graph: "
          + ", ".join(f"{key} {per_call} step(s) a call, {' + '.join(map(str, speed['contender_steps'][key]))}"
                      for key, per_call in speed["steps_per_call"].items()) + ")\n")
    cpu = speed["cpu_s_per_step"]
    print(table(["contender", "images/s", "rounds (images/s)", "vs tutorial", "share of peak FLOP/s",
                 "same, per round (median)", "CPU ms per step: user / kernel"], [
        [label, f"{rates[key]:.0f}", ", ".join(f"{value:.0f}" for value in speed["rounds_images_per_s"][key]),
         f"{rates[key] / rates['tutorial']:.2f}x", f"{speed['share_of_peak'][key]:.1%}",
         f"{round_shares[key]:.1%}", f"{cpu[key]['user'] * 1e3:.0f} / {cpu[key]['system'] * 1e3:.0f}"]
        for key, label in CONTENDERS.items()
    ]))

    print(f"\n## FLOPs per training image (default model, {speed['image_size']} px)\n")
    print(table(["count", "MFLOP / image"], [
        ["**train_step, executed ops (used below)**", f"**{per_image / 1e6:.1f}**"],
        ["  of which convolutions (forward and both gradients)", f"{flops['executed_conv'] / 1e6:.1f}"],
        ["  of which dense layers (MatMul)", f"{flops['executed_matmul'] / 1e6:.1f}"],
        ["train_step, every op in the graph (tf.compat.v1.profiler float_operation, unpruned)",
         f"{flops['graph_total'] / 1e6:.1f}"],
        ["check by hand, convolutions only (per-layer 2*MACs of the passes the step needs)",
         f"{flops['analytic_conv'] / 1e6:.1f}"],
        ["for scale: inference forward pass (encode + decode)", f"{flops['inference_forward'] / 1e6:.1f}"],
    ]))
    print(f"\nmethod: {flops['method']}.")

    print("\n## Peak FLOP/s of this machine, and the share the training loop reaches\n")
    matmul_rows = [
        [f"float32 matmul {side}x{side} (TensorFlow, all cores, oneDNN or Eigen; best of {MATMUL_REPEATS}"
         " per round, median of rounds)", f"{rate / 1e9:.1f} GFLOP/s (rounds: "
         + ", ".join(f"{value / 1e9:.0f}" for value in speed["rounds_matmul_flops"][side]) + ")"]
        for side, rate in speed["matmul_flops"].items()
    ]
    bf16_rows = [
        [f"bfloat16 matmul {side}x{side} (oneDNN; best of {MATMUL_REPEATS} per round, median of rounds)",
         f"{rate / 1e9:.1f} GFLOP/s (rounds: "
         + ", ".join(f"{value / 1e9:.0f}" for value in speed["rounds_matmul_flops_bf16"][side]) + ")"]
        for side, rate in speed["matmul_flops_bf16"].items()
    ]
    share_rows = [[f"{label}: images/s x FLOPs/image", f"{rates[key] * per_image / 1e9:.2f} GFLOP/s"
                   f" = {speed['share_of_peak'][key]:.1%} of the"
                   f" {'bfloat16 ' if key in BFLOAT16_CONTENDERS else ''}peak"]
                  for key, label in CONTENDERS.items()]
    print(table(["", ""], [*matmul_rows, ["**peak (the best size)**", f"**{peak / 1e9:.1f} GFLOP/s**"],
                           *bf16_rows, ["**bfloat16 peak (the best size)**",
                                        f"**{speed['peak_flops_bf16'] / 1e9:.1f} GFLOP/s**"],
                           *share_rows]))


def print_memory(memory_rows: list[dict], memory_params) -> None:
    side = memory_params.data.image_size
    print(f"\n## Peak memory (RSS high-water mark, VmHWM) of `cvae` subprocesses, {side} px for both sizes,"
          " default model otherwise, one epoch but the control\n")
    print(table(["images", "stage", "wall s", "peak RSS MiB"], [
        [f"{row['images']:,}", row["stage"], f"{row['seconds']:.1f}", f"{row['peak_rss_mib']:.0f}"]
        for row in memory_rows
    ]))
    sizes = sorted({row["images"] for row in memory_rows})
    print(f"\n(evaluate is judged by one classifier, trained for one epoch on the {sizes[0]:,}-image set;"
          " each size's train/val/test split is drawn from the seed, 80/10/10. What train holds that grows"
          " with the images: each epoch's permutation of the rows (8 bytes per image), the attributes"
          " (1 byte each per image) and the image ids; the pixels are read a batch at a time with pread,"
          " never mapped. The control takes as many steps on the fewest images as one epoch of the most.)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every figure to PATH as JSON")
    parser.add_argument("--memory-only", action="store_true",
                        help="only the peak memory section (about 4 minutes instead of 13)")
    parser.add_argument("--memory-image-size", type=int, default=32, metavar="PX",
                        help="image side of the memory runs, both sizes (default: %(default)s; 64, the"
                             " default model's, makes the 40,000-image epoch take ~4x longer)")
    # the workers of the throughput section, each run in a fresh process by the main one
    parser.add_argument("--contender", choices=list(CONTENDERS), help=argparse.SUPPRESS)
    parser.add_argument("--peak", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--peak-dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--raw", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--prepared", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.contender:
        print(json.dumps(contender_turn(args.contender, args.raw, args.prepared, args.warmup, args.steps)))
        return
    if args.peak:
        print(json.dumps(matmul_flops(matmul_operands(args.peak_dtype))))
        return
    params = load_params(PROJECT / "params.yaml", SETTINGS)
    if args.quick:
        base, sizes, rounds, warmup, steps = 400, [200, 1000], 2, 2, 6
    else:
        base, sizes, rounds, warmup, steps = params.data.synthetic_images, [4000, 40_000], 5, 5, 30
    memory_settings = [*MEMORY_SETTINGS, f"data.image_size={args.memory_image_size}",
                       *(QUICK_SETTINGS if args.quick else [])]
    started, load_before = time.perf_counter(), Path("/proc/loadavg").read_text().split()[:3]
    with tempfile.TemporaryDirectory(prefix="cvae-bench-train-") as scratch:
        work = Path(scratch)
        print(f"data: {base:,} synthetic 178x218 faces; the memory sets of"
              f" {' and '.join(f'{n:,}' for n in sizes)} images repeat them", flush=True)
        raw, prepared, sets = make_data(work, base, sizes, memory_settings)
        sections, speed, flops = {"data": time.perf_counter() - started}, None, None
        if not args.memory_only:
            print(f"\nthroughput: {rounds} rounds, each contender {warmup} warm-up + {steps} timed steps"
                  f" of {params.train.batch_size} images:", flush=True)
            speed = throughput(raw, prepared, rounds, warmup, steps)
            sections["throughput"] = time.perf_counter() - started - sum(sections.values())
            print("\nFLOPs per training image (traced train_step)", flush=True)
            flops = flops_per_image(default_model(params, prepared), params.train.batch_size,
                                    params.data.image_size)
            sections["flops"] = time.perf_counter() - started - sum(sections.values())
        print(f"\npeak memory of `cvae` subprocesses ({args.memory_image_size} px, default model, 1 epoch):",
              flush=True)
        memory_rows = memory(work, sets, memory_settings)
        sections["memory"] = time.perf_counter() - started - sum(sections.values())
        about = machine()
    about["load_average_before"], about["load_average_after"] = load_before, about.pop("load_average")
    about["benchmark_seconds"] = round(time.perf_counter() - started)
    about["section_seconds"] = {name: round(seconds) for name, seconds in sections.items()}
    report = {"machine": about, "throughput": speed, "flops_per_image": flops, "memory": memory_rows,
              "memory_settings": memory_settings, "quick": args.quick}
    print_report(report, load_params(PROJECT / "params.yaml", memory_settings))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
