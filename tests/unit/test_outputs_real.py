"""SEG, SR and frame images built on real files of ../shared/data/dicom-corpus and variants
of them made to reproduce reported cases: a chest CR whose pixel spacing is zero, only in
Imager Pixel Spacing or missing; an ultrasound image of a retired SOP class. Each output is
valid (dciodvfy reports no error) and every DS it holds fits its VR. And pydicom's own test
files, of other toolkits and vendors: the frames outputs are built on copy, or say why not."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from pacs_node import samples
from tests.conftest import SHARED_DATA, dciodvfy_errors, overlong_values, shared_data
from umsrep_core.errors import InferenceError
from umsrep_core.pipelines import pipeline
from workers.outputs.derived import build_denoised, frames_of
from workers.outputs.image_library import ProjectionDescriptors, image_library
from workers.outputs.seg import build_seg
from workers.outputs.sources import (
    conformed,
    highdicom_charset,
    highdicom_knows,
    lossy_marking,
    needs_copy,
    unusable,
)
from workers.outputs.sr import build_sr
from workers.outputs.uids import source_date_time

MODEL = {"model_name": "umsrep-test", "model_version": "0.1.0"}
RETIRED_US = "1.2.840.10008.5.1.4.1.1.6"  # Ultrasound Image Storage (Retired)
JPEG_LOSSY = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"}  # JPEG baseline, extended
PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
# Findings as a model gives them: floats with more digits than a DS holds.
CXR_FINDINGS: dict[str, Any] = {
    "label": "normal", "probability": 0.5277529358863831, "ctr": 0.4812345678901234,
    "areas_mm2": {"right_lung": 7744.123456789012, "left_lung": None, "heart": None},
    "reasons": ["left lung area: no pixel spacing"]}
ECHO_FINDINGS: dict[str, Any] = {
    "doppler_type": "mitral_inflow", "probability": 0.9123456789012345,
    "peak_velocity_cm_s": 80.12345678901234, "e_cm_s": None, "a_cm_s": None,
    "e_a_ratio": None, "vti_cm": None, "reasons": []}


def corpus_file(name: str) -> Dataset:
    return pydicom.dcmread(shared_data("dicom-corpus", "fo-dicom") / name, force=True)


def chest_cr(spacing: str) -> Dataset:
    """The Fuji chest CR of the corpus (MONOCHROME1, no Patient ID, no orientation, no pixel
    spacing) as it is (`none`), or as the reported Philips CR (`zero`: Pixel Spacing 0\\0, no
    Imager Pixel Spacing, an orientation), or with its spacing only where a DX has it."""
    ds = corpus_file("CR-MONO1-10-chest")
    if spacing == "zero":
        ds.PixelSpacing = [0, 0]
        ds.PatientOrientation = ["L", "F"]
    elif spacing == "imager":
        ds.ImagerPixelSpacing = [0.35, 0.35]
    return ds


def add_doppler_region(ds: Dataset) -> Dataset:
    """`ds` with a PW Doppler strip's region over its lower half, so that the echo pipeline
    applies to it."""
    ds.SequenceOfUltrasoundRegions = [samples._spectral_region(
        samples.default_spectral_region(int(ds.Rows), int(ds.Columns)))]
    return ds


def retired_us() -> Dataset:
    """A real US image (GH364, JPEG-LS) as its retired SOP class, with a Doppler region."""
    ds = corpus_file("GH364.dcm")
    ds.SOPClassUID = RETIRED_US
    return add_doppler_region(ds)


def real_images() -> Iterator[tuple[Path, Dataset]]:
    """Every image (pixel data, SOP Class and Instance UIDs) of pydicom's test files (other
    vendors and toolkits, every transfer syntax) and, where it is here, of the corpus, as
    pydicom reads it; a file it cannot read (a dump, broken items) is left out."""
    paths = sorted(p for p in PYDICOM_TEST_FILES.rglob("*") if p.is_file())
    if SHARED_DATA.joinpath("dicom-corpus").is_dir():
        paths += sorted(p for p in SHARED_DATA.joinpath("dicom-corpus").rglob("*")
                        if p.is_file())
    for path in paths:
        try:
            ds = pydicom.dcmread(path, force=True)
            if "PixelData" in ds and ds.get("SOPClassUID") and ds.get("SOPInstanceUID"):
                yield path, ds
        except Exception:  # not an image anyone could send
            continue


def as_frontal_chest_cr(ds: Dataset, path: Path) -> Dataset:
    """`ds` labelled a frontal chest CR of a study of its own: what the chest pipeline meets
    where a modality mislabels an image."""
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.StudyInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[path.name])
    return ds


def chest_masks(source: Dataset) -> dict[str, np.ndarray]:
    rows, columns = int(source.Rows), int(source.Columns)
    masks = {name: np.zeros((rows, columns), dtype=bool)
             for name in ("right_lung", "left_lung", "heart")}
    masks["right_lung"][60:300, 40:200] = True
    masks["left_lung"][60:300, 240:400] = True
    masks["heart"][200:320, 150:300] = True
    return masks


def assert_valid(objects: dict[str, Dataset], tmp_path: Path) -> None:
    for kind, ds in objects.items():
        path = tmp_path / f"{kind}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], kind
        assert overlong_values(pydicom.dcmread(path)) == [], kind


def library_descriptors(sr: Dataset) -> dict[str, str]:
    """Concept meaning -> value of the Image Library entry's descriptors, re-read."""
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    report = pydicom.dcmread(buffer).ContentSequence
    library = next(item for item in report
                   if item.ConceptNameCodeSequence[0].CodeMeaning == "Image Library")
    entry = library.ContentSequence[0].ContentSequence[-1]
    return dict(descriptor_rows(entry.ContentSequence))


