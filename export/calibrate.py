"""`cxr calibrate`: fit a calibration map on the validation split and write it into the classifier's graph.

The positive logit z (the input of the graph's final Sigmoid) becomes `z * scale + shift` inside
`model.onnx` (two nodes named `calibration_scale` and `calibration_shift` before that Sigmoid), so every
path that runs the graph (the service and its v2 endpoint, `cxr predict`, `cxr evaluate`, the PACS pass
through the service, and Triton with the same file) returns the same calibrated probability. The scale is
positive, so the ranking and the AUROC do not change.

Two maps are fitted by negative log-likelihood on the validation split: temperature scaling (shift 0;
Guo et al., ICML 2017) and Platt scaling (scale and shift). The rule, fixed before looking: Platt is used
only if its validation NLL is at least 0.01 lower than temperature's (a shift corrects the prior the
class-reweighted training put into the logit; temperature alone cannot). The threshold is then re-derived
on the calibrated validation scores with the card's rule. Running it again refits from the raw logits
(the nodes' values are replaced, never stacked). The test split is not read: run `cxr evaluate --split
test --update-card` afterwards for test ECE and the reliability diagram.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.dataset import read_manifest
from export.evaluate import select_rows
from export.metrics import choose_threshold, expected_calibration_error
from service.imaging.decode import decode_file
from service.inference.model import MODEL_FILE, OnnxModel, sha256_file

logger = logging.getLogger(__name__)

SCALE, SHIFT = "calibration_scale", "calibration_shift"


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--model", required=True, help="model version folder (rewritten in place)")
    parser.add_argument("--min-sensitivity", type=float, default=0.90, help="threshold rule on validation")


def _logit_input(graph: onnx.GraphProto) -> tuple[onnx.NodeProto, int]:
    """The Sigmoid whose output reaches `probabilities`, and which of its inputs is the logit (0)."""
    sigmoids = [node for node in graph.node if node.op_type == "Sigmoid"]
    if len(sigmoids) != 1:
        raise ValueError(f"expected one Sigmoid in the classifier graph, found {len(sigmoids)}")
    return sigmoids[0], 0


def raw_logit_name(graph: onnx.GraphProto) -> str:
    """The uncalibrated logit: the Sigmoid's input, or what the calibration nodes read when present."""
    sigmoid, _ = _logit_input(graph)
    name = sigmoid.input[0]
    producers = {output: node for node in graph.node for output in node.output}
    while name in producers and producers[name].name in (SCALE, SHIFT):
        name = producers[name].input[0]
    return str(name)


def with_logit_output(model: onnx.ModelProto) -> bytes:
    """The graph with its raw logit as an extra output `raw_logit` (for fitting only)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    name = raw_logit_name(copy.graph)
    copy.graph.node.append(helper.make_node("Identity", [name], ["raw_logit"], name="raw_logit_identity"))
    copy.graph.output.append(helper.make_tensor_value_info("raw_logit", TensorProto.FLOAT, None))
    return bytes(copy.SerializeToString())


def calibrated(model: onnx.ModelProto, scale: float, shift: float) -> onnx.ModelProto:
    """The graph with `sigmoid(z * scale + shift)`: the calibration nodes inserted, or their values replaced."""
    if scale <= 0:
        raise ValueError("the calibration scale must be positive (it must keep the ranking)")
    graph = model.graph
    sigmoid, _ = _logit_input(graph)
    raw = raw_logit_name(graph)
    for initializer in list(graph.initializer):
        if initializer.name in (f"{SCALE}_value", f"{SHIFT}_value"):
            graph.initializer.remove(initializer)
    for node in list(graph.node):
        if node.name in (SCALE, SHIFT):
            graph.node.remove(node)
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(scale, np.float32), f"{SCALE}_value"),
            numpy_helper.from_array(np.array(shift, np.float32), f"{SHIFT}_value"),
        ]
    )
    position = list(graph.node).index(sigmoid)
    graph.node.insert(
        position,
        helper.make_node("Add", ["calibration_scaled", f"{SHIFT}_value"], ["calibrated_logit"], name=SHIFT),
    )
    graph.node.insert(
        position, helper.make_node("Mul", [raw, f"{SCALE}_value"], ["calibration_scaled"], name=SCALE)
    )
    sigmoid.input[0] = "calibrated_logit"
    onnx.checker.check_model(model)
    return model


def _nll(logits: np.ndarray, truth: np.ndarray, scale: float, shift: float) -> float:
    z = logits * scale + shift
    return float(np.mean(np.logaddexp(0.0, z) - truth * z))


def fit(logits: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Temperature and Platt fits by NLL (scipy), and the one the module's rule keeps."""
    from scipy.optimize import minimize, minimize_scalar

    temperature = minimize_scalar(
        lambda log_s: _nll(logits, truth, float(np.exp(log_s)), 0.0), bounds=(-5, 5), method="bounded"
    )
    platt = minimize(
        lambda p: _nll(logits, truth, float(np.exp(p[0])), float(p[1])),
        x0=[float(temperature.x), 0.0],
        method="Nelder-Mead",
    )
    t_scale = float(np.exp(temperature.x))
    p_scale, p_shift = float(np.exp(platt.x[0])), float(platt.x[1])
    nll = {
        "uncalibrated": _nll(logits, truth, 1.0, 0.0),
        "temperature": _nll(logits, truth, t_scale, 0.0),
        "platt": _nll(logits, truth, p_scale, p_shift),
    }
    use_platt = nll["platt"] <= nll["temperature"] - 0.01
    return {
        "method": "platt" if use_platt else "temperature",
        "scale": p_scale if use_platt else t_scale,
        "shift": p_shift if use_platt else 0.0,
        "temperature": 1.0 / t_scale,
        "platt": {"scale": p_scale, "shift": p_shift},
        "val_nll": nll,
    }


