"""A model version on disk -> ONNX Runtime sessions: the classifier, its lung segmenter and its card.

Layout (NVIDIA Triton's model repository): `<repo>/<name>/<version>/model.onnx` with `card.json` (and the
human-readable `card.md`) beside it, plus `lungseg.onnx` when the preprocessing crops to the lungs.
Every file's sha256 is checked against the card before a session is created: a model file that does not
match is refused, never served.

Graph contract: input `image` (N, S, S, 1) float32 in [0, 1]; outputs `probabilities` (N, K) over the card's
labels and `cam` (N, h, w), the class activation map of the positive label in logit units (exact: the
global-average of `cam` plus the dense bias is the positive logit).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from service.imaging.domain_verdict import DomainSpec, DomainVerdict
from service.imaging.input_check import DomainCheck
from service.imaging.pixels import DecodedImage
from service.imaging.preprocess import Geometry, PreprocessSpec, preprocess, segmenter_input
from service.inference.view_model import ViewModel

logger = logging.getLogger(__name__)

CARD_FILE = "card.json"
MODEL_FILE = "model.onnx"
SEGMENTER_FILE = "lungseg.onnx"


class ModelIntegrityError(RuntimeError):
    """A model file is missing, or its sha256 differs from the one in its card."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelCard:
    """The parts of card.json the runtime needs; the rest travels along as `raw`."""

    name: str
    version: str
    labels: list[str]
    positive_label: str
    threshold: float
    files: dict[str, str]
    preprocessing: PreprocessSpec
    segmenter: str | None
    domain: DomainSpec = field(default_factory=DomainSpec)
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def load(cls, directory: Path) -> ModelCard:
        path = directory / CARD_FILE
        try:
            raw = json.loads(path.read_text())
            return cls(
                name=str(raw["name"]),
                version=str(raw["version"]),
                labels=[str(label) for label in raw["labels"]],
                positive_label=str(raw["positive_label"]),
                threshold=float(raw["threshold"]),
                files={str(k): str(v) for k, v in raw["files"].items()},
                preprocessing=PreprocessSpec.from_dict(raw["preprocessing"]),
                segmenter=raw.get("segmenter"),
                domain=DomainSpec.from_dict(raw.get("domain")),
                raw=raw,
            )
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ModelIntegrityError(
                f"{path}: unreadable model card ({type(error).__name__}: {error})"
            ) from None


def verify_files(directory: Path, card: ModelCard) -> None:
    """Raise ModelIntegrityError unless every file listed in the card exists with the recorded sha256."""
    if MODEL_FILE not in card.files:
        raise ModelIntegrityError(f"{directory / CARD_FILE}: the card lists no sha256 for {MODEL_FILE}")
    for name, expected in card.files.items():
        path = directory / name
        if not path.is_file():
            raise ModelIntegrityError(f"{path}: listed in the model card but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ModelIntegrityError(
                f"{path}: sha256 {actual[:16]}... does not match the model card ({expected[:16]}...); "
                "refusing to serve a model file that differs from the one that was evaluated"
            )


_GPU_LIBRARIES = {"CUDAExecutionProvider": "libcudart.so", "TensorrtExecutionProvider": "libnvinfer.so"}