def descriptor_rows(items: Any) -> list[tuple[str, str]]:
    """(concept meaning, value) of each Image Library descriptor."""
    value_of = {"TEXT": lambda i: i.TextValue, "UIDREF": lambda i: i.UID,
                "NUM": lambda i: i.MeasuredValueSequence[0].NumericValue,
                "CODE": lambda i: i.ConceptCodeSequence[0].CodeMeaning}
    return [(str(item.ConceptNameCodeSequence[0].CodeMeaning),
             str(value_of[item.ValueType](item))) for item in items]


@pytest.mark.integration
@pytest.mark.parametrize("spacing", ["none", "zero", "imager"])
def test_seg_and_sr_of_a_chest_cr_whatever_its_pixel_spacing(spacing: str,
                                                           tmp_path: Path) -> None:
    source = chest_cr(spacing)
    seg = build_seg(source, chest_masks(source), modality="cxr", **MODEL)
    sr = build_sr(source, seg, CXR_FINDINGS, modality="cxr", **MODEL)
    assert_valid({"seg": seg, "sr": sr}, tmp_path)
    descriptors = library_descriptors(sr)
    assert descriptors["Modality"] == "Computed Radiography"
    if spacing == "imager":
        assert descriptors["Horizontal Pixel Spacing"] == "0.35"
    else:  # none or zero: no spacing to describe
        assert "Horizontal Pixel Spacing" not in descriptors
    assert ("Patient Orientation Row" in descriptors) == (spacing == "zero")
    assert seg.PatientID == sr.PatientID == ""  # absent in the source: Type 2, empty
    assert "PatientID" not in source  # the source itself is left as received


def test_the_image_library_is_highdicoms_where_highdicom_copes() -> None:
    cr = samples.cr_dataset(1, rows=64, columns=64)
    [theirs] = hd.sr.templates.ImageLibrary([cr])
    assert image_library(cr) == theirs
    ct = pydicom.dcmread(PYDICOM_TEST_FILES / "CT_small.dcm")  # plane geometry, thickness
    ours = descriptor_rows(ProjectionDescriptors(ct))
    assert ours == descriptor_rows(hd.sr.ImageLibraryEntryDescriptors(ct))
    assert len(ours) > 10  # its TID 1604 rows


