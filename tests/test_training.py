"""Training that can be trusted: KL warm-up, learning-rate schedule, early stopping,
resuming a killed run, determinism, data-parallel and mixed-precision training."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

keras = pytest.importorskip("keras")

from tensorflow.python.framework.config import is_op_determinism_enabled  # what Keras reads

from cvae.cli import main as cvae_main
from cvae.core.config import params_from_dict
from cvae.core.errors import CvaeError
from cvae.data.dataset import IDS_FILE, load_split
from cvae.model.cvae import CVAE, load_cvae
from cvae.model.train import (
    HISTORY_FILE,
    WEIGHTS_FILE,
    CheckpointStore,
    SaveCheckpoint,
    fingerprint,
    make_optimizer,
    new_model,
    steps_per_execution,
    train,
)
from tests.conftest import BIN, PROJECT, prepare_data, run, stage_env, tiny_cvae, tiny_params_dict

# Eight short epochs with warm-up, cosine decay and early stopping all switched on: long
# enough to kill a run after its first checkpoint and still have epochs left to resume.
RUN = {"epochs": 8, "kl_warmup_epochs": 1, "lr_schedule": "cosine", "early_stopping_patience": 2}
# A training set this small is overfitted within a few epochs at this learning rate, so
# the held-out ELBO gets worse and early stopping has a best epoch to go back to (here:
# 6242, 5138, then 5431 nats).
OVERFIT = {"epochs": 8, "kl_warmup_epochs": 0, "lr_schedule": "constant", "learning_rate": 0.01,
           "decoder_std": 0.05, "early_stopping_patience": 1}
ONE_EPOCH = {"epochs": 1, "kl_warmup_epochs": 0, "early_stopping_patience": 0}
TRAIN_IMAGES, BATCH = 24, 16  # the synthetic_root fixture's training split, tiny_params' batch size


def params_dict(**train_params) -> dict:
    return tiny_params_dict(data={"image_size": 16}, train=train_params)


def make_params(**train_params):
    return params_from_dict(params_dict(**train_params))


def history_rows(history_dir: Path) -> list[dict[str, str]]:
    with (history_dir / HISTORY_FILE).open() as handle:
        return list(csv.DictReader(handle))


def assert_same_weights(first: Path | keras.Model, second: Path | keras.Model) -> None:
    first, second = (load_cvae(m) if isinstance(m, Path) else m for m in (first, second))
    assert len(first.weights) == len(second.weights)
    for ours, theirs in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(ours, theirs)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, synthetic_root) -> Path:
    out = tmp_path_factory.mktemp("training")
    # these tests need prepared data, not its validation: a passing report stands in for it
    prepare_data(out, make_params(), synthetic_root)
    return out / "prepared"


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory):
    """An uninterrupted run with the RUN params: what a resumed run must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    train(make_params(**RUN), prepared, out / "cvae.keras", out / "train")
    return SimpleNamespace(model=out / "cvae.keras", history=history_rows(out / "train"))


@pytest.fixture(scope="module")
def overfit(prepared, tmp_path_factory):
    """A run that early stopping ended, with the held-out negative ELBO of each epoch."""
    out = tmp_path_factory.mktemp("overfit")
    train(make_params(**OVERFIT), prepared, out / "cvae.keras", out / "train")
    history = history_rows(out / "train")
    best_epoch = int(np.argmin([float(row["val_neg_elbo"]) for row in history])) + 1
    return SimpleNamespace(model=out / "cvae.keras", history=history, best_epoch=best_epoch)


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def killed_after_the_best_epoch(prepared, overfit, tmp_path_factory) -> Path:
    """The checkpoints the overfitting run leaves when stopped dead right after its best
    epoch's checkpoint (an exception stands in for the kill)."""
    out = tmp_path_factory.mktemp("overfit_killed")
    save = SaveCheckpoint.on_epoch_end

    def save_then_die(self, epoch, logs=None):
        save(self, epoch, logs)
        if epoch + 1 == overfit.best_epoch:
            raise Killed

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SaveCheckpoint, "on_epoch_end", save_then_die)
        with pytest.raises(Killed):
            train(make_params(**OVERFIT), prepared, out / "cvae.keras", out / "train",
                  checkpoint_dir=out / "checkpoints")
    return out / "checkpoints"


