"""Synthetic chest radiograph DICOMs for the tests: any bit depth, photometric, VOI and transfer syntax.

Compressed files are made with the encoders available without GPL code: pydicom (RLE), pylibjpeg-openjpeg
(JPEG 2000), pyjpegls (JPEG-LS), OpenCV (JPEG baseline, encapsulated here) and GDCM (JPEG lossless).
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

PATIENT_NAME = "Doe^Janet"
PATIENT_ID = "PID-31337"
IDENTIFYING_FILENAME = "Janet_Doe_PID-31337_chest.png"
"""Identifiers that must never reach a log line (tests/service/test_server.py greps for them)."""

LOSSLESS_SYNTAXES = (ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless, JPEGLSLossless, JPEGLosslessSV1)


def phantom(size: tuple[int, int] = (96, 80), seed: int = 0, blob: bool = True) -> np.ndarray:
    """A float image in [0, 1]: body, two darker lung fields, texture, and (optionally) a bright blob."""
    height, width = size
    rng = np.random.default_rng(seed)
    image = np.full(size, 0.75)
    for cx in (width // 3, 2 * width // 3):
        cv2.ellipse(image, (cx, height // 2), (width // 8, height // 3), 0, 0, 360, 0.25, -1)
    if blob:
        cv2.circle(image, (int(rng.integers(width // 4, 3 * width // 4)), height // 2), height // 8, 0.95, -1)
    image += rng.normal(0, 0.03, size)
    return np.clip(image, 0.0, 1.0)


def make_dicom(
    stored: np.ndarray,
    *,
    bits_stored: int,
    photometric: str = "MONOCHROME2",
    signed: bool = False,
    transfer_syntax: str = ExplicitVRLittleEndian,
    modality: str = "DX",
    body_part: str | None = "CHEST",
    view: str | None = "PA",
    window: tuple[float, float] | None = None,
    voi_function: str | None = None,
    rescale: tuple[float, float] | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    patient_id: str = "TEST-0001",
    patient_name: str = "Test^Synthetic",
    extra: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> bytes:
    """Part 10 bytes of a one-frame grayscale image holding `stored` (integer stored values) as given.

    `extra` tags are set before the pixels are encoded; `after` tags once they are, so they may lie about
    the pixels (bombs, truncations)."""
    sop_class = (
        ComputedRadiographyImageStorage if modality == "CR" else DigitalXRayImageStorageForPresentation
    )
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = "20240102"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = modality
    if body_part is not None:
        ds.BodyPartExamined = body_part
    if view is not None:
        ds.ViewPosition = view
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    allocated = 8 if bits_stored <= 8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.RescaleType = "US"
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    dtype = {(8, False): np.uint8, (8, True): np.int8, (16, False): np.uint16, (16, True): np.int16}[
        (allocated, signed)
    ]
    ds.PixelData = stored.astype(dtype).tobytes()
    _compress(ds, transfer_syntax, stored)
    for keyword, value in (after or {}).items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _compress(ds: Dataset, syntax: str, stored: np.ndarray) -> None:
    if syntax == ExplicitVRLittleEndian:
        return
    if syntax == DeflatedExplicitVRLittleEndian:  # pydicom deflates the dataset when it writes the file
        ds.file_meta.TransferSyntaxUID = syntax
    elif syntax in (RLELossless, JPEG2000Lossless, JPEGLSLossless):
        ds.compress(syntax)
    elif syntax == JPEG2000:
        ds.compress(syntax, j2k_cr=[5])
    elif syntax == JPEGBaseline8Bit:
        if ds.BitsAllocated != 8:
            raise ValueError("JPEG baseline holds 8-bit data only")
        ok, jpeg = cv2.imencode(".jpg", stored.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:
            raise RuntimeError("cv2 could not encode JPEG")
        ds.PixelData = encapsulate([jpeg.tobytes()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.LossyImageCompression = "01"
    elif syntax == JPEGLosslessSV1:
        _gdcm_transcode(ds, syntax)
    else:
        ds.compress(syntax)  # whatever else pydicom's own encoders take


def _gdcm_transcode(ds: Dataset, syntax: str) -> None:
    """JPEG lossless through GDCM (pydicom has no encoder for it)."""
    import gdcm
    from pydicom import dcmread

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    reader = gdcm.ImageReader()
    with tempfile.TemporaryDirectory() as folder:
        source, target = f"{folder}/in.dcm", f"{folder}/out.dcm"
        with open(source, "wb") as handle:
            handle.write(buffer.getvalue())
        reader.SetFileName(source)
        if not reader.Read():
            raise RuntimeError("GDCM could not read the dataset")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise RuntimeError("GDCM could not compress")
        writer = gdcm.ImageWriter()
        writer.SetFileName(target)
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise RuntimeError("GDCM could not write")
        compressed = dcmread(target)
    if str(compressed.file_meta.TransferSyntaxUID) != syntax:
        raise RuntimeError(f"GDCM wrote {compressed.file_meta.TransferSyntaxUID}")
    ds.PixelData = compressed.PixelData
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax


def quantise(image: np.ndarray, bits: int, *, signed: bool = False) -> np.ndarray:
    """[0, 1] floats -> the full integer range of `bits` stored bits."""
    top = 2**bits - 1
    values = np.rint(image * top).astype(np.int64)
    return values - 2 ** (bits - 1) if signed else values


def chest_set(study_uid: str, count: int, *, seed: int = 0, size: tuple[int, int] = (96, 80)) -> list[bytes]:
    """`count` small 12-bit DX images in one study (one series), for runs that need many images."""
    series_uid = generate_uid()
    return [
        make_dicom(
            quantise(phantom(size, seed=seed + index), 12),
            bits_stored=12,
            window=(2048, 4096),
            study_uid=study_uid,
            series_uid=series_uid,
            extra={"InstanceNumber": index + 1},
        )
        for index in range(count)
    ]


def variants(study_uid: str) -> dict[str, bytes]:
    """One image per pixel-format case the decoder must get right, all in one study."""
    image = phantom((120, 100), seed=7)
    series = {name: generate_uid() for name in ("mono1", "b12", "b16", "compressed")}
    out: dict[str, bytes] = {}
    out["mono1-12bit"] = make_dicom(
        4095 - quantise(image, 12),
        bits_stored=12,
        photometric="MONOCHROME1",
        window=(2048, 4096),
        modality="CR",
        study_uid=study_uid,
        series_uid=series["mono1"],
    )
    out["12bit-rescale"] = make_dicom(
        quantise(image, 12),
        bits_stored=12,
        rescale=(1.0, -1024.0),
        window=(1024.0, 4096.0),
        study_uid=study_uid,
        series_uid=series["b12"],
    )
    out["16bit-signed"] = make_dicom(
        quantise(image, 16, signed=True),
        bits_stored=16,
        signed=True,
        window=(0.0, 65536.0),
        study_uid=study_uid,
        series_uid=series["b16"],
    )
    syntaxes: Sequence[tuple[str, str, int]] = (
        ("rle", RLELossless, 12),
        ("j2k-lossless", JPEG2000Lossless, 12),
        ("j2k-lossy", JPEG2000, 12),
        ("jpegls", JPEGLSLossless, 12),
        ("jpeg-lossless", JPEGLosslessSV1, 12),
        ("jpeg-baseline", JPEGBaseline8Bit, 8),
    )
    for name, syntax, bits in syntaxes:
        out[name] = make_dicom(
            quantise(image, bits),
            bits_stored=bits,
            transfer_syntax=syntax,
            window=None if bits == 8 else (2**bits / 2, 2**bits),
            study_uid=study_uid,
            series_uid=series["compressed"],
        )
    return out


def identified_dicom(image: np.ndarray) -> bytes:
    """A 12-bit DX chest radiograph of an 8-bit image, with patient identifiers, as a modality sends it."""
    return make_dicom(
        image.astype(np.int64) * 16, bits_stored=12, patient_name=PATIENT_NAME, patient_id=PATIENT_ID
    )
