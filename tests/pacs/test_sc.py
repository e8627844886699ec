"""The heatmap Secondary Capture against a real Orthanc and a real service: one SC per radiograph beside
its SR, which Orthanc renders; its pixels are the service's own heatmap blended over the service's own
decoding of the image, registered; `--write` chooses the objects; out-of-domain answers (a stand-in
service speaking the input-domain contract) give a "not analysed" SC and nothing about COVID-19."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from pydicom.uid import generate_uid

from pacs.cli import run
from pacs.sc import NOT_ANALYSED_SERIES_DESCRIPTION
from service.imaging.overlay import blend, colorize
from tests.support import domainstub
from tests.support.dicoms import make_dicom, phantom, quantise
from tests.support.pacs import (
    Orthanc,
    Service,
    exactly_one_sr_and_sc_each,
    load,
    real_samples,
    report_rows,
    sc_by_source,
    settings,
)

logger = logging.getLogger(__name__)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

OPACITY = 0.45
MAX_SIZE = 1024  # the default --sc-max-size


SAMPLES = real_samples()
needs_samples = pytest.mark.skipif(
    not SAMPLES, reason="../shared/data/dicom is not present (real DICOM samples)"
)


def _images(image_set: str) -> dict[str, bytes]:
    """A small synthetic film and one larger than the SC's maximum size (scaled down); or the real samples."""
    if image_set == "real":
        return SAMPLES
    study = generate_uid()
    small = phantom((120, 100), seed=3)
    large = phantom((1300, 1100), seed=11)
    return {
        "small": make_dicom(quantise(small, 12), bits_stored=12, window=(2048, 4096), study_uid=study),
        "large": make_dicom(quantise(large, 12), bits_stored=12, window=(2048, 4096), study_uid=study),
    }


