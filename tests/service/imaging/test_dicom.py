"""service.imaging.dicom: the DICOM pixel pipeline (Modality LUT -> VOI -> MONOCHROME1), codecs, and refusals.

Synthetic images whose display values are known, written in every pixel format the decoder must handle.
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
import pytest
from pydantic import ValidationError
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from service.errors import InvalidImage, PayloadTooLarge, UnsupportedDicom, UnsupportedMediaType
from service.imaging.decode import decode
from service.imaging.dicom import DicomPolicy, decode_dicom, display_values, window
from service.settings import Settings, add_cli_flags, from_cli
from tests.support.dicoms import make_dicom, phantom, quantise, variants

MAX_PIXELS = 10_000_000


def full(data: bytes) -> np.ndarray:
    """Display values in [0, 1] at full resolution (before the training-scale resize)."""
    from service.imaging.dicom import _read_dataset, _stored_pixels

    ds = _read_dataset(data)
    return display_values(ds, _stored_pixels(ds))


IMAGE = phantom((120, 100), seed=3)


def test_monochrome1_is_inverted_after_the_window() -> None:
    mono2 = make_dicom(quantise(IMAGE, 12), bits_stored=12, window=(2048, 4096))
    mono1 = make_dicom(
        4095 - quantise(IMAGE, 12), bits_stored=12, window=(2048, 4096), photometric="MONOCHROME1"
    )
    assert np.abs(full(mono1) - full(mono2)).max() < 1e-9
    assert np.abs(full(mono2) - IMAGE).max() < 1 / 4095 + 1e-9
    # A narrow window on MONOCHROME1: values below the window are white, above it black (inverted after VOI).
    narrow = make_dicom(
        np.array([[0, 1000, 2048, 3000, 4095]]),
        bits_stored=12,
        window=(2048, 1000),
        photometric="MONOCHROME1",
    )
    values = full(narrow)[0]
    assert values[0] == 1.0 and values[-1] == 0.0 and values[2] == pytest.approx(0.5, abs=1e-3)


def test_window_with_rescale_intercept_uses_the_window_not_the_stored_range() -> None:
    """Regression: the window's output was normalised with [0, 2**BitsStored - 1] although pydicom's
    windowing output had moved by the rescale intercept, so a CT-like intercept of -1024 made white grey."""
    stored = quantise(IMAGE, 12)
    plain = make_dicom(stored, bits_stored=12, window=(2048, 4096))
    rescaled = make_dicom(stored, bits_stored=12, rescale=(1.0, -1024.0), window=(1024, 4096))
    assert np.abs(full(rescaled) - full(plain)).max() < 1e-9
    assert full(rescaled).max() == pytest.approx(IMAGE.max(), abs=1e-3)


def test_12_and_16_bit_signed_and_unsigned_give_the_same_picture() -> None:
    b12 = full(make_dicom(quantise(IMAGE, 12), bits_stored=12, window=(2048, 4096)))
    b16 = full(make_dicom(quantise(IMAGE, 16), bits_stored=16, window=(32768, 65536)))
    signed = full(
        make_dicom(quantise(IMAGE, 16, signed=True), bits_stored=16, signed=True, window=(0, 65536))
    )
    assert np.abs(b12 - b16).max() < 2e-4 and np.abs(b16 - signed).max() < 2e-4


def test_voi_functions_follow_ps3_3_c_11_2() -> None:
    values = np.array([0.0, 99.0, 100.0, 101.0, 200.0])
    linear = window(values, 100.0, 101.0, "LINEAR")
    assert linear is not None and linear[0] == 0.0 and linear[-1] == 1.0
    assert linear[2] == pytest.approx(0.505, abs=1e-9)  # ((100 - 99.5) / 100 + 0.5)
    exact = window(values, 100.0, 100.0, "LINEAR_EXACT")
    assert exact is not None and exact[2] == 0.5
    sigmoid = window(values, 100.0, 50.0, "SIGMOID")
    assert sigmoid is not None and sigmoid[2] == 0.5 and 0 < sigmoid[0] < 0.001
    assert window(values, 100.0, 0.5, "LINEAR") is None  # width < 1 is not a window: treated as absent
    threshold = window(values, 100.0, 1.0, "LINEAR")
    assert threshold is not None and list(threshold) == [0, 0, 1, 1, 1]


def test_voi_lut_sequence_is_scaled_by_its_bit_depth() -> None:
    stored = np.arange(0, 4096, 16, dtype=np.int64).reshape(16, 16)
    data = make_dicom(stored, bits_stored=12, window=(10, 10))  # the LUT wins over the window
    from service.imaging.dicom import _read_dataset, _stored_pixels

    ds = _read_dataset(data)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.LUTData = [4095 - i for i in range(4096)]  # an inverting LUT
    ds.VOILUTSequence = Sequence([item])
    values = display_values(ds, _stored_pixels(ds))
    assert values[0, 0] == 1.0 and values[-1, -1] == pytest.approx(15 / 4095)


def test_8_bit_without_voi_keeps_its_grey_levels_and_deeper_data_is_stretched() -> None:
    stored8 = np.rint(IMAGE * 200).astype(np.int64)  # does not reach 255: no stretching wanted
    decoded = decode_dicom(make_dicom(stored8, bits_stored=8), max_pixels=MAX_PIXELS)
    assert np.array_equal(decoded.pixels, stored8.astype(np.uint8))
    stored12 = 1000 + np.rint(IMAGE * 2000).astype(np.int64)
    stretched = full(make_dicom(stored12, bits_stored=12))
    assert stretched.min() == 0.0 and stretched.max() == 1.0
    padded = stored12.copy()
    padded[:5] = 0  # a padding border must not take part in the min/max
    with_padding = full(make_dicom(padded, bits_stored=12, extra={"PixelPaddingValue": 0}))
    assert with_padding[10:].min() == pytest.approx(stretched[10:].min())


@pytest.mark.parametrize(
    ("syntax", "bits", "tolerance"),
    [
        (RLELossless, 12, 0.0),
        (JPEG2000Lossless, 12, 0.0),
        (JPEGLSLossless, 12, 0.0),
        (JPEGLosslessSV1, 12, 0.0),
        (JPEGLosslessSV1, 16, 0.0),
        (JPEG2000, 12, 0.25),
        (JPEGBaseline8Bit, 8, 0.06),
    ],
    ids=[
        "rle",
        "j2k-lossless",
        "jpeg-ls",
        "jpeg-lossless-12",
        "jpeg-lossless-16",
        "j2k-lossy",
        "jpeg-baseline",
    ],
)
def test_compressed_transfer_syntaxes_decode_like_the_uncompressed_image(
    syntax: str, bits: int, tolerance: float
) -> None:
    window_arg = None if bits == 8 else (2**bits / 2, 2**bits)
    plain = make_dicom(quantise(IMAGE, bits), bits_stored=bits, window=window_arg)
    compressed = make_dicom(
        quantise(IMAGE, bits), bits_stored=bits, window=window_arg, transfer_syntax=syntax
    )
    difference = np.abs(full(compressed) - full(plain))
    assert difference.max() <= tolerance + 1e-9, difference.max()
    assert difference.mean() <= tolerance / 5 + 1e-9


def test_every_variant_of_the_test_set_shows_the_same_picture() -> None:
    decoded = {name: decode(data).pixels.astype(int) for name, data in variants(generate_uid()).items()}
    reference = decoded["mono1-12bit"]
    for name, pixels in decoded.items():
        assert np.abs(pixels - reference).mean() < 3, name


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"Modality": "MR"}, "Modality MR"),
        ({"BodyPartExamined": "HAND"}, "not a chest"),
        ({"NumberOfFrames": 2}, "Multi-frame"),
        ({"PhotometricInterpretation": "RGB", "SamplesPerPixel": 3}, "Colour"),
    ],
)
def test_refusals_are_unsupported_dicom(changes: dict[str, object], message: str) -> None:
    data = make_dicom(quantise(IMAGE, 12), bits_stored=12, extra=changes)
    with pytest.raises(UnsupportedDicom, match=message):
        decode(data)


def test_policy_is_configurable_by_settings_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    hand_mr = make_dicom(quantise(IMAGE, 12), bits_stored=12, modality="MR", body_part="HAND")
    lenient = DicomPolicy(modalities=frozenset(), check_body_part=False)
    assert decode_dicom(hand_mr, max_pixels=MAX_PIXELS, policy=lenient).pixels.size
    with pytest.raises(UnsupportedDicom, match="Modality MR"):
        decode(hand_mr)  # the defaults: CR, DX, DR; chest only
    monkeypatch.setenv("CXR_DICOM_MODALITIES", "mr")
    monkeypatch.setenv("CXR_DICOM_CHECK_BODY_PART", "false")
    from_environment = Settings().dicom_policy
    assert from_environment == DicomPolicy(modalities=frozenset({"MR"}), check_body_part=False)
    assert decode(hand_mr, policy=from_environment).format == "dicom"
    parser = argparse.ArgumentParser()
    add_cli_flags(parser)
    flags = from_cli(parser.parse_args(["--dicom-modalities", "", "--dicom-check-body-part"]))
    assert flags.dicom_policy == DicomPolicy(modalities=frozenset(), check_body_part=True)  # flags win
    with pytest.raises(UnsupportedDicom, match="HAND"):
        decode(hand_mr, policy=flags.dicom_policy)
    monkeypatch.setenv("CXR_DICOM_CHECK_BODY_PART", "maybe")
    with pytest.raises(ValidationError, match="dicom_check_body_part"):
        Settings()  # refused at start-up, not read as true


def test_no_pixel_data_not_dicom_and_pixel_limit() -> None:
    data = make_dicom(quantise(IMAGE, 12), bits_stored=12)
    from service.imaging.dicom import _read_dataset

    ds = _read_dataset(data)
    del ds.PixelData
    import io

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with pytest.raises(UnsupportedDicom, match="no pixel data"):
        decode(buffer.getvalue())
    with pytest.raises(UnsupportedMediaType):
        decode(b"this is not an image at all" * 10)
    with pytest.raises(InvalidImage):
        decode(data[:200], fmt="dicom")
    with pytest.raises(PayloadTooLarge):
        decode(data, max_pixels=100)
    corrupt = make_dicom(quantise(IMAGE, 12), bits_stored=12, transfer_syntax=JPEG2000Lossless)
    with pytest.raises(InvalidImage, match="could not be decoded"):
        start = corrupt.index(b"\xff\x4f\xff\x51")  # the JPEG 2000 codestream's SOC + SIZ markers
        decode(corrupt[:start] + b"\xaa" * 64 + corrupt[start + 64 :])


def test_lateral_and_decubitus_views_are_flagged() -> None:
    def flags(**extra: object) -> dict[str, str]:
        view = extra.pop("view", None)
        return decode(make_dicom(quantise(IMAGE, 12), bits_stored=12, view=view, extra=extra)).flags  # type: ignore[arg-type]

    assert flags(view="PA") == {"view": "PA"}
    assert flags(view="LL")["lateral"] == "true" and "lateral view" in flags(view="LL")["warning"]
    assert "lateral" not in flags(view="LLD") and "decubitus" in flags(view="LLD")["warning"]
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "399067008", "SCT", "lateral"
    assert flags(ViewCodeSequence=Sequence([code]))["lateral"] == "true"


def test_explicit_vr_default_syntax_is_untouched() -> None:
    data = make_dicom(quantise(IMAGE, 12), bits_stored=12, transfer_syntax=ExplicitVRLittleEndian)
    assert decode(data).original_height == 120


@pytest.mark.parametrize("name", ["mono1-12bit", "16bit-signed", "jpegls", "j2k-lossy"])
def test_display_dicom_is_the_decoded_picture_at_the_pictures_scale(name: str) -> None:
    """What `cxr pacs` draws its Secondary Capture from: the model's grey levels, full field of view."""
    from service.imaging.decode import display_dicom

    data = variants(generate_uid())[name]
    small = display_dicom(data, max_side=1024)
    assert small.shape == (120, 100) and np.array_equal(small, decode(data).pixels)  # never enlarged
    large = make_dicom(quantise(phantom((1300, 1100), seed=2), 12), bits_stored=12, window=(2048, 4096))
    shown = display_dicom(large, max_side=512)
    assert shown.shape == (512, round(1100 * 512 / 1300))
    model_grid = decode(large).pixels
    resized = cv2.resize(shown, model_grid.shape[::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(resized.astype(int) - model_grid.astype(int)).mean() < 1.0
    with pytest.raises(UnsupportedMediaType):
        display_dicom(b"\x89PNG\r\n\x1a\n" + b"\0" * 64, max_side=512)
