"""`cxr train-lungseg`: a small U-Net lung segmenter whose boxes crop every image to the lung fields.

Trained on the lung masks in `shared/data/lungseg` (manual masks preferred over lungVAE model masks when an
image has both), restricted to images of the classifier's *train* split (validation Dice on its *val*
split): the test split is never seen. The masks are all on ieee8023 images, mostly tightly cropped paper
figures, so training zooms out (scale 0.55-1.15) to imitate full-field hospital films, and the run reports
how often the mask is implausible per source so a crop failure that tracks the source is visible.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from export.dataset import read_manifest, split_by_patient
from service.imaging.decode import decode_file
from service.imaging.preprocess import PreprocessSpec, segmenter_input, trim_borders

logger = logging.getLogger(__name__)


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--masks", required=True, help="lungseg manifest.csv (image,mask,annotation,...)")
    parser.add_argument("--manifest", required=True, help="classifier manifest (defines the patient split)")
    parser.add_argument("--out", required=True, help="output folder (lungseg.onnx, curves, report)")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1337)


def _pairs(masks_csv: Path, allowed: set[str]) -> list[tuple[Path, Path]]:
    """(image, mask) per image; a manual mask wins over a model-generated one."""
    chosen: dict[str, tuple[Path, Path, str]] = {}
    with masks_csv.open(newline="") as handle:
        for record in csv.DictReader(handle):
            image = (masks_csv.parent.parent / record["image"]).resolve()
            if image.name not in allowed:
                continue
            mask = (masks_csv.parent.parent / record["mask"]).resolve()
            previous = chosen.get(image.name)
            if previous is None or (record["annotation"] == "manual" and previous[2] != "manual"):
                chosen[image.name] = (image, mask, record["annotation"])
    return [(image, mask) for image, mask, _ in sorted(chosen.values())]


def _example(image_path: Path, mask_path: Path, spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
    """The segmenter sees what `service.imaging.preprocess.lung_box` gives it: the border-trimmed image."""
    pixels = decode_file(str(image_path)).pixels
    mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
    if mask is None or mask.shape != pixels.shape:
        raise ValueError(f"mask {mask_path.name} does not match its image")
    x0, y0, x1, y1 = trim_borders(pixels, spec)
    return pixels[y0:y1, x0:x1], mask[y0:y1, x0:x1]


def _augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    height, width = image.shape
    scale = rng.uniform(0.55, 1.15)
    angle = rng.uniform(-8, 8)
    matrix = np.asarray(cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale), dtype=np.float64)
    matrix[:, 2] = matrix[:, 2] + rng.uniform(-0.06, 0.06, size=2) * np.array(
        [width, height], dtype=np.float64
    )
    fill = int(rng.choice([0, int(np.median(image)), 255]))
    image = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderValue=fill)
    mask = cv2.warpAffine(mask, matrix, (width, height), flags=cv2.INTER_NEAREST, borderValue=0)
    gamma = rng.uniform(0.7, 1.4)
    image = np.clip(255.0 * (image / 255.0) ** gamma, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.5))
    return image, mask


def _tensor(image: np.ndarray, mask: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
    size = spec.segmenter_size
    small_mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    return segmenter_input(image, spec)[:, :, None], (small_mask > 127).astype(np.float32)[:, :, None]


def build_unet(size: int, base_filters: int = 12) -> Any:
    """A four-level U-Net, ~0.3 M parameters: enough for two lung blobs at 128 px."""
    import keras
    from keras import layers

    def block(x: Any, filters: int) -> Any:
        for _ in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization(momentum=0.9)(x)
            x = layers.Activation("relu")(x)
        return x

    inputs = keras.Input((size, size, 1), name="image")
    skips = []
    x = inputs
    for level in range(3):
        x = block(x, base_filters * 2**level)
        skips.append(x)
        x = layers.MaxPooling2D()(x)
    x = block(x, base_filters * 8)
    for level in reversed(range(3)):
        x = layers.UpSampling2D()(x)
        x = layers.Concatenate()([x, skips[level]])
        x = block(x, base_filters * 2**level)
    outputs = layers.Conv2D(1, 1, activation="sigmoid", name="mask")(x)
    return keras.Model(inputs, outputs, name="lungseg")


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    pred_b, truth_b = pred >= 0.5, truth >= 0.5
    denominator = pred_b.sum() + truth_b.sum()
    return float(2 * np.logical_and(pred_b, truth_b).sum() / denominator) if denominator else 1.0


def train_segmenter(
    masks_csv: Path, manifest: Path, out: Path, *, epochs: int = 60, seed: int = 1337
) -> dict[str, Any]:
    """Train, export `lungseg.onnx` into `out`, and return a report (Dice, fallback rates by origin)."""
    import keras
    import tensorflow as tf

    from export.tf_onnx import export_function

    keras.utils.set_random_seed(seed)
    spec = PreprocessSpec()
    rows = read_manifest(manifest)
    split = split_by_patient(rows, seed=seed)
    train_pairs = _pairs(masks_csv, {f for f, s in split.items() if s == "train"})
    val_pairs = _pairs(masks_csv, {f for f, s in split.items() if s == "val"})
    train_examples = [_example(i, m, spec) for i, m in train_pairs]
    val = [_tensor(*_example(i, m, spec), spec) for i, m in val_pairs]
    val_x = np.stack([x for x, _ in val])
    val_y = np.stack([y for _, y in val])
    rng = np.random.default_rng(seed)

    def epoch_data() -> tuple[np.ndarray, np.ndarray]:
        batch = [_tensor(*_augment(image, mask, rng), spec) for image, mask in train_examples]
        return np.stack([x for x, _ in batch]), np.stack([y for _, y in batch])

    model = build_unet(spec.segmenter_size)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss=_bce_dice_loss(), metrics=[])
    started = time.monotonic()
    best_dice, best_weights, history = -1.0, model.get_weights(), []
    for epoch in range(epochs):
        x, y = epoch_data()
        fit = model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=True)
        pred = model.predict(val_x, verbose=0)
        dice = float(np.mean([_dice(p, t) for p, t in zip(pred, val_y, strict=True)]))
        history.append({"epoch": epoch + 1, "loss": float(fit.history["loss"][-1]), "val_dice": dice})
        logger.info(
            "lungseg epoch %d/%d loss %.4f val Dice %.4f", epoch + 1, epochs, history[-1]["loss"], dice
        )
        if dice > best_dice:
            best_dice, best_weights = dice, model.get_weights()
    model.set_weights(best_weights)
    out.mkdir(parents=True, exist_ok=True)

    @tf.function(
        input_signature=[
            tf.TensorSpec((None, spec.segmenter_size, spec.segmenter_size, 1), tf.float32, name="image")
        ]
    )
    def serve(image: Any) -> dict[str, Any]:
        return {"mask": model(image, training=False)}

    export_function(
        serve, out / "lungseg.onnx", reference=lambda x: model.predict(x, verbose=0), samples=val_x[:64]
    )
    report = {
        "command": "cxr train-lungseg " + " ".join(shlex.quote(a) for a in sys.argv[2:])
        if sys.argv[1:2] == ["train-lungseg"]
        else None,
        "annotations": "manual masks preferred, else lungVAE model masks (shared/data/lungseg)",
        "train_images": len(train_pairs),
        "val_images": len(val_pairs),
        "val_dice_best": best_dice,
        "epochs": epochs,
        "train_seconds": round(time.monotonic() - started, 1),
        "history": history,
    }
    (out / "lungseg_report.json").write_text(json.dumps(report, indent=2))
    return report


def _bce_dice_loss() -> Any:
    import keras
    from keras import ops

    bce = keras.losses.BinaryCrossentropy()

    def loss(y_true: Any, y_pred: Any) -> Any:
        intersection = ops.sum(y_true * y_pred, axis=(1, 2, 3))
        union = ops.sum(y_true, axis=(1, 2, 3)) + ops.sum(y_pred, axis=(1, 2, 3))
        dice = 1.0 - (2.0 * intersection + 1.0) / (union + 1.0)
        return bce(y_true, y_pred) + ops.mean(dice)

    return loss


def main(args: argparse.Namespace) -> int:
    report = train_segmenter(
        Path(args.masks), Path(args.manifest), Path(args.out), epochs=args.epochs, seed=args.seed
    )
    logger.info(
        "lung segmenter: best val Dice %.4f on %d images", report["val_dice_best"], report["val_images"]
    )
    return 0