@pytest.mark.integration
def test_a_ct_secondary_capture_without_plane_geometry_gets_its_report(tmp_path: Path
                                                                       ) -> None:
    """A real Secondary Capture of Modality CT (no pixel spacing, position or orientation),
    with a Doppler strip's region: highdicom's CT descriptors (TID 1604) failed the SR with
    an AttributeError."""
    source = corpus_file("CT-MONO2-16-ankle")
    assert source.Modality == "CT" and "PixelSpacing" not in source
    add_doppler_region(source)
    assert pipeline("echo_doppler").not_applicable(source) is None
    envelope = np.zeros((int(source.Rows), int(source.Columns)), dtype=bool)
    envelope[300:320, 10:500] = True
    seg = build_seg(source, {"envelope": envelope}, modality="echo_doppler", **MODEL)
    sr = build_sr(source, seg, ECHO_FINDINGS, modality="echo_doppler", **MODEL)
    assert_valid({"seg": seg, "sr": sr}, tmp_path)
    assert "Horizontal Pixel Spacing" not in library_descriptors(sr)


@pytest.mark.integration
def test_a_retired_class_us_is_built_on_a_secondary_capture_copy(tmp_path: Path) -> None:
    source = retired_us()
    assert not highdicom_knows(source)
    [frame] = frames_of(source)
    reference = frame.SourceImageSequence[0]
    assert (reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID) == (
        RETIRED_US, source.SOPInstanceUID)
    assert "ReferencedFrameNumber" not in reference  # a single-frame source
    assert np.array_equal(frame.pixel_array, source.pixel_array)
    envelope = np.zeros((int(source.Rows), int(source.Columns)), dtype=bool)
    envelope[500:600, 100:900] = True
    seg = build_seg(frame, {"envelope": envelope}, modality="echo_doppler", **MODEL)
    sr = build_sr(frame, seg, ECHO_FINDINGS, modality="echo_doppler", **MODEL)
    assert_valid({"frame": frame, "seg": seg, "sr": sr}, tmp_path)


@pytest.mark.integration
def test_a_single_frame_rt_image_without_number_of_frames_is_built_on_a_copy(
        tmp_path: Path) -> None:
    """A real Varian portal image (RT Image: Multi-frame module Type 1C, NumberOfFrames left
    out). highdicom read NumberOfFrames and the job failed with an AttributeError."""
    source = corpus_file("RI6XDosiGap.dcm")
    assert "NumberOfFrames" not in source and highdicom_knows(source)
    assert needs_copy(source)
    [frame] = frames_of(source)
    assert np.array_equal(frame.pixel_array, source.pixel_array)
    seg = build_seg(frame, chest_masks(frame), modality="cxr", **MODEL)
    sr = build_sr(frame, seg, CXR_FINDINGS, modality="cxr", **MODEL)
    assert_valid({"frame": frame, "seg": seg, "sr": sr}, tmp_path)


def test_images_no_output_can_be_built_on_say_why() -> None:
    assert unusable(corpus_file("charset/chrJapMulti.dcm")) == "no pixel data"
    leading_zeros = unusable(corpus_file("CR-ModalitySequenceLUT.dcm"))
    assert leading_zeros is not None and leading_zeros.startswith("SOPInstanceUID is not a valid")
    hex_uids = chest_cr("none")
    hex_uids.StudyInstanceUID = hex_uids.SeriesInstanceUID = "9f86d081884c7d659a2feaa0c55ad015"
    assert "StudyInstanceUID, SeriesInstanceUID are not valid UIDs" in str(unusable(hex_uids))
    assert unusable(chest_cr("none")) is None


def test_type2_attributes_are_added_to_a_copy() -> None:
    source = chest_cr("none")
    complete = conformed(source)
    assert complete.PatientID == "" and complete.PatientName == source.PatientName
    assert "PatientID" not in source
    assert conformed(complete) is complete


