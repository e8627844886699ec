"""`cxr quantize`: an int8 (static, QDQ) variant of an exported model, treated as a new model.

Calibrated on training-split images through the shared preprocessing; re-evaluated on the validation split
(never the test split); kept (written as `<repo>/<name>-int8/<version>/`) only if its validation AUROC is
within `--max-auroc-drop` of fp32 and it runs faster than fp32. Its measured speed next to fp32 is recorded either way in the fp32 card's
`variants` section. fp16 is not produced: on CPU ONNX Runtime runs it slower than fp32 (field notes), and
no GPU is available where the default model is built.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from export.card import render_card
from export.dataset import read_manifest, read_split
from export.metrics import auroc
from service.imaging.decode import decode_file
from service.inference.model import CARD_FILE, MODEL_FILE, OnnxModel, load_default, sha256_file

logger = logging.getLogger(__name__)


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="fp32 model (name, version folder or model.onnx)")
    parser.add_argument("--manifest", required=True, help="the training manifest (calibration + validation)")
    parser.add_argument("--calibration-images", type=int, default=128)
    parser.add_argument("--max-auroc-drop", type=float, default=0.005)


def _tensors(model: OnnxModel, paths: list[Path]) -> np.ndarray:
    return np.stack([model.prepare(decode_file(str(p)))[0] for p in paths])


def _speed(path: Path, tensors: np.ndarray, batch: int, threads: int = 2, seconds: float = 3.0) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    chunk = tensors[:batch]
    session.run(None, {"image": chunk})
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(None, {"image": chunk})
        done += len(chunk)
    return done / (time.perf_counter() - started)


def quantize(model: OnnxModel, manifest: Path, calibration_images: int, max_drop: float) -> dict[str, Any]:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    split = read_split(model.directory / "split.csv")
    rows = read_manifest(manifest)
    train = [r.path for r in rows if split.get(r.file) == "train"]
    val = [r for r in rows if split.get(r.file) == "val"]
    rng = np.random.default_rng(0)
    calibration = _tensors(
        model, [train[i] for i in rng.choice(len(train), min(calibration_images, len(train)), replace=False)]
    )

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.items = iter(calibration[i : i + 1] for i in range(len(calibration)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self.items, None)
            return None if item is None else {"image": item}

    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(model.directory / MODEL_FILE), str(prepared), skip_symbolic_shape=True)
        int8_path = Path(scratch) / "model.int8.onnx"
        quantize_static(
            str(prepared),
            str(int8_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
        val_x = _tensors(model, [r.path for r in val])
        truth = np.array([r.label == model.card.positive_label for r in val])
        import onnxruntime as ort

        scores = {}
        for name, path in (("fp32", model.directory / MODEL_FILE), ("int8", int8_path)):
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            probabilities = session.run(["probabilities"], {"image": val_x})[0]
            scores[name] = probabilities[:, model.positive_index]
        result: dict[str, Any] = {
            "calibration": f"{len(calibration)} training-split images",
            "val_auroc": {name: auroc(truth, s) for name, s in scores.items()},
            "max_abs_probability_diff_val": float(np.max(np.abs(scores["int8"] - scores["fp32"]))),
            "images_per_second_2_threads": {
                name: {f"batch_{b}": round(_speed(path, val_x, b), 1) for b in (1, 8)}
                for name, path in (("fp32", model.directory / MODEL_FILE), ("int8", int8_path))
            },
        }
        drop = result["val_auroc"]["fp32"] - result["val_auroc"]["int8"]
        speed = result["images_per_second_2_threads"]
        faster = speed["int8"]["batch_1"] > speed["fp32"]["batch_1"]
        # A variant is worth shipping only if it keeps the AUROC *and* buys speed (on CPUs without VNNI
        # int8 QDQ often runs slower than fp32).
        result["kept"] = bool(drop <= max_drop and faster)
        result["reason"] = (
            f"validation AUROC drop {drop:+.4f} ({'within' if drop <= max_drop else 'over'} {max_drop}); "
            f"int8 {'faster' if faster else 'slower'} than fp32 at batch 1 "
            f"({speed['int8']['batch_1']} vs {speed['fp32']['batch_1']} images/s)"
        )
        if result["kept"]:
            target = model.directory.parent.parent / f"{model.name}-int8" / model.version
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(int8_path, target / MODEL_FILE)
            for extra in ("split.csv", *(model.card.files.keys() - {MODEL_FILE})):
                shutil.copyfile(model.directory / extra, target / extra)
            card = json.loads((model.directory / CARD_FILE).read_text())
            card["name"] = f"{model.name}-int8"
            card["files"][MODEL_FILE] = sha256_file(target / MODEL_FILE)
            card["variant_of"] = {"name": model.name, "version": model.version, "sha256": model.sha256}
            card["quantization"] = result
            card.pop("evaluation", None)  # this file has not been evaluated on the test split
            (target / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
            result["written_to"] = str(target)
    return result


def main(args: argparse.Namespace) -> int:
    model = load_default(args.model)
    result = quantize(model, Path(args.manifest), args.calibration_images, args.max_auroc_drop)
    card_path = model.directory / CARD_FILE
    card = json.loads(card_path.read_text())
    card.setdefault("variants", {})["int8"] = result
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    (model.directory / "card.md").write_text(render_card(card))  # the card a person reads says the same
    logger.info(
        "int8: %s; val AUROC fp32 %.4f int8 %.4f; speed %s",
        "kept" if result["kept"] else "not kept",
        result["val_auroc"]["fp32"],
        result["val_auroc"]["int8"],
        result["images_per_second_2_threads"],
    )
    return 0
