"""Decoder fuzzing: mutated PNG, JPEG and DICOM files through `service.imaging.decode.decode`, driven by hypothesis.

The contract checked for every input: `decode` returns pixels or raises a `CxrError` subclass (a 4xx for
the client), never any other exception (a 500 and a traceback in the log); it returns within `timeout_s`;
and the decoding process's peak resident memory grows by at most `BYTES_PER_PIXEL_BOUND x max_pixels`
during the call, i.e. what the pixel limit allows and no more, whatever the header claims.

Each input is decoded in a separate worker process, so a hang can be killed, a crash in native code
(libpng, libjpeg, OpenJPEG, CharLS, GDCM) is seen instead of taking the test runner down, and the worker's
peak RSS measures the decoder alone. Seeds are real files (`shared/data/fullres`, `shared/data/dicom`, when
present) and small synthetic ones covering the formats the service accepts; mutations are byte-level
(truncation, bit flips, interesting values, span insertion and deletion) and structure-aware (PNG IHDR with
its CRC fixed so libpng gets past the checksum, JPEG SOF fields, DICOM pixel-module tags re-encoded).
"""

from __future__ import annotations

import io
import multiprocessing
import re
import struct
import time
import traceback
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import psutil
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from tests.support.dicoms import make_dicom
from tests.support.tinymodel import png_bomb

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
BYTES_PER_PIXEL_BOUND = 64
"""Peak decode memory allowed per pixel of the limit. Measured worst cases (docs/reliability.md): 16-bit
RGBA PNG ~56 B/px, 8-bit RGBA PNG ~24, 16-bit DICOM ~26, JPEG (DCT-reduced) < 1."""
_REAL_SEED_MAX_BYTES = 1_300_000  # larger real files decode too slowly to mutate many times in CI


@dataclass(frozen=True)
class Seed:
    name: str
    data: bytes
    fmt: str  # "png" | "jpeg" | "dicom"


@dataclass
class Outcome:
    """What one decode did: 'ok', 'rejected:<CxrError subclass>', 'crash:<type>', 'hang' or 'died'."""

    kind: str
    seconds: float
    rss_growth_kib: int  # peak RSS over the size before the call, in whichever process decoded
    detail: str = ""


@dataclass
class Figures:
    """The run's totals, for the test's assertions and docs/reliability.md."""

    inputs: int = 0
    by_format: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    guarded: Counter[str] = field(default_factory=Counter)
    isolated_crashes: int = 0
    """Inputs that killed a decoder process in service.imaging.sandbox (answered 400; the service lives on)."""
    """Parser exceptions that service.imaging.decode turned into a 400 (by type): each is a finding to narrow."""
    max_seconds: float = 0.0
    max_rss_growth_kib: int = 0
    failures: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def rss_growth_mib(self) -> float:
        return self.max_rss_growth_kib / 1024.0


# --- the worker process ---------------------------------------------------------------------------------


def _worker(connection: Connection) -> None:
    """Decode what the parent sends; answer (kind, seconds, RSS growth KiB, detail). Runs in the child."""
    from service.errors import CxrError
    from service.imaging.decode import decode

    while True:
        try:
            message = connection.recv()
        except EOFError:  # the parent went away
            return
        if message is None:
            return
        data, fmt, max_pixels = message
        before = _reset_peaks()
        started = time.monotonic()
        try:
            decode(data, max_pixels=max_pixels, fmt=fmt)
            kind, detail = "ok", ""
        except CxrError as error:
            kind, detail = f"rejected:{type(error).__name__}", error.detail
        except BaseException as error:  # the finding itself: report it with its traceback
            kind, detail = f"crash:{type(error).__name__}", traceback.format_exc(limit=8)
        seconds = time.monotonic() - started
        connection.send((kind, seconds, _growth_since(before), detail))