@pytest.fixture(scope="module")
def one_epoch(prepared, tmp_path_factory) -> dict:
    """The last-epoch metrics of one float32 epoch on one device, to compare others with."""
    out = tmp_path_factory.mktemp("one_epoch")
    return train(make_params(**ONE_EPOCH), prepared, out / "cvae.keras", out / "train")


@pytest.fixture(scope="module")
def killed_checkpoint(prepared, tmp_path_factory) -> Path:
    """The checkpoint directory a real `cvae train` left when killed after an epoch."""
    out = tmp_path_factory.mktemp("killed")
    (out / "params.yaml").write_text(yaml.safe_dump(params_dict(**RUN)))
    checkpoints = out / "checkpoints"
    log = out / "log.txt"
    with log.open("w") as output:
        process = subprocess.Popen(cvae_train(out, prepared, checkpoints), cwd=out, env=stage_env(),
                                   stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not any(checkpoints.glob("epoch-*")):  # complete ones: staging directories are hidden
            assert process.poll() is None, f"train ended before its first checkpoint:\n{log.read_text()}"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL, "train finished before it could be killed"
    assert not (out / "cvae.keras").exists()
    return checkpoints


def cvae_train(out: Path, prepared: Path, checkpoints: Path) -> list[str]:
    return [str(BIN / "cvae"), *train_arguments(out, prepared, checkpoints)]


def train_arguments(out: Path, prepared: Path, checkpoints: Path) -> list[str]:
    return ["train", "--params", str(out / "params.yaml"), "--prepared", str(prepared), "--model",
            str(out / "cvae.keras"), "--history", str(out / "train"), "--checkpoints", str(checkpoints)]


@pytest.mark.slow
def test_kl_warmup_raises_the_kl_weight_from_zero_to_beta(reference):
    model = tiny_cvae(beta=0.5, kl_warmup_steps=10)
    model.compile(optimizer=keras.optimizers.Adam())
    rng = np.random.default_rng(0)
    images = rng.random((8, 16, 16, 3), dtype=np.float32)
    condition = rng.choice([-1.0, 1.0], size=(8, 3)).astype(np.float32)

    def weight_in_the_loss() -> float:
        model.reset_metrics()
        logs = {name: float(value) for name, value in model.test_step((images, condition)).items()}
        return 1.0 - (logs["neg_elbo"] - logs["loss"]) / logs["kl"]  # loss = nll + weight * kl

    for step, weight in [(0, 0.0), (5, 0.25), (10, 0.5), (25, 0.5)]:
        model.optimizer.iterations.assign(step)
        assert float(model.kl_weight()) == pytest.approx(weight)
        assert weight_in_the_loss() == pytest.approx(weight, abs=0.02)
    # train() ramps over kl_warmup_epochs (1) of its steps per epoch
    assert load_cvae(reference.model).loss_weights.kl_warmup_steps == -(-TRAIN_IMAGES // BATCH)


def test_the_cosine_schedule_decays_the_learning_rate_to_its_floor():
    def rates(optimizer, steps):
        for step in steps:
            optimizer.iterations.assign(step)
            yield float(optimizer.learning_rate)

    cosine = make_params(epochs=4, learning_rate=1e-3, lr_schedule="cosine", lr_min_fraction=0.1).train
    start, middle, end = rates(make_optimizer(cosine, steps_per_epoch=5), [0, 10, 20])
    assert start == pytest.approx(1e-3) and 1e-4 < middle < 1e-3 and end == pytest.approx(1e-4)
    constant = make_params(learning_rate=1e-3, lr_schedule="constant").train
    assert list(rates(make_optimizer(constant, steps_per_epoch=5), [0, 20])) == pytest.approx([1e-3, 1e-3])


@pytest.mark.slow
def test_same_params_and_data_give_the_same_history_and_model(prepared, reference, tmp_path):
    train(make_params(**RUN), prepared, tmp_path / "cvae.keras", tmp_path / "train")
    assert history_rows(tmp_path / "train") == reference.history
    assert_same_weights(tmp_path / "cvae.keras", reference.model)


@pytest.mark.slow
def test_early_stopping_stops_and_keeps_the_best_epoch(overfit, killed_after_the_best_epoch):
    assert overfit.best_epoch < len(overfit.history) < OVERFIT["epochs"]  # stopped, after a worse epoch
    # the saved model holds the weights the run had at the end of its best epoch
    model = load_cvae(overfit.model)
    model.compile(optimizer=make_optimizer(make_params(**OVERFIT).train, steps_per_epoch=2))
    model.optimizer.build(model.trainable_variables)
    model.load_weights(next(killed_after_the_best_epoch.glob("epoch-*")) / WEIGHTS_FILE)
    assert_same_weights(overfit.model, model)


@pytest.mark.slow
def test_early_stopping_picks_up_its_progress_when_resumed(prepared, overfit, killed_after_the_best_epoch,
                                                           tmp_path):
    """Resumed after the best epoch, the run must still know that epoch was the best (and
    its weights) to stop after the next one and go back to it."""
    checkpoints = shutil.copytree(killed_after_the_best_epoch, tmp_path / "checkpoints")
    train(make_params(**OVERFIT), prepared, tmp_path / "cvae.keras", tmp_path / "train",
          checkpoint_dir=checkpoints)
    assert history_rows(tmp_path / "train") == overfit.history
    assert_same_weights(tmp_path / "cvae.keras", overfit.model)


@pytest.mark.slow
def test_a_killed_run_resumes_where_it_stopped_and_ends_as_if_never_killed(prepared, reference,
                                                                        killed_checkpoint, tmp_path, capsys):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict(**RUN)))
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(killed_checkpoint, checkpoints)
    assert cvae_main(train_arguments(tmp_path, prepared, checkpoints)) == 0  # in process: saves a start-up
    output = capsys.readouterr().out
    resumed_after = json.loads(next(killed_checkpoint.glob("epoch-*/state.json")).read_text())["epoch"]
    assert resumed_after >= 1
    assert f"train: resuming from epoch {resumed_after} of {RUN['epochs']} (checkpoint" in output
    rows = history_rows(tmp_path / "train")
    assert [int(row["epoch"]) for row in rows] == list(range(1, len(rows) + 1))
    # optimizer state, schedule, warm-up, early stopping, data order and noise all carried on
    assert rows == reference.history
    assert_same_weights(tmp_path / "cvae.keras", reference.model)
    assert not checkpoints.exists()