@pytest.mark.integration
def test_patient_and_study_values_their_vr_does_not_allow_are_left_empty(tmp_path: Path
                                                                         ) -> None:
    """As received from a real sender: a birth date written ISO style, a time with a colon,
    a name component over 64 characters. Type 2 attributes may be empty, and are; the job
    does not fail on them (it did: ValueError, the birth date in the message)."""
    source = chest_cr("none")
    with pydicom.config.disable_value_validation():
        source.PatientBirthDate, source.StudyTime = "1970-01-01", "12:30"
        source.ReferringPhysicianName = "X" * 70
        source.ContentDate, source.StudyDate = "1993-02-24", "19930224"
    seg = build_seg(source, chest_masks(source), modality="cxr", **MODEL)
    objects = {"seg": seg, "sr": build_sr(source, seg, CXR_FINDINGS, modality="cxr", **MODEL),
               "denoised": build_denoised(source, np.full((source.Rows, source.Columns), 0.5),
                                          **MODEL)}
    assert_valid(objects, tmp_path)
    for ds in objects.values():
        for name in ("PatientBirthDate", "StudyTime", "ReferringPhysicianName"):
            assert name in ds and not ds[name].value, name  # Type 2: present, empty
        assert ds.PatientName == source.PatientName  # what conforms is kept
        assert ds.ContentDate == "19930224"  # the ISO content date is passed over
    assert source.PatientBirthDate == "1970-01-01"  # the source is left as received
    assert source_date_time(source) == ("19930224", "000000")


def test_every_frame_copy_is_built_or_its_image_says_why_first() -> None:
    """pydicom's own test files (from other toolkits and vendors) whose outputs are built on
    copies of their frames: each frame is copied, or `unusable` says why before a job tries
    (a 32-bit dose grid or 16-bit colour frames failed their jobs with a ValueError)."""
    refused, copied = {}, []
    for path in sorted(PYDICOM_TEST_FILES.glob("*.dcm")):
        ds = pydicom.dcmread(path, force=True)  # some have no file meta: as a C-STORE sends
        if "PixelData" not in ds or "SOPClassUID" not in ds:
            continue
        why = unusable(ds)  # as a job asks, first
        if why is not None:
            refused[path.name] = why
        elif needs_copy(ds):
            frames = frames_of(ds)
            assert len(frames) == int(ds.get("NumberOfFrames", 1) or 1), path.name
            copied.append(path.name)
            if path.name == "examples_ybr_color.dcm":  # JPEG baseline: the copies say so
                assert {(f.LossyImageCompression, str(f.LossyImageCompressionRatio),
                         f.LossyImageCompressionMethod) for f in frames} == {
                    ("01", "19", "ISO_10918_1")}
    assert refused["rtdose.dcm"] == (
        "its frames are 32-bit grey, which no Secondary Capture copy to build outputs on can "
        "hold (8 or 16-bit unsigned grey, 8-bit colour)")
    assert refused["SC_rgb_rle_16bit_2frame.dcm"].startswith("its frames are 16-bit colour")
    assert refused["badVR.dcm"].endswith("not all whole numbers")  # NumberOfFrames '1A'
    assert {"SC_rgb_rle_2frame.dcm", "examples_ybr_color.dcm"} <= set(copied)


def with_doppler_strip(ds: Dataset, path: Path) -> Dataset:
    """`ds` with a Doppler region, in a study of its own: what the Doppler pipeline meets in
    a Secondary Capture or ultrasound image of any modality."""
    ds.StudyInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[path.name])
    return add_doppler_region(ds)


