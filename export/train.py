"""`cxr train`: train a registered CNN on a manifest, select on validation, write a run folder.

The run folder holds `model.keras`, `split.csv` (the patient-disjoint split, for audit), `history.json`,
`curves.png` (loss, accuracy, AUROC; train vs validation), `train.json` (command, settings, timings,
the validation threshold), `val_predictions.csv` (for `cxr crossval`) and a copy of the lung segmenter. `cxr export` turns it into a model repository
entry; `cxr evaluate` measures it on the test split through the ONNX graph.

Against the source shortcut (see the model card): the shared preprocessing crops to the lungs and applies
CLAHE; augmentation perturbs what differs by source (JPEG quality, blur, resolution, contrast, field of
view) and not anatomy (no flips: the heart is on the left); non-COVID images from the COVID source
(ieee8023) get a fixed share of the negative class's weight so the network must separate COVID from
other pneumonias *within* that source; and checkpoints are selected on the mean of overall and
within-source validation AUROC, not on overall AUROC, which the shortcut alone can push to ~1.
Options, off by default because cross-validation did not show them helping (see the model card):
`--adversary` (gradient reversal against the origin of non-COVID images) and `--annotations` (synthetic
marks on every class). Every epoch logs the validation origin gap (export.metrics.origin_gap).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from export.dataset import (
    LABELS_BINARY,
    LABELS_THREE,
    Row,
    fold_split,
    read_manifest,
    split_by_patient,
    target,
    write_split,
)
from export.icu import TRAIN as TRAIN_STYLE
from export.icu import burn_text, film_geometry, icu_film, paint_devices
from export.invariance import InvariantSteps
from export.metrics import auroc, choose_threshold, mixed_origins, origin_gap, origin_gap_pairs
from export.options import INVARIANCE_UNITS, PAIR_CROPS, TrainOptions, command_line
from service.imaging.decode import decode_file
from service.imaging.preprocess import Geometry, MaskFn, PreprocessSpec, crop_and_finish, finish, locate

if TYPE_CHECKING:
    from export.architectures import Architecture

logger = logging.getLogger(__name__)


def add_flags(parser: argparse.ArgumentParser) -> None:
    from export.architectures import REGISTRY

    parser.add_argument("--manifest", required=True, help="manifest CSV (file,label,source,patient_id,...)")
    parser.add_argument("--arch", default="compact", choices=sorted(REGISTRY))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--out", required=True, help="run folder to create")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--patience", type=int, default=10, help="early stopping on the validation score")
    parser.add_argument(
        "--seed", type=int, default=1337, help="seed of the split (and of training, by default)"
    )
    parser.add_argument(
        "--model-seed",
        type=int,
        default=None,
        help="seed of initialisation and augmentation only (ensemble members on the same split)",
    )
    parser.add_argument("--task", choices=["binary", "three-class"], default="binary")
    parser.add_argument(
        "--segmenter", default=None, help="lungseg.onnx for lung cropping ('none' turns it off)"
    )
    parser.add_argument("--input-size", type=int, default=None, help="override the architecture's input size")
    parser.add_argument(
        "--weights", choices=["imagenet"], default=None, help="pretrained weights you have locally"
    )
    parser.add_argument(
        "--source-balance",
        type=float,
        default=0.35,
        help="share of the negative class weight given to negatives from COVID sources",
    )
    parser.add_argument(
        "--weight-average",
        type=float,
        default=0.0,
        help="per-epoch exponential average of the weights (e.g. 0.75); selection, the threshold and the "
        "saved model use the averaged weights (0 turns it off)",
    )
    parser.add_argument(
        "--adversary",
        type=float,
        default=0.0,
        help="strength of a domain-adversarial head (gradient reversal) that tries to tell the origin of "
        "non-COVID images from the pooled features; ramps up from 0 (0 turns it off)",
    )
    parser.add_argument(
        "--annotations",
        type=float,
        default=0.0,
        help="probability of burning synthetic letters, digits, arrows and circles into a training image "
        "of any class (paper figures carry them, hospital films mostly do not)",
    )
    parser.add_argument(
        "--icu",
        type=float,
        default=0.5,
        help="probability of turning a training image of any class into a ward film (export.icu: tubes, "
        "lines, ECG leads, pacemakers, burned-in text, tilt inside collimation borders, portable exposure), "
        "so that devices stop being evidence of COVID (0 turns it off)",
    )
    parser.add_argument(
        "--invariance",
        type=float,
        default=1.0,
        help="weight of the counterfactual penalty (export.invariance): every training film is seen as it is "
        "and with devices and text painted on, and the squared difference of the two logits is added to the "
        "loss, its weight rising over the first 30 %% of the epochs, from which no epoch is selected (0 turns it "
        "off; not combined with --adversary)",
    )
    parser.add_argument(
        "--invariance-units",
        choices=INVARIANCE_UNITS,
        default="logit",
        help="what the counterfactual penalty measures the gap in: raw logits, or units of the batch's logit "
        "spread (its variance), which shrinking every logit cannot lower",
    )
    parser.add_argument(
        "--pair-crop",
        choices=PAIR_CROPS,
        default="shared",
        help="the painted half of a counterfactual pair is cropped at the clean film's lung box (shared) or "
        "at the box the segmenter finds on the painted film, as the service would (relocated)",
    )
    parser.add_argument(
        "--pair-geometry",
        type=float,
        default=0.0,
        help="probability that the painted half of a counterfactual pair is also tilted inside collimation "
        "borders (export.icu.film_geometry), so the penalty covers a tilted film too (0 turns it off)",
    )
    parser.add_argument(
        "--folds",
        type=int,
        default=0,
        help="cross-validation: regroup train+val into this many patient-disjoint folds (test untouched)",
    )
    parser.add_argument(
        "--fold", type=int, default=0, help="with --folds: the fold (0-based) held out as val"
    )
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--test-fraction", type=float, default=0.15)
    parser.add_argument("--min-sensitivity", type=float, default=0.90, help="threshold rule on validation")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N rows (smoke tests)")


@dataclass
class Example:
    row: Row
    pixels: np.ndarray
    geometry: Geometry
    target: int


def load_examples(
    rows: Sequence[Row], labels: Sequence[str], spec: PreprocessSpec, segment: MaskFn | None
) -> list[Example]:
    """Decode through the service's decoder and locate the crop once per image (cached for all epochs)."""
    examples = []
    for row in rows:
        pixels = decode_file(str(row.path)).pixels
        examples.append(Example(row, pixels, locate(pixels, spec, segment), target(row.label, labels)))
    return examples


