"""The result object: a Comprehensive SR (PS3.3 A.35.3) with a TID 1500 Measurement Report, via highdicom.

Content (PS3.16 TID 1500 -> TID 1501 "Measurement and Qualitative Evaluation Group"):
- the source image, referenced from the group (Source image for measurement group, TID 1501 row 16) and in
  the Current Requested Procedure Evidence Sequence, so viewers link the result to the radiograph;
- the finding: COVID-19 (SCT 840539006), qualitative evaluation "Suspected" (SCT 415684004) when p >= the
  threshold, else "Not detected" (SCT 260415000);
- measurements "Probability" (DCM 122157) and "Threshold Value" (DCM 122411), unit UCUM "1";
- the algorithm's name, version and model file sha256 (TID 4019 Algorithm Identification), the device
  observer (TID 1004), and Contributing Equipment naming the algorithm (IHE AI Results);
- VerificationFlag UNVERIFIED, CompletionFlag COMPLETE, and the series description
  `CAUTION: Not for Diagnostic Use, for research use only.` (what MONAI Deploy and IHE AIR writers use);
- the heatmap Secondary Capture of the same result (pacs.sc), when one is written, in the Current
  Requested Procedure Evidence Sequence beside the source (PS3.3 C.17.2.3).

UIDs are derived from the source image and the model (pydicom `generate_uid(entropy_srcs=...)`, a hash),
not drawn at random: the same image classified by the same model file always gives the same SR SOP
Instance UID, which is what makes a re-sent result a duplicate the PACS ignores instead of a second SR.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import highdicom as hd
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from pacs.client import Classification

SERIES_DESCRIPTION = "CAUTION: Not for Diagnostic Use, for research use only."
SERIES_NUMBER = 7701
MANUFACTURER = "cxr-covid (research use only)"

COVID19 = Code("840539006", "SCT", "COVID-19")
SUSPECTED = Code("415684004", "SCT", "Suspected")
NOT_DETECTED = Code("260415000", "SCT", "Not detected")
PROBABILITY = Code("122157", "DCM", "Probability")
THRESHOLD = Code("122411", "DCM", "Threshold Value")
NO_UNITS = Code("1", "UCUM", "no units")
CHEST_RADIOGRAPH = Code("399208008", "SCT", "Plain chest X-ray")
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage (PS3.4 B.5)


def sr_uids(source_sop_uid: str, study_uid: str, model_sha256: str) -> tuple[str, str]:
    """(series, instance) UIDs of the SR for this image and model file: stable across runs."""
    series = generate_uid(entropy_srcs=["cxr-sr-series", study_uid, model_sha256])
    instance = generate_uid(entropy_srcs=["cxr-sr-instance", source_sop_uid, model_sha256])
    return series, instance


_TYPE2_FROM_SOURCE = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def evidence_header(source: Dataset) -> Dataset:
    """The source header with the Type 2 patient/study attributes present (empty when the image lacks
    them, e.g. ACR-NEMA files), which the SR and the SC copy (PS3.3 C.7.1.1, C.7.2.1)."""
    evidence = Dataset()
    evidence.update(source)
    for keyword in _TYPE2_FROM_SOURCE:
        if keyword not in evidence:
            setattr(evidence, keyword, "")
    return evidence


def build_sr(source: Dataset, result: Classification, secondary_capture: Dataset | None = None) -> Dataset:
    """The SR for one classified image; `source` needs only its header (patient, study, UIDs).

    `secondary_capture` (its header suffices), the heatmap SC written beside it, is listed in the Current
    Requested Procedure Evidence Sequence: an instance created for the same requested procedure
    (PS3.3 C.17.2.3), so a viewer can go from the SR to the picture of the same result."""
    source = evidence_header(source)
    series_uid, instance_uid = sr_uids(
        str(source.SOPInstanceUID), str(source.StudyInstanceUID), result.model_sha256
    )
    algorithm = hd.sr.AlgorithmIdentification(
        name=result.model_name,
        version=result.model_version,
        parameters=[f"model.onnx sha256={result.model_sha256}", f"threshold={result.threshold:.6g}"],
    )
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["cxr-device", result.model_name, result.model_version]),
            name=result.model_name[:64],
            manufacturer_name=MANUFACTURER,
            model_name=f"{result.model_name} {result.model_version}"[:64],
        ),
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(entropy_srcs=["cxr-tracking", str(source.SOPInstanceUID), result.model_sha256]),
            identifier="COVID-19 classification",
        ),
        finding_type=COVID19,
        algorithm_id=algorithm,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
        measurements=[
            hd.sr.Measurement(
                name=PROBABILITY, value=result.probability, unit=NO_UNITS, algorithm_id=algorithm
            ),
            hd.sr.Measurement(name=THRESHOLD, value=result.threshold, unit=NO_UNITS),
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=COVID19, value=SUSPECTED if result.positive else NOT_DETECTED)
        ],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=CHEST_RADIOGRAPH,
        imaging_measurements=[group],
    )
    equipment = hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=result.model_name[:64],
        software_versions=result.model_version[:64],
    )
    with warnings.catch_warnings():
        # highdicom warns about single-component patient names ("Anonymized"); they are the source's.
        warnings.filterwarnings(
            "ignore", message="The string .* is unlikely to represent", category=UserWarning
        )
        evidence = [source] if secondary_capture is None else [source, secondary_capture]
        sr = _comprehensive_sr(evidence, report, equipment, series_uid, instance_uid)
    sr.SeriesDescription = SERIES_DESCRIPTION
    return sr


def _comprehensive_sr(
    evidence: list[Dataset], report: Any, equipment: Any, series_uid: str, instance_uid: str
) -> Dataset:
    return hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=report,
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBER,
        sop_instance_uid=instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        contributing_equipment=[equipment],
    )


def encode(dataset: Dataset) -> bytes:
    """DICOM Part 10 bytes (preamble, File Meta, dataset)."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def header(dicom: bytes) -> Dataset:
    """The dataset without its pixels (what build_sr needs), read from Part 10 bytes."""
    return dcmread(DicomBytesIO(dicom), stop_before_pixels=True, force=True)


