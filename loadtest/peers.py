"""The serving frameworks the benchmark compares the service with, besides Ray Serve (loadtest/peer_ray.py,
which runs in the benchmark's own environment): LitServe (loadtest/peer_litserve.py), BentoML
(loadtest/peer_bentoml.py) and Triton through PyTriton (loadtest/peer_pytriton_image.py), each with the
service's decoder and with Pillow's; and PyTriton on the tensor path for perf_analyzer (loadtest/perf.py).

Each runs from a virtual environment of its own, so that its dependencies never touch the project's: the
bench creates it on first use with `python -m venv` and `pip install` from the package registry (the
framework, plus numpy, OpenCV, ONNX Runtime and Pillow pinned to the versions the benchmark itself runs,
so the libraries doing the work are the same), and caches it under
~/.cache/cxr-bench/venvs/<framework>-<hash of the requirements>; this repository reaches it through
PYTHONPATH. A folder is used only once its install finished (a marker file), so an interrupted install is
redone, not half used. A peer that cannot be installed or does not start is reported as skipped with the
reason (results.json `peers`, and the report), never dropped.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.images import Sample
from loadtest.targets import free_port

logger = logging.getLogger(__name__)
CACHE = Path.home() / ".cache" / "cxr-bench" / "venvs"
_COMPLETE = ".cxr-bench-complete"
_PINNED = ("numpy", "opencv-python-headless", "onnxruntime-gpu", "onnxruntime", "pillow")
"""Packages the peers share with the benchmark's environment, pinned to its versions where it has them."""
INSTALL_TIMEOUT_S = 600.0


class PeerUnavailable(RuntimeError):
    """A peer that cannot be run here; the message is the reason the report gives."""


@dataclass(frozen=True)
class Setting:
    """One documented configuration of a peer: its label in the report and its options."""

    label: str
    max_batch_size: int
    workers: int


@dataclass(frozen=True)
class Peer:
    """A peer target: which framework, which decoder, how it is installed, started and sent films."""

    framework: str
    decoder: str  # "service" or "pillow"
    packages: tuple[str, ...]
    # "raw" (the body is the file, as /v1/classify), "multipart" (a form field "image") or "triton" (a
    # BYTES tensor with Triton's binary tensor extension)
    upload: str
    ready_path: str
    settings: tuple[Setting, ...] = field(default_factory=tuple)
    pinned: tuple[str, ...] = _PINNED  # shared packages pinned to the benchmark's versions
    path: str = "/classify"  # where the films are posted


_SETTINGS = (
    Setting("max batch 8, 1 worker", 8, 1),
    Setting("max batch 1, 2 workers", 1, 2),
    Setting("max batch 8, 2 workers", 8, 2),
)
_LITSERVE = ("litserve>=0.2,<0.3", "python-multipart>=0.0.9")
_BENTOML = ("bentoml>=1.4,<1.5",)
PEERS: dict[str, Peer] = {
    "litserve": Peer("litserve", "service", _LITSERVE, "raw", "/health", _SETTINGS),
    "litserve-pillow": Peer("litserve", "pillow", _LITSERVE, "raw", "/health", _SETTINGS),
    "bentoml": Peer("bentoml", "service", _BENTOML, "multipart", "/readyz", _SETTINGS),
    "bentoml-pillow": Peer("bentoml", "pillow", _BENTOML, "multipart", "/readyz", _SETTINGS),
}


def _onnxruntime_pin() -> str:
    for package in ("onnxruntime", "onnxruntime-gpu"):  # the CPU package at the benchmark's version
        try:
            return f"onnxruntime=={importlib.metadata.version(package)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "onnxruntime"


