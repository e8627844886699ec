"""The result picture: a Secondary Capture Image (PS3.3 A.8.1) via highdicom, beside the SR (pacs.sr).

Most PACS viewers show an SR as a text page if at all; an image series is seen where the radiologist
already looks. One SC per classified radiograph:
- pixels (pacs.canvas): the radiograph as the service decodes it (service.imaging.decode.display_dicom: the same
  Modality LUT -> VOI -> MONOCHROME1 path, full field of view, not the lung crop) at most `max_size` px on
  its longer side, the class activation map from /v1/classify?heatmap=true blended over it in colour
  (service.imaging.overlay.blend), a legend, the result, the model's name, version and sha256, and the caution
  at both ends; RGB, 8 bits, uncompressed (Explicit VR Little Endian: every viewer renders it);
- same patient and study as the source (copied from its header), its own series (number 7702) whose
  description says what it is; Image Type DERIVED\\SECONDARY, Burned In Annotation YES (C.7.6.1.1.3),
  the source in the Source Image Sequence with purpose "Source image for image processing operation"
  (DCM 121322, C.7.6.1.1.4), the text also in Image Comments and Derivation Description;
- Conversion Type WSD (workstation, C.8.6.1), Contributing Equipment naming the algorithm (IHE AIR).
An image the service refused as out of domain gets a "not analysed" SC instead: the radiograph, the
reason, each check that refused it with its score and the model card's threshold, the caution; no
heatmap, no COVID-19 score, nothing about COVID-19, in a series of its own (7703).

UIDs are derived like the SR's (pydicom `generate_uid(entropy_srcs=...)`): the same image and model file
always give the same SC SOP Instance UID, so a re-sent SC is a duplicate the PACS keeps once.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from pacs.canvas import CAUTION, Heat, Layout, compose
from pacs.client import Classification
from pacs.sr import MANUFACTURER, evidence_header
from service.imaging.domain_verdict import FailedCheck

SERIES_NUMBER = 7702
SERIES_DESCRIPTION = "AI COVID-19 heatmap - CAUTION: research use only"
NOT_ANALYSED_SERIES_NUMBER = 7703
NOT_ANALYSED_SERIES_DESCRIPTION = "AI result: not analysed - CAUTION: research use only"
_ORIENTATION_LETTERS = frozenset("APLRHF")


@dataclass(frozen=True)
class Look:
    """How the SC is drawn (pacs settings): colour map, opacity and the radiograph's longest side."""

    colormap: str = "jet"
    opacity: float = 0.45
    max_size: int = 1024


def sc_uids(source_sop_uid: str, study_uid: str, model_sha256: str) -> tuple[str, str]:
    """(series, instance) UIDs of the heatmap SC for this image and model file: stable across runs."""
    series = generate_uid(entropy_srcs=["cxr-sc-series", study_uid, model_sha256])
    instance = generate_uid(entropy_srcs=["cxr-sc-instance", source_sop_uid, model_sha256])
    return series, instance


def not_analysed_uids(source_sop_uid: str, study_uid: str) -> tuple[str, str]:
    """(series, instance) UIDs of the "not analysed" SC (no model ran, so none is named)."""
    series = generate_uid(entropy_srcs=["cxr-sc-not-analysed-series", study_uid])
    instance = generate_uid(entropy_srcs=["cxr-sc-not-analysed-instance", source_sop_uid])
    return series, instance


def result_lines(result: Classification) -> list[str]:
    """What the SC says about the result, one line each (also its Image Comments)."""
    verdict = "SUSPECTED" if result.positive else "not detected"
    comparison = ">=" if result.probability >= result.threshold else "<"
    lines = [
        f"COVID-19 {verdict}: p({result.positive_label}) = {result.probability:.3f} {comparison} "
        f"threshold {result.threshold:.3f}; label: {result.label}"
    ]
    lines += [f"input flag: {name} = {value}" for name, value in sorted(result.flags.items())]
    if result.domain and result.domain.get("verdict") == "corrected":
        lines.append("input corrected by the service: " + "; ".join(result.domain.get("reasons", [])))
    if result.heatmap is None:
        lines.append("no class activation map: the model has none")
    return lines


def model_lines(result: Classification) -> list[str]:
    return [
        f"model {result.model_name} version {result.model_version}",
        f"model.onnx sha256 {result.model_sha256}",
    ]


def heat_levels(png: bytes) -> np.ndarray:
    """The service's heatmap PNG -> its uint8 levels."""
    import cv2

    levels = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    if levels is None:
        raise ValueError("the service's heatmap is not a PNG")
    return np.asarray(levels)