def read_result(sr: Dataset) -> dict[str, Any]:
    """The values an SR written by build_sr carries (for tests, audits and the README's example)."""
    found: dict[str, Any] = {"referenced_sop_instance_uids": []}

    def walk(items: Any) -> None:
        for item in items:
            concept = item.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in item else None
            meaning = str(concept.CodeMeaning) if concept is not None else ""
            if item.ValueType == "NUM" and meaning in ("Probability", "Threshold Value"):
                found[meaning.lower().split()[0]] = float(item.MeasuredValueSequence[0].NumericValue)
            elif item.ValueType == "CODE" and concept is not None and concept.CodeValue == COVID19.value:
                found["finding"] = str(item.ConceptCodeSequence[0].CodeMeaning)
            elif item.ValueType == "IMAGE":
                found["referenced_sop_instance_uids"].append(
                    str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                )
            elif item.ValueType == "TEXT" and meaning == "Algorithm Name":
                found["algorithm_name"] = str(item.TextValue)
            elif item.ValueType == "TEXT" and meaning == "Algorithm Version":
                found["algorithm_version"] = str(item.TextValue)
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(sr.ContentSequence)
    # The heatmap SC is the evidence the content tree does not reference (the source may itself be an
    # SC: digitised films and some public datasets are stored as Secondary Capture).
    found["secondary_capture_uids"] = [
        str(item.ReferencedSOPInstanceUID)
        for study in sr.get("CurrentRequestedProcedureEvidenceSequence", [])
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
        if item.ReferencedSOPClassUID == SECONDARY_CAPTURE
        and str(item.ReferencedSOPInstanceUID) not in found["referenced_sop_instance_uids"]
    ]
    return found
