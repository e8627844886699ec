"""Training against the source shortcut: the origin adversary (gradient reversal), its targets and ramp,
the source-gap diagnostic, and synthetic annotations; plus a tiny real run with all of it that exports."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="the [train] extra is not installed")

from cxr.cli import main as cxr
from export.dataset import Row
from export.options import TrainOptions
from export.train import (
    Example,
    adversarial_model,
    annotate,
    origin_targets,
    reversal_strength,
    source_gap_auroc,
    train,
)
from service.imaging.preprocess import Geometry


def _example(origin: str, label: str) -> Example:
    row = Row(Path(f"{origin}.png"), f"{origin}-x.png", label, "", f"{origin}:1", "PA")
    pixels = np.zeros((8, 8), np.uint8)
    return Example(row, pixels, Geometry(8, 8, (0, 0, 8, 8), "off"), int(label == "covid"))


def test_origin_targets_cover_negatives_only_balancing_origins_within_each_label() -> None:
    examples = [_example("ieee8023", "covid")] * 3 + [_example("ieee8023", "pneumonia")] * 2
    examples += [_example("nih", "pneumonia")] * 6 + [_example("nih", "normal")] * 4
    targets, weights = origin_targets(examples)
    assert targets.tolist() == [0, 0, 0, 1, 1] + [0] * 10
    assert weights[:3].tolist() == [0, 0, 0]  # COVID images do not train the adversary
    # pneumonia: 8 images, 4 of weight for each origin; the normals have no ieee8023 counterpart, so no
    # weight (there, telling origins apart would only teach the adversary normal vs pneumonia)
    assert weights[3:5].sum() == pytest.approx(weights[5:11].sum()) == pytest.approx(4.0)
    assert weights[11:].tolist() == [0, 0, 0, 0]


def test_source_gap_compares_origins_within_a_label_only() -> None:
    examples = [
        _example("ieee8023", "covid"),
        _example("ieee8023", "pneumonia"),
        _example("ieee8023", "normal"),
    ]
    examples += [_example("nih", "pneumonia"), _example("nih", "normal")]
    shortcut = np.array([0.9, 0.8, 0.7, 0.1, 0.2])
    assert source_gap_auroc(examples, shortcut) == 1.0
    # Pneumonia above normal whatever the origin: a disease signal, no trace of the origin.
    by_label = np.array([0.9, 0.6, 0.2, 0.6, 0.2])
    assert source_gap_auroc(examples, by_label) == 0.5
    one_origin = [
        _example("ieee8023", "covid"),
        _example("ieee8023", "pneumonia"),
        _example("ieee8023", "normal"),
    ]
    assert source_gap_auroc(one_origin, shortcut[:3]) is None  # nothing to compare the negatives with


def test_reversal_strength_ramps_from_zero_towards_the_maximum() -> None:
    ramp = [reversal_strength(epoch, 20, 0.5) for epoch in range(1, 21)]
    assert ramp[0] == 0.0 and all(b > a for a, b in itertools.pairwise(ramp))
    assert 0.49 < ramp[-1] <= 0.5


def test_gradient_reversal_sends_back_minus_strength_times_the_gradient() -> None:
    import keras

    from export.architectures import build

    def first_layer_step(strength_value: float) -> np.ndarray:
        """How one SGD step on the origin loss alone moves the first convolution's kernel."""
        keras.utils.set_random_seed(0)
        model, _ = build("compact", 1, input_size=32)
        loss = keras.losses.BinaryCrossentropy(from_logits=True)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
        combined, strength = adversarial_model(model, loss)
        strength.assign(strength_value)
        images = np.random.default_rng(0).random((4, 32, 32, 1)).astype(np.float32)
        before = model.get_layer("s1_conv").get_weights()[0].copy()
        combined.train_on_batch(
            images, [np.zeros((4, 1)), np.ones((4, 1))], sample_weight=[np.zeros(4), np.ones(4)]
        )
        return np.asarray(model.get_layer("s1_conv").get_weights()[0] - before)

    plain = first_layer_step(-1.0)  # -(-1) x gradient: features helped to predict the origin
    assert np.abs(plain).max() > 0
    np.testing.assert_allclose(first_layer_step(1.0), -plain, rtol=1e-3, atol=1e-8)
    np.testing.assert_allclose(first_layer_step(0.0), 0.0)


def test_annotations_mark_a_copy_inside_the_lung_box() -> None:
    image = np.full((200, 200), 128, np.uint8)
    rng = np.random.default_rng(3)
    marked = [annotate(image, (50, 50, 150, 150), rng) for _ in range(20)]
    assert (image == 128).all()  # the cached decoded image is never drawn on
    assert all((m != 128).any() for m in marked)
    changed = np.mean([(m != 128)[50:150, 50:150].sum() / max(1, (m != 128).sum()) for m in marked])
    assert changed > 0.6  # marks start inside the box (arrows and text may run past its edge)