def _status_kib(pid: int, field_name: str) -> int:
    try:
        found = re.search(rf"{field_name}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return 0
    return int(found.group(1)) if found else 0


def _reset_peaks() -> dict[int, int]:
    """Reset the kernel's RSS high-water mark (VmHWM) of this process and its children (service.imaging.sandbox
    decodes compressed DICOM in a child) and return their resident size now, per pid. Peaks are then
    measured from the current size, not from an earlier peak (ru_maxrss never goes down)."""
    now = {}
    for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            Path(f"/proc/{process.pid}/clear_refs").write_text("5")  # 5: reset the peak RSS (Linux)
        except OSError:
            continue
        now[process.pid] = _status_kib(process.pid, "VmRSS")
    return now


def _growth_since(before: dict[int, int]) -> int:
    """The largest peak-RSS growth (KiB) of any process since _reset_peaks; a new child counts in full."""
    growth = 0
    for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        peak = _status_kib(process.pid, "VmHWM")
        growth = max(growth, peak - before.get(process.pid, _SPAWNED_BASELINE_KIB))
    return growth


_SPAWNED_BASELINE_KIB = 100 * 1024
"""What a child started during the decode (a fresh service.imaging.sandbox process) holds before decoding: its
interpreter and imports, not the decode's doing."""


class DecodeWorker:
    """A child process that decodes one input at a time, restarted after a hang or a native crash."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._context = multiprocessing.get_context("spawn")  # no fork of a threaded test runner
        self._process: Any = None
        self._connection: Connection | None = None

    def _start(self) -> Connection:
        parent, child = self._context.Pipe()
        # Not a daemon: daemons may not have children, and decode() starts one for compressed DICOM
        # (service.imaging.sandbox). It exits on its own when this end of the pipe closes.
        self._process = self._context.Process(target=_worker, args=(child,), daemon=False)
        self._process.start()
        child.close()
        self._connection = parent
        # Import the decoders and touch every codec once, so the baseline includes the libraries.
        for seed in synthetic_seeds():
            parent.send((seed.data, None, 10_000_000))
            if not parent.poll(60):
                raise TimeoutError("decode worker did not start")
            parent.recv()
        return parent

    def decode(self, data: bytes, fmt: str | None, max_pixels: int) -> Outcome:
        started = time.monotonic()
        try:
            connection = self._connection or self._start()
            connection.send((data, fmt, max_pixels))
            if connection.poll(self.timeout_s):
                kind, seconds, growth, detail = connection.recv()
                return Outcome(kind, seconds, int(growth), detail)
            kind = "hang"
        except (EOFError, BrokenPipeError, ConnectionResetError):
            kind = "died"
        code = self._process.exitcode if self._process is not None else None
        self.close()
        return Outcome(kind, time.monotonic() - started, 0, f"exit code {code}")

    def close(self) -> None:
        if self._process is not None:
            if self._process.is_alive():
                # its decoder children (service.imaging.sandbox) first: they would outlive a killed parent
                for child in psutil.Process(self._process.pid).children(recursive=True):
                    child.kill()
                self._process.kill()
            self._process.join(10)
        if self._connection is not None:
            self._connection.close()
        self._process, self._connection = None, None


@contextmanager
def decode_worker(timeout_s: float) -> Iterator[DecodeWorker]:
    worker = DecodeWorker(timeout_s)
    try:
        yield worker
    finally:
        worker.close()


# --- seeds ------------------------------------------------------------------------------------------------


def _gradient(height: int, width: int, dtype: type[np.generic] = np.uint8, top: int = 255) -> np.ndarray:
    rows = np.linspace(0, top, height, dtype=np.float64)[:, None]
    cols = np.linspace(0, top // 4, width, dtype=np.float64)[None, :]
    return np.clip(rows * 0.8 + cols, 0, top).astype(dtype)


def synthetic_seeds() -> list[Seed]:
    """Small files in every layout the decoders take: PNG 8/16-bit gray, RGB, RGBA; JPEG baseline and
    progressive, gray and colour; DICOM native 8/12/16-bit, MONOCHROME1, windowed, RLE, JPEG 2000,
    JPEG-LS and deflated."""
    gray = _gradient(96, 80)
    deep = _gradient(96, 80, np.uint16, 4095)
    colour = cv2.merge([gray, gray[::-1], np.roll(gray, 7, axis=1)])
    seeds = [
        Seed("png-gray8", cv2.imencode(".png", gray)[1].tobytes(), "png"),
        Seed("png-gray16", cv2.imencode(".png", deep * 16)[1].tobytes(), "png"),
        Seed("png-rgb", cv2.imencode(".png", colour)[1].tobytes(), "png"),
        Seed("png-rgba", cv2.imencode(".png", cv2.merge([colour, gray]))[1].tobytes(), "png"),
        Seed("jpeg-gray", cv2.imencode(".jpg", gray)[1].tobytes(), "jpeg"),
        Seed("jpeg-colour", cv2.imencode(".jpg", colour)[1].tobytes(), "jpeg"),
        Seed(
            "jpeg-progressive",
            cv2.imencode(".jpg", colour, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(),
            "jpeg",
        ),
        Seed("dicom-8bit", make_dicom(gray, bits_stored=8), "dicom"),
        Seed("dicom-12bit-mono1", make_dicom(deep, photometric="MONOCHROME1", bits_stored=12), "dicom"),
        Seed(
            "dicom-16bit-window",
            make_dicom(deep * 16, bits_stored=16, window=(30000, 40000), rescale=(1, -1024)),
            "dicom",
        ),
        Seed(
            "dicom-deflated",
            make_dicom(deep, bits_stored=12, transfer_syntax="1.2.840.10008.1.2.1.99"),
            "dicom",
        ),
    ]
    for name, syntax in (
        ("dicom-rle", "1.2.840.10008.1.2.5"),
        ("dicom-j2k", "1.2.840.10008.1.2.4.90"),
        ("dicom-jpegls", "1.2.840.10008.1.2.4.80"),
    ):
        try:
            seeds.append(Seed(name, make_dicom(deep, bits_stored=12, transfer_syntax=syntax), "dicom"))
        except (RuntimeError, NotImplementedError, ValueError):
            continue  # encoder plugin absent here: the real files still cover the decoder
    return seeds


def real_seeds(data_dir: Path = SHARED_DATA) -> list[Seed]:
    """The small real files in shared/data (fullres PNG/JPEG, DICOM); empty when the data is absent."""
    seeds = []
    for folder, pattern in (("fullres", "*"), ("dicom", "*.dcm")):
        for path in sorted((data_dir / folder).glob(pattern)):
            suffix = path.suffix.lower()
            fmt = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".dcm": "dicom"}.get(suffix)
            if fmt and path.stat().st_size <= _REAL_SEED_MAX_BYTES:
                seeds.append(Seed(path.name, path.read_bytes(), fmt))
    return seeds


# --- mutations ----------------------------------------------------------------------------------------------

_INTERESTING_16 = [0, 1, 0x7FFF, 0x8000, 0xFFFF]
_INTERESTING_32 = [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 65536, 50_000]
Draw = Callable[[st.SearchStrategy[Any]], Any]


def _position(draw: Draw, length: int) -> int:
    """Anywhere, but headers (the first KiB) half of the time: that is where parsers branch."""
    if length <= 1:
        return 0
    return int(draw(st.one_of(st.integers(0, min(length - 1, 1023)), st.integers(0, length - 1))))


def _truncate(draw: Draw, data: bytearray) -> tuple[str, bytearray]:
    cut = _position(draw, len(data))
    return f"truncate@{cut}", data[:cut]


def _flip(draw: Draw, data: bytearray) -> tuple[str, bytearray]:
    if not data:
        return "flip-none", data
    where = _position(draw, len(data))
    bit = draw(st.integers(0, 7))
    data[where] ^= 1 << bit
    return f"flip@{where}.{bit}", data


def _interesting(draw: Draw, data: bytearray) -> tuple[str, bytearray]:
    if len(data) < 4:
        return "interesting-none", data
    where = min(_position(draw, len(data)), len(data) - 4)
    wide = draw(st.booleans())
    order = draw(st.sampled_from([">", "<"]))
    if wide:
        data[where : where + 4] = struct.pack(order + "I", draw(st.sampled_from(_INTERESTING_32)))
    else:
        data[where : where + 2] = struct.pack(order + "H", draw(st.sampled_from(_INTERESTING_16)))
    return f"int{32 if wide else 16}{order}@{where}", data


def _splice(draw: Draw, data: bytearray) -> tuple[str, bytearray]:
    where = _position(draw, len(data))
    if draw(st.booleans()):
        span = draw(st.integers(1, 256))
        return f"delete@{where}+{span}", data[:where] + data[where + span :]
    junk = draw(st.binary(min_size=1, max_size=64))
    return f"insert@{where}+{len(junk)}", data[:where] + junk + data[where:]


def _png_ihdr(draw: Draw, data: bytearray) -> tuple[str, bytearray]:
    if len(data) < 33 or data[12:16] != b"IHDR":
        return "ihdr-none", data
    width = draw(
        st.sampled_from([0, 1, 7745, 65535, 0x7FFFFFFF, 0xFFFFFFFF, *struct.unpack(">I", data[16:20])])
    )
    height = draw(
        st.sampled_from([0, 1, 7745, 65535, 0x7FFFFFFF, 0xFFFFFFFF, *struct.unpack(">I", data[20:24])])
    )
    depth = draw(st.sampled_from([0, 1, 2, 3, 4, 8, 16, 255]))
    colour = draw(st.sampled_from([0, 2, 3, 4, 5, 6, 255]))
    data[16:26] = struct.pack(">IIBB", width, height, depth, colour)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # valid CRC: get past libpng's check
    return f"ihdr={width}x{height}/{depth}/{colour}", data


def _jpeg_sof(draw: Draw, data: bytearray) -> tuple[str, bytearray]:
    for marker in (b"\xff\xc0", b"\xff\xc2", b"\xff\xc1"):
        at = data.find(marker, 2)
        if at >= 0 and at + 10 <= len(data):
            break
    else:
        return "sof-none", data
    precision = draw(st.sampled_from([0, 8, 12, 16, 255]))
    height = draw(st.sampled_from([0, 1, 7745, 65535, *struct.unpack(">H", data[at + 5 : at + 7])]))
    width = draw(st.sampled_from([0, 1, 7745, 65535, *struct.unpack(">H", data[at + 7 : at + 9])]))
    components = draw(st.sampled_from([0, 1, 3, 4, 255, data[at + 9]]))
    data[at + 4 : at + 10] = struct.pack(">BHHB", precision, height, width, components)
    return f"sof={width}x{height}/{precision}/{components}", data


_DICOM_EDITS: dict[str, list[Any]] = {
    "Rows": [0, 1, 65535, 20000],
    "Columns": [0, 1, 65535, 20000],
    "BitsAllocated": [0, 1, 8, 12, 16, 32, 64],
    "BitsStored": [0, 1, 8, 12, 16, 17, 33],
    "HighBit": [0, 7, 15, 40],
    "PixelRepresentation": [0, 1, 2],
    "SamplesPerPixel": [0, 1, 3, 4],
    "PhotometricInterpretation": ["MONOCHROME1", "RGB", "PALETTE COLOR", "YBR_FULL", ""],
    "NumberOfFrames": ["0", "1", "2", "-1", "x"],
    "WindowCenter": ["0", "-1e308", "1e308", "nan", "x", "40\\400"],
    "WindowWidth": ["0", "-1", "1", "1e-300", "inf", "x"],
    "VOILUTFunction": ["LINEAR", "SIGMOID", "LINEAR_EXACT", "BOGUS"],
    "RescaleSlope": ["0", "-1", "1e308", "nan", "x"],
    "RescaleIntercept": ["0", "-1e308", "x"],
    "PixelPaddingValue": [0, 65535],
    "Modality": ["DX", "CT", ""],
    "BodyPartExamined": ["CHEST", "SKULL", ""],
}
_TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.3.4.invalid",
]


def _dicom_tags(draw: Draw, data: bytearray) -> tuple[str, bytearray]:
    """Re-encode the dataset with pixel-module tags (or the declared transfer syntax) set to edge values,
    so the decoder meets headers that disagree with the pixel data."""
    from pydicom import config

    # Writing invalid values is the point: silence pydicom's validation (a warning, an error under pytest).
    modes = config.settings.reading_validation_mode, config.settings.writing_validation_mode
    config.settings.reading_validation_mode = config.settings.writing_validation_mode = config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _edit_dicom_tags(draw, data)
    finally:
        config.settings.reading_validation_mode, config.settings.writing_validation_mode = modes


def _edit_dicom_tags(draw: Draw, data: bytearray) -> tuple[str, bytearray]:
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(bytes(data)), force=True)
    except Exception:  # a previous mutation broke it beyond parsing: leave it broken
        return "tags-unreadable", data
    edits = []
    for keyword in draw(st.lists(st.sampled_from(sorted(_DICOM_EDITS)), min_size=1, max_size=3, unique=True)):
        value = draw(st.sampled_from(_DICOM_EDITS[keyword]))
        edits.append(f"{keyword}={value}")
        try:
            setattr(ds, keyword, value)
        except (ValueError, TypeError, OverflowError):
            continue
    if draw(st.booleans()) and getattr(ds, "file_meta", None) is not None:
        syntax = draw(st.sampled_from(_TRANSFER_SYNTAXES))
        ds.file_meta.TransferSyntaxUID = syntax
        edits.append(f"syntax={syntax}")
    if draw(st.integers(0, 9)) == 0 and "PixelData" in ds:
        del ds.PixelData
        edits.append("no-pixeldata")
    buffer = io.BytesIO()
    try:
        # Write the bytes as they are (no re-encoding of pixels): the header lies about them.
        ds.save_as(buffer, enforce_file_format=False, implicit_vr=False, little_endian=True)
    except Exception:
        return "tags-unwritable", data
    return "tags:" + ",".join(edits), bytearray(buffer.getvalue())


_GENERIC = [_truncate, _flip, _flip, _interesting, _splice]
_STRUCTURED = {"png": _png_ihdr, "jpeg": _jpeg_sof, "dicom": _dicom_tags}


class Case:
    """One fuzz input: its seed, the mutations applied, the bytes and the declared format (None: sniffed)."""

    def __init__(self, seed: str, steps: tuple[str, ...], data: bytes, fmt: str | None) -> None:
        self.seed, self.steps, self.data, self.fmt = seed, steps, data, fmt

    def __repr__(self) -> str:  # what hypothesis prints for a falsifying example: no megabytes of bytes
        return f"Case(seed={self.seed!r}, steps={self.steps!r}, fmt={self.fmt!r}, bytes={len(self.data)})"


def cases(corpus: list[Seed]) -> st.SearchStrategy[Case]:
    @st.composite
    def build(draw: Draw) -> Case:
        seed = draw(st.sampled_from(corpus))
        data = bytearray(seed.data)
        steps = []
        if draw(st.integers(0, 2)) == 0:  # a third of the inputs get the format-aware edit first
            step, data = _STRUCTURED[seed.fmt](draw, data)
            steps.append(step)
        for _ in range(draw(st.integers(0 if steps else 1, 3))):
            step, data = draw(st.sampled_from(_GENERIC))(draw, data)
            steps.append(step)
        fmt = draw(st.sampled_from([None, seed.fmt]))  # Content-Type declared or sniffed
        return Case(seed.name, tuple(steps), bytes(data), fmt)

    return build()


def fuzz(
    corpus: list[Seed],
    *,
    examples: int,
    max_pixels: int,
    timeout_s: float,
    seed: int | None = 0,
    on_failure: str = "raise",
) -> Figures:
    """Decode `examples` mutated inputs; `on_failure='raise'` stops at the first broken contract (and lets
    hypothesis shrink it), 'record' keeps going and lists every failure in the figures."""
    figures = Figures()
    bound_kib = BYTES_PER_PIXEL_BOUND * max_pixels // 1024
    started = time.monotonic()
    with decode_worker(timeout_s) as worker:

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            phases=[Phase.generate, Phase.shrink] if on_failure == "raise" else [Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(cases(corpus))
        def property_holds(case: Case) -> None:
            outcome = worker.decode(case.data, case.fmt, max_pixels)
            figures.inputs += 1
            figures.by_format[(case.fmt or "sniffed") + ":" + case.seed.split("-")[0]] += 1
            figures.outcomes[outcome.kind.split(":")[0]] += 1
            guarded = re.match(r"The DICOM file could not be read \((\w+)\)", outcome.detail)
            if guarded:
                figures.guarded[guarded.group(1)] += 1
            figures.isolated_crashes += "crashed its decoder" in outcome.detail
            figures.max_seconds = max(figures.max_seconds, outcome.seconds)
            figures.max_rss_growth_kib = max(figures.max_rss_growth_kib, outcome.rss_growth_kib)
            problem = None
            if outcome.kind in ("hang", "died") or outcome.kind.startswith("crash:"):
                problem = f"{outcome.kind} on {case!r}: {outcome.detail}"
            elif outcome.rss_growth_kib > bound_kib:
                problem = f"RSS grew {outcome.rss_growth_kib} KiB, over the bound, on {case!r}"
            if problem:
                figures.failures.append(problem)
                if on_failure == "raise":
                    raise AssertionError(problem)

        if seed is not None:
            property_holds = hypothesis_seed(seed)(property_holds)
        property_holds()
    figures.wall_seconds = time.monotonic() - started
    return figures


# --- decompression bombs ------------------------------------------------------------------------------------


def deflated_dicom_bomb(inflated_bytes: int, meta_padding: int = 0) -> bytes:
    """A Deflated Explicit VR Little Endian file whose dataset inflates to `inflated_bytes` (a private OB
    element of zeros): ~1000:1, so 300 MB of dataset is a ~0.3 MB upload. `meta_padding` bytes in the File
    Meta Information Version push the transfer syntax UID away from the start of the file."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian, DigitalXRayImageStorageForPresentation

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta.FileMetaInformationVersion = b"\x00\x01" + bytes(meta_padding)
    header = io.BytesIO()
    header.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(header, meta, enforce_standard=True)  # type: ignore[arg-type]
    dataset = pydicom.dcmread(io.BytesIO(make_dicom(np.zeros((8, 8), np.uint8), bits_stored=8)))
    plain = _dataset_bytes(dataset)  # the dataset alone, without preamble and file meta
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunks = [compressor.compress(plain)]
    # A private OB element (0009,1010) holding the zeros: tag, VR, 2 reserved bytes, 32-bit length.
    chunks.append(compressor.compress(struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, inflated_bytes)))
    zeros = bytes(1 << 20)
    for _ in range(inflated_bytes >> 20):
        chunks.append(compressor.compress(zeros))
    chunks.append(compressor.flush())
    return header.getvalue() + b"".join(chunks)


