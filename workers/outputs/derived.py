"""Derived images, each a Secondary Capture series linked to its source image.

- `build_denoised`: the model's denoised image.
- `frames_of`: the images to build outputs on, the image itself or copies of its frames.
- `build_frame_image`: one frame of a multi-frame image, pixels unchanged. highdicom cannot
  build a SEG on a multi-frame image without a frame of reference (a multi-frame US cine), so
  SEG and SR of such a frame are built on this single-frame image, which is sent with them;
  so are those of an image of a SOP class highdicom does not know (a retired one, such as
  Ultrasound Image Storage 1.2.840.10008.5.1.4.1.1.6): its one frame is copied.

Secondary Capture rather than the source's SOP class: highdicom builds SC and validates it,
while a CR/DX/US copy with new pixels would carry acquisition attributes (exposure, LUTs,
ultrasound regions, presentation intent) that no longer describe the pixels, or frame
attributes that no longer apply. The study, pixel spacing and patient orientation are kept,
and so is a lossy compression of the source (`sources.lossy_marking`): it lives on in pixels
derived from it.
"""

from __future__ import annotations

from typing import Any

import highdicom as hd
import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from umsrep_core.imaging.pixels import stored_pixels
from umsrep_core.pipelines.base import RETIRED_US_IMAGE
from workers.outputs import (
    MANUFACTURER,
    NOT_FOR_CLINICAL_USE,
    SERIES_NUMBER_DENOISED,
    SERIES_NUMBER_FRAMES,
    description,
)
from workers.outputs.sources import (
    conformed,
    instance_number,
    lossy_marking,
    needs_copy,
    patient_orientation,
)
from workers.outputs.uids import output_uid, pin_times

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"  # as SEG and SR
# The classes our pipelines take whose IOD has no frames: a frame reference to such an image
# is invalid, though a non-conformant one may hold several (pydicom's SC_rgb_rle_2frame.dcm);
# the copy's Derivation Description still names its frame.
SINGLE_FRAME_CLASSES = frozenset({
    uid.ComputedRadiographyImageStorage, uid.DigitalXRayImageStorageForPresentation,
    uid.DigitalXRayImageStorageForProcessing, uid.SecondaryCaptureImageStorage,
    uid.UltrasoundImageStorage, RETIRED_US_IMAGE})


# The Body Part Examined defined terms of unpaired parts (PS3.16 Annex L), as dciodvfy
# (dicom3tools) reads them: it takes every other part, an unknown term too, as paired.
UNPAIRED_BODY_PARTS = frozenset({
    "ABDOMEN", "ABDOMENPELVIS", "AORTA", "BACK", "BLADDER", "BRAIN", "CEREBELLUM", "CERVIX",
    "CHEST", "CHESTABDOMEN", "CHESTABDPELVIS", "CIRCLEOFWILLIS", "COCCYX", "COLON",
    "CORONARYARTERY", "CSPINE", "CTSPINE", "DUODENUM", "ESOPHAGUS", "FACE", "GALLBLADDER", "HEAD",
    "HEADNECK", "HEART", "ILEUM", "ILIUM", "JAW", "JEJUNUM", "LARYNX", "LIVER", "LSPINE", "LSSPINE",
    "MAXILLA", "MEDIASTINUM", "MOUTH", "NECK", "NECKCHEST", "NECKCHESTABDOMEN", "NECKCHESTABDPELV",
    "NOSE", "PANCREAS", "PELVIS", "PENIS", "PHARYNX", "PROSTATE", "RECTUM", "SCALP", "SKULL",
    "SPINE", "SPLEEN", "SSPINE", "STERNUM", "STOMACH", "THYMUS", "THYROID", "TLSPINE", "TONGUE",
    "TRACHEA", "TSPINE", "URETER", "URETHRA", "UTERUS", "VAGINA", "VULVA", "WHOLEBODY"})


def _code_item(code: Any) -> Dataset:
    concept = hd.sr.CodedConcept.from_code(code)
    item = Dataset()
    item.CodeValue = concept.value
    item.CodingSchemeDesignator = concept.scheme_designator
    item.CodeMeaning = concept.meaning
    return item


