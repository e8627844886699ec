"""The images a load test sends: real chest X-rays from folders, or synthetic ones when none are there.

Shared by the locustfile and the benchmark, so both send the same bytes. Folders come from
`CXR_LOADTEST_IMAGES` (separated by `os.pathsep`), else `../shared/data/{fullres,cxr,dicom}` beside the
repository when present. Each file is identified by its signature (not its name) and decoded once here with
the service's own decoder: a file the service would refuse is left out with a warning, so the load test
measures the service and not the corpus.
"""

from __future__ import annotations

import io
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from service.errors import CxrError
from service.imaging.decode import decode, sniff_format
from service.imaging.pixels import ImageFormat

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FOLDERS = [ROOT.parent / "shared" / "data" / name for name in ("fullres", "cxr", "dicom")]
CONTENT_TYPES: dict[ImageFormat, str] = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "dicom": "application/dicom",
}
_MAX_PER_FOLDER = 48
"""The 320 px folder holds ~1400 PNGs; an evenly spaced subset keeps start-up and memory small."""


@dataclass(frozen=True)
class Sample:
    """One image file as a client uploads it."""

    name: str
    data: bytes
    fmt: ImageFormat
    width: int
    height: int

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.fmt]

    @property
    def headers(self) -> dict[str, str]:
        """The request headers the upload needs besides the HTTP client's own."""
        return {"Content-Type": self.content_type}


def folders_from_env() -> list[Path]:
    """`CXR_LOADTEST_IMAGES` folders, else the default shared data folders that exist (maybe none)."""
    given = os.environ.get("CXR_LOADTEST_IMAGES", "").strip()
    if given:
        return [Path(part) for part in given.split(os.pathsep) if part]
    return [folder for folder in DEFAULT_FOLDERS if folder.is_dir()]


def _spread(paths: list[Path], count: int) -> list[Path]:
    if len(paths) <= count:
        return paths
    step = len(paths) / count
    return [paths[int(index * step)] for index in range(count)]


def load_folder(folder: Path, *, max_files: int = _MAX_PER_FOLDER) -> list[Sample]:
    """The decodable PNG, JPEG and DICOM files of one folder (sorted; evenly spaced when there are many)."""
    found: list[tuple[Path, bytes, ImageFormat]] = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        data = path.read_bytes()
        fmt = sniff_format(data)
        if fmt is not None:
            found.append((path, data, fmt))
    samples = []
    keep = {path for path in _spread([path for path, _, _ in found], max_files)}
    for path, data, fmt in found:
        if path not in keep:
            continue
        try:
            decoded = decode(data, fmt=fmt)
        except CxrError as error:
            logger.warning("leaving out %s: the service refuses it (%s)", path.name, error.detail)
            continue
        samples.append(Sample(path.name, data, fmt, decoded.original_width, decoded.original_height))
    return samples


def synthetic_xray(height: int, width: int, seed: int) -> np.ndarray:
    """An 8-bit grayscale image with a chest radiograph's broad structure (dark lungs, bright mediastinum
    and border), so decoding and preprocessing do realistic work; it is not an X-ray."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.full((height, width), 200.0, dtype=np.float32)
    for centre in (0.3, 0.7):
        lung = ((xs / width - centre) / 0.17) ** 2 + ((ys / height - 0.5) / 0.33) ** 2
        image -= 140.0 * np.exp(-(lung**3))
    image += rng.normal(0.0, 10.0, (height, width)).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def _dicom(image: np.ndarray) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "DX"
    dataset.BodyPartExamined = "CHEST"
    dataset.ViewPosition = "PA"
    dataset.Rows, dataset.Columns = image.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 12, 11, 0
    dataset.PixelData = (image.astype(np.uint16) * 16).tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def synthetic_samples() -> list[Sample]:
    """Full-size JPEG and PNG, a 1024 px PNG and a 12-bit DICOM: the sizes real uploads have."""
    shapes: list[tuple[int, int, ImageFormat]] = [
        (2500, 2048, "jpeg"),
        (2048, 2048, "png"),
        (1024, 1024, "png"),
        (2048, 1680, "jpeg"),
    ]
    samples = []
    for index, (height, width, fmt) in enumerate(shapes):
        image = synthetic_xray(height, width, seed=index)
        ok, encoded = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", image)
        if not ok:
            raise RuntimeError(f"cv2 could not encode a synthetic {fmt}")
        samples.append(Sample(f"synthetic-{index}.{fmt}", encoded.tobytes(), fmt, width, height))
    small = synthetic_xray(1024, 1024, seed=99)
    samples.append(Sample("synthetic-dx.dcm", _dicom(small), "dicom", 1024, 1024))
    return samples


def load_samples(
    folders: list[Path] | None = None,
    *,
    formats: set[ImageFormat] | None = None,
    max_per_folder: int = _MAX_PER_FOLDER,
) -> list[Sample]:
    """Samples from `folders` (default: `folders_from_env()`), keeping `formats` if given; synthetic
    images when no folder yields any. Raises ValueError when folders were given but none holds an image."""
    chosen = folders_from_env() if folders is None else folders
    samples = [sample for folder in chosen for sample in load_folder(folder, max_files=max_per_folder)]
    if formats is not None:
        samples = [sample for sample in samples if sample.fmt in formats]
    if samples:
        return samples
    if chosen and os.environ.get("CXR_LOADTEST_IMAGES"):
        raise ValueError(f"no usable {sorted(formats or CONTENT_TYPES)} image in {[str(f) for f in chosen]}")
    logger.warning("no image folder found; sending synthetic images")
    synthetic = synthetic_samples()
    return [sample for sample in synthetic if formats is None or sample.fmt in formats]


def multipart(samples: list[Sample]) -> tuple[bytes, str]:
    """A multipart/form-data body with one `file` field per sample, and its Content-Type header."""
    boundary = secrets.token_hex(16)
    parts = []
    for index, sample in enumerate(samples):
        # A neutral file name: real ones can identify a patient, and the service never needs them.
        parts.append(
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="image{index}"\r\n'
            f"Content-Type: {sample.content_type}\r\n\r\n".encode()
        )
        parts.append(sample.data)
        parts.append(b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