def _dataset_bytes(dataset: Any) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, dataset)
    return bytes(buffer.getvalue())


def bombs(max_pixels: int) -> list[tuple[str, bytes]]:
    """Small files declaring far more pixels than `max_pixels` (or, deflated, far more bytes)."""

    jpeg = bytearray(cv2.imencode(".jpg", _gradient(64, 64))[1].tobytes())
    at = jpeg.find(b"\xff\xc0")
    jpeg[at + 5 : at + 9] = struct.pack(">HH", 65535, 65535)
    declared = 65535 * 65535
    deflated_size = 4 * max_pixels + 64 * 1024 * 1024  # over what check_deflated_dicom allows
    return [
        (f"PNG IHDR 50000x50000 ({50000 * 50000 // 10**6} Mpx)", png_bomb()),
        (f"JPEG SOF 65535x65535 ({declared // 10**6} Mpx)", bytes(jpeg)),
        (
            f"DICOM Rows x Columns 65535x65535, native ({declared // 10**6} Mpx)",
            make_dicom(np.zeros((4, 4), np.uint16), bits_stored=12, after={"Rows": 65535, "Columns": 65535}),
        ),
        (
            f"DICOM Rows x Columns 65535x65535, RLE ({declared // 10**6} Mpx)",
            make_dicom(
                np.zeros((4, 4), np.uint16),
                bits_stored=12,
                transfer_syntax="1.2.840.10008.1.2.5",
                after={"Rows": 65535, "Columns": 65535},
            ),
        ),
        (
            f"DICOM deflated dataset inflating to {deflated_size // 2**20} MiB",
            deflated_dicom_bomb(deflated_size),
        ),
    ]