def _pixel_spacing(source: Dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        spacing = source.get(keyword)
        if spacing and len(spacing) == 2 and all(float(v) > 0 for v in spacing):
            return float(spacing[0]), float(spacing[1])
    return None


def _secondary_capture(source: Dataset, pixels: np.ndarray, photometric: str, *,
                       series_uid: str, sop_uid: str, series_number: int,
                       frame_number: int | None = None) -> Dataset:
    """An SC of `pixels` in the source's study, referencing the source (and its frame)."""
    source = conformed(source)
    spacing: Any = _pixel_spacing(source)  # highdicom annotates it tuple[int, int]: mm are floats
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=photometric,
        bits_allocated=pixels.dtype.itemsize * 8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=frame_number or instance_number(source),
        manufacturer=MANUFACTURER,
        pixel_spacing=spacing,
        # highdicom requires an orientation of one letter per direction: the source's is set
        # below (two letters, such as FL, are valid DICOM), empty where it has none (US).
        patient_orientation=("A", "F"),
        transfer_syntax_uid=EXPLICIT_VR_LITTLE_ENDIAN,
    )
    pin_times(sc, source)
    sc.add_new("PatientOrientation", "CS", patient_orientation(source) or "")  # 2C: "" unknown
    # Laterality (Type 2C, PS3.3 C.7.3.1) is needed for a paired part and must not be there
    # for another (a chest CR's empty Laterality is left out). A part that is not one of
    # UNPAIRED_BODY_PARTS may be paired (THORAX, an empty or absent part): the source's side,
    # from its series or its image (a mammogram's), or empty where unknown.
    if "BodyPartExamined" in source:  # also tells validators whether Laterality is needed
        sc.BodyPartExamined = source.BodyPartExamined
    if source.get("BodyPartExamined") not in UNPAIRED_BODY_PARTS:
        side = source.get("Laterality") or source.get("ImageLaterality")
        sc.Laterality = side if side in ("R", "L") else ""
    sc.Modality = source.Modality  # the study's modality; highdicom's SC default is "OT"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    for keyword, value in lossy_marking(source).items():  # its pixels' compression history
        setattr(sc, keyword, value)
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frame_number is not None and source.SOPClassUID not in SINGLE_FRAME_CLASSES:
        reference.ReferencedFrameNumber = frame_number
    reference.PurposeOfReferenceCodeSequence = [
        _code_item(codes.DCM.SourceImageForImageProcessingOperation)]
    sc.SourceImageSequence = [reference]
    return sc


def build_denoised(source: Dataset, image: np.ndarray, *, model_name: str,
                   model_version: str) -> Dataset:
    """A Secondary Capture of `image` (float in [0, 1], source rows x columns, dark = 0).

    MONOCHROME2 (a MONOCHROME1 or RGB source's denoised image is gray, dark = low); 8 bits
    for an 8-bit source (US), 16 otherwise. UIDs derive from the source's SOP Instance UID,
    the model version and "denoised".
    """
    grid = (int(source.Rows), int(source.Columns))
    if image.shape != grid:
        raise ValueError(f"the denoised image has shape {image.shape}, not the source's {grid}")
    if not np.all(np.isfinite(image)):
        raise ValueError("the denoised image has NaN or infinite values")
    dtype = np.uint8 if int(source.BitsAllocated) == 8 else np.uint16
    top = int(np.iinfo(dtype).max)
    pixels = np.rint(np.clip(image, 0.0, 1.0) * top).astype(dtype)
    source_uids = [str(source.SOPInstanceUID)]
    sc = _secondary_capture(
        source, pixels, "MONOCHROME2",
        series_uid=output_uid(source_uids, model_version, "denoised-series"),
        sop_uid=output_uid(source_uids, model_version, "denoised-instance"),
        series_number=SERIES_NUMBER_DENOISED)
    sc.BurnedInAnnotation = "NO"
    sc.SeriesDescription = description("denoised by", model_name)
    sc.ImageComments = (f"Denoised by {model_name} {model_version}. {NOT_FOR_CLINICAL_USE}. "
                        "Derived image: not for diagnosis.")
    sc.DerivationDescription = f"Denoised by the {model_name} {model_version} model"[:1024]
    sc.DerivationCodeSequence = [_code_item(codes.DCM.ImageProcessing)]
    sc.WindowCenter, sc.WindowWidth = (top + 1) // 2, top + 1
    return sc


def frames_of(ds: Dataset) -> list[Dataset]:
    """Single-frame images to build outputs on: the image itself, or a copy of each of its
    frames (`sources.needs_copy`).
    Raises InferenceError when a copy is needed and the pixel data cannot be decoded."""
    if not needs_copy(ds):
        return [ds]
    pixels = stored_pixels(ds)  # decoded once for every frame
    return [build_frame_image(ds, n, pixels)
            for n in range(1, int(ds.get("NumberOfFrames", 1) or 1) + 1)]


def build_frame_image(source: Dataset, frame_number: int, pixels: np.ndarray) -> Dataset:
    """Frame `frame_number` (1-based) of a multi-frame `source` as a single-frame SC;
    `pixels`: the source's `stored_pixels`.

    The pixels are the decoded frame, unchanged (RGB stays RGB; YBR comes out RGB as pydicom
    decodes it). The UIDs derive from the source and the frame number only, not a model:
    every model version's SEG refers to the same frame image.
    """
    frames = int(source.get("NumberOfFrames", 1) or 1)
    if not 1 <= frame_number <= frames:
        raise ValueError(f"frame {frame_number} is not in 1..{frames}")
    frame = np.ascontiguousarray(pixels[frame_number - 1] if frames > 1 else pixels)
    if frame.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"frame pixels must be unsigned 8 or 16 bit, got {frame.dtype}")
    photometric = "RGB" if frame.ndim == 3 else str(source.PhotometricInterpretation)
    source_uids = [str(source.SOPInstanceUID)]
    sc = _secondary_capture(
        source, frame, photometric,
        series_uid=output_uid(source_uids, "", "frame-series"),
        sop_uid=output_uid(source_uids, "", "frame-instance", frame_number),
        series_number=SERIES_NUMBER_FRAMES, frame_number=frame_number if frames > 1 else None)
    if "BurnedInAnnotation" in source:
        sc.BurnedInAnnotation = source.BurnedInAnnotation
    sc.SeriesDescription = f"Frames of series {source.get('SeriesNumber', '')}"[:64]
    sc.DerivationDescription = f"Frame {frame_number} of {frames}, pixels unchanged"
    return sc