def _service_view(service: Service, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(decoded grey image, heatmap levels) as the service gives them for `data`: /v1/decoded and
    /v1/classify?heatmap=true, independently of the pass."""
    headers = {"Content-Type": "application/dicom"}
    decoded = httpx.post(f"{service.url}/v1/decoded", content=data, headers=headers, timeout=60)
    decoded.raise_for_status()
    answer = httpx.post(
        f"{service.url}/v1/classify", params={"heatmap": "true"}, content=data, headers=headers, timeout=60
    )
    answer.raise_for_status()
    heat = answer.json()["results"][0]["heatmap"]
    gray = cv2.imdecode(np.frombuffer(decoded.content, np.uint8), cv2.IMREAD_GRAYSCALE)
    levels = cv2.imdecode(np.frombuffer(base64.b64decode(heat["data"]), np.uint8), cv2.IMREAD_GRAYSCALE)
    assert gray.shape == levels.shape == (heat["height"], heat["width"])
    return gray, levels


def _recovered_levels(rgb: np.ndarray) -> np.ndarray:
    """The heat level under each pixel of a blend over a grey image, from its colour alone: the grey
    adds the same to R, G and B, so (R - G, G - B) is opacity x the colour map's, whose Jet curve never
    crosses itself; the nearest entry of the map gives the level."""
    lut = cv2.cvtColor(colorize(np.arange(256, dtype=np.uint8)[None, :]), cv2.COLOR_BGR2RGB)[0].astype(
        np.float32
    )
    lut_chroma = OPACITY * np.stack([lut[:, 0] - lut[:, 1], lut[:, 1] - lut[:, 2]], axis=1)
    pixels = rgb.astype(np.float32)
    chroma = np.stack([pixels[..., 0] - pixels[..., 1], pixels[..., 1] - pixels[..., 2]], axis=-1)
    levels = np.empty(rgb.shape[:2], np.uint8)
    for row in range(rgb.shape[0]):
        distances = ((chroma[row, :, None, :] - lut_chroma[None, :, :]) ** 2).sum(axis=-1)
        levels[row] = distances.argmin(axis=1)
    return levels


def _hot_spot(levels: np.ndarray) -> np.ndarray:
    """(x, y) centroid of the hottest tenth of the level range."""
    ys, xs = np.nonzero(levels >= 0.9 * float(levels.max()))
    return np.array([xs.mean(), ys.mean()])


def _sc_size(rows: int, columns: int) -> tuple[int, int]:
    scale = min(1.0, MAX_SIZE / max(rows, columns))
    return round(columns * scale), round(rows * scale)


@pytest.mark.parametrize("image_set", ["synthetic", pytest.param("real", marks=needs_samples)])
def test_each_radiograph_gets_one_sc_orthanc_renders_matching_the_services_heatmap(
    orthanc: Orthanc, service: Service, tmp_path: Path, image_set: str
) -> None:
    images = _images(image_set)
    for data in images.values():
        orthanc.upload(data)
    config = settings(tmp_path, service, dicomweb_url=orthanc.dicomweb)
    assert run(config) == 0
    uids = {name: str(load(data).SOPInstanceUID) for name, data in images.items()}
    exactly_one_sr_and_sc_each(orthanc, list(uids.values()))
    scs = {uid: found[0] for uid, found in sc_by_source(orthanc.scs()).items()}

    for name, data in images.items():
        sc = scs[uids[name]]
        (orthanc_id,) = orthanc.find("Instance", {"SOPInstanceUID": str(sc.SOPInstanceUID)})
        preview = httpx.get(f"{orthanc.url}/instances/{orthanc_id}/preview", timeout=60)
        assert preview.status_code == 200 and preview.headers["Content-Type"] == "image/png", name
        rendered = cv2.imdecode(np.frombuffer(preview.content, np.uint8), cv2.IMREAD_COLOR)
        picture = sc.pixel_array  # RGB, as pydicom reads it
        assert rendered.shape == picture.shape, name
        assert np.abs(cv2.cvtColor(rendered, cv2.COLOR_BGR2RGB).astype(int) - picture).max() <= 1, name

        # Where the radiograph lies in the SC: found by matching the service's own overlay, at SC size.
        gray, levels = _service_view(service, data)
        reference = cv2.cvtColor(blend(gray, levels, opacity=OPACITY), cv2.COLOR_BGR2RGB)
        source = load(data)
        width, height = _sc_size(int(source.Rows), int(source.Columns))
        template = cv2.resize(reference, (width, height), interpolation=cv2.INTER_LINEAR)
        match = cv2.matchTemplate(picture, template, cv2.TM_SQDIFF)
        x0, y0 = cv2.minMaxLoc(match)[2]
        inside = picture[y0 : y0 + height, x0 : x0 + width]

        # Pixels: the SC's radiograph brought to the service's grid is the service's overlay.
        at_service_grid = cv2.resize(inside, (gray.shape[1], gray.shape[0]), interpolation=cv2.INTER_AREA)
        difference = np.abs(at_service_grid.astype(int) - reference.astype(int))
        # Registration: the hot spot read back from the SC's colours against the service's heatmap's.
        ours = _hot_spot(_recovered_levels(inside))
        theirs = (_hot_spot(levels) + 0.5) * np.array([width / gray.shape[1], height / gray.shape[0]]) - 0.5
        offset = float(np.hypot(*(ours - theirs)))
        logger.info(
            "%s: SC %s, mean |diff| %.2f, p99 %d, hot spot off by %.2f px",
            name,
            picture.shape,
            difference.mean(),
            np.percentile(difference, 99),
            offset,
        )
        assert difference.mean() < 3.0, (name, difference.mean())
        assert offset <= 3.0, (name, ours, theirs)

    second = settings(tmp_path, service, dicomweb_url=orthanc.dicomweb)
    before = len(report_rows(tmp_path / "report.jsonl"))
    assert run(second) == 0
    assert len(report_rows(tmp_path / "report.jsonl")) == before  # nothing to do, nothing written
    exactly_one_sr_and_sc_each(orthanc, list(uids.values()))


@pytest.mark.parametrize("write", ["sr", "sc"])
def test_write_chooses_the_objects(orthanc: Orthanc, service: Service, tmp_path: Path, write: str) -> None:
    study = generate_uid()
    images = [
        make_dicom(quantise(phantom(seed=seed), 12), bits_stored=12, window=(2048, 4096), study_uid=study)
        for seed in (1, 2)
    ]
    for data in images:
        orthanc.upload(data)
    assert run(settings(tmp_path, service, dicomweb_url=orthanc.dicomweb, write=write)) == 0
    assert len(orthanc.srs()) == (2 if write == "sr" else 0)
    assert len(orthanc.scs()) == (2 if write == "sc" else 0)
    rows = report_rows(tmp_path / "report.jsonl")
    assert {row["status"] for row in rows} == {"written"}
    assert all((row["sr_sop_instance_uid"] is None) == (write == "sc") for row in rows)
    assert all((row["sc_sop_instance_uid"] is None) == (write == "sr") for row in rows)


def _marked(study: str, marker: str, seed: int) -> bytes:
    return make_dicom(
        quantise(phantom(seed=seed), 12),
        bits_stored=12,
        window=(2048, 4096),
        study_uid=study,
        extra={"ImageComments": marker},
    )


def _texts(sc: object) -> str:
    return " ".join(
        str(getattr(sc, keyword, ""))
        for keyword in ("SeriesDescription", "ImageComments", "DerivationDescription")
    )


def test_out_of_domain_images_get_a_not_analysed_sc_and_nothing_about_covid(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    study = generate_uid()
    images = {
        marker: _marked(study, marker, seed)
        for seed, marker in enumerate(("stub:refuse", "stub:out", "stub:corrected"))
    }
    for data in images.values():
        orthanc.upload(data)
    uids = {marker: str(load(data).SOPInstanceUID) for marker, data in images.items()}
    with domainstub.running() as url:
        config = settings(tmp_path, url, dicomweb_url=orthanc.dicomweb)
        assert run(config) == 0
        rows = {row["sop_instance_uid"]: row for row in report_rows(tmp_path / "report.jsonl")}
        scs = {uid: found[0] for uid, found in sc_by_source(orthanc.scs()).items()}
        srs = orthanc.srs()

        for marker, reason, failed in (
            (
                "stub:refuse",
                domainstub.REFUSAL_DETAIL,
                ["not_radiograph 0.92 > 0.5 (the card's max_not_radiograph)"],
            ),
            (
                "stub:out",
                "; ".join(domainstub.OUT_REASONS),
                [
                    "lung_largest_area 0.004 < 0.02 (the card's min_lung_area)",
                    "colour_fraction 0.6 > 0.1 (the card's max_colour_fraction)",
                ],
            ),
        ):
            uid = uids[marker]
            row = rows[uid]
            assert (row["status"], row["error_kind"]) == ("written", "out-of-domain"), row
            assert (
                reason in row["error"] and row["probability"] is None and row["sr_sop_instance_uid"] is None
            )
            sc = scs[uid]
            assert sc.SeriesDescription == NOT_ANALYSED_SERIES_DESCRIPTION
            assert "NOT ANALYSED" in sc.ImageComments and reason in sc.ImageComments
            # Issue 27: each check that refused it, with its score and the model card's threshold.
            shown = [line for line in sc.ImageComments.splitlines() if line.startswith("failed check: ")]
            assert shown == [f"failed check: {line}" for line in failed], sc.ImageComments
            assert "RESEARCH USE ONLY" in sc.ImageComments
            assert "covid" not in _texts(sc).lower(), _texts(sc)
        # The corrected image was analysed; its SC says what the service corrected, and it has an SR.
        corrected = scs[uids["stub:corrected"]]
        assert domainstub.CORRECTED_REASONS[0] in corrected.ImageComments
        assert "no class activation map" in corrected.ImageComments
        assert rows[uids["stub:corrected"]]["status"] == "written" and len(srs) == 1

        # Exactly once here too: a second pass writes nothing.
        assert run(config) == 0
        assert len(orthanc.scs()) == 3 and len(orthanc.srs()) == 1

        # With the SR alone there is nothing to write for them: recorded as skipped, not failed.
        sr_only = settings(tmp_path / "sr-only", url, dicomweb_url=orthanc.dicomweb, write="sr")
        assert run(sr_only) == 0
        skipped = {row["sop_instance_uid"]: row for row in report_rows(tmp_path / "sr-only" / "report.jsonl")}
        assert {skipped[uids[m]]["status"] for m in ("stub:refuse", "stub:out")} == {"skipped"}
        assert {skipped[uids[m]]["error_kind"] for m in ("stub:refuse", "stub:out")} == {"out-of-domain"}
        assert len(orthanc.scs()) == 3 and len(orthanc.srs()) == 1