def envelope_mask(source: Dataset) -> dict[str, np.ndarray]:
    rows, columns = int(source.Rows), int(source.Columns)
    envelope = np.zeros((rows, columns), dtype=bool)
    envelope[rows // 2:rows // 2 + rows // 8, columns // 16:-columns // 16] = True
    return {"envelope": envelope}


SWEEPS: dict[str, Any] = {  # pipeline -> relabelling, masks, findings
    "cxr": (as_frontal_chest_cr, chest_masks, CXR_FINDINGS),
    "echo_doppler": (with_doppler_strip, envelope_mask, ECHO_FINDINGS),
}


@pytest.mark.integration
@pytest.mark.parametrize("modality", list(SWEEPS))
def test_every_real_image_a_pipeline_takes_gets_valid_outputs(modality: str,
                                                             tmp_path: Path) -> None:
    """Each real image, relabelled a frontal chest CR or given a Doppler strip's region, that
    the pipeline takes and `unusable` passes: SEG, SR and the denoised image (on its frame
    copy where one is needed) are built and dciodvfy-clean. They failed on an empty value 1
    of the Specific Character Set (Japanese) and on a CT Secondary Capture without plane
    geometry (highdicom's TID 1604); dciodvfy found an empty Laterality kept on a chest and
    none on a part that may be paired (an NM SC's WHOLE BODY), an SC with a frame of
    reference but no plane geometry, a frame reference to a non-conformant SC of two frames,
    and a SEG repeating a lossy JPEG's empty compression ratio. Every image output of a lossy
    compressed image says so (its frame copies and their SEG said nothing, or 00)."""
    relabelled, masks_of, findings = SWEEPS[modality]
    built, refused, lossy_built = [], 0, []
    for path, ds in real_images():
        if min(int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)) < 16:
            continue  # no image to draw a strip or masks on
        source = relabelled(ds, path)
        if pipeline(modality).not_applicable(source) or unusable(source):
            refused += 1
            continue
        try:
            frame = frames_of(source)[0]
        except InferenceError:  # pixel data no installed decoder reads: skipped, tested
            continue  # in test_pipeline
        seg = build_seg(frame, masks_of(frame), modality=modality, **MODEL)
        objects = {"seg": seg, "sr": build_sr(frame, seg, findings, modality=modality, **MODEL),
                   "denoised": build_denoised(frame, np.full((frame.Rows, frame.Columns), 0.5),
                                              **MODEL)}
        if frame is not source:
            objects["frame"] = frame
        lossy = (source.get("LossyImageCompression") == "01"
                 or source.file_meta.get("TransferSyntaxUID") in JPEG_LOSSY)
        for kind, output in objects.items():
            written = tmp_path / f"{len(built)}-{kind}.dcm"
            output.save_as(written, enforce_file_format=True)
            assert dciodvfy_errors(written) == [], (path.name, kind)
            assert overlong_values(pydicom.dcmread(written)) == [], (path.name, kind)
            if kind != "sr":
                assert (output.get("LossyImageCompression") == "01") == lossy, (path.name, kind)
        built.append(path.name)
        if lossy:
            lossy_built.append(path.name)
    assert len(built) > 20 and refused > 20
    assert {"JPEG2000.dcm", "JPEG-lossy.dcm"} <= set(lossy_built)  # their method left out
    if SHARED_DATA.joinpath("dicom-corpus").is_dir():
        assert "JPEGwithIcon.dcm" in lossy_built  # its ratio empty
        assert "chrH31.dcm" in built  # Specific Character Set \\ISO 2022 IR 87
        if modality == "echo_doppler":
            assert "CT-MONO2-16-ankle" in built


