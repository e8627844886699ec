"""export.invariance: the counterfactual penalty teaches a classifier to ignore what is painted on."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")


def gap_after_training(weight: float, units: str = "logit") -> float:
    import keras

    keras.utils.set_random_seed(0)
    from export.invariance import InvariantSteps

    rng = np.random.default_rng(0)
    clean = rng.uniform(0.0, 0.5, (256, 8, 8, 1)).astype(np.float32)
    target = (clean.mean(axis=(1, 2, 3)) > 0.25).astype(np.float32)[:, None]
    painted = clean.copy()
    # The "device": a bright stripe, painted on the positives' clean copies only in training data terms
    # (as real tubes lie on COVID films): a model that may use it learns it as evidence.
    clean[target[:, 0] == 1, 3, :, 0] = 1.0
    painted[:, 3, :, 0] = 1.0
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(1)])
    loss = keras.losses.BinaryCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss=loss)
    steps = InvariantSteps(model, loss, weight, units)
    for _ in range(40):
        steps.epoch(clean, painted, target, np.ones(len(clean), np.float32), 64)
    negatives = target[:, 0] == 0
    before = model.predict(clean[negatives], verbose=0)[:, 0]
    after = model.predict(painted[negatives], verbose=0)[:, 0]
    return float(np.mean(np.abs(after - before)))


def test_the_penalty_shrinks_the_answer_s_move_when_the_stripe_is_painted_on() -> None:
    without = gap_after_training(0.0)
    with_penalty = gap_after_training(5.0)
    assert with_penalty < 0.5 * without, (without, with_penalty)


def test_the_penalty_in_units_of_the_logit_spread_also_shrinks_the_move() -> None:
    without = gap_after_training(0.0)
    with_penalty = gap_after_training(5.0, "spread")
    assert with_penalty < 0.5 * without, (without, with_penalty)


def test_unknown_units_are_refused() -> None:
    import keras

    from export.invariance import InvariantSteps

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="units"):
        InvariantSteps(model, keras.losses.MeanSquaredError(), 1.0, "probability")
