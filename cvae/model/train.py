"""The `train` stage: fit the CVAE on the prepared training split.

What makes a run trustworthy: the KL weight warms up, the learning rate follows a
schedule, training stops early on the held-out negative ELBO and keeps the best epoch,
every epoch is checkpointed so that a killed run resumes where it stopped, and the same
params and data give the same numbers on a CPU. On GPUs it trains in mixed precision,
compiled with XLA, and data-parallel over several (MirroredStrategy).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from cvae.core.atomic import replace_directory, replace_file
from cvae.core.attributes import check_names, chosen
from cvae.core.config import Params, TrainParams
from cvae.core.errors import CvaeError
from cvae.core.parallel import usable_cores
from cvae.core.seeding import seed_everything
from cvae.data.dataset import (
    ATTRIBUTES_FILE,
    IDS_FILE,
    META_FILE,
    PreparedSplit,
    load_split,
    tf_dataset,
    without_autotune_thread,
)
from cvae.model import speedups
from cvae.model.cvae import CVAE, LossWeights, build_cvae

HISTORY_FILE = "history.csv"
ATTRIBUTE_TABLE_ROWS = 4096  # training attribute rows kept in the model for `cvae generate`
MONITOR = "val_neg_elbo"  # what early stopping watches: the held-out negative ELBO


def attribute_sample(attributes, seed: int):
    rng = np.random.default_rng(seed)
    count = min(len(attributes), ATTRIBUTE_TABLE_ROWS)
    chosen = np.sort(rng.choice(len(attributes), count, replace=False))
    return np.asarray(attributes[chosen], dtype=np.float32)


def train(params: Params, prepared_dir: str | Path, model_path: str | Path, history_dir: str | Path,
          checkpoint_dir: str | Path | None = None, strategy: tf.distribute.Strategy | None = None) -> dict:
    """Train, save the model and the per-epoch history; return the last epoch's metrics.

    With `checkpoint_dir`, every epoch is checkpointed there, a run with the same params
    and data resumes from it, and it is removed once the model is saved. `strategy`
    replaces the default one (MirroredStrategy over several GPUs, else none).
    """
    p = params.train
    threads = configure_cpu_threads()  # before anything starts TensorFlow's runtime
    jit_compile = bool(_gpus())  # XLA on GPUs
    # Keras compiles without XLA, whatever it is asked, while op determinism is on (not
    # every op has a deterministic XLA kernel). Determinism is the CPU's promise; on a GPU
    # the step is compiled with XLA and runs are seeded but not bit-for-bit repeatable.
    seed_everything(params.seed, deterministic_ops=not jit_compile)
    train_split, val_split = load_split(prepared_dir, "train"), load_split(prepared_dir, "val")
    check_names(params, train_split.attribute_names, str(prepared_dir))
    steps_per_epoch = math.ceil(len(train_split) / p.batch_size)
    precision = _resolve_precision(p.precision)
    strategy = strategy or _default_strategy()
    with precision_policy(precision):
        with strategy.scope():
            model = new_model(params, train_split, steps_per_epoch)
            # compile wraps the optimizer in a LossScaleOptimizer under mixed_float16
            # one step per call over several replicas: Keras's multi-step loop under
            # MirroredStrategy failed here ("You must feed a value for placeholder tensor
            # 'while/cond/Placeholder_1'", Keras 3.15, two logical CPUs)
            per_call = steps_per_execution(steps_per_epoch) if strategy.num_replicas_in_sync == 1 else 1
            model.compile(optimizer=make_optimizer(p, steps_per_epoch), jit_compile=jit_compile,
                          steps_per_execution=per_call)
            checkpoints = None
            if checkpoint_dir:
                checkpoints = CheckpointStore(checkpoint_dir, fingerprint(params, prepared_dir, model))
            resumed = checkpoints.latest(p.epochs) if checkpoints else None
            if resumed:
                resumed.restore(model)
        # what Keras settled on, not what it was asked for
        print(f"train: {strategy.num_replicas_in_sync} replica(s), {precision},"
              f" XLA {'on' if model.jit_compile else 'off'}, {threads}", flush=True)
        history = _fit(model, params, train_split, val_split, steps_per_epoch, checkpoints, resumed)
    if not all(math.isfinite(value) for value in history["loss"]):
        # never save a model that later stages would turn into NaN metrics and blank figures
        raise CvaeError(
            f"train: the loss became {history['loss'][-1]} in epoch {len(history['loss'])}; nothing was"
            " saved. Lower train.learning_rate or train.clip_norm, or raise train.decoder_std"
        )
    with replace_file(model_path) as staging:
        _in_float32(model, params, train_split, steps_per_epoch).save(staging)
    with replace_directory(history_dir) as staging:
        _write_history(staging / HISTORY_FILE, history)
    if checkpoints:
        checkpoints.remove()
    return {name: values[-1] for name, values in history.items()}


def new_model(params: Params, train_split: PreparedSplit, steps_per_epoch: int) -> CVAE:
    """The untrained model that `train` builds for these params and this training split."""
    p = params.train
    return build_cvae(
        image_size=train_split.images.shape[1],
        n_attributes=len(train_split.attribute_names),
        filters=p.filters,
        latent_dim=p.latent_dim,
        loss_weights=LossWeights(
            beta=p.beta,
            decoder_std=p.decoder_std,
            kl_warmup_steps=round(p.kl_warmup_epochs * steps_per_epoch),
            xcov=p.xcov_weight,
            edge=p.edge_weight,
            steer=p.steer_weight,
            critic_fake=p.critic_fake_weight,
            steer_flip=p.steer_flip_share,
            adversary=p.adversary_weight,
            steer_mask=_steer_mask(p.steer_attributes, train_split.attribute_names),
        ),
        seed=params.seed,
        attribute_names=train_split.attribute_names,
        attribute_rows=attribute_sample(train_split.attributes, params.seed),
        upsampling=p.upsampling,
    )


def _steer_mask(wanted: list[str], available: list[str]) -> list[float]:
    steered = chosen(wanted, available, "train.steer_attributes")
    return [1.0 if name in steered else 0.0 for name in available]


def _in_float32(model: CVAE, params: Params, train_split: PreparedSplit, steps_per_epoch: int) -> CVAE:
    """The trained model under the float32 policy (its variables are float32 in any policy).

    Mixed precision speeds up training on a GPU; the saved model computes alike on any
    device, and the later stages on a CPU do not emulate half-precision arithmetic."""
    if model.dtype_policy.name == "float32":
        return model
    with precision_policy("float32"):
        twin = new_model(params, train_split, steps_per_epoch)
    twin.set_weights(model.get_weights())
    return twin


def make_optimizer(p: TrainParams, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    learning_rate = p.learning_rate
    if p.lr_schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            p.learning_rate, decay_steps=p.epochs * steps_per_epoch, alpha=p.lr_min_fraction
        )
    return speedups.adam(learning_rate, global_clipnorm=p.clip_norm)


# The most training steps Keras runs per call into the compiled graph. One call per step
# costs the step a round trip through Python (the call, the callbacks, the logs), on the
# critical path while the ops keep both cores busy. Callbacks then see every 10th step
# (epochs end on time: see steps_per_execution); 10 keeps a terminal's progress bar moving.
MOST_STEPS_PER_EXECUTION = 10


def steps_per_execution(steps_per_epoch: int) -> int:
    """The largest divisor of `steps_per_epoch` up to MOST_STEPS_PER_EXECUTION.

    A divisor: the epochs come in one stream (`training_batches`), and a call that ran
    past an epoch's last step would take the next epoch's first batches into this one."""
    return max(steps for steps in range(1, min(MOST_STEPS_PER_EXECUTION, steps_per_epoch) + 1)
               if steps_per_epoch % steps == 0)


def _fit(model: CVAE, params: Params, train_split: PreparedSplit, val_split: PreparedSplit,
         steps_per_epoch: int, checkpoints: CheckpointStore | None,
         resumed: Checkpoint | None) -> dict[str, list[float]]:
    """Fit from the resumed epoch (or the first) to the last; the history of every epoch."""
    p = params.train
    first_epoch, earlier = (resumed.epoch, resumed.history) if resumed else (0, {})
    callbacks = [keras.callbacks.TerminateOnNaN()]
    early_stopping = None
    if p.early_stopping_patience and len(val_split):
        early_stopping = ResumableEarlyStopping(
            resumed.early_stopping if resumed else None,
            monitor=MONITOR,
            mode="min",
            verbose=1,  # says when it stops and which epoch it goes back to
            patience=p.early_stopping_patience,
            # while the KL weight still rises, the ELBO's course says little
            start_from_epoch=math.ceil(p.kl_warmup_epochs),
            restore_best_weights=True,  # the saved model is the best epoch's
        )
        callbacks.append(early_stopping)
    if checkpoints:
        # after early stopping: it sees whether training stops, and saves the updated progress
        callbacks.append(SaveCheckpoint(checkpoints, p.epochs, earlier, early_stopping))
    fitted = model.fit(
        training_batches(train_split, p, params.seed, first_epoch),
        validation_data=tf_dataset(val_split, p.batch_size, shuffle=False, seed=params.seed) if len(val_split)
        else None,
        initial_epoch=first_epoch,
        epochs=p.epochs,
        steps_per_epoch=steps_per_epoch,
        shuffle=False,  # training_batches shuffles; fit cannot shuffle a tf.data pipeline
        verbose=1 if sys.stdout.isatty() else 2,  # a bar in a terminal, a line per epoch in logs
        callbacks=callbacks,
    ).history
    return _joined(earlier, fitted)


def training_batches(split: PreparedSplit, p: TrainParams, seed: int, first_epoch: int):
    """The batches of epochs first_epoch..p.epochs-1 (0-based) in one stream.

    Epoch e is shuffled with seed + e, so its order is the same whether the run started
    fresh or resumed."""
    def epoch_batches(epoch):
        return tf_dataset(split, p.batch_size, shuffle=True, seed=seed + epoch)

    # the epochs' own options do not reach the dataset that flat_map makes of them
    return without_autotune_thread(tf.data.Dataset.range(first_epoch, p.epochs).flat_map(epoch_batches))


def _joined(earlier: dict[str, list[float]], later: dict[str, list[float]]) -> dict[str, list[float]]:
    return {name: list(earlier.get(name, [])) + [float(value) for value in later.get(name, [])]
            for name in {*earlier, *later}}


def _write_history(path: Path, history: dict[str, list[float]]) -> None:
    columns = sorted(history)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", *columns])
        for epoch in range(len(history[columns[0]])):
            writer.writerow([epoch + 1, *(f"{history[name][epoch]:.6g}" for name in columns)])


# --- devices and precision ---------------------------------------------------------------

def _gpus() -> list:
    return tf.config.list_logical_devices("GPU")


# TensorFlow's own thread settings, which a user's environment may set (TensorFlow reads them)
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
# Ops TensorFlow runs at once on a CPU. The step has two independent halves, the
# reconstruction (decode and its gradient) and the steer term (the edited decode and the
# critic's passes): side by side, each on half the cores, they keep the cores busier than
# one op at a time split over all of them, which spends much of each small op waking and
# waiting for the other cores. On 2 cores (one thread per op): 566-679 against 480-610
# images/s in turns of the benchmark's (b), with 1 against 6-10 ms of kernel CPU time per
# step (docs/performance.md, *Training speed*).
CPU_STEP_LANES = 2


def configure_cpu_threads() -> str:
    """On a machine without GPUs, let TensorFlow run CPU_STEP_LANES ops at once, each on an
    equal share of the cores, unless THREAD_VARIABLES are set; return what it runs with.

    Must come before TensorFlow starts its runtime (listing logical devices or running an
    op starts it): a process that started it already (a notebook, the tests) keeps its
    threads. On GPUs TensorFlow's defaults stay: the CPU only feeds them."""
    if tf.config.list_physical_devices("GPU"):
        return "TensorFlow's default threads"
    chosen = {name: os.environ[name] for name in THREAD_VARIABLES if os.environ.get(name)}
    if chosen:
        return "threads as " + ", ".join(f"{name}={value}" for name, value in chosen.items())
    try:
        tf.config.threading.set_intra_op_parallelism_threads(max(1, usable_cores() // CPU_STEP_LANES))
        tf.config.threading.set_inter_op_parallelism_threads(CPU_STEP_LANES)
    except RuntimeError:  # the runtime has started: its threads are fixed
        pass
    intra = tf.config.threading.get_intra_op_parallelism_threads()
    inter = tf.config.threading.get_inter_op_parallelism_threads()
    if not intra and not inter:
        return "TensorFlow's default threads"
    return f"{intra or 'all'} thread(s) per op, {inter or 'as many as cores'} ops at once"


def _resolve_precision(precision: str) -> str:
    """`auto`: mixed_bfloat16 on GPUs of compute capability 8.0+, mixed_float16 on older
    GPUs (no fast bfloat16 there), float32 on a CPU."""
    if precision != "auto":
        return precision
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "float32"
    capability = min(tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
                     for gpu in gpus)
    return "mixed_bfloat16" if capability >= (8, 0) else "mixed_float16"


@contextmanager
def precision_policy(name: str):
    """Keras's dtype policy is global: set it for the models built inside, then put back
    whatever it was, so that callers (and tests in one process) are not left in it."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _default_strategy() -> tf.distribute.Strategy:
    return tf.distribute.MirroredStrategy() if len(_gpus()) > 1 else tf.distribute.get_strategy()


# --- early stopping and checkpoints ------------------------------------------------------

STATE_FILE = "state.json"
WEIGHTS_FILE = "model.weights.h5"  # the model's and the optimizer's variables
BEST_WEIGHTS_FILE = "best_weights.npz"  # early stopping's best epoch so far
EPOCH_DIR = "epoch-{:05d}"  # zero-padded: sorting the names sorts the epochs
EPOCH_GLOB = "epoch-*"  # not the hidden staging directories


@dataclass(frozen=True)
class EarlyStoppingState:
    """Early stopping's progress: epochs waited, the best value so far, its epoch and weights."""

    wait: int
    best: float | None
    best_epoch: int
    best_weights: list[np.ndarray] | None

    def write(self, directory: Path) -> dict:
        """Write the best weights into `directory`; return the rest, for the state file."""
        if self.best_weights is not None:
            np.savez(directory / BEST_WEIGHTS_FILE, *self.best_weights)
        return {"wait": self.wait, "best": self.best, "best_epoch": self.best_epoch}

    @classmethod
    def read(cls, directory: Path, saved: dict) -> EarlyStoppingState:
        best_weights = None
        if (directory / BEST_WEIGHTS_FILE).exists():
            with np.load(directory / BEST_WEIGHTS_FILE, allow_pickle=False) as arrays:
                best_weights = [arrays[f"arr_{index}"] for index in range(len(arrays.files))]
        return cls(saved["wait"], saved["best"], saved["best_epoch"], best_weights)


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose progress can be saved in a checkpoint and picked up by a
    resumed run."""

    def __init__(self, resumed: EarlyStoppingState | None, **kwargs):
        super().__init__(**kwargs)
        self.resumed = resumed

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)  # resets the progress
        if self.resumed:
            self.wait, self.best = self.resumed.wait, self.resumed.best
            self.best_epoch, self.best_weights = self.resumed.best_epoch, self.resumed.best_weights

    def state(self) -> EarlyStoppingState:
        best = None if self.best is None else float(self.best)
        return EarlyStoppingState(self.wait, best, self.best_epoch, self.best_weights)


@dataclass(frozen=True)
class Checkpoint:
    """The state after `epoch` completed epochs: enough to go on as if never stopped."""

    path: Path
    epoch: int
    history: dict[str, list[float]]
    early_stopping: EarlyStoppingState | None
    seed_states: list[list[int]]

    def restore(self, model: CVAE) -> None:
        """Load the model's and the optimizer's variables (the step count included, which
        places the learning-rate schedule and the KL warm-up) and the random generators
        (sampling noise, steer targets) into a compiled model."""
        model.optimizer.build(model.trainable_variables)  # its variables must exist to be loaded
        model.load_weights(self.path / WEIGHTS_FILE)
        for generator, state in zip(model.seed_generators, self.seed_states, strict=True):
            generator.state.assign(state)


def fingerprint(params: Params, prepared_dir: str | Path, model: CVAE) -> str:
    """What a checkpoint must have been made with to be resumed: the train params, the
    seed, the networks' architecture and the prepared data (its meta.json, and the
    training and validation ids and attributes)."""
    made_with = {"seed": params.seed, "train": params.train.model_dump(), "architecture": architecture(model)}
    digest = hashlib.sha256(json.dumps(made_with, sort_keys=True, default=str).encode())
    prepared_dir = Path(prepared_dir)
    split_files = [prepared_dir / split / name
                   for split in ("train", "val") for name in (IDS_FILE, ATTRIBUTES_FILE)]
    for path in [prepared_dir / META_FILE, *split_files]:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def architecture(model: CVAE) -> list:
    """Every layer of the networks, by class and config (names aside, which count up per
    process). A checkpoint from another version of the code is then ignored rather than
    loaded into networks it does not fit, or, where the weight shapes happen to agree
    (a layer without weights added), into networks that compute something else."""
    networks = [model.encoder, model.decoder, *model.helpers]
    return [[type(layer).__name__, {key: value for key, value in layer.get_config().items() if key != "name"}]
            for network in networks for layer in network.layers]


class CheckpointStore:
    """One directory of per-epoch checkpoints, each written into a staging directory and
    renamed into place, so that a kill mid-write leaves the previous one whole."""

    def __init__(self, directory: str | Path, fingerprint: str):
        self.directory = Path(directory)
        self.fingerprint = fingerprint

    def latest(self, epochs: int) -> Checkpoint | None:
        paths = sorted(self.directory.glob(EPOCH_GLOB))
        if not paths:
            return None
        path = paths[-1]
        state = json.loads((path / STATE_FILE).read_text())
        if state.get("fingerprint") != self.fingerprint:
            print(f"train: ignoring checkpoint {path}: it was made with other train params, seed,"
                  " networks or prepared data; training starts afresh", flush=True)
            self.remove()
            return None
        print(f"train: resuming from epoch {state['epoch']} of {epochs} (checkpoint {path})", flush=True)
        saved = state["early_stopping"]
        early_stopping = EarlyStoppingState.read(path, saved) if saved else None
        return Checkpoint(path, state["epoch"], state["history"], early_stopping, state["seed_states"])

    def save(self, model: CVAE, epoch: int, history: dict[str, list[float]],
             early_stopping: EarlyStoppingState | None) -> None:
        path = self.directory / EPOCH_DIR.format(epoch)
        with replace_directory(path) as staging:
            model.save_weights(staging / WEIGHTS_FILE)
            state = {
                "fingerprint": self.fingerprint,
                "epoch": epoch,
                "history": history,
                "early_stopping": early_stopping.write(staging) if early_stopping else None,
                # save_weights leaves seed generators out: without their state a resumed run
                # would draw its first epochs' sampling noise again
                "seed_states": [generator.state.numpy().tolist() for generator in model.seed_generators],
            }
            (staging / STATE_FILE).write_text(json.dumps(state))
        for older in self.directory.iterdir():  # earlier epochs, and staging left by a kill
            if older != path:
                shutil.rmtree(older, ignore_errors=True)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class SaveCheckpoint(keras.callbacks.Callback):
    """Checkpoints every epoch after which training goes on. (After the last epoch, or
    one that stopped training, the run saves its model next: a kill there redoes it.)"""

    def __init__(self, store: CheckpointStore, epochs: int, earlier: dict[str, list[float]],
                 early_stopping: ResumableEarlyStopping | None):
        super().__init__()
        self.store, self.epochs, self.early_stopping = store, epochs, early_stopping
        self.history = {name: list(values) for name, values in earlier.items()}

    def on_epoch_end(self, epoch, logs=None):
        for name, value in (logs or {}).items():
            self.history.setdefault(name, []).append(float(value))
        if self.model.stop_training or epoch + 1 >= self.epochs:
            return
        self.store.save(self.model, epoch + 1, self.history,
                        self.early_stopping.state() if self.early_stopping else None)