def raw_logits(model: OnnxModel, paths: list[str]) -> np.ndarray:
    """Raw positive logits of files, through the service's decode, domain check and preprocessing."""
    import onnxruntime as ort

    graph = onnx.load(str(model.directory / MODEL_FILE))
    session = ort.InferenceSession(with_logit_output(graph), providers=["CPUExecutionProvider"])
    tensors = np.stack([model.prepare(decode_file(path))[0] for path in paths])
    chunks = [
        session.run(["raw_logit"], {model.input_name: tensors[i : i + 32]})[0]
        for i in range(0, len(tensors), 32)
    ]
    return np.concatenate(chunks).reshape(-1).astype(np.float64)


def calibrate(model_dir: Path, manifest: Path, min_sensitivity: float) -> dict[str, Any]:
    """Fit on validation, rewrite model.onnx, update the card (sha256, threshold, calibration)."""
    from export.card import render_card

    model = OnnxModel(model_dir)
    rows = select_rows(read_manifest(manifest), "val", model)
    truth = np.array([row.label == model.card.positive_label for row in rows], dtype=np.float64)
    logits = raw_logits(model, [str(row.path) for row in rows])
    result = fit(logits, truth)
    scores = 1.0 / (1.0 + np.exp(-(logits * result["scale"] + result["shift"])))
    raw_scores = 1.0 / (1.0 + np.exp(-logits))
    threshold = choose_threshold(truth.astype(bool), scores.astype(np.float32), min_sensitivity)
    graph = calibrated(onnx.load(str(model_dir / MODEL_FILE)), result["scale"], result["shift"])
    onnx.save(graph, str(model_dir / MODEL_FILE))
    card_path = model_dir / "card.json"
    card = json.loads(card_path.read_text())
    previous = card["threshold"]
    card["files"][MODEL_FILE] = sha256_file(model_dir / MODEL_FILE)
    card["threshold"] = threshold
    card["threshold_rule"] = (
        f"highest validation specificity with validation sensitivity >= {min_sensitivity:.2f}, "
        "on calibrated probabilities"
    )
    card["calibration"] = {
        **result,
        "fitted_on": f"validation split, {len(rows)} images",
        "graph": f"sigmoid(z * {SCALE} + {SHIFT}) in model.onnx, z the network's positive logit",
        "val_ece": {
            "uncalibrated": expected_calibration_error(truth, raw_scores),
            "calibrated": expected_calibration_error(truth, scores),
        },
        "threshold_before": card["calibration"]["threshold_before"] if "calibration" in card else previous,
        # From the card's last test evaluation of the uncalibrated model; nothing here reads the test split.
        "test_ece_before": (
            card["calibration"]["test_ece_before"]
            if "calibration" in card
            else card.get("evaluation", {}).get("test", {}).get("overall", {}).get("ece")
        ),
        "command": f"cxr calibrate --manifest {manifest} --model {model_dir}",
    }
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    (model_dir / "card.md").write_text(render_card(card))
    report: dict[str, Any] = card["calibration"] | {"threshold": threshold}
    return report


def main(args: argparse.Namespace) -> int:
    report = calibrate(Path(args.model), Path(args.manifest), args.min_sensitivity)
    logger.info(
        "calibration (%s): scale %.4f shift %.4f; val NLL %s; val ECE %s; threshold %.4f (was %.4f)",
        report["method"],
        report["scale"],
        report["shift"],
        {k: round(v, 4) for k, v in report["val_nll"].items()},
        {k: round(v, 4) for k, v in report["val_ece"].items()},
        report["threshold"],
        report["threshold_before"],
    )
    return 0
