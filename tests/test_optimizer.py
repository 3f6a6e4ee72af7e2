"""FusedAdam: Keras's Adam, each variable's update in one fused op."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cvae.model.speedups import FusedAdam


def run_steps(optimizer, steps: int = 5) -> list[np.ndarray]:
    """The weights of three variables after `steps` updates with fixed random gradients."""
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=shape).astype("float32")) for shape in [(3, 4), (4,), (2, 2, 3)]]
    gradients = [[tf.constant(rng.normal(size=v.shape).astype("float32")) for v in variables] for _ in range(steps)]

    @tf.function
    def step(grads):
        optimizer.apply(grads, variables)

    for grads in gradients:
        step(grads)
    return [v.numpy() for v in variables]


@pytest.mark.parametrize("settings", [{}, {"global_clipnorm": 1.0, "beta_1": 0.8, "epsilon": 1e-4},
                                      {"learning_rate": keras.optimizers.schedules.CosineDecay(0.01, 10)}])
def test_fused_adam_updates_as_keras_adam(settings):
    ours = run_steps(FusedAdam(**settings))
    theirs = run_steps(keras.optimizers.Adam(**settings))
    for mine, reference in zip(ours, theirs):
        np.testing.assert_allclose(mine, reference, rtol=1e-5, atol=1e-6)
    # and it moved the weights: a no-op would pass the comparison against a no-op
    assert not np.allclose(ours[0], run_steps(FusedAdam(**settings), steps=0)[0])


def test_fused_adam_runs_one_fused_op_per_variable():
    optimizer = FusedAdam(0.01)
    variables = [keras.Variable(np.ones(shape, "float32")) for shape in [(3,), (2, 2), (4,)]]
    optimizer.build(variables)
    grads = [tf.ones_like(v.value) for v in variables]

    def step():
        optimizer.apply(grads, variables)

    kinds = [op.type for op in tf.function(step).get_concrete_function().graph.get_operations()]
    assert kinds.count("ResourceApplyAdam") == len(variables)
    # no update of Keras's own (m, v and the variable each assigned apart), and the step's
    # powers of the betas once, not once per variable
    assert not {"AssignAddVariableOp", "AssignSubVariableOp"} & set(kinds)
    assert kinds.count("Pow") == 2


def test_amsgrad_keeps_keras_update():
    ours = run_steps(FusedAdam(amsgrad=True))
    theirs = run_steps(keras.optimizers.Adam(amsgrad=True))
    for mine, reference in zip(ours, theirs):
        np.testing.assert_allclose(mine, reference, rtol=1e-6)


def test_fused_adam_survives_a_save_and_load(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=FusedAdam(0.01), loss="mse")
    model.fit(np.ones((4, 2)), np.ones((4, 1)), verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer, FusedAdam)
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 1