@pytest.mark.slow
def test_a_checkpoint_of_other_params_seed_networks_or_data_is_ignored(prepared, killed_after_the_best_epoch,
                                                                       tmp_path, capsys):
    def latest(params, data: Path, name: str, model=None):
        checkpoints = shutil.copytree(killed_after_the_best_epoch, tmp_path / name)
        model = model or new_model(params, load_split(data, "train"), steps_per_epoch=2)
        resumed = CheckpointStore(checkpoints, fingerprint(params, data, model)).latest(params.train.epochs)
        return resumed, capsys.readouterr().out

    params = make_params(**OVERFIT)
    resumed, output = latest(params, prepared, "same")
    assert resumed and "train: resuming" in output
    other_data = shutil.copytree(prepared, tmp_path / "prepared")
    (other_data / "train" / IDS_FILE).write_text("other\n" * TRAIN_IMAGES)
    # another version of the code: the encoder's input not centred. No weights change, so
    # the checkpoint would load into it without a word and train a different network.
    model = new_model(params, load_split(prepared, "train"), steps_per_epoch=2)
    uncentred = keras.models.clone_model(model.encoder, clone_function=lambda layer: (
        keras.layers.Rescaling(1.0, name=layer.name) if layer.name == "centre"
        else layer.__class__.from_config(layer.get_config())))
    assert [w.shape for w in uncentred.weights] == [w.shape for w in model.encoder.weights]
    others = {
        "other_params": (make_params(**{**OVERFIT, "beta": 0.5}), prepared, None),
        "other_seed": (params_from_dict({**params_dict(**OVERFIT), "seed": 8}), prepared, None),
        "other_data": (params, other_data, None),
        "other_networks": (params, prepared, CVAE(uncentred, model.decoder, critic=model.critic)),
    }
    for name, (params, data, model) in others.items():
        resumed, output = latest(params, data, name, model)
        assert resumed is None and "train: ignoring checkpoint" in output, name
        assert not (tmp_path / name).exists()  # training starts afresh, without the stale checkpoint


MIRRORED = textwrap.dedent("""
    import json, sys
    import tensorflow as tf

    # two logical CPUs, set before TensorFlow starts, to stand in for two GPUs
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from cvae.core.config import params_from_dict
    from cvae.model.train import train

    prepared, out = sys.argv[1], sys.argv[2]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    for number, params in enumerate(json.loads(sys.argv[3])):
        final = train(params_from_dict(params), prepared, f"{out}/cvae-{number}.keras", f"{out}/train-{number}",
                      strategy=strategy)
        print(json.dumps(final))
""")


