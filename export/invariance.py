"""Counterfactual invariance: the classifier's answer must not move when devices or text are painted on.

Rendering ward films on every label (`cxr train --icu`) was not enough on its own: the first model trained
so still moved p(covid) by a median +0.04 when devices were painted on held-out non-COVID films (+0.02
with the very style it trained on), because the real COVID films keep their real tubes and leads, and a
painted tube looks enough like a real one to keep that cue alive. So each training film is seen twice in
one step, as it is augmented and as the same augmentation with devices (and, half the time, burned-in
text) painted on (export.icu's TRAIN style); both are classified against the label, and the squared
difference of their logits is added to the loss with weight `invariance` (counterfactual data
augmentation with a consistency penalty). The pair shares every random choice but the drawing, so the
penalty sees nothing but what lies on the film.

`units="spread"` divides that mean squared gap by the variance of the batch's logits. Measured in raw
logits the penalty can be paid by shrinking every logit (a run at weight 3.0 ended with logits so small
that calibration multiplied them by 8.4, and the calibrated answer moved as much as before); measured in
units of the batch's spread it cannot: only a smaller move relative to how far apart films lie lowers it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from export.options import INVARIANCE_UNITS


class InvariantSteps:
    """Mini-batch steps of (clean, painted) pairs on a compiled Keras classifier: cross-entropy on both
    halves plus `weight` x the mean squared difference of their logits (over the batch's logit variance
    with `units="spread"`). One tf.function, traced once."""

    def __init__(self, model: Any, loss: Any, weight: float, units: str = "logit") -> None:
        import tensorflow as tf

        self.model = model
        self.loss = loss
        # A variable, so the weight can ramp up epoch by epoch without retracing the step.
        self.weight = tf.Variable(float(weight), trainable=False, dtype=tf.float32)
        weight_variable = self.weight
        if units not in INVARIANCE_UNITS:
            raise ValueError(f"units must be 'logit' or 'spread', not {units!r}")
        spread = units == "spread"

        @tf.function(reduce_retracing=True)
        def step(clean: Any, painted: Any, target: Any, sample_weight: Any) -> tuple[Any, Any]:
            with tf.GradientTape() as tape:
                # One forward pass over both halves, so batch normalisation sees them together.
                logits = model(tf.concat([clean, painted], axis=0), training=True)
                first, second = tf.split(logits, 2, axis=0)
                both_t = tf.concat([target, target], axis=0)
                both_w = tf.concat([sample_weight, sample_weight], axis=0)
                entropy = loss(both_t, logits, sample_weight=both_w)
                gap = tf.reduce_mean(tf.square(first - second), axis=-1)
                penalty = tf.reduce_sum(gap * sample_weight) / tf.reduce_sum(sample_weight)
                if spread:
                    penalty = penalty / (tf.math.reduce_variance(logits) + 1e-3)
                total = entropy + weight_variable * penalty
            gradients = tape.gradient(total, model.trainable_variables)
            model.optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
            return entropy, penalty

        self._step = step

    def set_weight(self, weight: float) -> None:
        self.weight.assign(float(weight))

    def epoch(
        self,
        clean: np.ndarray,
        painted: np.ndarray,
        target: np.ndarray,
        sample_weight: np.ndarray,
        batch_size: int,
    ) -> tuple[float, float]:
        """One pass in the given order: (mean cross-entropy, mean logit gap penalty)."""
        entropies, penalties = [], []
        for start in range(0, len(clean), batch_size):
            part = slice(start, start + batch_size)
            entropy, penalty = self._step(
                clean[part], painted[part], target[part], sample_weight[part].astype(np.float32)
            )
            entropies.append(float(entropy))
            penalties.append(float(penalty))
        return float(np.mean(entropies)), float(np.mean(penalties))