_PYTRITON = (
    # PyTriton 0.7 (Triton server 2.51, python backend only) needs numpy<2: numpy, OpenCV and Pillow are
    # not pinned to the benchmark's versions (pip picks the newest that take numpy<2); ONNX Runtime is,
    # as the CPU package. OpenCV and Pillow are for the image peers (the service's decoder, and Pillow's).
    "nvidia-pytriton>=0.7,<0.8",
    "numpy<2",
    _onnxruntime_pin(),
    "opencv-python-headless",
    "pillow",
)
PYTRITON = Peer(
    "pytriton",
    "tensor",  # preprocessed tensors in (perf_analyzer's --input-data), no decoder
    _PYTRITON,
    "tensor",
    "/v2/health/ready",
    pinned=(),
)
"""Triton's server (through PyTriton) on the tensor path, measured with perf_analyzer (loadtest/perf.py)."""
_TRITON_IMAGE_PATH = "/v2/models/cxr-image/infer"  # loadtest/peer_pytriton_image.py's MODEL_NAME
_TRITON_SETTINGS = (
    Setting("max batch 8, 1 instance", 8, 1),
    Setting("max batch 1, 2 instances", 1, 2),
    Setting("max batch 8, 2 instances", 8, 2),
)
_TRITON_READY = "/v2/models/cxr-image/ready"
PEERS["pytriton"] = Peer(
    "pytriton", "service", _PYTRITON, "triton", _TRITON_READY, _TRITON_SETTINGS, (), _TRITON_IMAGE_PATH
)
PEERS["pytriton-pillow"] = Peer(
    "pytriton", "pillow", _PYTRITON, "triton", _TRITON_READY, _TRITON_SETTINGS, (), _TRITON_IMAGE_PATH
)


def requirements(peer: Peer) -> list[str]:
    """The peer's framework plus the shared libraries at the benchmark's own versions."""
    pins = []
    for package in peer.pinned:
        try:
            pins.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return [*peer.packages, *pins]


def venv_dir(peer: Peer, cache: Path = CACHE) -> Path:
    digest = hashlib.sha256("\n".join(sorted(requirements(peer))).encode()).hexdigest()[:12]
    return cache / f"{peer.framework}-{digest}"


def _python(folder: Path) -> Path:
    return folder / "bin" / "python"


def _run(command: list[str], what: str) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise PeerUnavailable(f"{what} failed: {error}") from None
    if done.returncode != 0:
        # pip's last lines name the package that failed; the reason goes into the report as one line.
        tail = " | ".join(line.strip() for line in done.stderr.strip().splitlines()[-3:] if line.strip())
        raise PeerUnavailable(f"{what} exited with {done.returncode}: {tail or done.stdout[-300:]}")


def ensure_venv(
    peer: Peer,
    *,
    cache: Path | None = None,
    create: bool = True,
    runner: Callable[[list[str], str], None] | None = None,
) -> tuple[Path, float]:
    """(the peer's Python, seconds spent creating its environment, 0.0 when cached) in `cache` (default
    CACHE); `runner(command, what)` runs each install step (default: a subprocess; raises PeerUnavailable).
    Raises PeerUnavailable with the reason when it is not cached and `create` is false, or the install fails."""
    folder = venv_dir(peer, cache or CACHE)
    runner = runner or _run
    if (folder / _COMPLETE).is_file() and _python(folder).is_file():
        return _python(folder), 0.0
    if not create:
        raise PeerUnavailable(f"no cached environment at {folder} (this run does not create one)")
    shutil.rmtree(folder, ignore_errors=True)  # an interrupted install: start again
    folder.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    wanted = requirements(peer)
    logger.info("creating %s for %s: pip install %s", folder, peer.framework, " ".join(wanted))
    try:
        runner([sys.executable, "-m", "venv", str(folder)], "python -m venv")
        runner([str(_python(folder)), "-m", "pip", "install", "--quiet", *wanted], "pip install")
    except PeerUnavailable:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    (folder / _COMPLETE).write_text("\n".join(wanted) + "\n")
    took = time.monotonic() - started
    logger.info("created %s in %.0f s", folder, took)
    return _python(folder), took


