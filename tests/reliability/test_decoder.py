"""Decoder fuzzing (bounded) and decompression bombs, each input decoded in a separate worker process.

The long run is `python -m scripts.reliability_report` (docs/reliability.md)."""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_fragmented_frames

from service.errors import InvalidImage, PayloadTooLarge
from service.imaging.decode import DEFAULT_MAX_PIXELS, decode
from tests.reliability.decode_fuzz import (
    BYTES_PER_PIXEL_BOUND,
    DecodeWorker,
    _gradient,
    bombs,
    decode_worker,
    deflated_dicom_bomb,
    fuzz,
    real_seeds,
    synthetic_seeds,
)
from tests.support.dicoms import make_dicom

pytestmark = pytest.mark.slow

CI_EXAMPLES = 1200
"""~15 s here; the report runs 20x more with a random seed."""
FUZZ_MAX_PIXELS = 8_000_000
"""Above every real seed (the largest decoded is ~5.6 Mpx), small enough to make the memory bound tight."""


@pytest.fixture(scope="module")
def worker() -> Iterator[DecodeWorker]:
    with decode_worker(timeout_s=10) as started:
        yield started


def test_fuzzed_png_jpeg_dicom_raise_only_cxr_errors_within_time_and_memory_bounds() -> None:
    corpus = synthetic_seeds() + real_seeds()
    figures = fuzz(corpus, examples=CI_EXAMPLES, max_pixels=FUZZ_MAX_PIXELS, timeout_s=10, seed=20261122)
    assert figures.failures == []
    assert figures.inputs >= CI_EXAMPLES
    assert figures.outcomes["ok"] > 0 and figures.outcomes["rejected"] > 0  # both paths were exercised
    assert {key.split(":")[0] for key in figures.by_format} >= {"png", "jpeg", "dicom", "sniffed"}
    assert figures.rss_growth_mib * 2**20 < BYTES_PER_PIXEL_BOUND * FUZZ_MAX_PIXELS


@pytest.mark.parametrize("index", range(5), ids=lambda i: ["png", "jpeg", "dicom", "dicom-rle", "deflate"][i])
def test_decompression_bombs_are_rejected_before_decoding(worker: DecodeWorker, index: int) -> None:
    name, data = bombs(DEFAULT_MAX_PIXELS)[index]
    outcome = worker.decode(data, None, DEFAULT_MAX_PIXELS)
    assert outcome.kind == "rejected:PayloadTooLarge", (name, outcome)
    assert len(data) < 400_000
    # The deflate check inflates (and discards) up to its byte limit: bounded, not instant.
    assert outcome.seconds < (3.0 if "deflate" in name else 0.1), name
    assert outcome.rss_growth_kib < 64 * 1024, name


def test_deflated_dicom_bomb_is_413_before_inflating() -> None:
    """Regression: pydicom inflates a deflated dataset whole; a 0.4 MB upload took 800 MB before this."""
    data = bombs(1_000_000)[4][1]
    with pytest.raises(PayloadTooLarge, match="inflates to over"):
        decode(data, max_pixels=1_000_000)
    pushed_back = deflated_dicom_bomb(64 * 2**20, meta_padding=100_000)  # UID 100 kB into the file
    with pytest.raises(PayloadTooLarge, match="inflates to over"):
        decode(pushed_back, max_pixels=1_000_000)
    ordinary = make_dicom(
        _gradient(64, 48, np.uint16, 4095), bits_stored=12, transfer_syntax="1.2.840.10008.1.2.1.99"
    )
    assert decode(ordinary, max_pixels=1_000_000).pixels.shape == (64, 48)  # deflate itself still works


def test_dicom_unknown_vr_in_pixel_module_is_400_not_500() -> None:
    """Regression: pydicom raised NotImplementedError reading Columns with VR 'UQ' (a 500 before)."""
    data = bytearray(make_dicom(_gradient(32, 32), bits_stored=8))
    at = data.find(b"\x28\x00\x11\x00US")
    data[at + 4 : at + 6] = b"UQ"
    with pytest.raises(InvalidImage, match="could not be read"):
        decode(bytes(data))


def test_rle_decoder_panic_is_400_not_500() -> None:
    """Regression: a truncated RLE segment made pylibjpeg-rle panic (pyo3 PanicException, a BaseException
    that the service's handlers did not catch: a 500 with a Rust backtrace)."""
    source = make_dicom(
        _gradient(96, 80, np.uint16, 4095), bits_stored=12, transfer_syntax="1.2.840.10008.1.2.5"
    )
    ds = pydicom.dcmread(io.BytesIO(source))
    frame = b"".join(next(generate_fragmented_frames(ds.PixelData)))
    assert struct.unpack("<I", frame[:4])[0] >= 1
    ds.PixelData = encapsulate([frame[:64] + frame[64 + 196 :]])  # first segment cut short
    broken = io.BytesIO()
    ds.save_as(broken)
    with pytest.raises(InvalidImage, match="could not be read"):
        decode(broken.getvalue())


def test_gdcm_abort_on_hostile_dicom_is_400_not_a_dead_process() -> None:
    """Regression: a JPEG-LS file whose Rows disagree with its stream made pyjpegls refuse it, pydicom fall
    back to GDCM, and GDCM abort the whole process (std::terminate: every request in flight lost)."""
    pixels = _gradient(96, 80, np.uint16, 4095)
    hostile = make_dicom(
        pixels, bits_stored=12, transfer_syntax="1.2.840.10008.1.2.4.80", after={"Rows": 65535}
    )
    with pytest.raises(InvalidImage, match="crashed its decoder"):
        decode(hostile)
    fine = make_dicom(pixels, bits_stored=12, transfer_syntax="1.2.840.10008.1.2.4.80")
    assert decode(fine).pixels.shape == (96, 80)  # a fresh decoder process took over


def test_png_chunk_length_past_the_end_is_400_without_allocating(worker: DecodeWorker) -> None:
    """Regression: a bit flip in a chunk length (0x5e8 -> 0x200005e8) made OpenCV allocate the declared
    512 MB for a 1.5 kB file; 2 GB at most."""
    data = bytearray(next(seed.data for seed in synthetic_seeds() if seed.name == "png-gray8"))
    data[33:37] = struct.pack(">I", 0x7FFFFFFF)  # the chunk after IHDR
    outcome = worker.decode(bytes(data), None, DEFAULT_MAX_PIXELS)
    assert outcome.kind == "rejected:InvalidImage" and "past the end of the file" in outcome.detail
    assert outcome.rss_growth_kib < 16 * 1024


def test_dicom_transfer_syntax_with_unknown_vr_is_400_not_500() -> None:
    """Regression: reading a File Meta Transfer Syntax UID whose VR bytes were corrupted raised
    NotImplementedError before the guard (a 500)."""
    data = bytearray(make_dicom(_gradient(32, 32), bits_stored=8))
    at = data.find(b"\x02\x00\x10\x00UI")
    data[at + 4 : at + 6] = b"WI"
    with pytest.raises(InvalidImage):
        decode(bytes(data))
