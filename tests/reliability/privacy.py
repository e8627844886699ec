"""What reaches the logs: DICOMs carrying patient identifiers, sent every way the API takes images and down
every error path, against a real server at DEBUG; then its whole output (log records, uvicorn's lines,
Python warnings, native libraries' stderr) is searched for the identifiers and the pixel bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
import numpy as np

from tests.reliability.harness import Service
from tests.support.dicoms import make_dicom
from tests.support.tinymodel import blob_image, encode

PATIENT_NAME = "Quixote^Alonso^Quijano"
PATIENT_ID = "MRN-8675309"
IDENTIFIERS = {
    "PatientName": PATIENT_NAME,
    "PatientID": PATIENT_ID,
    "PatientBirthDate": "19470312",
    "AccessionNumber": "ACC-5550123",
    "InstitutionName": "Hospital de la Mancha",
    "ReferringPhysicianName": "Carrasco^Sanson",
    "OtherPatientIDs": "ALT-4242",
}
FILENAME = "Quixote_Alonso_MRN-8675309_chest.dcm"
PIXEL_MARKER = b"PIXELDATAMARKER7"
"""Written into the pixel data; must never appear in any log."""


def _searched_for() -> list[str]:
    parts = list(IDENTIFIERS.values())
    parts += [PATIENT_NAME.split("^")[0], "Alonso", "8675309", FILENAME, PIXEL_MARKER.decode()]
    return parts


def _pixels() -> np.ndarray:
    image = blob_image(size=(64, 64)).astype(np.uint16) * 16
    marked = image.view(np.uint8).reshape(-1).copy()
    marked[: len(PIXEL_MARKER)] = np.frombuffer(PIXEL_MARKER, dtype=np.uint8)
    return marked.view(np.uint16).reshape(image.shape)


def identified_dicoms() -> dict[str, bytes]:
    """The same identified study, as files that succeed and files that fail in each decode stage."""
    pixels = _pixels()
    good = make_dicom(pixels, bits_stored=16, after=IDENTIFIERS)
    truncated = good[: len(good) - 3000]
    broken_rle = bytearray(
        make_dicom(pixels, bits_stored=16, transfer_syntax="1.2.840.10008.1.2.5", after=IDENTIFIERS)
    )
    broken_rle[-200:-100] = bytes(100)  # corrupt RLE stream: the codec fails or panics
    unknown_vr = bytearray(good)
    at = unknown_vr.find(b"\x28\x00\x11\x00US")
    unknown_vr[at + 4 : at + 6] = b"UQ"  # parser exception path (service.imaging.decode's guard logs it)
    # pydicom's validation quotes offending values in its warnings: make the name invalid for PN
    invalid_name = make_dicom(
        pixels, bits_stored=16, after={**IDENTIFIERS, "PatientName": PATIENT_NAME + "^a^b^c^d"}
    )
    return {
        "ok": good,
        "ok-deflated": make_dicom(
            pixels, bits_stored=16, transfer_syntax="1.2.840.10008.1.2.1.99", after=IDENTIFIERS
        ),
        "wrong-modality": make_dicom(pixels, bits_stored=16, after={**IDENTIFIERS, "Modality": "CT"}),
        "truncated": truncated,
        "broken-rle": bytes(broken_rle),
        "unknown-vr": bytes(unknown_vr),
        "invalid-patient-name": invalid_name,
    }


@dataclass
class PrivacyFigures:
    requests: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    log_lines: int = 0
    leaks: list[str] = field(default_factory=list)
    longest_line: int = 0

    def problems(self) -> list[str]:
        found = [f"{leak!r} appears in the server output" for leak in self.leaks]
        if self.longest_line > 2000:
            found.append(f"a {self.longest_line}-character log line (pixel dump?)")
        if not self.log_lines:
            found.append("the server logged nothing: the check saw no output")
        return found


def run(service: Service) -> PrivacyFigures:
    """Send every identified DICOM as a raw body, as a named multipart part, to /v1/decoded, and once with
    a PNG, then search the server's output."""
    figures = PrivacyFigures()
    statuses: dict[str, int] = {}
    with httpx.Client(base_url=service.url, timeout=30) as client:
        for name, data in identified_dicoms().items():
            answers = [
                client.post("/v1/classify", content=data, headers={"Content-Type": "application/dicom"}),
                client.post("/v1/classify", files=[("file", (FILENAME, data, "application/dicom"))]),
                client.post(
                    "/v1/classify?heatmap=true", content=data, headers={"Content-Type": "application/dicom"}
                ),
                client.post("/v1/decoded", files=[("file", (FILENAME, data, "application/dicom"))]),
            ]
            for answer in answers:
                key = f"{name}:{answer.status_code}"
                statuses[key] = statuses.get(key, 0) + 1
        png = client.post(
            "/v1/classify",
            files=[("file", (FILENAME.replace(".dcm", ".png"), encode(blob_image()), "image/png"))],
        )
        statuses[f"png:{png.status_code}"] = 1
    figures.requests = sum(statuses.values())
    figures.statuses = statuses
    output = service.output()
    figures.log_lines = len(output.splitlines())
    figures.longest_line = max((len(line) for line in output.splitlines()), default=0)
    figures.leaks = [secret for secret in _searched_for() if secret.lower() in output.lower()]
    return figures