def command(
    peer: Peer, python: Path, model_dir: Path, port: int, setting: Setting, timeout_s: float
) -> tuple[list[str], dict[str, str]]:
    """(command line, extra environment) that starts `peer` with `setting` on loopback `port`."""
    if peer.framework == "litserve":
        return [
            str(python), "-m", "loadtest.peer_litserve", "--model-dir", str(model_dir), "--port", str(port),
            "--decoder", peer.decoder, "--max-batch-size", str(setting.max_batch_size),
            "--workers", str(setting.workers), "--timeout-s", f"{timeout_s:g}",
        ], {}  # fmt: skip
    if peer.framework == "bentoml":
        environment = {
            "CXR_PEER_MODEL_DIR": str(model_dir),
            "CXR_PEER_DECODER": peer.decoder,
            "CXR_PEER_MAX_BATCH_SIZE": str(setting.max_batch_size),
            "CXR_PEER_WORKERS": str(setting.workers),
            "CXR_PEER_TIMEOUT_S": f"{timeout_s:g}",
            "BENTOML_DO_NOT_TRACK": "true",  # no usage reports from a benchmark
        }
        bentoml = python.parent / "bentoml"
        return [
            str(bentoml), "serve", "loadtest.peer_bentoml:Classifier", "--host", "127.0.0.1",
            "--port", str(port),
        ], environment  # fmt: skip
    if peer.framework == "pytriton":
        return [
            str(python), "-m", "loadtest.peer_pytriton_image", "--model-dir", str(model_dir),
            "--decoder", peer.decoder, "--max-batch-size", str(setting.max_batch_size),
            "--instances", str(setting.workers), "--timeout-s", f"{timeout_s:g}",
            "--http-port", str(port), "--grpc-port", str(free_port()), "--metrics-port", str(free_port()),
        ], {"LD_LIBRARY_PATH": libpython_dir(python)}  # fmt: skip
    raise ValueError(f"unknown framework {peer.framework!r}")


def libpython_dir(python: Path) -> str:
    """The lib/ folder of the Python `python`'s venv was made from: PyTriton's python-backend stub may load
    another libpython than the venv's, so it goes first on LD_LIBRARY_PATH."""
    base = subprocess.run(
        [str(python), "-c", "import sys; print(sys.base_prefix)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return str(Path(base) / "lib")


@dataclass(frozen=True)
class _FormSample(Sample):
    """A sample wrapped in a multipart/form-data body, as BentoML's documented upload sends it."""

    form_type: str = ""

    @property
    def content_type(self) -> str:
        return self.form_type


@dataclass(frozen=True)
class _TritonSample(Sample):
    """A sample as a KServe v2 / Triton inference request: a JSON header naming one BYTES tensor `image` of
    shape [1, 1], then the tensor's bytes (a 4-byte little-endian length, then the file), with the header's
    length in `Inference-Header-Content-Length` (Triton's binary tensor data extension). The answer's
    `result` tensor is asked for as JSON."""

    header_length: int = 0

    @property
    def content_type(self) -> str:
        return "application/octet-stream"

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Type": self.content_type, "Inference-Header-Content-Length": str(self.header_length)}


def _triton_sample(sample: Sample) -> Sample:
    tensor = len(sample.data).to_bytes(4, "little") + sample.data
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1, 1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(tensor)},
                }
            ],
            "outputs": [{"name": "result", "parameters": {"binary_data": False}}],
        }
    ).encode()
    return _TritonSample(
        sample.name, header + tensor, sample.fmt, sample.width, sample.height, header_length=len(header)
    )


def upload_samples(peer: Peer, samples: list[Sample]) -> list[Sample]:
    """The samples as `peer` receives them: as they are, or each as a one-file form (built once, so the
    load generator does the same work per request either way)."""
    if peer.upload == "raw":
        return samples
    if peer.upload == "triton":
        return [_triton_sample(sample) for sample in samples]
    boundary = "cxr-bench-" + hashlib.sha256(b"boundary").hexdigest()[:16]
    wrapped: list[Sample] = []
    for sample in samples:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{sample.name}"\r\n'
            f"Content-Type: {sample.content_type}\r\n\r\n"
        ).encode()
        body = head + sample.data + f"\r\n--{boundary}--\r\n".encode()
        wrapped.append(
            _FormSample(
                sample.name,
                body,
                sample.fmt,
                sample.width,
                sample.height,
                form_type=f"multipart/form-data; boundary={boundary}",
            )
        )
    return wrapped
