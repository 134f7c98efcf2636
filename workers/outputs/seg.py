"""DICOM Segmentation (BINARY) of the model's masks, on the source image's pixel grid.

One segment per structure, as the modality's pipeline codes it (`Pipeline.segments`,
umsrep_core.pipelines: SNOMED CT lungs and heart for cxr, the Doppler envelope as Blood for
echo_doppler), in its order.

highdicom builds SEG directly from a single-frame CR, DX or US image (grayscale or RGB). It
cannot from a multi-frame US image (no frame of reference): build the SEG on the segmented
frame's single-frame image, `derived.build_frame_image`, and send that image with it.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from umsrep_core.pipelines import pipeline
from umsrep_core.pipelines.base import Code
from workers.outputs import (
    DEVICE_SERIAL_NUMBER,
    MANUFACTURER,
    SERIES_NUMBER_SEG,
    description,
)
from workers.outputs.sources import (
    conformed,
    instance_number,
    lossy_marking,
    patient_orientation,
)
from workers.outputs.uids import output_uid, pin_times


def concept(code: Code) -> hd.sr.CodedConcept:
    """A pipeline's code (value, scheme, meaning) as highdicom's coded concept."""
    value, scheme, meaning = code
    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def algorithm_identification(model_name: str, model_version: str
                             ) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=model_name, version=model_version,
        family=codes.cid7162.ArtificialIntelligence)


def _segment_numbers(modality: str, masks: dict[str, np.ndarray]) -> dict[str, int]:
    """Segment numbers 1, 2, ... in the pipeline's segment order, for the masks given."""
    names = [name for name in pipeline(modality).segments if name in masks]
    return {name: n for n, name in enumerate(names, start=1)}


def _check_masks(source: Dataset, modality: str, masks: dict[str, np.ndarray]) -> None:
    segments = pipeline(modality).segments  # ValueError for a pipeline not installed
    unknown = sorted(set(masks) - set(segments))
    if unknown:
        raise ValueError(f"unknown {modality} masks {unknown} (known: "
                         f"{', '.join(segments)})")
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
              model_version: str, modality: str) -> Dataset:
    """A BINARY Segmentation of `masks` (name -> bool array, source rows x columns).

    Names: the pipeline's segments (cxr: right_lung, left_lung, heart; echo_doppler:
    envelope); a missing name has no segment. UIDs derive from the source's SOP Instance
    UID, the model version and "seg".
    """
    _check_masks(source, modality, masks)
    source = conformed(source)
    numbers = _segment_numbers(modality, masks)
    segments = pipeline(modality).segments
    algorithm = algorithm_identification(model_name, model_version)
    descriptions = []
    for name, number in numbers.items():
        segment = segments[name]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=segment.label,
            segmented_property_category=concept(segment.category),
            segmented_property_type=concept(segment.type),
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
        instance_number=instance_number(source),
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
    # highdicom copies the source's marking as it is, which may leave out the ratio and the
    # method (Type 1C here) or say nothing of a lossy syntax: state it in full.
    for keyword, value in lossy_marking(source).items():
        setattr(seg, keyword, value)
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "PlaneOrientationSequence" not in shared:  # a projection image, even with a frame of
        # reference (an SC that has one): no patient coordinates.
        # General Image: with no patient coordinates, Patient Orientation (2C) is required;
        # the mask lies on the source grid, so the source's orientation holds (empty if none).
        seg.add_new("PatientOrientation", "CS", patient_orientation(source) or "")
        # highdicom copies a projection image's spacing without a slice thickness and then
        # cannot read its own SEG back (0.28). The macro is optional here and the spacing
        # stays in the source the SEG references.
        if "PixelMeasuresSequence" in shared:
            del shared.PixelMeasuresSequence
    # highdicom draws the dimension organization UID at random: pin it too.
    dimension_uid = output_uid(source_uids, model_version, "seg-dimension-organization")
    seg.DimensionOrganizationSequence[0].DimensionOrganizationUID = dimension_uid
    for item in seg.DimensionIndexSequence:
        item.DimensionOrganizationUID = dimension_uid
    for name, number in numbers.items():
        seg.SegmentSequence[number - 1].SegmentDescription = segments[name].description
    return seg
