"""`cxr train-view`: the input-domain check's view model, and the thresholds it is used with.

A small CNN sees the border-trimmed image at 64 px (service.imaging.input_check.view_input) and answers one of 17
classes: an upright film, the same film turned 90, 180 or 270 degrees, each of those inverted, each of
those eight mirrored left-right, or "not a chest radiograph". Labels are free: the films are the
classifier's *training* split, mirrored, turned and inverted here (with small rotations, zoom, gamma and
blur inside every class); the
negatives are the FIT_KINDS of export.negatives plus training films cut into shuffled tiles. The network's
32 pooled features also give a Mahalanobis distance to the 16 film classes (class means, one shared
covariance, fitted on training films; Lee et al. 2018), exported in the same ONNX graph as `distance`.

Thresholds are chosen on the *validation* split's films (upright and transformed) and on fit-kind negatives
drawn with another seed; the test split and the held-out kinds of export.negatives are for
`cxr evaluate-domain` only. The run writes `view.onnx` and `view.json` (thresholds, counts, timings);
`--model DIR` copies both into a model version and records them in its card.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from export.dataset import read_manifest, read_split
from export.icu import TRAIN as TRAIN_STYLE
from export.icu import icu_film
from export.negatives import FIT_KINDS, generate, shuffled_tiles
from export.options import ViewOptions, command_line
from service.imaging.decode import decode_file
from service.imaging.input_check import (
    FILM_CLASSES,
    NOT_RADIOGRAPH,
    VIEW_CLASSES,
    DomainSpec,
    lung_problem,
    make_view,
)
from service.imaging.preprocess import PreprocessSpec, finish, locate, preprocess, trim_borders
from service.inference.model import OnnxModel
from service.inference.view_model import ViewModel

logger = logging.getLogger(__name__)

CANVAS = 80
"""Films and negatives are cached at this size (trimmed, squashed) and augmented down to the input size."""


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, help="the classifier's manifest (shared/data/cxr)")
    parser.add_argument("--model", required=True, help="model version folder (its split.csv and segmenter)")
    parser.add_argument("--out", required=True, help="output folder (view.onnx, view.json, caches)")
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--negatives", type=int, default=300, help="rendered negatives per fit kind")
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument(
        "--install", action="store_true", help="copy view.onnx into --model and update its card"
    )


def canvas(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Trimmed and squashed to CANVAS x CANVAS uint8: the cached form of every training image."""
    x0, y0, x1, y1 = trim_borders(image, spec)
    if x1 - x0 < 8 or y1 - y0 < 8:
        x0, y0, x1, y1 = 0, 0, image.shape[1], image.shape[0]
    return cv2.resize(image[y0:y1, x0:x1], (CANVAS, CANVAS), interpolation=cv2.INTER_AREA)


def load_films(
    manifest: Path, split: dict[str, str], which: str, cache: Path, spec: PreprocessSpec
) -> np.ndarray:
    """Canvases of every film of one split, cached as .npy (decoding 1,000 PNGs takes a while on 2 cores)."""
    path = cache / f"films_{which}.npy"
    if path.is_file():
        return np.asarray(np.load(path), dtype=np.uint8)
    rows = [r for r in read_manifest(manifest) if split.get(r.file) == which]
    films = np.stack([canvas(decode_file(str(r.path)).pixels, spec) for r in rows])
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, films)
    return films


def load_ward_films(
    manifest: Path,
    split: dict[str, str],
    which: str,
    cache: Path,
    model: OnnxModel,
    copies: int,
    seed: int,
) -> np.ndarray:
    """Canvases of `copies` ward versions of every film of one split (export.icu's TRAIN style: devices,
    text, tilt inside collimation borders, portable exposure), drawn around the lungs the model's
    segmenter finds; cached like `load_films`. These are radiographs: a sick patient's film stays one."""
    path = cache / f"ward_{which}_{copies}_{seed}.npy"
    if path.is_file():
        return np.asarray(np.load(path), dtype=np.uint8)
    rng = np.random.default_rng(seed)
    rows = [r for r in read_manifest(manifest) if split.get(r.file) == which]
    films = []
    for row in rows:
        pixels = decode_file(str(row.path)).pixels
        box = locate(pixels, model.spec, model.segmenter).box
        films += [canvas(icu_film(pixels, box, rng, TRAIN_STYLE)[0], model.spec) for _ in range(copies)]
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, np.stack(films))
    return np.stack(films)