@pytest.mark.slow
def test_training_under_a_mirrored_strategy_over_two_devices(prepared, tmp_path):
    # the learning rate fixed here, not taken from params.yaml: the tolerances below are for
    # the sampling noise's effect at this rate, and a higher one lets it move the ELBO further
    same_rate = {**ONE_EPOCH, "learning_rate": 0.002}
    plain, steered = params_dict(**same_rate, steer_weight=0.0), params_dict(**same_rate)
    assert steered["train"]["steer_weight"] > 0  # the defaults steer
    one_device = train(params_from_dict(plain), prepared, tmp_path / "one.keras", tmp_path / "one")
    result = run([sys.executable, "-c", MIRRORED, str(prepared), str(tmp_path), json.dumps([plain, steered])],
                 cwd=PROJECT)
    assert "train: 2 replica(s)" in result.stdout
    mirrored, mirrored_steered = (json.loads(line) for line in result.stdout.splitlines() if line.startswith("{"))
    # the replicas' halves of each batch make up the batch's mean (not a sum, not one
    # half); what differs from one device is only the sampling noise drawn. The objective
    # is left out: its correlation penalty is a statistic of each replica's half batch (and
    # so is the steer term's shuffle of attributes: the comparison runs without it). The
    # negative ELBO is a small difference of two terms of hundreds of nats at this size, so
    # it gets an absolute tolerance: one nat per image.
    assert mirrored["mse"] == pytest.approx(one_device["mse"], rel=0.05)
    for name in ("neg_elbo", "val_neg_elbo"):
        assert mirrored[name] == pytest.approx(one_device[name], abs=1.0)
    # the steer term's two objectives (model and critic) train under the strategy too
    assert all(np.isfinite(value) for value in mirrored_steered.values())
    assert mirrored_steered["steer"] > 0 and mirrored_steered["critic"] > 0
    assert load_cvae(tmp_path / "cvae-1.keras").critic is not None


