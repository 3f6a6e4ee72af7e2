"""The `train` stage: fit the CVAE on the prepared training split."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

from cvae.atomic import replace_directory, replace_file
from cvae.config import Params
from cvae.dataset import load_split, tf_dataset
from cvae.errors import CvaeError

HISTORY_FILE = "history.csv"


def seed_everything(seed: int) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)  # Python, NumPy and TensorFlow generators
    tf.config.experimental.enable_op_determinism()


ATTRIBUTE_TABLE_ROWS = 4096  # training attribute rows kept in the model for `cvae generate`


def attribute_sample(attributes, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    count = min(len(attributes), ATTRIBUTE_TABLE_ROWS)
    return np.asarray(attributes[np.sort(rng.choice(len(attributes), count, replace=False))], dtype=np.float32)


def train(params: Params, prepared_dir: str | Path, model_path: str | Path, history_dir: str | Path) -> dict:
    import keras

    from cvae.model import build_cvae

    seed_everything(params.seed)
    p = params.train
    train_split = load_split(prepared_dir, "train")
    val_split = load_split(prepared_dir, "val")
    model = build_cvae(
        image_size=train_split.images.shape[1],
        n_attributes=len(train_split.attribute_names),
        filters=p.filters,
        latent_dim=p.latent_dim,
        beta=p.beta,
        decoder_std=p.decoder_std,
        seed=params.seed,
        attribute_names=train_split.attribute_names,
        attribute_rows=attribute_sample(train_split.attributes, params.seed),
    )
    model.compile(optimizer=keras.optimizers.Adam(p.learning_rate, global_clipnorm=p.clip_norm))
    history = model.fit(
        tf_dataset(train_split, p.batch_size, shuffle=True, seed=params.seed, shuffle_buffer=p.shuffle_buffer),
        validation_data=tf_dataset(val_split, p.batch_size, shuffle=False, seed=params.seed) if len(val_split) else None,
        epochs=p.epochs,
        shuffle=False,  # tf_dataset shuffles; fit cannot shuffle a tf.data pipeline
        verbose=1 if sys.stdout.isatty() else 2,  # a bar in a terminal, a line per epoch in logs
        callbacks=[keras.callbacks.TerminateOnNaN()],
    ).history
    if not all(math.isfinite(value) for value in history["loss"]):
        # never save a model that later stages would turn into NaN metrics and blank figures
        raise CvaeError(
            f"train: the loss became {history['loss'][-1]} in epoch {len(history['loss'])}; nothing was saved."
            " Lower train.learning_rate or train.clip_norm, or raise train.decoder_std"
        )

    with replace_file(model_path) as staging:
        model.save(staging)
    with replace_directory(history_dir) as staging:
        _write_history(staging / HISTORY_FILE, history)
    return {name: values[-1] for name, values in history.items()}


def _write_history(path: Path, history: dict[str, list[float]]) -> None:
    columns = sorted(history)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", *columns])
        for epoch in range(len(history[columns[0]])):
            writer.writerow([epoch + 1, *(f"{history[name][epoch]:.6g}" for name in columns)])