def training_tensor(example: Example, spec: PreprocessSpec) -> np.ndarray:
    """Unaugmented training input: the same function calls as `service.imaging.preprocess.preprocess`."""
    return crop_and_finish(example.pixels, example.geometry, spec)


_ANNOTATION_TEXT = list("0123456789ABCDELRabcd+-")


def annotate(image: np.ndarray, box: tuple[int, int, int, int], rng: np.random.Generator) -> np.ndarray:
    """A copy of `image` with 1-3 marks burned in over the lung box: the letters, severity digits, arrows
    and circles of paper figures (ieee8023's COVID images carry them; a class activation map of v1 peaked
    on such digits). Drawn on every class, they stop being evidence of COVID."""
    marked = image.copy()
    x0, y0, x1, y1 = box
    size = max(x1 - x0, y1 - y0)
    for _ in range(int(rng.integers(1, 4))):
        colour = int(rng.choice([0, 255]))
        thickness = int(rng.integers(1, 4))
        point = (int(rng.integers(x0, max(x0 + 1, x1))), int(rng.integers(y0, max(y0 + 1, y1))))
        kind = rng.integers(3)
        if kind == 0:
            text = "".join(rng.choice(_ANNOTATION_TEXT, size=int(rng.integers(1, 4))))
            scale = rng.uniform(0.02, 0.07) * size / 22.0  # Hershey simplex is ~22 px tall at scale 1
            cv2.putText(marked, text, point, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)
        elif kind == 1:
            length, angle = rng.uniform(0.06, 0.18) * size, rng.uniform(0, 2 * np.pi)
            tail = (int(point[0] + length * np.cos(angle)), int(point[1] + length * np.sin(angle)))
            cv2.arrowedLine(marked, tail, point, colour, thickness, cv2.LINE_AA, tipLength=0.3)
        else:
            radius = int(rng.uniform(0.03, 0.12) * size)
            cv2.circle(marked, point, max(radius, 2), colour, thickness, cv2.LINE_AA)
    return marked