@pytest.mark.slow
def test_mixed_bfloat16_trains_on_a_cpu_and_saves_a_float32_model(prepared, one_epoch, tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")  # the caller's own policy
    try:
        final = train(make_params(**ONE_EPOCH, precision="mixed_bfloat16"), prepared,
                      tmp_path / "cvae.keras", tmp_path / "train")
        assert keras.mixed_precision.global_policy().name == "mixed_float16"  # put back as found
    finally:
        keras.mixed_precision.set_global_policy("float32")
    # bfloat16 arithmetic: close to the float32 epoch, not the same
    assert final["loss"] == pytest.approx(one_epoch["loss"], rel=0.05) and final["loss"] != one_epoch["loss"]
    model = load_cvae(tmp_path / "cvae.keras")
    assert {layer.dtype_policy.name for layer in model.encoder.layers + model.decoder.layers} == {"float32"}
    condition = np.ones((2, model.n_attributes), np.float32)
    images = np.full((2, 16, 16, 3), 0.5, np.float32)
    for output in (model([images, condition]), model.generate(condition, seed=0)):
        assert keras.backend.standardize_dtype(output.dtype) == "float32"


@pytest.mark.slow
def test_steered_training_keeps_its_critic_and_names_an_unknown_attribute(prepared, tmp_path):
    with pytest.raises(CvaeError, match=r"train.steer_attributes: 'Smilng' is not an attribute of the data; did you"
                                        r" mean 'Smiling'\?"):
        train(make_params(**ONE_EPOCH, steer_weight=10.0, steer_attributes=["Smilng"]), prepared,
              tmp_path / "bad.keras", tmp_path / "bad")
    assert not (tmp_path / "bad.keras").exists()
    final = train(make_params(**ONE_EPOCH, steer_weight=10.0, steer_attributes=["Smiling", "Male"]), prepared,
                  tmp_path / "cvae.keras", tmp_path / "train")
    assert final["steer"] > 0 and final["critic"] > 0 and "val_steer" in final
    model = load_cvae(tmp_path / "cvae.keras")
    chosen = [name for name, on in zip(model.attribute_names, model.loss_weights.steer_mask) if on]
    assert chosen == sorted(chosen, key=model.attribute_names.index) and set(chosen) == {"Smiling", "Male"}


@pytest.mark.slow
def test_on_a_gpu_the_step_is_really_compiled_with_xla(prepared, one_epoch, tmp_path, monkeypatch, capsys):
    """Keras drops jit_compile=True while op determinism is on; on a GPU train turns
    determinism off so that XLA is used. The GPU is pretended (XLA compiles on a CPU too)."""
    from cvae.model import train as training

    monkeypatch.setattr(training, "_gpus", lambda: ["GPU:0"])  # one: no MirroredStrategy
    try:
        final = train(make_params(**ONE_EPOCH), prepared, tmp_path / "cvae.keras", tmp_path / "train")
        assert not is_op_determinism_enabled()
    finally:
        training.seed_everything(0)  # determinism back on for the tests after this one
    assert "train: 1 replica(s), float32, XLA on" in capsys.readouterr().out
    assert final["loss"] == pytest.approx(one_epoch["loss"], rel=0.05)  # the same epoch, compiled otherwise


def test_on_a_cpu_the_step_runs_without_xla_and_deterministically(prepared, tmp_path, capsys):
    train(make_params(**ONE_EPOCH), prepared, tmp_path / "cvae.keras", tmp_path / "train")
    assert is_op_determinism_enabled()
    assert "train: 1 replica(s), float32, XLA off" in capsys.readouterr().out


THREADS = textwrap.dedent("""
    import json
    import tensorflow as tf
    from cvae.model.train import configure_cpu_threads

    print(configure_cpu_threads())
    print(json.dumps([tf.config.threading.get_intra_op_parallelism_threads(),
                      tf.config.threading.get_inter_op_parallelism_threads()]))
""")


def _threads_in_a_fresh_process() -> tuple[str, list[int]]:
    described, numbers = run([sys.executable, "-c", THREADS], cwd=PROJECT).stdout.splitlines()[-2:]
    return described, json.loads(numbers)


@pytest.mark.slow
def test_on_a_cpu_training_runs_two_ops_at_once_each_on_half_the_cores(monkeypatch):
    from cvae.core.parallel import usable_cores
    from cvae.model.train import CPU_STEP_LANES

    for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        monkeypatch.delenv(name, raising=False)
    per_op = max(1, usable_cores() // CPU_STEP_LANES)
    assert _threads_in_a_fresh_process() == (f"{per_op} thread(s) per op, 2 ops at once", [per_op, 2])
    # a user's own setting wins, and TensorFlow is left to read it
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "3")
    assert _threads_in_a_fresh_process() == ("threads as TF_NUM_INTRAOP_THREADS=3", [0, 0])


def test_a_call_into_the_graph_runs_up_to_ten_steps_and_never_into_the_next_epoch():
    # the epochs come in one stream: a call must end where an epoch does (5087: CelebA's
    # 162,770 training faces in batches of 32, a prime number of steps)
    assert [steps_per_execution(n) for n in (100, 5087, 12, 7, 13, 2, 1)] == [10, 1, 6, 7, 1, 2, 1]


@pytest.mark.slow
def test_several_steps_a_call_train_as_one_a_call_does():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = rng.random((48, 16, 16, 3), dtype=np.float32)
    condition = rng.choice([-1.0, 1.0], size=(48, 3)).astype(np.float32)
    weights = {}
    for per_call in (1, 3):
        keras.utils.set_random_seed(0)  # the same initial weights, noise and data order
        model = tiny_cvae(steer=5.0)
        model.compile(optimizer=make_optimizer(make_params(**ONE_EPOCH).train, steps_per_epoch=6),
                      steps_per_execution=per_call)
        data = tf.data.Dataset.from_tensor_slices((images, condition)).batch(8)
        model.fit(data, epochs=1, verbose=0, shuffle=False)
        assert int(model.optimizer.iterations) == 6
        weights[per_call] = [np.asarray(w) for w in model.weights]
    # Six Adam steps amplify the last bits of float32 sums, whose order oneDNN picks per CPU
    # type (a weight of 384 differed by 1e-5 relative with AVX2 kernels); a wrong step or data
    # order moves the weights by about the learning rate, a hundred times more than this.
    for ours, keras_own in zip(weights[3], weights[1]):
        np.testing.assert_allclose(ours, keras_own, rtol=1e-4, atol=1e-5)