def memory_per_pixel(side: int = 2000) -> dict[str, float]:
    """Peak decode memory per pixel (bytes) for the heaviest layout of each format: what `max_pixels`
    costs per image in flight."""
    zeros16 = np.zeros((side, side, 4), np.uint16)
    zeros16[::7, ::5] = 60000  # some content, still highly compressible
    layouts = {
        "PNG 16-bit RGBA": cv2.imencode(".png", zeros16)[1].tobytes(),
        "PNG 8-bit RGBA": cv2.imencode(".png", np.zeros((side, side, 4), np.uint8))[1].tobytes(),
        "PNG 8-bit gray": cv2.imencode(".png", np.zeros((side, side), np.uint8))[1].tobytes(),
        "JPEG colour (DCT-reduced)": cv2.imencode(".jpg", np.zeros((side, side, 3), np.uint8))[1].tobytes(),
        "DICOM 16-bit, JPEG 2000": make_dicom(
            np.zeros((side, side), np.uint16), bits_stored=12, transfer_syntax="1.2.840.10008.1.2.4.90"
        ),
    }
    measured = {}
    with decode_worker(timeout_s=60) as worker:
        for name, data in layouts.items():
            outcome = worker.decode(data, None, side * side)
            if outcome.kind != "ok":
                raise RuntimeError(f"{name}: {outcome.kind} {outcome.detail}")
            measured[name] = outcome.rss_growth_kib * 1024 / (side * side)
    return measured