def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image


def render_negatives(count: int, seed: int, spec: PreprocessSpec, films: np.ndarray) -> np.ndarray:
    """`count` of each fit kind, plus as many shuffled-tile films, as canvases."""
    rng = np.random.default_rng(seed + 1)
    images = [canvas(_gray(image), spec) for _, image in generate(FIT_KINDS, count, seed, size=256)]
    images += [
        canvas(shuffled_tiles(films[int(rng.integers(0, len(films)))], rng, 256), spec) for _ in range(count)
    ]
    return np.stack(images)


def augment(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Small rotation, zoom and shift, gamma and blur; CANVAS -> size x size. No left-right flip: which
    way round a film is, is one of the labels."""
    centre = (CANVAS / 2 + rng.uniform(-4, 4), CANVAS / 2 + rng.uniform(-4, 4))
    matrix = cv2.getRotationMatrix2D(centre, rng.uniform(-10, 10), rng.uniform(0.9, 1.2))
    warped = cv2.warpAffine(
        np.ascontiguousarray(image), matrix, (CANVAS, CANVAS), borderMode=cv2.BORDER_REPLICATE
    )
    gamma = rng.uniform(0.7, 1.4)
    warped = (255.0 * (warped / 255.0) ** gamma).astype(np.uint8)
    if rng.random() < 0.3:
        warped = cv2.GaussianBlur(warped, (3, 3), 0)
    return cv2.resize(warped, (size, size), interpolation=cv2.INTER_AREA)


def batch(
    films: np.ndarray,
    negatives: np.ndarray,
    rng: np.random.Generator,
    size: int,
    spec: PreprocessSpec,
    count: int,
    ward: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`count` examples: a quarter negatives, the rest films in a uniformly drawn view class, half of
    them ward films when `ward` is given."""
    x = np.empty((count, size, size, 1), np.float32)
    y = np.empty(count, np.int64)
    for index in range(count):
        if rng.random() < 0.25:
            label, image = NOT_RADIOGRAPH, negatives[int(rng.integers(0, len(negatives)))]
            image = np.rot90(image[:, ::-1] if rng.random() < 0.5 else image, int(rng.integers(0, 4)))
            image = 255 - image if rng.random() < 0.5 else image
        else:
            label = int(rng.integers(0, FILM_CLASSES))
            source = ward if ward is not None and len(ward) and rng.random() < 0.5 else films
            image = make_view(source[int(rng.integers(0, len(source)))], label)
        x[index, :, :, 0] = finish(augment(image, rng, size), spec)
        y[index] = label
    return x, y


def fixed_set(
    films: np.ndarray, negatives: np.ndarray, size: int, spec: PreprocessSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Every film in all 16 view classes and every negative, unaugmented: the validation set."""
    images, labels = [], []
    for label in range(FILM_CLASSES):
        images += [make_view(film, label) for film in films]
        labels += [label] * len(films)
    images += list(negatives)
    labels += [NOT_RADIOGRAPH] * len(negatives)
    x = np.stack(
        [
            finish(cv2.resize(np.ascontiguousarray(i), (size, size), interpolation=cv2.INTER_AREA), spec)
            for i in images
        ]
    )
    return x[:, :, :, None], np.array(labels)


def build(size: int) -> Any:
    import keras
    from keras import layers

    inputs = keras.Input((size, size, 1), name="image")
    x = inputs
    for filters in (16, 32, 48, 64):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    features = layers.Dense(32, activation="relu", name="features")(x)
    outputs = layers.Dense(len(VIEW_CLASSES), activation="softmax", name="probabilities")(features)
    return keras.Model(inputs, [outputs, features])


def fit_distance(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class means of the 16 film classes and the Cholesky factor of the shared precision matrix."""
    means = np.stack([features[labels == k].mean(axis=0) for k in range(FILM_CLASSES)])
    centred = features - means[labels]
    covariance = centred.T @ centred / len(features)
    covariance += np.eye(len(covariance)) * 1e-3 * np.trace(covariance) / len(covariance)  # shrinkage
    precision = np.linalg.inv(covariance)
    return means.astype(np.float32), np.linalg.cholesky(precision).astype(np.float32)


def min_distance(features: np.ndarray, means: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """Mahalanobis distance (not squared) to the nearest film class, as the exported graph computes it."""
    projected = (features[:, None, :] - means[None]) @ factor
    return np.asarray(np.sqrt(np.min(np.sum(projected**2, axis=2), axis=1)))


@dataclass(frozen=True)
class ViewData:
    """What `load` prepares: canvases of the split's films and of rendered negatives (fit and val seeds)."""

    spec: PreprocessSpec
    split: dict[str, str]
    train_films: np.ndarray
    val_films: np.ndarray
    negatives: np.ndarray
    val_negatives: np.ndarray
    train_ward: np.ndarray
    val_ward: np.ndarray


def train(options: ViewOptions, *, command: str | None = None) -> dict[str, Any]:
    """Train the view model, export `out/view.onnx`, choose its thresholds on validation, write
    `out/view.json` (`command` recorded in it) and, with `install`, copy both into the model version.
    Returns view.json's content."""
    import keras

    keras.utils.set_random_seed(options.seed)
    started = time.monotonic()
    data = load(options)
    model, history, val_x, val_y = fit(options, data)
    export(options, data, model, val_x)
    report = choose_thresholds(
        options.out / "view.onnx",
        val_x,
        val_y,
        data.val_films,
        options.model,
        data.spec,
        options.manifest,
        data.split,
    )
    report |= _training_report(options, data, history, command)
    report["train_seconds"] = round(time.monotonic() - started, 1)
    write(options, report)
    return report


def load(options: ViewOptions) -> ViewData:
    """The model version's split and preprocessing, the train and val films (cached under `out/cache`),
    and the negatives: `negatives` per fit kind for training, a fifth as many (at least 20) for validation."""
    model = OnnxModel(options.model)
    spec = model.spec
    split = read_split(options.model / "split.csv")
    cache = options.out / "cache"
    train_films = load_films(options.manifest, split, "train", cache, spec)
    val_films = load_films(options.manifest, split, "val", cache, spec)
    train_ward = load_ward_films(options.manifest, split, "train", cache, model, 2, options.seed)
    val_ward = load_ward_films(options.manifest, split, "val", cache, model, 1, options.seed + 7)
    negatives = render_negatives(options.negatives, options.seed, spec, train_films)
    val_negatives = render_negatives(max(20, options.negatives // 5), options.seed + 100, spec, val_films)
    logger.info(
        "films: %d train, %d val (ward copies %d, %d); negatives %d fit, %d val",
        len(train_films),
        len(val_films),
        len(train_ward),
        len(val_ward),
        len(negatives),
        len(val_negatives),
    )
    return ViewData(spec, split, train_films, val_films, negatives, val_negatives, train_ward, val_ward)


def fit(options: ViewOptions, data: ViewData) -> tuple[Any, list[dict[str, Any]], np.ndarray, np.ndarray]:
    """(the model with the weights of its best epoch by validation accuracy, the history, the fixed
    validation set x and y). Every epoch trains on 8,000 freshly drawn examples."""
    import keras

    size = options.input_size
    rng = np.random.default_rng(options.seed)
    model = build(size)
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=[keras.losses.SparseCategoricalCrossentropy(), None],
        metrics=[["accuracy"], []],
    )
    # Validation (selection, and the distance threshold) holds the val films and one ward copy of each.
    val_x, val_y = fixed_set(
        np.concatenate([data.val_films, data.val_ward]), data.val_negatives, size, data.spec
    )
    history = []
    best_accuracy, best_weights = -1.0, model.get_weights()
    for epoch in range(options.epochs):
        x, y = batch(data.train_films, data.negatives, rng, size, data.spec, 8000, data.train_ward)
        model.optimizer.learning_rate.assign(learning_rate(epoch, options.epochs))
        fitted = model.fit(x, y, batch_size=64, epochs=1, verbose=0)
        probabilities, _ = model.predict(val_x, verbose=0, batch_size=256)
        accuracy = float(np.mean(np.argmax(probabilities, axis=1) == val_y))
        history.append(
            {"epoch": epoch + 1, "loss": float(fitted.history["loss"][-1]), "val_accuracy": accuracy}
        )
        logger.info(
            "view epoch %d/%d loss %.4f val accuracy %.4f",
            epoch + 1,
            options.epochs,
            history[-1]["loss"],
            accuracy,
        )
        if accuracy > best_accuracy:  # selection on validation accuracy over all nine classes
            best_accuracy, best_weights = accuracy, model.get_weights()
    model.set_weights(best_weights)
    return model, history, val_x, val_y


def learning_rate(epoch: int, epochs: int) -> float:
    """Step schedule: full rate for half the epochs, then a quarter, then a sixteenth (`epoch` 0-based)."""
    return 2e-3 * (0.25 ** int(epoch >= epochs // 2)) * (0.25 ** int(epoch >= 3 * epochs // 4))


def export(options: ViewOptions, data: ViewData, model: Any, val_x: np.ndarray) -> None:
    """Fit the Mahalanobis distance on unaugmented training films in all 16 classes and export
    `out/view.onnx` (probabilities and distance), checked against Keras on validation samples."""
    import tensorflow as tf

    from export.tf_onnx import export_function

    size = options.input_size
    fit_x, fit_y = fixed_set(
        np.concatenate([data.train_films, data.train_ward]), data.negatives[:0], size, data.spec
    )
    _, fit_features = model.predict(fit_x, verbose=0, batch_size=256)
    means, factor = fit_distance(fit_features, fit_y)

    @tf.function(input_signature=[tf.TensorSpec((None, size, size, 1), tf.float32, name="image")])
    def serve(image: Any) -> dict[str, Any]:
        probabilities, features = model(image, training=False)
        # Constants made inside the function are embedded in the graph (captured ones become inputs).
        means_t, factor_t = tf.constant(means), tf.constant(factor)
        projected = tf.einsum("nkd,de->nke", features[:, None, :] - means_t[None], factor_t)
        distance = tf.sqrt(tf.reduce_min(tf.reduce_sum(projected**2, axis=2), axis=1))
        return {"probabilities": probabilities, "distance": distance}

    options.out.mkdir(parents=True, exist_ok=True)
    export_function(
        serve,
        options.out / "view.onnx",
        reference=lambda x: model.predict(x, verbose=0)[0],
        samples=val_x[:: max(1, len(val_x) // 128)],
        output="probabilities",
    )


def _training_report(
    options: ViewOptions, data: ViewData, history: list[dict[str, Any]], command: str | None
) -> dict[str, Any]:
    """view.json's record of how the model was trained (less `train_seconds`)."""
    return {
        "command": command,
        "input_size": options.input_size,
        "classes": list(VIEW_CLASSES),
        "train_films": len(data.train_films),
        "val_films": len(data.val_films),
        "ward_copies": {"train": len(data.train_ward), "val": len(data.val_ward), "style": TRAIN_STYLE.name},
        "fit_negatives": {
            "per_kind": options.negatives,
            "kinds": [*FIT_KINDS, "chest films in shuffled tiles"],
        },
        "epochs": options.epochs,
        "history": history,
    }


def write(options: ViewOptions, report: dict[str, Any]) -> None:
    """Write view.json, log the validation measures and, with `install`, install into the model version."""
    (options.out / "view.json").write_text(json.dumps(report, indent=2) + "\n")
    logger.info("view model: %s", json.dumps(report["validation"]))
    if options.install:
        install(options.out, options.model, report)


def choose_thresholds(
    path: Path,
    val_x: np.ndarray,
    val_y: np.ndarray,
    val_films: np.ndarray,
    model_dir: Path,
    spec: PreprocessSpec,
    manifest: Path,
    split: dict[str, str],
) -> dict[str, Any]:
    """Thresholds from validation films and validation-seed negatives, by rules fixed in advance:

    - distance: 2 x the largest distance of a validation film in any of the 16 classes (a wide margin
      for hospitals unlike these; a non-radiograph far beyond that is refused even where the classifier
      head is fooled);
    - p(not a radiograph) > 0.5 (the argmax rule between "film" and "not");
    - correct when the winning film class has p >= 0.9;
    - lungs: a largest field of at least 2 % of the image (or half the smallest seen, if lower); when a
      second field is that large too, centres at least half the smallest horizontal distance seen apart
      (capped at 0.15) and within 1.5 x the largest vertical offset seen (capped at 0.35).
    """
    view = ViewModel(path, val_x.shape[1])  # as the service runs it (with its mirror-image average)
    outputs = [view(tensor[:, :, 0]) for tensor in val_x]
    prob = np.stack([p for p, _ in outputs])
    dist = np.array([d for _, d in outputs])
    films = val_y < NOT_RADIOGRAPH
    max_distance = float(2.0 * dist[films].max())
    predicted = np.argmax(prob, axis=1)
    # Lung fields on the validation split's upright films, as preprocessing sees them.
    # (the segmenter alone: the model version may hold an older view model this run replaces)
    model = OnnxModel(model_dir)
    rows = [r for r in read_manifest(manifest) if split.get(r.file) == "val"]
    fields = []
    for row in rows:
        _, geometry = preprocess(decode_file(str(row.path)).pixels, spec, model.segmenter)
        if geometry.lungs is not None:
            fields.append(geometry.lungs)
    smaller = [f.areas[1] for f in fields]
    offsets = [abs(f.centres[0][1] - f.centres[1][1]) for f in fields if f.areas[1] >= 0.02]
    apart = [abs(f.centres[0][0] - f.centres[1][0]) for f in fields if f.areas[1] >= 0.02]
    thresholds = {
        "min_side": 128,
        "max_colour_fraction": 0.10,
        "max_not_radiograph": 0.5,
        "max_distance": round(max_distance, 2),
        "correct_min": 0.9,
        "min_lung_area": round(float(min(0.02, 0.5 * min(f.areas[0] for f in fields))), 4),
        "max_lung_centre_dy": round(float(min(0.35, 1.5 * max(offsets))), 4),
        "min_lung_centre_dx": round(float(min(0.15, 0.5 * min(apart))), 4),
    }
    domain = DomainSpec.from_dict({"thresholds": thresholds})
    lung_refusals = sum(1 for f in fields if lung_problem(f, domain) is not None)
    return {
        "thresholds": thresholds,
        "validation": {
            "view_accuracy": float(np.mean(predicted == val_y)),
            "films_called_not_radiograph": float(np.mean(prob[films, NOT_RADIOGRAPH] > 0.5)),
            "negatives_called_film": float(np.mean(prob[~films, NOT_RADIOGRAPH] <= 0.5)),
            "film_class_accuracy": float(np.mean(predicted[films] == val_y[films])),
            # way up and polarity whichever way round, and way round whichever way up (as inspect() decides)
            "orientation_accuracy": float(
                np.mean(np.argmax(prob[films, :8] + prob[films, 8:16], axis=1) == val_y[films] % 8)
            ),
            "mirror_accuracy": float(np.mean((prob[films, 8:16].sum(axis=1) >= 0.5) == (val_y[films] >= 8))),
            "film_distance_max": float(dist[films].max()),
            "film_distance_p99": float(np.percentile(dist[films], 99)),
            "negative_distance_median": float(np.median(dist[~films])),
            "lung_smaller_area_min": float(min(smaller)),
            "lung_centre_dy_max": float(max(offsets)),
            "lung_centre_dx_min": float(min(apart)),
            "upright_films_failing_lung_check": lung_refusals,
        },
    }


def install(out: Path, model_dir: Path, report: dict[str, Any]) -> None:
    """Copy view.onnx into the model version and record it (sha256, thresholds, training) in the card."""
    from export.card import render_card
    from service.inference.model import sha256_file

    shutil.copyfile(out / "view.onnx", model_dir / "view.onnx")
    card_path = model_dir / "card.json"
    card = json.loads(card_path.read_text())
    card["files"]["view.onnx"] = sha256_file(model_dir / "view.onnx")
    card["domain"] = {
        "file": "view.onnx",
        "input_size": report["input_size"],
        "classes": report["classes"],
        "thresholds": report["thresholds"],
        "training": {
            k: v for k, v in report.items() if k not in ("thresholds", "history", "classes", "input_size")
        },
        **({"evaluation": card["domain"]["evaluation"]} if "evaluation" in card.get("domain", {}) else {}),
    }
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    (model_dir / "card.md").write_text(render_card(card))


def main(args: argparse.Namespace) -> int:
    """`cxr train-view`: exit status 0, or 2 for bad options."""
    try:
        options = ViewOptions.from_args(args)
    except ValueError as error:
        logger.error("%s", error)
        return 2
    train(options, command=command_line("train-view"))
    return 0