def augment(
    example: Example,
    spec: PreprocessSpec,
    rng: np.random.Generator,
    annotations: float = 0.0,
    icu: float = 0.0,
    overlay_rng: np.random.Generator | None = None,
    relocate: MaskFn | None = None,
    pair_geometry: float = 0.0,
) -> np.ndarray:
    """A randomly perturbed training input: synthetic annotations (with probability `annotations`), a
    ward film's devices, text, tilt and exposure (with probability `icu`, export.icu's TRAIN style), and
    photometric changes on the whole image, then a jittered, slightly rotated crop around the lung box."""
    image = example.pixels
    box = example.geometry.box
    if annotations > 0 and rng.random() < annotations:  # no draw when off: older runs' streams reproduce
        image = annotate(image, box, rng)
    if icu > 0 and rng.random() < icu:
        # Drawn on films of every label with the same probability: a device must say nothing of the label.
        image, box = icu_film(image, box, rng, TRAIN_STYLE)
    if overlay_rng is not None:
        # The painted half of a counterfactual pair (export.invariance): its own random stream, so every
        # other choice below is the same as for the clean half drawn with the same `rng` state.
        image = paint_devices(image, box, overlay_rng, TRAIN_STYLE)
        if overlay_rng.random() < 0.5:
            image = burn_text(image, overlay_rng, TRAIN_STYLE)
        if pair_geometry > 0 and overlay_rng.random() < pair_geometry:
            # A tilted film inside collimation borders is the same patient: the pair covers that too.
            image, box = film_geometry(image, box, overlay_rng)
        if relocate is not None:
            # As the service does: the lung box is found again on the painted film, and a device can
            # move it (measured on validation: box IoU 0.92 on average), so the pair also teaches
            # that a crop moved by a device does not change the answer.
            box = locate(image, spec, relocate).box
    if rng.random() < 0.5:
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(20, 95))])
        reencoded = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE) if ok else None
        image = reencoded if reencoded is not None else image
    if rng.random() < 0.3:
        factor = rng.uniform(0.35, 0.8)
        small = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        image = cv2.resize(small, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.5))
    values = image.astype(np.float32) / 255.0
    values = values ** rng.uniform(0.7, 1.45)
    values = (values - 0.5) * rng.uniform(0.75, 1.35) + 0.5 + rng.uniform(-0.1, 0.1)
    if rng.random() < 0.2:
        values = values + rng.normal(0, rng.uniform(0.005, 0.03), values.shape)
    image = np.clip(values * 255.0, 0, 255).astype(np.uint8)

    x0, y0, x1, y1 = box
    width, height = x1 - x0, y1 - y0
    scale_x, scale_y = rng.uniform(0.9, 1.18, size=2)
    center_x = (x0 + x1) / 2 + rng.uniform(-0.06, 0.06) * width
    center_y = (y0 + y1) / 2 + rng.uniform(-0.06, 0.06) * height
    size = spec.input_size
    matrix = cv2.getRotationMatrix2D((center_x, center_y), rng.uniform(-7, 7), 1.0)
    # Map the jittered box onto the output square: translate its corner to 0, then scale.
    half_w, half_h = width * scale_x / 2, height * scale_y / 2
    to_output = np.array([[size / (2 * half_w), 0, 0], [0, size / (2 * half_h), 0]], dtype=np.float64)
    matrix[0, 2] -= center_x - half_w
    matrix[1, 2] -= center_y - half_h
    affine = to_output[:, :2] @ matrix
    fill = int(rng.choice([0, int(np.median(image))]))
    crop = cv2.warpAffine(
        image,
        affine,
        (size, size),
        flags=cv2.INTER_AREA if width > size else cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=fill,
    )
    return finish(crop, spec)[:, :, None]


def sample_weights(examples: Sequence[Example], source_balance: float) -> np.ndarray:
    """Balance classes; within negatives, give negatives from COVID-bearing origins `source_balance` share."""
    targets = np.array([e.target for e in examples])
    origins = np.array([e.row.origin for e in examples])
    covid_origins = {o for o, t in zip(origins, targets, strict=True) if t == targets.max()}
    weights = np.zeros(len(examples))
    total = float(len(examples))
    classes = np.unique(targets)
    for cls in classes:
        members = targets == cls
        share = total / len(classes)
        if cls == targets.max() or source_balance <= 0:
            weights[members] = share / members.sum()
            continue
        inside = members & np.isin(origins, list(covid_origins))
        outside = members & ~inside
        if inside.any() and outside.any():
            weights[inside] = share * source_balance / inside.sum()
            weights[outside] = share * (1 - source_balance) / outside.sum()
        else:
            weights[members] = share / members.sum()
    return weights.astype(np.float32)