def _gpu_usable(provider: str) -> bool:
    """onnxruntime-gpu lists CUDA/TensorRT even on hosts without a GPU, then logs errors at every session
    and falls back to CPU. Only ask for a GPU provider when a driver and the provider's library load."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL("libcuda.so.1")  # the NVIDIA driver: absent on CPU-only hosts
    except OSError:
        return False
    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* pip packages, when installed
        except Exception:  # best effort; the CDLL probe below decides
            logger.debug("onnxruntime.preload_dlls() failed", exc_info=True)
    library = _GPU_LIBRARIES[provider]
    for candidate in (library, *(f"{library}.{v}" for v in (12, 11, 10, 13))):
        try:
            ctypes.CDLL(candidate)
            return True
        except OSError:
            continue
    return ctypes.util.find_library(library.removeprefix("lib").removesuffix(".so")) is not None


def available_providers(requested: list[str] | None) -> list[str]:
    """Providers to ask for, in order; CPU is always last.

    Explicitly requested providers are passed through when this onnxruntime build has them; the default
    (TensorRT, CUDA) keeps only those whose libraries really load, so CPU-only hosts start quietly.
    `session.get_providers()` then reports what is actually in use.
    """
    have = ort.get_available_providers()
    if requested:
        chosen = [p for p in requested if p in have and p != "CPUExecutionProvider"]
    else:
        chosen = [p for p in _GPU_LIBRARIES if p in have and _gpu_usable(p)]
    return [*chosen, "CPUExecutionProvider"]


def _session(path: Path, providers: list[str], intra_op_threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # One worker thread calls run() per session, so the session's own pool is the only parallelism:
    # fixed size, no inter-op pool, and no spinning that would steal the core the decoder needs.
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


class Segmenter:
    """The lung segmenter shipped beside a classifier: uint8 image -> mask probability of the same size.

    Thread-safe (ONNX Runtime sessions allow concurrent run()); one intra-op thread per call because it
    runs inside the preprocessing pool, which already has one thread per core.
    """

    def __init__(self, path: Path, spec: PreprocessSpec) -> None:
        self.spec = spec
        self.session = _session(path, ["CPUExecutionProvider"], 1)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, image: np.ndarray) -> np.ndarray:
        tensor = segmenter_input(image, self.spec)[None, :, :, None]
        (mask,) = self.session.run(None, {self.input_name: tensor})
        resized: np.ndarray = cv2.resize(
            mask[0, :, :, 0], (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR
        )
        return resized


class OnnxModel:
    """One verified model version: `prepare()` (thread-safe, per image) and `run()` (per batch)."""

    def __init__(
        self,
        directory: Path,
        *,
        providers: list[str] | None = None,
        intra_op_threads: int = 1,
        verify: bool = True,
    ) -> None:
        self.directory = directory
        self.card = ModelCard.load(directory)
        if verify:
            verify_files(directory, self.card)
        self.spec = self.card.preprocessing
        chosen = available_providers(providers)
        self.session = _session(directory / MODEL_FILE, chosen, intra_op_threads)
        self.providers: list[str] = list(self.session.get_providers())
        self.sha256 = self.card.files[MODEL_FILE]
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [output.name for output in self.session.get_outputs()]
        self.positive_index = self.card.labels.index(self.card.positive_label)
        self.segmenter = (
            Segmenter(directory / self.card.segmenter, self.spec) if self.card.segmenter else None
        )
        domain = self.card.domain
        view = ViewModel(directory / domain.view_model, domain.input_size) if domain.view_model else None
        self.domain = DomainCheck(domain, self.spec, view)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    @property
    def has_cam(self) -> bool:
        return "cam" in self.output_names

    def prepare(self, image: DecodedImage) -> tuple[np.ndarray, Geometry, DomainVerdict]:
        """A decoded image -> (S, S, 1) float32 input, its geometry (preprocessing contract) and the
        input-domain check's verdict (service.imaging.input_check). A turned or inverted film the check
        corrects is preprocessed corrected (`geometry.turns`, `geometry.inverted`). Only decoded images are
        taken, so the colour check always sees the decoder's colour fraction."""
        verdict, pixels = self.domain.inspect(image.pixels, image.colour_fraction)
        tensor, geometry = preprocess(pixels, self.spec, self.segmenter)
        verdict = self.domain.lungs(verdict, geometry)
        return tensor, replace(geometry, turns=verdict.turns, inverted=verdict.inverted), verdict

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, S, S, 1) float32 -> (probabilities (N, K), cam (N, h, w) or None for designs without a GAP
        head). One worker thread per session calls it, so the session's own thread pool is the only one."""
        outputs = self.session.run(None, {self.input_name: batch})
        named = dict(zip(self.output_names, outputs, strict=True))
        return named["probabilities"], named.get("cam")

    def describe(self) -> dict[str, Any]:
        """Metadata for /v1/models and readiness: identity, labels, threshold and the providers in use."""
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "labels": self.card.labels,
            "positive_label": self.card.positive_label,
            "threshold": self.card.threshold,
            "input": {
                "name": self.input_name,
                "shape": [-1, self.input_size, self.input_size, 1],
                "datatype": "FP32",
            },
            "outputs": self.output_names,
            "providers": self.providers,
            "preprocessing": self.spec.to_dict(),
            "intended_use": self.card.raw.get("intended_use", "Research use only. Not for diagnosis."),
        }


def find_versions(repository: Path) -> list[Path]:
    """Every `<name>/<version>/` directory under the repository that holds a card (newest version last)."""
    found: list[Path] = []
    if not repository.is_dir():
        return found
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()):
        versions = [p for p in model_dir.iterdir() if p.is_dir() and (p / CARD_FILE).is_file()]
        versions.sort(key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))
        found.extend(versions)
    return found


def load_default(model: str | Path | None = None, repository: Path | None = None, **kwargs: Any) -> OnnxModel:
    """Resolve a model for the CLI: a version directory, a `.onnx` file inside one, a model name in the
    repository (latest version), or the repository's default model."""
    repo = repository or default_repository()
    if model is not None:
        path = Path(model)
        if path.suffix == ".onnx":
            path = path.parent
        if (path / CARD_FILE).is_file():
            return OnnxModel(path, **kwargs)
        versions = [v for v in find_versions(repo) if v.parent.name == str(model)]
        if not versions:
            raise FileNotFoundError(f"no model named {model!s} in {repo} and no card.json at {path}")
        return OnnxModel(versions[-1], **kwargs)
    versions = find_versions(repo)
    if not versions:
        raise FileNotFoundError(f"no model found under {repo}")
    default = (
        json.loads((repo / "default.json").read_text())["model"]
        if (repo / "default.json").is_file()
        else None
    )
    chosen = [v for v in versions if v.parent.name == default] or versions
    return OnnxModel(chosen[-1], **kwargs)


def default_repository() -> Path:
    """The bundled model repository: `models/` beside the packages in a source checkout, else the copy an
    installed wheel carries as the data package `cxr_models`. (`--model-dir` / `CXR_MODEL_DIR` choose
    another; a folder that holds no model is refused at start-up with its path.)"""
    checkout = Path(__file__).resolve().parents[2] / "models"  # service/inference/model.py -> the root
    if checkout.is_dir():
        return checkout
    spec = importlib.util.find_spec("cxr_models")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return checkout
