"""Comprehensive SR, TID 1500 Measurement Report, of one image's findings and measurements.

The report holds, for the source image:
- an image-level group (TID 1501): the classification as a qualitative evaluation
  ("Classification"; not "Finding", which TID 1501 uses for the group's finding type)
  with its probability (the probability of the reported label);
- one planar ROI group (TID 1410) per SEG segment, referencing that segment, with the
  measurements made on it (cxr: area of each structure in mm2, the cardiothoracic ratio in
  the heart's group; echo: peak velocity, E and A peaks, E/A, VTI in the envelope's group);
- a "Qualitative Evaluations" container (TID 1500 row 12) of TEXT comments: the NOT FOR
  CLINICAL USE statement and the reasons why a value could not be measured.
A null value is omitted, never written as 0.

Codes: the modality's pipeline gives the procedure, the labels' coded values and each
measurement's concept and unit (umsrep_core.pipelines): SNOMED CT, DCM and LOINC where the
standard has the concept, the local scheme 99UMSREP where it has none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import SegmentationStorage as SEGMENTATION

from umsrep_core.pipelines import pipeline
from umsrep_core.pipelines.base import LOCAL_SCHEME
from workers.outputs import (
    MANUFACTURER,
    NOT_FOR_CLINICAL_USE,
    SERIES_NUMBER_SR,
    description,
)
from workers.outputs.image_library import image_library
from workers.outputs.seg import concept
from workers.outputs.sources import conformed, instance_number
from workers.outputs.uids import output_uid, pin_times

CodedConcept = hd.sr.CodedConcept
NO_UNITS = CodedConcept("1", "UCUM", "no units")
CLASSIFICATION = CodedConcept("278201002", "SCT", "Classification")
QUALITATIVE_EVALUATIONS = CodedConcept("126010", "DCM", "Qualitative Evaluations")


def _value(findings: Mapping[str, Any], key: str, sub: str | None) -> float | None:
    value = findings.get(key)
    if sub is not None:
        value = value.get(sub) if isinstance(value, Mapping) else None
    return None if value is None else float(value)


def _classification(source: Dataset, findings: Mapping[str, Any], modality: str,
                    algorithm: hd.sr.AlgorithmIdentification, tracking_uid: str
                    ) -> hd.sr.MeasurementsAndQualitativeEvaluations | None:
    label = pipeline(modality).reported_label(findings)
    if label is None:
        return None
    known = pipeline(modality).label_codes
    if label not in known:
        raise ValueError(f"unknown {modality} label {label!r} (known: {', '.join(known)})")
    probability = findings.get("probability")
    measurements = [] if probability is None else [hd.sr.Measurement(
        name=codes.DCM.Probability, value=float(probability), unit=NO_UNITS,
        algorithm_id=algorithm)]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid,
                                                     identifier="classification"),
        algorithm_id=algorithm,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(CLASSIFICATION,
                                                             concept(known[label]))],
        measurements=measurements)


def _frame_of(seg: Dataset, segment_number: int) -> int:
    """The SEG frame of a segment (each has one: one source frame, empty frames kept).

    Not `ReferencedSegmentationFrame.from_segmentation`: it fails on a one-frame SEG, whose
    segment identification highdicom puts in the shared functional groups.
    """
    shared = seg.SharedFunctionalGroupsSequence[0]
    for frame, item in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        ident = item.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
        if int(ident[0].ReferencedSegmentNumber) == segment_number:
            return frame
    raise ValueError(f"segment {segment_number} has no frame in the SEG")


def _segment_groups(source: Dataset, seg: Dataset, findings: Mapping[str, Any], *,
                    modality: str, algorithm: hd.sr.AlgorithmIdentification,
                    tracking_uids: list[str]
                    ) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    source_image = hd.sr.SourceImageForSegmentation.from_source_image(source)
    plugin = pipeline(modality)
    by_label = {segment.label: name for name, segment in plugin.segments.items()}
    groups = []
    for item in seg.SegmentSequence:
        name = by_label[str(item.SegmentLabel)]
        segment = plugin.segments[name]
        measurements = [
            hd.sr.Measurement(name=concept(m.concept), value=value, unit=concept(m.unit),
                              algorithm_id=algorithm)
            for m in plugin.measurements.get(name, ())
            if (value := _value(findings, m.key, m.sub)) is not None]
        number = int(item.SegmentNumber)
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uids[number - 1],
                                                         identifier=segment.label),
            referenced_segment=hd.sr.ReferencedSegmentationFrame(
                sop_class_uid=SEGMENTATION, sop_instance_uid=str(seg.SOPInstanceUID),
                frame_number=_frame_of(seg, number), segment_number=number,
                source_image=source_image),
            finding_type=concept(segment.type), algorithm_id=algorithm,
            measurements=measurements))
    return groups


def _comments(findings: Mapping[str, Any]) -> hd.sr.ContainerContentItem:
    container = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS,
                                           relationship_type="CONTAINS")
    texts = [NOT_FOR_CLINICAL_USE, *(f"Not measured: {r}" for r in findings.get("reasons") or [])]
    container.ContentSequence = hd.sr.ContentSequence([
        hd.sr.TextContentItem(name=codes.DCM.Comment, value=text[:1024],
                              relationship_type="CONTAINS") for text in texts])
    return container


def build_sr(source: Dataset, seg: Dataset, findings: Mapping[str, Any], *, model_name: str,
             model_version: str, modality: str) -> Dataset:
    """A Comprehensive SR (TID 1500) of `findings` (a prediction's JSON) referencing `seg`.

    `seg` is `build_seg`'s output for the same source. UIDs derive from the source's SOP
    Instance UID, the model version and "sr".
    """
    procedure = concept(pipeline(modality).procedure)  # ValueError: no such pipeline
    source = conformed(source)
    source_uids = [str(source.SOPInstanceUID)]
    algorithm = hd.sr.AlgorithmIdentification(name=model_name, version=model_version)
    n_segments = len(seg.SegmentSequence)
    tracking = [output_uid(source_uids, model_version, "sr-tracking", i)
                for i in range(n_segments + 1)]  # one per segment, then the classification
    groups: list[Any] = _segment_groups(source, seg, findings, modality=modality,
                                          algorithm=algorithm, tracking_uids=tracking)
    classification = _classification(source, findings, modality, algorithm,
                                     tracking[n_segments])
    if classification is not None:
        groups.insert(0, classification)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=output_uid([model_name], model_version, "device-observer"),
            name=model_name, manufacturer_name=MANUFACTURER,
            model_name=f"{model_name} {model_version}"[:64]))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=procedure,
        imaging_measurements=groups)
    content = report[0].ContentSequence
    # The Image Library (TID 1500 row 5) goes before the measurements; ours, not highdicom's
    # (image_library.py says why).
    content.insert(next(i for i, item in enumerate(content) if item.ValueType == "CONTAINER"),
                   image_library(source))
    content.append(_comments(findings))
    sr = hd.sr.ComprehensiveSR(
        evidence=[source, seg],
        content=report[0],
        series_instance_uid=output_uid(source_uids, model_version, "sr-series"),
        series_number=SERIES_NUMBER_SR,
        sop_instance_uid=output_uid(source_uids, model_version, "sr-instance"),
        instance_number=instance_number(source),
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=description("SR", model_name),
    )
    pin_times(sr, source)
    _drop_frame_numbers(sr.ContentSequence)
    scheme = Dataset()
    scheme.CodingSchemeDesignator = LOCAL_SCHEME
    scheme.CodingSchemeName = "umsrep local codes"
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


def _drop_frame_numbers(content: Any) -> None:
    """Remove Referenced Frame Number where PS3.3 10.3 (Image SOP Instance Reference) forbids it.

    highdicom writes frame 1 for a single-frame image and both frame and segment number for a
    segment; a frame number belongs only to a multi-frame image and never beside a segment
    number. Each of our segments has one frame, so its number alone identifies it.
    """
    for item in content:
        for ref in item.get("ReferencedSOPSequence", []):
            if "ReferencedFrameNumber" in ref and (
                    "ReferencedSegmentNumber" in ref
                    or ref.ReferencedSOPClassUID != SEGMENTATION):
                del ref.ReferencedFrameNumber
        _drop_frame_numbers(item.get("ContentSequence", []))
