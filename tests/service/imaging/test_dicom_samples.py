"""The pixel pipeline against independent readings of the real DICOM samples in ../shared/data/dicom:

- Orthanc's own rendering (DCMTK decoders, Orthanc's windowing and MONOCHROME1 handling): `/rendered` for
  images with a window, `/preview` for 8-bit images without one; Orthanc cannot decode JPEG 2000, so the
  JPEG 2000 file is compared with Orthanc's rendering of the JPEG-LS file of the same radiograph;
- highdicom's VOI and presentation-LUT implementation (`Image.get_frame`), for the windowed images.
"""

from __future__ import annotations

import logging

import cv2
import httpx
import numpy as np
import pytest

from service.imaging.decode import decode
from service.imaging.dicom import _read_dataset, _stored_pixels, display_values
from service.imaging.pixels import to_training_scale
from tests.support.pacs import Orthanc, real_samples

logger = logging.getLogger(__name__)

pytestmark = [pytest.mark.slow, pytest.mark.data, pytest.mark.timeout(300)]

SAMPLES = real_samples()
needs_samples = pytest.mark.skipif(not SAMPLES, reason="../shared/data/dicom is not present")


def _ours(data: bytes) -> np.ndarray:
    ds = _read_dataset(data)
    return np.rint(display_values(ds, _stored_pixels(ds)) * 255.0).astype(np.uint8)


def _orthanc_png(orthanc: Orthanc, orthanc_id: str, kind: str) -> np.ndarray:
    response = httpx.get(f"{orthanc.url}/instances/{orthanc_id}/{kind}", timeout=60)
    response.raise_for_status()
    return cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_UNCHANGED)


@needs_samples
def test_real_samples_agree_with_orthancs_rendering(orthanc: Orthanc) -> None:
    ids = {name: orthanc.upload(data) for name, data in SAMPLES.items()}
    measured: dict[str, tuple[int, float, float]] = {}
    for name, data in SAMPLES.items():
        ds = _read_dataset(data)
        has_window = "WindowCenter" in ds
        reference_name = name.replace("J2KI", "JLSN") if "J2KI" in name else name
        reference = _orthanc_png(orthanc, ids[reference_name], "rendered" if has_window else "preview")
        ours = _ours(data)
        assert reference.shape == ours.shape, name
        difference = np.abs(ours.astype(int) - reference.astype(int))
        # At training scale (what the model sees): the same resize applied to Orthanc's rendering.
        scaled = np.abs(decode(data).pixels.astype(int) - to_training_scale(reference).astype(int))
        measured[name] = (int(difference.max()), float(difference.mean()), float(scaled.mean()))
        logger.info("%s: max %d, mean %.3f, at training scale mean %.3f", name, *measured[name])
        if reference_name == name:  # same file, independent decoder and windowing: rounding only
            assert difference.max() <= 1, (name, measured[name])
        else:  # JPEG 2000 (lossy 10:1) against JPEG-LS (near-lossless) of the same radiograph
            assert difference.mean() < 1.0 and np.percentile(difference, 99.9) <= 6, (name, measured[name])
        assert scaled.mean() < 1.0, (name, measured[name])


@needs_samples
def test_windowed_real_samples_agree_with_highdicom() -> None:
    import highdicom as hd

    checked = 0
    for name, data in SAMPLES.items():
        ds = _read_dataset(data)
        if "WindowCenter" not in ds:
            continue  # highdicom requires a VOI transform to render
        _stored_pixels(ds)  # gives ACR-NEMA files a transfer syntax, as decode does
        reference = np.asarray(
            hd.Image.from_dataset(ds, copy=True).get_frame(
                1, apply_voi_transform=True, apply_presentation_lut=True
            ),
            dtype=np.float64,
        )
        difference = np.abs(display_values(ds, _stored_pixels(ds)) - reference)
        logger.info("%s vs highdicom: max %.3g", name, difference.max())
        assert difference.max() < 1e-9, name
        checked += 1
    assert checked >= 1