def build_sc(source: Dataset, gray: np.ndarray, result: Classification, look: Look) -> tuple[Dataset, Layout]:
    """The heatmap SC of one classified image; `source` needs only its header, `gray` is the radiograph
    at the SC's size (service.imaging.decode.display_dicom)."""
    heat = None
    if result.heatmap is not None:
        heat = Heat(heat_levels(result.heatmap), look.colormap, look.opacity)
    lines = result_lines(result)
    picture, layout = compose(gray, heat, result_lines=lines, model_lines=model_lines(result))
    series_uid, instance_uid = sc_uids(
        str(source.SOPInstanceUID), str(source.StudyInstanceUID), result.model_sha256
    )
    description = (
        f"{'Class activation map of ' if heat else 'Result of '}{result.model_name} {result.model_version}"
        f" ({look.colormap}, opacity {look.opacity:g}) over the radiograph, with the result; "
        + ("; ".join(lines))
    )
    sc = _sc(
        source,
        picture,
        series_uid=series_uid,
        instance_uid=instance_uid,
        series_number=SERIES_NUMBER,
        series_description=SERIES_DESCRIPTION,
        comments=[CAUTION, *lines, *model_lines(result)],
        derivation=description,
        equipment=(result.model_name, result.model_version),
    )
    return sc, layout


def not_analysed_lines(reason: str, failed: list[FailedCheck]) -> list[str]:
    """What the "not analysed" SC says: the service's reason, then one line per check that refused the
    image with its score and the model card's threshold (also its Image Comments)."""
    return [f"NOT ANALYSED: {reason}", *(f"failed check: {check.describe()}" for check in failed)]


def build_not_analysed_sc(
    source: Dataset, gray: np.ndarray, reason: str, failed: list[FailedCheck] | None = None
) -> tuple[Dataset, Layout]:
    """The SC of an image the service did not analyse (out of its input domain): why, and nothing about
    COVID-19 (`failed`: the service's failed checks, pacs.client.OutOfDomain)."""
    lines = not_analysed_lines(reason, failed or [])
    picture, layout = compose(
        gray,
        None,
        result_lines=lines,
        model_lines=["cxr-covid: only its input-domain check ran on this image; the classifier did not"],
    )
    series_uid, instance_uid = not_analysed_uids(str(source.SOPInstanceUID), str(source.StudyInstanceUID))
    sc = _sc(
        source,
        picture,
        series_uid=series_uid,
        instance_uid=instance_uid,
        series_number=NOT_ANALYSED_SERIES_NUMBER,
        series_description=NOT_ANALYSED_SERIES_DESCRIPTION,
        comments=[CAUTION, *lines],
        derivation="The radiograph, not analysed: "
        + "; ".join([reason, *(c.describe() for c in failed or [])]),
        equipment=None,
    )
    return sc, layout


def _orientation(source: Dataset) -> tuple[str, str] | None:
    """The source's Patient Orientation when it is two plain direction letters each, else None."""
    value = source.get("PatientOrientation", None)
    if value is None or isinstance(value, str) or len(value) != 2:
        return None
    row, column = (str(part).upper() for part in value)
    if len(row) == 1 and len(column) == 1 and {row, column} <= _ORIENTATION_LETTERS:
        return row, column
    return None


def _sc(
    source: Dataset,
    picture: np.ndarray,
    *,
    series_uid: str,
    instance_uid: str,
    series_number: int,
    series_description: str,
    comments: list[str],
    derivation: str,
    equipment: tuple[str, str] | None,
) -> Dataset:
    source = evidence_header(source)
    orientation = _orientation(source)
    contributing = (
        [
            hd.ContributingEquipment(
                manufacturer=MANUFACTURER,
                purpose_of_reference=codes.DCM.ProcessingEquipment,
                manufacturer_model_name=equipment[0][:64],
                software_versions=equipment[1][:64],
            )
        ]
        if equipment
        else None
    )
    with warnings.catch_warnings():
        # highdicom warns about single-component patient names ("Anonymized"); they are the source's.
        warnings.filterwarnings(
            "ignore", message="The string .* is unlikely to represent", category=UserWarning
        )
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=picture,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=series_uid,
            series_number=series_number,
            sop_instance_uid=instance_uid,
            instance_number=1,
            manufacturer=MANUFACTURER,
            # Type 2C in the General Image module (PS3.3 C.7.6.1.1.1): highdicom wants a value for a
            # patient-based image; one the source does not state is emptied below rather than invented.
            patient_orientation=orientation or ("L", "F"),
            transfer_syntax_uid=ExplicitVRLittleEndian,
            contributing_equipment=contributing,
        )
    if orientation is None:
        del sc.PatientOrientation
        sc.add_new("PatientOrientation", "CS", None)
    sc.SeriesDescription = series_description
    sc.ConversionType = "WSD"
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = "\n".join(comments)[:10240]
    sc.DerivationDescription = derivation[:1024]
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator = "121322", "DCM"
    purpose.CodeMeaning = "Source image for image processing operation"
    reference.PurposeOfReferenceCodeSequence = [purpose]
    sc.SourceImageSequence = [reference]
    return sc


def reference_header(sc: Dataset) -> Dataset:
    """The SC's identifying attributes alone: what the SR needs to list it as evidence."""
    header = Dataset()
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(header, keyword, getattr(sc, keyword))
    header.SOPClassUID = SecondaryCaptureImageStorage
    return header
