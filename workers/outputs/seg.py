"""DICOM Segmentation (BINARY) of the model's masks, on the source image's pixel grid.

One segment per structure, coded with SNOMED CT:
- cxr: right lung (3341006), left lung (44029006), heart (80891009), category Anatomical
  Structure (91723000);
- echo_doppler: the spectral Doppler envelope. SNOMED CT has no concept for a spectral
  envelope; the pixels inside it are the velocities of the blood sampled by the Doppler gate,
  so the segment is typed Blood (87612001), category Body Substance (91720002), with the
  label and description naming the envelope.

highdicom builds SEG directly from a single-frame CR, DX or US image (grayscale or RGB). It
cannot from a multi-frame US image (no frame of reference): build the SEG on the segmented
frame's single-frame image, `derived.build_frame_image`, and send that image with it.
"""

from __future__ import annotations

from typing import Literal

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from workers.outputs import (
    DEVICE_SERIAL_NUMBER,
    MANUFACTURER,
    SERIES_NUMBER_SEG,
    description,
)
from workers.outputs.sources import with_type2
from workers.outputs.uids import output_uid, pin_times

Modality = Literal["cxr", "echo_doppler"]


def _code(value: str, meaning: str, scheme: str = "SCT") -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


ANATOMICAL_STRUCTURE = _code("91723000", "Anatomical Structure")
BODY_SUBSTANCE = _code("91720002", "Body Substance")

# mask name -> (segment label, category, property type, description); the order is the
# segment numbers' (1, 2, ...).
SEGMENTS: dict[Modality, dict[str, tuple[str, hd.sr.CodedConcept, hd.sr.CodedConcept, str]]] = {
    "cxr": {
        "right_lung": ("Right lung", ANATOMICAL_STRUCTURE, _code("3341006", "Right lung"),
                       "right lung"),
        "left_lung": ("Left lung", ANATOMICAL_STRUCTURE, _code("44029006", "Left lung"),
                      "left lung"),
        "heart": ("Heart", ANATOMICAL_STRUCTURE, _code("80891009", "Heart"),
                  "cardiac silhouette"),
    },
    "echo_doppler": {
        "envelope": ("Doppler envelope", BODY_SUBSTANCE, _code("87612001", "Blood"),
                     "spectral Doppler envelope (blood flow velocities)"),
    },
}


def algorithm_identification(model_name: str, model_version: str
                             ) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=model_name, version=model_version,
        family=codes.cid7162.ArtificialIntelligence)


def _segment_numbers(modality: Modality, masks: dict[str, np.ndarray]) -> dict[str, int]:
    """Segment numbers 1, 2, ... in `SEGMENTS` order, for the masks given."""
    names = [name for name in SEGMENTS[modality] if name in masks]
    return {name: n for n, name in enumerate(names, start=1)}


def _check_masks(source: Dataset, modality: Modality, masks: dict[str, np.ndarray]) -> None:
    if modality not in SEGMENTS:
        raise ValueError(f"unknown modality {modality!r} (known: {', '.join(SEGMENTS)})")
    unknown = sorted(set(masks) - set(SEGMENTS[modality]))
    if unknown:
        raise ValueError(f"unknown {modality} masks {unknown} (known: "
                         f"{', '.join(SEGMENTS[modality])})")
    if not masks:
        raise ValueError("no masks to segment")
    if int(source.get("NumberOfFrames", 1) or 1) > 1:
        raise ValueError("SEG is built on one frame: pass the frame's single-frame image "
                         "(workers.outputs.derived.build_frame_image)")
    grid = (int(source.Rows), int(source.Columns))
    for name, mask in masks.items():
        if np.shape(mask) != grid:
            raise ValueError(f"mask {name!r} has shape {np.shape(mask)}, not the source's "
                             f"{grid}")


def build_seg(source: Dataset, masks: dict[str, np.ndarray], *, model_name: str,
              model_version: str, modality: Modality) -> Dataset:
    """A BINARY Segmentation of `masks` (name -> bool array, source rows x columns).

    Names: right_lung, left_lung, heart (cxr) or envelope (echo_doppler); a missing name has
    no segment. UIDs derive from the source's SOP Instance UID, the model version and "seg".
    """
    _check_masks(source, modality, masks)
    source = with_type2(source)
    numbers = _segment_numbers(modality, masks)
    algorithm = algorithm_identification(model_name, model_version)
    descriptions = []
    for name, number in numbers.items():
        label, category, prop_type, _ = SEGMENTS[modality][name]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=label,
            segmented_property_category=category, segmented_property_type=prop_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm))
    # (frames, rows, columns, segments): one frame, one channel per segment.
    stack = np.stack([np.asarray(masks[name], dtype=bool) for name in numbers], axis=-1)
    source_uids = [str(source.SOPInstanceUID)]
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=stack[None].astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=output_uid(source_uids, model_version, "seg-series"),
        series_number=SERIES_NUMBER_SEG,
        sop_instance_uid=output_uid(source_uids, model_version, "seg-instance"),
        instance_number=int(source.get("InstanceNumber", 1) or 1),
        manufacturer=MANUFACTURER,
        manufacturer_model_name=model_name[:64],
        software_versions=model_version,
        device_serial_number=DEVICE_SERIAL_NUMBER,
        content_description=description(f"{modality} segmentation by", model_name),
        content_label="UMSREP_SEG",
        series_description=description("SEG", model_name),
        # An empty mask still gets its frame: the SEG says "segmented, nothing found".
        omit_empty_frames=False,
    )
    pin_times(seg, source)
    if "FrameOfReferenceUID" not in seg:
        # General Image: with no patient coordinates, Patient Orientation (2C) is required;
        # the mask lies on the source grid, so the source's orientation holds (empty if none).
        seg.PatientOrientation = source.get("PatientOrientation", "")
        # highdicom copies a projection image's spacing without a slice thickness and then
        # cannot read its own SEG back (0.28). The macro is optional here and the spacing
        # stays in the source the SEG references.
        shared = seg.SharedFunctionalGroupsSequence[0]
        if "PixelMeasuresSequence" in shared:
            del shared.PixelMeasuresSequence
    # highdicom draws the dimension organization UID at random: pin it too.
    dimension_uid = output_uid(source_uids, model_version, "seg-dimension-organization")
    seg.DimensionOrganizationSequence[0].DimensionOrganizationUID = dimension_uid
    for item in seg.DimensionIndexSequence:
        item.DimensionOrganizationUID = dimension_uid
    for name, number in numbers.items():
        seg.SegmentSequence[number - 1].SegmentDescription = SEGMENTS[modality][name][3]
    return seg
