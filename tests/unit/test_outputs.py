"""workers.outputs: SEG, TID 1500 SR and derived images from sample CR/DX/US sources."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path
from typing import Any, cast

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import SegmentationStorage, UltrasoundMultiFrameImageStorage

from pacs_node import samples
from umsrep_core.imaging.pixels import stored_pixels
from umsrep_core.models.bundle import BUNDLES_DIR, OTHER_CLASS
from umsrep_core.pipelines import pipeline
from workers.outputs import NOT_FOR_CLINICAL_USE
from workers.outputs.derived import build_denoised, build_frame_image
from workers.outputs.seg import build_seg
from workers.outputs.sr import build_sr
from workers.outputs.uids import output_uid

DCIODVFY = Path("/usr/bin/dciodvfy")
MODEL = {"model_name": "umsrep-test", "model_version": "0.1.0"}
CXR_FINDINGS: dict[str, Any] = {
    "label": "pneumonia", "probability": 0.87, "ctr": 0.52,
    "areas_mm2": {"right_lung": 1200.5, "left_lung": 1100.25, "heart": None},
    "reasons": ["heart area: the mask touches the image border"]}
ECHO_FINDINGS: dict[str, Any] = {
    "doppler_type": "mitral_inflow", "probability": 0.91, "peak_velocity_cm_s": 80.2,
    "e_cm_s": 80.2, "a_cm_s": 40.1, "e_a_ratio": 2.0, "vti_cm": 12.5, "reasons": []}


def _multiframe_us() -> Dataset:
    """A 3-frame RGB US cine with a spectral Doppler region (the frames differ)."""
    ds = samples.us_doppler_dataset(6)
    gray = ds.pixel_array
    frames = np.stack([np.repeat(np.roll(gray, 7 * n, axis=1)[..., None], 3, axis=2)
                       for n in range(3)])
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.NumberOfFrames = 3
    ds.FrameIncrementPointer = Tag("FrameTime")
    ds.FrameTime = 33.3
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = frames.tobytes()
    return ds


MULTIFRAME = _multiframe_us()


def _sources() -> dict[str, Dataset]:
    rgb = np.repeat(samples.us_doppler_dataset(4).pixel_array[..., None], 3, axis=2)
    return {
        "cr": samples.cr_dataset(1, rows=256, columns=256),
        "dx": samples.dx_dataset(2, rows=256, columns=240),
        "cr_mono1": samples.cr_dataset(3, rows=256, columns=256, monochrome="MONOCHROME1"),
        "us_gray": samples.us_doppler_dataset(4),
        "us_rgb": samples.us_doppler_dataset(5, pixels=rgb),
        # SEG and SR of a cine's frame are built on its single-frame image.
        "us_frame": build_frame_image(MULTIFRAME, 2, stored_pixels(MULTIFRAME)),
    }


SOURCES = _sources()
CXR = ("cr", "dx", "cr_mono1")
ECHO = ("us_gray", "us_rgb", "us_frame")


def _modality(name: str) -> Any:
    return "cxr" if name in CXR else "echo_doppler"


def _masks(source: Dataset) -> dict[str, np.ndarray]:
    rows, cols = int(source.Rows), int(source.Columns)
    if source.Modality == "US":
        envelope = np.zeros((rows, cols), dtype=bool)
        envelope[350:440, 60:700] = True
        return {"envelope": envelope}
    masks = {name: np.zeros((rows, cols), dtype=bool) for name in ("right_lung", "left_lung",
                                                                     "heart")}
    masks["right_lung"][40:200, 20:100] = True
    masks["left_lung"][40:200, 140:220] = True
    masks["heart"][120:210, 80:170] = True
    return masks


def _encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _reread(ds: Dataset) -> Dataset:
    return dcmread(io.BytesIO(_encode(ds)))


def _outputs(name: str) -> tuple[Dataset, Dataset, Dataset]:
    source = SOURCES[name]
    modality = _modality(name)
    seg = build_seg(source, _masks(source), modality=modality, **MODEL)
    findings = CXR_FINDINGS if modality == "cxr" else ECHO_FINDINGS
    sr = build_sr(source, seg, findings, modality=modality, **MODEL)
    image = np.linspace(0.0, 1.0, int(source.Rows) * int(source.Columns))
    denoised = build_denoised(source, image.reshape(int(source.Rows), -1), **MODEL)
    return seg, sr, denoised


OUTPUTS = {name: _outputs(name) for name in SOURCES}


# --- UIDs -----------------------------------------------------------------------------------


def test_output_uid_is_deterministic_and_distinct() -> None:
    uid = output_uid(["1.2.3"], "0.1", "seg-instance")
    assert uid == output_uid(["1.2.3"], "0.1", "seg-instance")
    assert uid.startswith("2.25.") and len(uid) <= 64
    others = {output_uid(["1.2.3"], "0.2", "seg-instance"),
              output_uid(["1.2.3"], "0.1", "sr-instance"),
              output_uid(["1.2.3"], "0.1", "seg-instance", 1),
              output_uid(["1.2.4"], "0.1", "seg-instance"),
              output_uid(["1.2", "3"], "0.1", "seg-instance")}
    assert uid not in others and len(others) == 5


def test_output_uid_rejects_a_bare_string() -> None:
    with pytest.raises(TypeError):
        output_uid("1.2.3", "0.1", "seg")
    with pytest.raises(ValueError, match="at least one"):
        output_uid([], "0.1", "seg")


@pytest.mark.parametrize("name", ["cr", "us_gray"])
def test_building_twice_gives_identical_bytes(name: str) -> None:
    again = _outputs(name)
    for first, second in zip(OUTPUTS[name], again, strict=True):
        assert first.SOPInstanceUID == second.SOPInstanceUID
        assert first.SeriesInstanceUID == second.SeriesInstanceUID
        assert _encode(first) == _encode(second)


def test_outputs_of_one_source_have_distinct_uids_in_the_source_study() -> None:
    source = SOURCES["cr"]
    outputs = OUTPUTS["cr"]
    assert len({o.SOPInstanceUID for o in outputs}) == 3
    assert len({o.SeriesInstanceUID for o in outputs} | {source.SeriesInstanceUID}) == 4
    for output in outputs:
        assert output.StudyInstanceUID == source.StudyInstanceUID
        assert output.PatientID == source.PatientID


# --- SEG ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SOURCES))
def test_seg_segments_codes_and_references(name: str) -> None:
    source = SOURCES[name]
    seg = hd.seg.segread(io.BytesIO(_encode(OUTPUTS[name][0])))
    assert seg.SOPClassUID == SegmentationStorage
    assert seg.SegmentationType == "BINARY"
    assert "NOT FOR CLINICAL USE" in seg.SeriesDescription
    labels = [(s.SegmentLabel, s.SegmentedPropertyTypeCodeSequence[0].CodeValue,
               s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator)
              for s in seg.SegmentSequence]
    if name in CXR:
        assert labels == [("Right lung", "3341006", "SCT"), ("Left lung", "44029006", "SCT"),
                          ("Heart", "80891009", "SCT")]
    else:
        assert labels == [("Doppler envelope", "87612001", "SCT")]
    for segment in seg.SegmentSequence:
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("umsrep-test", "0.1.0")
    assert seg.get_source_image_uids() == [(source.StudyInstanceUID, source.SeriesInstanceUID,
                                            source.SOPInstanceUID)]
    masks = _masks(source)
    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID],
                                               combine_segments=False)[0]
    for number, mask in enumerate(masks.values(), start=1):
        assert np.array_equal(pixels[..., number - 1].astype(bool), mask)


def test_seg_keeps_an_empty_mask_as_a_segment() -> None:
    source = SOURCES["us_gray"]
    empty = {"envelope": np.zeros((int(source.Rows), int(source.Columns)), dtype=bool)}
    seg = build_seg(source, empty, modality="echo_doppler", **MODEL)
    assert int(seg.NumberOfFrames) == 1 and len(seg.SegmentSequence) == 1


def test_seg_rejects_masks_off_the_source_grid_and_unknown_names() -> None:
    source = SOURCES["cr"]
    with pytest.raises(ValueError, match="shape"):
        build_seg(source, {"heart": np.zeros((10, 10), dtype=bool)}, modality="cxr", **MODEL)
    with pytest.raises(ValueError, match="unknown cxr masks"):
        build_seg(source, {"envelope": np.zeros((256, 256), dtype=bool)}, modality="cxr",
                  **MODEL)


# --- SR -------------------------------------------------------------------------------------


def _report(sr: Dataset) -> hd.sr.MeasurementReport:
    """The TID 1500 content of an SR re-read from its encoded bytes with highdicom."""
    document = hd.sr.srread(io.BytesIO(_encode(sr)))
    assert isinstance(document, hd.sr.ComprehensiveSR)
    return cast(hd.sr.MeasurementReport, document.content)


def _measurements(report: hd.sr.MeasurementReport
                  ) -> dict[str, list[tuple[str, float, str, int]]]:
    """Per tracking identifier: (name, value, unit, referenced segment number)."""
    out = {}
    for group in report.get_planar_roi_measurement_groups():
        ref = _segment_reference(group)
        out[str(group.tracking_identifier)] = [
            (m.name.meaning, float(m.value), m.unit.value, int(ref.ReferencedSegmentNumber))
            for m in group.get_measurements()]
    return out


def _segment_reference(group: hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
                       ) -> Dataset:
    frame = group.referenced_segmentation_frame
    assert frame is not None
    return cast(Dataset, frame[0].ReferencedSOPSequence[0])


def _coded_value(evaluation: hd.sr.QualitativeEvaluation) -> hd.sr.CodedConcept:
    return cast(hd.sr.CodedConcept, evaluation.value)  # typed int | float in highdicom 0.28


def _texts(ds: Dataset) -> list[str]:
    found = []
    for item in ds.get("ContentSequence", []):
        if item.ValueType == "TEXT":
            found.append(str(item.TextValue))
        found.extend(_texts(item))
    return found


@pytest.mark.parametrize("name", CXR)
def test_cxr_sr_measurements_reference_their_segments(name: str) -> None:
    source = SOURCES[name]
    seg, sr_ds, _ = OUTPUTS[name]
    report = _report(sr_ds)
    for group in report.get_planar_roi_measurement_groups():
        assert _segment_reference(group).ReferencedSOPInstanceUID == seg.SOPInstanceUID
    assert _measurements(report) == {
        "Right lung": [("Area", 1200.5, "mm2", 1)],
        "Left lung": [("Area", 1100.25, "mm2", 2)],
        "Heart": [("Cardiothoracic ratio", 0.52, "{ratio}", 3)],  # its area was null
    }
    (image_group,) = report.get_image_measurement_groups()
    (evaluation,) = image_group.get_qualitative_evaluations()
    assert (_coded_value(evaluation).meaning, _coded_value(evaluation).value) == (
        "Pneumonia", "233604007")
    (probability,) = image_group.get_measurements()
    assert (probability.name.meaning, probability.value) == ("Probability", 0.87)
    assert image_group.source_images[0].referenced_sop_instance_uid == source.SOPInstanceUID
    texts = _texts(sr_ds)
    assert NOT_FOR_CLINICAL_USE in texts
    assert "Not measured: heart area: the mask touches the image border" in texts
    assert "NOT FOR CLINICAL USE" in sr_ds.SeriesDescription
    evidence = {item.ReferencedSOPInstanceUID
                for study in sr_ds.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence
                for item in series.ReferencedSOPSequence}
    assert evidence == {source.SOPInstanceUID, seg.SOPInstanceUID}


@pytest.mark.parametrize("name", ECHO)
def test_echo_sr_measurements_reference_the_envelope(name: str) -> None:
    report = _report(OUTPUTS[name][1])
    assert _measurements(report) == {"Doppler envelope": [
        ("Peak Velocity", 80.2, "cm/s", 1),
        ("Mitral Valve E-Wave Peak Velocity", 80.2, "cm/s", 1),
        ("Mitral Valve A-Wave Peak Velocity", 40.1, "cm/s", 1),
        ("Mitral Valve E to A Ratio", 2.0, "{ratio}", 1),
        ("Velocity Time Integral", 12.5, "cm", 1)]}
    (evaluation,) = report.get_image_measurement_groups()[0].get_qualitative_evaluations()
    assert _coded_value(evaluation).meaning == "Mitral inflow Doppler (E and A waves)"


def test_echo_sr_omits_null_measurements_and_says_why() -> None:
    source = SOURCES["us_gray"]
    seg = OUTPUTS["us_gray"][0]
    findings = {"doppler_type": "lvot_outflow", "probability": 0.8, "peak_velocity_cm_s": 95.0,
                "e_cm_s": None, "a_cm_s": None, "e_a_ratio": None, "vti_cm": None,
                "reasons": ["E and A: not a mitral inflow", "VTI: no complete beat"]}
    sr_ds = build_sr(source, seg, findings, modality="echo_doppler", **MODEL)
    assert _measurements(_report(sr_ds)) == {"Doppler envelope": [("Peak Velocity", 95.0,
                                                                   "cm/s", 1)]}
    assert "Not measured: VTI: no complete beat" in _texts(sr_ds)


def test_sr_without_a_label_has_no_classification_group() -> None:
    source = SOURCES["cr"]
    findings = {**CXR_FINDINGS, "label": None, "probability": None}
    sr_ds = build_sr(source, OUTPUTS["cr"][0], findings, modality="cxr", **MODEL)
    assert _report(sr_ds).get_image_measurement_groups() == []


def test_sr_rejects_an_unknown_label() -> None:
    with pytest.raises(ValueError, match="unknown cxr label"):
        build_sr(SOURCES["cr"], OUTPUTS["cr"][0], {**CXR_FINDINGS, "label": "effusion"},
                 modality="cxr", **MODEL)


@pytest.mark.parametrize("bundle", sorted(p.name for p in BUNDLES_DIR.iterdir() if p.is_dir()))
def test_sr_codes_every_label_a_packaged_bundle_gives(bundle: str) -> None:
    manifest = json.loads((BUNDLES_DIR / bundle / "manifest.json").read_text())
    given = set(manifest["class_labels"]) - {OTHER_CLASS}  # OTHER_CLASS is never a label
    assert given - set(pipeline(manifest["modality"]).label_codes) == set()


# --- derived --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SOURCES))
def test_denoised_is_a_linked_secondary_series(name: str) -> None:
    source = SOURCES[name]
    derived = _reread(OUTPUTS[name][2])
    assert list(derived.ImageType) == ["DERIVED", "SECONDARY"]
    assert derived.BurnedInAnnotation == "NO"
    assert "NOT FOR CLINICAL USE" in derived.SeriesDescription
    assert "NOT FOR CLINICAL USE" in derived.ImageComments
    assert derived.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert derived.SeriesInstanceUID != source.SeriesInstanceUID
    assert (derived.Rows, derived.Columns) == (source.Rows, source.Columns)
    assert derived.PhotometricInterpretation == "MONOCHROME2"
    top = (1 << int(derived.BitsAllocated)) - 1
    assert int(derived.pixel_array.min()) == 0 and int(derived.pixel_array.max()) == top
    if "PixelSpacing" in source:
        assert [float(v) for v in derived.PixelSpacing] == [float(v)
                                                             for v in source.PixelSpacing]
    image = hd.imread(io.BytesIO(_encode(OUTPUTS[name][2])))
    assert image.get_frame(1).shape == (source.Rows, source.Columns)


def test_denoised_rejects_an_image_off_the_grid() -> None:
    with pytest.raises(ValueError, match="shape"):
        build_denoised(SOURCES["cr"], np.zeros((10, 10)), **MODEL)


def test_frame_image_copies_one_frame_and_references_it() -> None:
    frame_image = _reread(SOURCES["us_frame"])
    assert "NumberOfFrames" not in frame_image
    assert np.array_equal(frame_image.pixel_array, MULTIFRAME.pixel_array[1])
    assert frame_image.PhotometricInterpretation == "RGB"
    reference = frame_image.SourceImageSequence[0]
    assert reference.ReferencedSOPInstanceUID == MULTIFRAME.SOPInstanceUID
    assert int(reference.ReferencedFrameNumber) == 2
    assert frame_image.StudyInstanceUID == MULTIFRAME.StudyInstanceUID
    pixels = stored_pixels(MULTIFRAME)
    again = build_frame_image(MULTIFRAME, 2, pixels)
    assert _encode(again) == _encode(SOURCES["us_frame"])
    assert build_frame_image(MULTIFRAME, 3, pixels).SOPInstanceUID != again.SOPInstanceUID
    with pytest.raises(ValueError, match=r"not in 1\.\.3"):
        build_frame_image(MULTIFRAME, 4, pixels)


def test_seg_refuses_a_multiframe_source() -> None:
    envelope = np.zeros((int(MULTIFRAME.Rows), int(MULTIFRAME.Columns)), dtype=bool)
    with pytest.raises(ValueError, match="build_frame_image"):
        build_seg(MULTIFRAME, {"envelope": envelope}, modality="echo_doppler", **MODEL)


# --- conformance ----------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.skipif(not DCIODVFY.exists(), reason="dicom3tools' dciodvfy is not installed")
@pytest.mark.parametrize("name", list(SOURCES))
def test_dciodvfy_reports_no_errors(name: str, tmp_path: Path) -> None:
    outputs = dict(zip(("seg", "sr", "denoised"), OUTPUTS[name], strict=True))
    if name == "us_frame":
        outputs["frame"] = SOURCES[name]
    for kind, output in outputs.items():
        path = tmp_path / f"{kind}.dcm"
        path.write_bytes(_encode(output))
        result = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True,
                                check=False)
        errors = [line for line in (result.stdout + result.stderr).splitlines()
                  if line.startswith("Error")]
        assert errors == [], f"{name} {kind}: {errors}"