def test_tiny_run_with_adversary_and_annotations_exports_only_the_classifier(
    synthetic_manifest: Path, tmp_path: Path
) -> None:
    import keras

    run = tmp_path / "run"
    train(TrainOptions(manifest=synthetic_manifest, arch="compact", epochs=3, input_size=64, segmenter="none",
                       out=run, batch_size=16, adversary=0.5, annotations=0.5, invariance=0.0))  # fmt: skip
    history = json.loads((run / "history.json").read_text())
    assert history[0]["reversal_strength"] == 0.0
    assert history[-1]["reversal_strength"] == pytest.approx(0.5 * (2 / (1 + np.exp(-10.0)) - 1), rel=1e-5)
    assert all(np.isfinite(h["origin_loss"]) for h in history)
    assert all(0 <= h["val_source_gap_auroc"] <= 1 for h in history)  # both origins have negatives
    saved = keras.models.load_model(run / "model.keras", compile=False)
    assert "origin" not in [layer.name for layer in saved.layers]
    repo = tmp_path / "repo"
    export = ["export", "--run", str(run), "--manifest", str(synthetic_manifest), "--repository", str(repo),
              "--name", "tiny-adv", "--version", "1"]  # fmt: skip
    assert cxr(export) == 0
    card = json.loads((repo / "tiny-adv" / "1" / "card.json").read_text())
    assert card["export"]["parity_max_abs_diff"] <= 1e-4


def test_crossval_pools_out_of_fold_scores_without_reading_test(
    synthetic_manifest: Path, tmp_path: Path
) -> None:
    from export.dataset import read_split

    out = tmp_path / "cv"
    args = ["crossval", "--manifest", str(synthetic_manifest), "--arch", "compact", "--epochs", "1",
            "--input-size", "64", "--segmenter", "none", "--out", str(out), "--batch-size", "16",
            "--folds", "2"]  # fmt: skip
    assert cxr(args) == 0
    result = json.loads((out / "crossval.json").read_text())
    splits = [read_split(out / f"fold-{k}" / "split.csv") for k in range(2)]
    test = {f for f, s in splits[0].items() if s == "test"}
    assert test and test == {f for f, s in splits[1].items() if s == "test"}
    scored = set()
    for fold in range(2):
        with (out / f"fold-{fold}" / "val_predictions.csv").open() as handle:
            scored |= {line.split(",")[0] for line in handle.readlines()[1:]}
    assert scored == {f for f, s in splits[0].items() if s != "test"}  # each train+val image, no test image
    assert result["images"] == len(scored)
    assert all(
        json.loads((out / f"fold-{k}" / "train.json").read_text())["epochs_run"] == 1 for k in range(2)
    )
    pooled = result["score_last"]["pooled"]
    assert 0.0 <= pooled["overall"]["auroc"] <= 1.0 and pooled["within_source"]["other"] > 0
    assert len(result["score_selected"]["per_fold"]) == 2


def test_the_painted_half_of_a_pair_is_cropped_where_the_segmenter_finds_the_lungs_on_it() -> None:
    from export.train import augment
    from service.imaging.preprocess import PreprocessSpec

    spec = PreprocessSpec(input_size=32, lung_crop=True)
    film = np.tile(np.linspace(0, 255, 200, dtype=np.float32), (200, 1)).astype(np.uint8)
    row = Row(Path("a.png"), "a.png", "normal", "", "p:1", "PA")
    example = Example(row, film, Geometry(200, 200, (20, 20, 180, 180), "mask"), 0)

    def left_lungs(image: np.ndarray) -> np.ndarray:
        """Two 'lungs' in the left third of whatever it is shown: a box far from the cached one."""
        mask = np.zeros(image.shape, np.float32)
        mask[20:180, 5:30] = 1.0
        mask[20:180, 35:60] = 1.0
        return mask

    def painted(relocate: object) -> np.ndarray:
        return augment(
            example, spec, np.random.default_rng(5), overlay_rng=np.random.default_rng(6), relocate=relocate
        )

    shared, moved = painted(None), painted(left_lungs)
    # The film darkens to the left: the crop at the segmenter's left-hand box is darker on the whole.
    assert moved.mean() < shared.mean() - 0.05


def test_the_painted_half_can_also_be_tilted_inside_borders() -> None:
    from export.train import augment
    from service.imaging.preprocess import PreprocessSpec

    spec = PreprocessSpec(input_size=32, lung_crop=False)
    film = np.tile(np.linspace(0, 255, 200, dtype=np.float32), (200, 1)).astype(np.uint8)
    row = Row(Path("a.png"), "a.png", "normal", "", "p:1", "PA")
    example = Example(row, film, Geometry(200, 200, (20, 20, 180, 180), "off"), 0)

    def painted(pair_geometry: float) -> np.ndarray:
        return augment(
            example,
            spec,
            np.random.default_rng(5),
            overlay_rng=np.random.default_rng(6),
            pair_geometry=pair_geometry,
        )

    assert np.array_equal(painted(0.0), painted(0.0))  # the pair's streams are reproducible
    assert not np.array_equal(painted(0.0), painted(1.0))