def test_a_lossy_compression_is_stated_in_full() -> None:
    """Lossy Image Compression Ratio and Method (Type 1C in a SEG) where the image leaves
    them out or empty: the ratio of the pixels to the JPEG stream held, the method its syntax
    names; an image's own values are kept, and a lossless one has no marking."""
    ds = pydicom.dcmread(PYDICOM_TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm")
    assert lossy_marking(ds) == {"LossyImageCompression": "01",
                                 "LossyImageCompressionRatio": "17.401",  # dcmtk's own
                                 "LossyImageCompressionMethod": "ISO_10918_1"}
    # 100 x 100 RGB (30000 bytes) in a stream of 1724 (its offset table: 4 bytes, not counted)
    del ds.LossyImageCompressionRatio, ds.LossyImageCompressionMethod
    assert lossy_marking(ds) == {"LossyImageCompression": "01",
                                 "LossyImageCompressionRatio": "17.4",
                                 "LossyImageCompressionMethod": "ISO_10918_1"}
    del ds.LossyImageCompression  # a JPEG baseline stream is lossy whatever the image says
    assert lossy_marking(ds)["LossyImageCompression"] == "01"
    assert lossy_marking(pydicom.dcmread(PYDICOM_TEST_FILES / "CT_small.dcm")) == {}
    source = as_frontal_chest_cr(ds, PYDICOM_TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm")
    seg = build_seg(source, chest_masks(source), modality="cxr", **MODEL)
    assert (seg.LossyImageCompression, seg.LossyImageCompressionRatio,
            seg.LossyImageCompressionMethod) == ("01", "17.4", "ISO_10918_1")
    assert "LossyImageCompression" not in ds  # the source itself is left as received


def test_a_stream_that_may_be_lossless_is_lossy_where_it_says_so() -> None:
    """JPEG-LS near-lossless with an error bound above 0 and JPEG 2000 with the irreversible
    wavelet are lossy where the image leaves its marking out (pydicom's near-lossless files
    do: NEAR 2), and so are its outputs; their lossless streams are not, and an image's own
    marking is kept."""
    path = PYDICOM_TEST_FILES / "JPEGLSNearLossless_08.dcm"
    near = pydicom.dcmread(path)
    assert "LossyImageCompression" not in near
    marking = {"LossyImageCompression": "01", "LossyImageCompressionRatio": "8.036",
               "LossyImageCompressionMethod": "ISO_14495_1"}
    assert lossy_marking(near) == marking
    source = as_frontal_chest_cr(near, path)
    source.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[path.name, "series"])
    assert unusable(source) is None  # its own series UID is not valid
    for output in (build_seg(source, chest_masks(source), modality="cxr", **MODEL),
                   build_denoised(source, np.full((source.Rows, source.Columns), 0.5),
                                  **MODEL)):
        assert {keyword: output.get(keyword) for keyword in marking} == marking
    assert lossy_marking(pydicom.dcmread(PYDICOM_TEST_FILES
                                         / "MR_small_jpeg_ls_lossless.dcm")) == {}
    irreversible = pydicom.dcmread(PYDICOM_TEST_FILES / "JPEG2000.dcm")  # 9-7 wavelet
    reversible = pydicom.dcmread(PYDICOM_TEST_FILES / "SC_rgb_gdcm_KY.dcm")  # 5-3, same syntax
    assert lossy_marking(reversible)["LossyImageCompression"] == "01"  # as it says
    del irreversible.LossyImageCompression, reversible.LossyImageCompression
    assert lossy_marking(irreversible)["LossyImageCompressionMethod"] == "ISO_15444_1"
    assert lossy_marking(reversible) == {}


@pytest.mark.integration
def test_a_patient_orientation_of_two_letters_is_kept(tmp_path: Path) -> None:
    """A real mammogram's P\\FL (down and to the left: valid DICOM, which highdicom's
    orientation values refuse): the job failed with a ValueError."""
    source = corpus_file("GH133.dcm")
    assert list(source.PatientOrientation) == ["P", "FL"]
    denoised = build_denoised(source, np.full((source.Rows, source.Columns), 0.5), **MODEL)
    seg = build_seg(source, chest_masks(source), modality="cxr", **MODEL)
    assert list(denoised.PatientOrientation) == list(seg.PatientOrientation) == ["P", "FL"]
    assert_valid({"denoised": denoised, "seg": seg}, tmp_path)


@pytest.mark.integration
@pytest.mark.parametrize(("body_part", "laterality"), [
    ("CHEST", None), ("THORAX", ""), ("", ""), ("LUNG", ""), (None, ""), ("KNEE", "R")])
def test_laterality_is_stated_where_the_body_part_may_be_paired(
        body_part: str | None, laterality: str | None, tmp_path: Path) -> None:
    """The chest CR of the corpus as sites name its body part (CHEST is PS3.16's term, one of
    an unpaired part; THORAX, an empty or absent value are none) and, for the side kept, a
    right knee. The denoised image of a chest whose part was not CHEST had no Laterality
    (Type 2C), which dciodvfy requires for any part not known to be unpaired."""
    source = chest_cr("imager")
    if body_part is None:
        del source.BodyPartExamined
    else:
        source.BodyPartExamined = body_part
    if laterality:
        source.Laterality = laterality
    denoised = build_denoised(source, np.full((source.Rows, source.Columns), 0.5), **MODEL)
    seg = build_seg(source, chest_masks(source), modality="cxr", **MODEL)
    assert_valid({"denoised": denoised, "seg": seg,
                  "sr": build_sr(source, seg, CXR_FINDINGS, modality="cxr", **MODEL)}, tmp_path)
    assert denoised.get("Laterality") == laterality


@pytest.mark.parametrize(("value", "taken"), [
    (["", "ISO 2022 IR 87"], ["ISO 2022 IR 6", "ISO 2022 IR 87"]),  # PS3.3 C.12.1.1.2
    ("", None), ("ISO_IR 6", None), ("ISO_IR 100", "ISO_IR 100"),
    (["ISO 2022 IR 6", "ISO 2022 IR 100"], ["ISO 2022 IR 6", "ISO 2022 IR 100"]),
    ("ISO 2022 IR 100", "ISO_IR 192"), ("ISO_IR_100", "ISO_IR 192"),
    (["ISO 2022 IR 87", "ISO 2022 IR 6"], "ISO_IR 192"),  # multi-byte first
    (["ISO 2022 IR 6", "ISO 2022 IR 58"], "ISO_IR 192"),  # one highdicom has no rules for
])
def test_a_specific_character_set_highdicom_refuses_is_written_another_way(
        value: Any, taken: Any) -> None:
    assert highdicom_charset(value) == taken


def test_a_japanese_name_round_trips_through_the_seg() -> None:
    """chrH31: `\\ISO 2022 IR 87`, a Kanji name; the SEG failed (ValueError)."""
    source = as_frontal_chest_cr(corpus_file("charset/chrH31.dcm"), Path("chrH31.dcm"))
    seg = build_seg(source, chest_masks(source), modality="cxr", **MODEL)
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    again = pydicom.dcmread(buffer)
    assert list(again.SpecificCharacterSet) == ["ISO 2022 IR 6", "ISO 2022 IR 87"]
    assert str(again.PatientName) == str(source.PatientName) and "=" in str(again.PatientName)
    assert list(source.SpecificCharacterSet) == ["", "ISO 2022 IR 87"]  # left as received


@pytest.mark.integration
@pytest.mark.parametrize("number", [b"0", b"-3", b"1A"])
def test_an_instance_number_highdicom_refuses_is_1_in_the_outputs(number: bytes,
                                                                    tmp_path: Path) -> None:
    """An Instance Number of 0 (some vendors count from it), a negative one, a malformed IS
    (read as text): highdicom takes positive numbers only; the last two failed the job."""
    source = chest_cr("imager")
    source[0x00200013] = RawDataElement(Tag(0x00200013), "IS", len(number), number, 0, False,
                                        True)
    seg = build_seg(source, chest_masks(source), modality="cxr", **MODEL)
    objects = {"seg": seg, "sr": build_sr(source, seg, CXR_FINDINGS, modality="cxr", **MODEL),
               "denoised": build_denoised(source, np.full((source.Rows, source.Columns), 0.5),
                                          **MODEL)}
    assert {int(ds.InstanceNumber) for ds in objects.values()} == {1}
    assert_valid(objects, tmp_path)