def _columns(examples: Sequence[Example]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(is COVID, origin, manifest label) per example, for the metrics in export.metrics."""
    return (
        np.array([e.row.label == "covid" for e in examples]),
        np.array([e.row.origin for e in examples]),
        np.array([e.row.label for e in examples]),
    )


def origin_targets(examples: Sequence[Example]) -> tuple[np.ndarray, np.ndarray]:
    """The adversary's task: (1 for a non-COVID image from a COVID-bearing origin, else 0; weights). Only
    non-COVID images count, and within each non-COVID label both origins carry the same weight (each
    label's cell weighted by its share of the negatives), so the features are pushed to say nothing about
    where a negative came from (the source shortcut: COVID images all come from one origin) without being
    pushed away from pneumonia, which ieee8023's negatives mostly are and NIH's only half."""
    covid, origins, labels = _columns(examples)
    inside, counted = origin_gap_pairs(covid, origins, labels)
    weights = np.zeros(len(examples), dtype=np.float32)
    for label in set(labels[counted]):
        cell = counted & (labels == label)
        weights[cell & inside] = 0.5 * cell.sum() / (cell & inside).sum()
        weights[cell & ~inside] = 0.5 * cell.sum() / (cell & ~inside).sum()
    return inside.astype(np.float32), weights


def source_gap_auroc(examples: Sequence[Example], scores: np.ndarray) -> float | None:
    """export.metrics.origin_gap of the examples' COVID scores: 0.5 when the score carries no trace of
    the origin among negatives of the same label, 1.0 for the pure shortcut."""
    return origin_gap(*_columns(examples), scores)


def average_weights(
    averaged: list[np.ndarray] | None, current: list[np.ndarray], decay: float
) -> list[np.ndarray]:
    """decay * averaged + (1 - decay) * current for float weights (batch-norm statistics included);
    anything else (integer counters, seed states) is taken from `current`."""
    if averaged is None:
        return [w.copy() for w in current]
    return [
        (decay * a + (1.0 - decay) * c).astype(c.dtype) if np.issubdtype(c.dtype, np.floating) else c.copy()
        for a, c in zip(averaged, current, strict=True)
    ]


def positive_scores(logits: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    if logits.shape[1] == 1:
        return np.asarray(1.0 / (1.0 + np.exp(-logits[:, 0])))
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray((shifted / shifted.sum(axis=1, keepdims=True))[:, list(labels).index("covid")])


def within_source_auroc(examples: Sequence[Example], scores: np.ndarray) -> float | None:
    """AUROC among images of origins that have both classes (ieee8023): what the source cue cannot explain."""
    covid, origins, _ = _columns(examples)
    keep = mixed_origins(covid, origins)
    return auroc(covid[keep], scores[keep]) if keep.any() else None


def adversarial_model(model: Any, loss: Any) -> tuple[Any, Any]:
    """(training model with outputs [logits, origin logit], the strength variable of its gradient
    reversal). The origin head reads the pooled features through a layer that passes them forward
    unchanged and sends back minus `strength` times the gradient (Ganin & Lempitsky 2015): the head learns
    to tell origins apart while the features learn not to let it. Only the classifier is saved and exported."""
    import keras
    import tensorflow as tf
    from keras import layers

    try:
        pooled = model.get_layer("gap").output
    except ValueError:
        raise ValueError("--adversary needs an architecture with a global-average-pooling head") from None
    strength = keras.Variable(0.0, trainable=False, name="reversal_strength")

    class GradientReversal(layers.Layer):  # type: ignore[misc]  # keras is untyped
        def call(self, inputs: Any) -> Any:
            @tf.custom_gradient
            def reverse(tensor: Any) -> Any:
                return tf.identity(tensor), lambda upstream: -strength * upstream

            return reverse(inputs)

    x = GradientReversal(name="reversal")(pooled)
    x = layers.Dense(64, activation="relu", name="origin_hidden")(x)
    x = layers.Dropout(0.3, name="origin_dropout")(x)
    origin = layers.Dense(1, name="origin")(x)
    combined = keras.Model(model.input, [model.output, origin], name="adversarial")
    combined.compile(
        optimizer=model.optimizer, loss=[loss, keras.losses.BinaryCrossentropy(from_logits=True)]
    )
    return combined, strength


def reversal_strength(epoch: int, epochs: int, maximum: float) -> float:
    """Ganin & Lempitsky's ramp: 0 at the start, ~maximum after about half the epochs."""
    progress = (epoch - 1) / max(1, epochs - 1)
    return float(maximum * (2.0 / (1.0 + np.exp(-10.0 * progress)) - 1.0))


@dataclass(frozen=True)
class TrainingData:
    """What `load` prepares: the split, the decoded examples and the fixed validation inputs."""

    labels: list[str]
    spec: PreprocessSpec
    rows: list[Row]
    split: dict[str, str]
    train: list[Example]
    val: list[Example]
    val_x: np.ndarray
    val_t: np.ndarray
    sample_weights: np.ndarray
    crop_stats: dict[str, dict[str, int]]
    segment: MaskFn | None = None

    @property
    def positive(self) -> int:
        """Target of the positive (COVID) class."""
        return max(e.target for e in self.train)

    @property
    def outputs(self) -> int:
        """Logits of the network: one for a binary task, one per class otherwise."""
        return 1 if len(self.labels) == 2 else len(self.labels)


@dataclass(frozen=True)
class Network:
    """The classifier, its loss, and what `fit` trains: the classifier, or it with the origin adversary."""

    arch: Architecture
    model: Any
    feature_layer: str | None
    loss: Any
    fitted: Any
    strength: Any | None
    """The gradient reversal's strength variable; None without an adversary."""
    invariant: InvariantSteps | None = None
    """The counterfactual pair steps (export.invariance); None when `invariance` is 0."""


@dataclass
class Checkpoint:
    """The epoch selected so far on validation: its summary (train.json's `best`), weights and val scores."""

    best: dict[str, Any]
    weights: list[np.ndarray]
    val_scores: np.ndarray


@dataclass(frozen=True)
class Fit:
    """What `fit` returns: the per-epoch history, the selected checkpoint and the last epoch's val scores."""

    history: list[dict[str, Any]]
    selected: Checkpoint
    last_val_scores: np.ndarray


def train(options: TrainOptions, *, command: str | None = None) -> dict[str, Any]:
    """Train one run into `options.out` (model.keras, split.csv, history, curves, train.json, val scores);
    `command` is the command line recorded in train.json. Returns train.json's content."""
    import keras

    keras.utils.set_random_seed(options.training_seed)
    started = time.monotonic()
    options.out.mkdir(parents=True, exist_ok=True)
    data = load(options)
    network = build_network(options, data)
    result = fit(options, data, network)
    threshold = select(options, data, network, result)
    return write(options, data, network, result, threshold, started=started, command=command)


def load(options: TrainOptions) -> TrainingData:
    """Read the manifest, split it by patient (into folds with `folds`), write split.csv, decode the
    train and val images and locate their crops once."""
    from export.architectures import REGISTRY
    from service.inference.model import Segmenter

    labels = LABELS_BINARY if options.task == "binary" else LABELS_THREE
    input_size = options.input_size or REGISTRY[options.arch].input_size
    segmenter = options.segmenter_path
    spec = PreprocessSpec(input_size=input_size, lung_crop=segmenter is not None)
    segment = Segmenter(segmenter, spec) if segmenter is not None else None
    rows = read_manifest(options.manifest)[: options.limit]
    split = split_by_patient(
        rows, seed=options.seed, val_fraction=options.val_fraction, test_fraction=options.test_fraction
    )
    if options.folds:
        split = fold_split(split, rows, folds=options.folds, fold=options.fold, seed=options.seed)
    write_split(options.out / "split.csv", rows, split)
    train_rows = [r for r in rows if split[r.file] == "train"]
    val_rows = [r for r in rows if split[r.file] == "val"]
    logger.info(
        "split: %d train, %d val, %d test images (patient-disjoint)",
        len(train_rows),
        len(val_rows),
        sum(1 for r in rows if split[r.file] == "test"),
    )
    train_examples = load_examples(train_rows, labels, spec, segment)
    val_examples = load_examples(val_rows, labels, spec, segment)
    crop_stats = _crop_stats(train_examples + val_examples)
    logger.info("lung crop by origin: %s", crop_stats)
    return TrainingData(
        labels=labels,
        spec=spec,
        rows=rows,
        split=split,
        train=train_examples,
        val=val_examples,
        val_x=np.stack([training_tensor(e, spec) for e in val_examples]),
        val_t=np.array([e.target for e in val_examples]),
        sample_weights=sample_weights(train_examples, options.source_balance),
        crop_stats=crop_stats,
        segment=segment,
    )


def build_network(options: TrainOptions, data: TrainingData) -> Network:
    """The registered architecture, compiled with Adam on a cosine schedule, and the adversary if asked."""
    import keras

    from export.architectures import REGISTRY, build

    model, feature_layer = build(
        options.arch, data.outputs, weights=options.weights, input_size=data.spec.input_size
    )
    loss = (
        keras.losses.BinaryCrossentropy(from_logits=True)
        if data.outputs == 1
        else keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    steps = max(1, int(np.ceil(len(data.train) / options.batch_size)))
    schedule = keras.optimizers.schedules.CosineDecay(
        options.learning_rate, decay_steps=steps * options.epochs, alpha=0.05
    )
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss)
    fitted, strength = adversarial_model(model, loss) if options.adversary > 0 else (model, None)
    invariant = (
        InvariantSteps(model, loss, options.invariance, options.invariance_units)
        if options.invariance > 0
        else None
    )
    return Network(REGISTRY[options.arch], model, feature_layer, loss, fitted, strength, invariant)


def invariance_ramp(epochs: int) -> int:
    """Epochs over which the counterfactual penalty's weight rises linearly to its full value: at full
    weight from the start it flattens an untrained network to a constant (measured: a run at 2.0 stayed at
    chance, cross-entropy 0.68, for 17 epochs)."""
    return max(1, round(0.3 * epochs))


def fit(options: TrainOptions, data: TrainingData, network: Network) -> Fit:
    """Train epoch by epoch, keep the epoch with the best validation selection score, stop after
    `patience` epochs without improvement. The model is left with the last epoch's raw weights."""
    model = network.model
    origin_t, origin_w = origin_targets(data.train)
    rng = np.random.default_rng(options.training_seed)
    history: list[dict[str, Any]] = []
    selected: Checkpoint | None = None
    averaged: list[np.ndarray] | None = None
    for epoch in range(1, options.epochs + 1):
        epoch_started = time.monotonic()
        losses, train_x, train_t = _train_epoch(options, data, network, rng, epoch, origin_t, origin_w)
        train_logits = model.predict(train_x, batch_size=64, verbose=0)
        val_logits = model.predict(data.val_x, batch_size=64, verbose=0)
        raw_val_auc = auroc(data.val_t == data.positive, positive_scores(val_logits, data.labels))
        if options.weight_average > 0:
            # Validation AUROC swings by 0.05-0.2 between epochs (small val set, batch-norm statistics
            # that move with the last batches): an average of recent weights is steadier, and it is the
            # model that is validated, selected and saved.
            current = model.get_weights()
            averaged = average_weights(averaged, current, options.weight_average)
            model.set_weights(averaged)
            val_logits = model.predict(data.val_x, batch_size=64, verbose=0)
        record, val_scores = _epoch_record(
            data, network, epoch, losses, train_t, train_logits, val_logits, raw_val_auc
        )
        record["seconds"] = round(time.monotonic() - epoch_started, 1)
        history.append(record)
        _log_epoch(record, options.epochs)
        # Strictly better only: on a tie the earlier epoch stays selected. With the counterfactual
        # penalty, only epochs trained at its full weight may be selected (an earlier epoch can score
        # higher on validation precisely because it still reads the devices).
        ramped = network.invariant is None or epoch >= invariance_ramp(options.epochs)
        if ramped and (selected is None or record["selection_score"] > selected.best["score"]):
            selected = Checkpoint(_best_summary(record), model.get_weights(), val_scores)
        stop = selected is not None and epoch - selected.best["epoch"] >= options.patience
        if options.weight_average > 0:
            model.set_weights(current)  # training goes on from the raw weights
        if stop:
            logger.info("early stop: no validation improvement for %d epochs", options.patience)
            break
    if selected is None:  # unreachable: epochs >= 1, and the last epoch is past the ramp
        raise ValueError("no epoch was trained")
    return Fit(history, selected, val_scores)


def _train_epoch(
    options: TrainOptions,
    data: TrainingData,
    network: Network,
    rng: np.random.Generator,
    epoch: int,
    origin_t: np.ndarray,
    origin_w: np.ndarray,
) -> tuple[dict[str, float | None], np.ndarray, np.ndarray]:
    """One pass over freshly augmented, shuffled training images: ({loss, origin_loss}, inputs, targets)."""
    order = rng.permutation(len(data.train))
    train_t = np.array([data.train[i].target for i in order], dtype=np.float32)
    class_t = train_t if data.outputs > 1 else train_t[:, None]
    weights = data.sample_weights[order]
    if network.invariant is not None:
        network.invariant.set_weight(options.invariance * min(1.0, epoch / invariance_ramp(options.epochs)))
        seeds = rng.integers(0, 2**62, size=len(order))
        relocate = data.segment if options.pair_crop == "relocated" else None
        train_x = np.stack(
            [
                augment(
                    data.train[i], data.spec, np.random.default_rng(seed), options.annotations, options.icu
                )
                for i, seed in zip(order, seeds, strict=True)
            ]
        )
        painted = np.stack(
            [
                augment(
                    data.train[i],
                    data.spec,
                    np.random.default_rng(seed),
                    options.annotations,
                    options.icu,
                    overlay_rng=np.random.default_rng(seed + 1),
                    relocate=relocate,
                    pair_geometry=options.pair_geometry,
                )
                for i, seed in zip(order, seeds, strict=True)
            ]
        )
        entropy, penalty = network.invariant.epoch(train_x, painted, class_t, weights, options.batch_size)
        return {"loss": entropy, "origin_loss": None, "invariance_penalty": penalty}, train_x, train_t
    train_x = np.stack(
        [augment(data.train[i], data.spec, rng, options.annotations, options.icu) for i in order]
    )
    if network.strength is None:
        fitted = network.model.fit(
            train_x, class_t, sample_weight=weights, batch_size=options.batch_size, epochs=1, verbose=0
        )
        return {"loss": float(fitted.history["loss"][-1]), "origin_loss": None}, train_x, train_t
    network.strength.assign(reversal_strength(epoch, options.epochs, options.adversary))
    fitted = network.fitted.fit(
        train_x,
        [class_t, origin_t[order][:, None]],
        sample_weight=[weights, origin_w[order]],
        batch_size=options.batch_size,
        epochs=1,
        verbose=0,
    )
    losses: dict[str, float | None] = {
        "loss": float(fitted.history[f"{network.fitted.output_names[0]}_loss"][-1]),
        "origin_loss": float(fitted.history["origin_loss"][-1]),
    }
    return losses, train_x, train_t


def _epoch_record(
    data: TrainingData,
    network: Network,
    epoch: int,
    losses: dict[str, float | None],
    train_t: np.ndarray,
    train_logits: np.ndarray,
    val_logits: np.ndarray,
    raw_val_auc: float | None,
) -> tuple[dict[str, Any], np.ndarray]:
    """(the epoch's history.json entry, less `seconds`; the validation COVID scores). The selection score
    is the mean of overall and within-source validation AUROC (overall alone where there is no mix)."""
    positive = data.positive
    val_t = data.val_t
    val_loss = float(
        network.loss(val_t if data.outputs > 1 else val_t[:, None].astype(np.float32), val_logits)
    )
    train_scores = positive_scores(train_logits, data.labels)
    val_scores = positive_scores(val_logits, data.labels)
    val_within = within_source_auroc(data.val, val_scores)
    val_auc = auroc(val_t == positive, val_scores) or 0.0
    record = {
        "epoch": epoch,
        "loss": losses["loss"],
        "val_loss": val_loss,
        "accuracy": float(np.mean((train_scores >= 0.5) == (train_t == positive))),
        "val_accuracy": float(np.mean((val_scores >= 0.5) == (val_t == positive))),
        "auroc": auroc(train_t == positive, train_scores),
        "val_auroc": val_auc,
        "val_within_source_auroc": val_within,
        "val_auroc_raw_weights": raw_val_auc,
        "val_source_gap_auroc": source_gap_auroc(data.val, val_scores),
        "origin_loss": losses["origin_loss"],
        "invariance_penalty": losses.get("invariance_penalty"),
        "reversal_strength": float(network.strength.numpy()) if network.strength is not None else None,
        "selection_score": (val_auc + val_within) / 2 if val_within is not None else val_auc,
    }
    return record, val_scores


def _log_epoch(record: dict[str, Any], epochs: int) -> None:
    """One log line per epoch."""
    within, gap = record["val_within_source_auroc"], record["val_source_gap_auroc"]
    logger.info(
        "epoch %d/%d loss %.4f val_loss %.4f val AUROC %.4f within-source %s source gap %s score %.4f "
        "(%.0fs)",
        record["epoch"],
        epochs,
        record["loss"],
        record["val_loss"],
        record["val_auroc"],
        f"{within:.4f}" if within is not None else "n/a",
        f"{gap:.3f}" if gap is not None else "n/a",
        record["selection_score"],
        record["seconds"],
    )


def _best_summary(record: dict[str, Any]) -> dict[str, Any]:
    """train.json's `best`: the selected epoch's score and validation measures."""
    keys = ("epoch", "val_auroc", "val_within_source_auroc", "val_source_gap_auroc")
    return {"score": record["selection_score"], **{key: record[key] for key in keys}}


def select(options: TrainOptions, data: TrainingData, network: Network, result: Fit) -> float:
    """Put the selected epoch's weights into the classifier; return the threshold chosen on its validation
    scores (highest specificity with sensitivity >= `min_sensitivity`)."""
    network.model.set_weights(result.selected.weights)
    return choose_threshold(data.val_t == data.positive, result.selected.val_scores, options.min_sensitivity)


def write(
    options: TrainOptions,
    data: TrainingData,
    network: Network,
    result: Fit,
    threshold: float,
    *,
    started: float,
    command: str | None,
) -> dict[str, Any]:
    """Write the run folder's model.keras, lungseg.onnx copy, val_predictions.csv, history.json,
    train.json and curves.png; returns train.json's content."""
    out = options.out
    network.model.save(out / "model.keras")
    if options.segmenter_path is not None:
        shutil.copyfile(options.segmenter_path, out / "lungseg.onnx")
    summary = _summary(options, data, network, result, threshold, command)
    summary["train_seconds"] = round(time.monotonic() - started, 1)
    summary["epochs_run"] = len(result.history)
    write_val_predictions(
        out / "val_predictions.csv", data.val, result.selected.val_scores, result.last_val_scores
    )
    (out / "history.json").write_text(json.dumps(result.history, indent=2))
    (out / "train.json").write_text(json.dumps(summary, indent=2))
    plot_curves(result.history, out / "curves.png")
    best = result.selected.best
    logger.info(
        "best epoch %d: val AUROC %.4f, within-source %s; threshold %.4f; %.0f s",
        best["epoch"],
        best["val_auroc"],
        best["val_within_source_auroc"],
        threshold,
        summary["train_seconds"],
    )
    return summary


def _summary(
    options: TrainOptions,
    data: TrainingData,
    network: Network,
    result: Fit,
    threshold: float,
    command: str | None,
) -> dict[str, Any]:
    """train.json, less the timing and epoch count: settings, architecture, selection, threshold, split."""
    arch = network.arch
    return {
        "command": command,
        "arguments": options.arguments(),
        "architecture": {
            "name": arch.name,
            "feature_layer": network.feature_layer,
            "description": arch.description,
            "has_cam": arch.has_cam,
            "parameters": int(network.model.count_params()),
        },
        "labels": data.labels,
        "positive_label": "covid",
        "preprocessing": data.spec.to_dict(),
        "segmenter": "lungseg.onnx" if options.segmenter_path is not None else None,
        "best": result.selected.best,
        "threshold": threshold,
        "threshold_rule": f"highest validation specificity with validation sensitivity >= {options.min_sensitivity:.2f}",
        "split_counts": {
            s: sum(1 for r in data.rows if data.split[r.file] == s) for s in ("train", "val", "test")
        },
        "lung_crop": data.crop_stats,
    }


def write_val_predictions(
    path: Path, examples: Sequence[Example], selected: np.ndarray, last: np.ndarray
) -> None:
    """Validation scores of the saved (selected) model and of the last epoch, for pooling over folds."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "origin", "patient", "score_selected", "score_last"])
        for example, chosen, final in zip(examples, selected, last, strict=True):
            row = example.row
            writer.writerow([row.file, row.label, row.origin, row.group, f"{chosen:.6f}", f"{final:.6f}"])


def _crop_stats(examples: Sequence[Example]) -> dict[str, dict[str, int]]:
    stats: dict[str, dict[str, int]] = {}
    for example in examples:
        per_origin = stats.setdefault(example.row.origin, {})
        per_origin[example.geometry.lung_crop] = per_origin.get(example.geometry.lung_crop, 0) + 1
    return stats


def plot_curves(history: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for axis, key, title in zip(
        axes, ("loss", "accuracy", "auroc"), ("loss", "accuracy (at 0.5)", "AUROC"), strict=True
    ):
        axis.plot(epochs, [h[key] for h in history], label="train (augmented)")
        axis.plot(epochs, [h[f"val_{key}"] for h in history], label="validation")
        if key == "auroc":
            axis.plot(
                epochs, [h["val_within_source_auroc"] for h in history], label="validation, within ieee8023"
            )
            gap = [h.get("val_source_gap_auroc") for h in history]
            if any(value is not None for value in gap):
                axis.plot(epochs, gap, ":", label="validation, origin of negatives (0.5 = no trace)")
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.legend(fontsize=8)
    figure.suptitle("Training curves (research use only)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(args: argparse.Namespace) -> int:
    """`cxr train`: exit status 0, or 2 for bad options, a bad manifest or a missing file."""
    from export.dataset import ManifestError

    try:
        train(TrainOptions.from_args(args), command=command_line("train"))
    except (ManifestError, FileNotFoundError, ValueError) as error:
        logger.error("%s", error)
        return 2
    return 0
