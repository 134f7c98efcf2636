"""TID 1600 Image Library of a report's source image, built with a fixed highdicom class.

highdicom 0.28.2 describes a projection radiograph (CR, DX, MG, ...; TID 1603, "partial
support" since highdicom PR #83) from `PatientOrientation[0]`, `[1]` and `ImagerPixelSpacing`
read unconditionally: a real CR whose orientation is absent or empty (Type 2C) or whose
spacing is only in Pixel Spacing or nowhere (Imager Pixel Spacing is Type 3 in the CR Image
module) raises AttributeError or IndexError, and its study would fail. Likewise a CT, MR
or PT (TID 1604) from Pixel Spacing, Slice Thickness, Image Position and Orientation
(Patient): a real CT Secondary Capture (fo-dicom's CT-MONO2-16-ankle) has none of them.
No upstream issue was found; highdicom PR #315 fixed the same fault for Spacing Between
Slices (TID 1604). `ProjectionDescriptors` writes the TID 1603 or 1604 rows the image has
(each is optional). `MeasurementReport` builds its library with highdicom's own class, so the
report is built without one and `image_library` supplies it, built as highdicom's
`ImageLibrary` builds it.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

ACQ_CONTEXT = hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT
CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS
SOURCE = hd.sr.CodedConcept(value="260753009", scheme_designator="SCT", meaning="Source")
MM = codes.UCUM.Millimeter
DIRECTION = hd.sr.CodedConcept(value="{-1:1}", scheme_designator="UCUM", meaning="{-1:1}")
THICKNESS, SLICE_SPACING = (codes.DCM.SliceThickness,), (codes.DCM.SpacingBetweenSlices,)
POSITION = (codes.DCM.ImagePositionPatientX, codes.DCM.ImagePositionPatientY,
            codes.DCM.ImagePositionPatientZ)
ORIENTATION = (codes.DCM.ImageOrientationPatientRowX, codes.DCM.ImageOrientationPatientRowY,
               codes.DCM.ImageOrientationPatientRowZ, codes.DCM.ImageOrientationPatientColumnX,
               codes.DCM.ImageOrientationPatientColumnY,
               codes.DCM.ImageOrientationPatientColumnZ)


def _spacing(image: Dataset) -> tuple[float, float] | None:
    """Imager Pixel Spacing (what highdicom describes), else Pixel Spacing; None unless two
    positive values (a Philips CR sends `0\\0`)."""
    for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
        values = image.get(keyword)
        if values and len(values) == 2 and all(float(v) > 0 for v in values):
            return float(values[0]), float(values[1])
    return None


class ProjectionDescriptors(hd.sr.ImageLibraryEntryDescriptors):
    """TID 1602 descriptors whose TID 1603 and TID 1604 parts omit what the image does not
    hold: a radiograph's orientation or spacing, a CT Secondary Capture's plane geometry."""

    def _generate_projection_radiography_descriptors(
            self, dataset: Dataset) -> Sequence[hd.sr.ContentItem]:
        descriptors: list[hd.sr.ContentItem] = []
        orientation = dataset.get("PatientOrientation")
        if orientation and len(orientation) == 2:
            descriptors += [
                hd.sr.TextContentItem(name=name, value=str(value),
                                      relationship_type=ACQ_CONTEXT)
                for name, value in ((codes.DCM.PatientOrientationRow, orientation[0]),
                                    (codes.DCM.PatientOrientationColumn, orientation[1]))]
        return descriptors + _pixel_spacing_rows(dataset)

    def _generate_cross_sectional_descriptors(
            self, dataset: Dataset) -> Sequence[hd.sr.ContentItem]:
        descriptors = _pixel_spacing_rows(dataset)
        for keyword, names, unit in (("SliceThickness", THICKNESS, MM),
                                     ("ImagePositionPatient", POSITION, MM),
                                     ("ImageOrientationPatient", ORIENTATION, DIRECTION),
                                     ("SpacingBetweenSlices", SLICE_SPACING, MM)):
            values = dataset.get(keyword)
            values = [values] if isinstance(values, int | float) else values
            if values and len(values) == len(names):
                descriptors += _num_rows(names, values, unit)
        return descriptors


def _pixel_spacing_rows(dataset: Dataset) -> list[hd.sr.ContentItem]:
    spacing = _spacing(dataset)
    return [] if spacing is None else _num_rows(
        (codes.DCM.HorizontalPixelSpacing, codes.DCM.VerticalPixelSpacing),
        (spacing[1], spacing[0]), MM)


def _num_rows(names: Sequence[hd.sr.CodedConcept], values: Sequence[float],
              unit: hd.sr.CodedConcept) -> list[hd.sr.ContentItem]:
    return [hd.sr.NumContentItem(name=name, value=value, unit=unit,
                                 relationship_type=ACQ_CONTEXT)
            for name, value in zip(names, values, strict=True)]


def image_library(image: Dataset) -> hd.sr.ContainerContentItem:
    """The Image Library container (TID 1600) of one image: a group holding its entry."""
    entry = hd.sr.ImageContentItem(
        name=SOURCE, referenced_sop_class_uid=image.SOPClassUID,
        referenced_sop_instance_uid=image.SOPInstanceUID, relationship_type=CONTAINS)
    entry.ContentSequence = hd.sr.ContentSequence(ProjectionDescriptors(image))
    group = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibraryGroup,
                                       relationship_type=CONTAINS)
    group.ContentSequence = hd.sr.ContentSequence()
    if "FrameOfReferenceUID" in image:
        group.ContentSequence.append(hd.sr.UIDRefContentItem(
            name=codes.DCM.FrameOfReferenceUID, value=image.FrameOfReferenceUID,
            relationship_type=ACQ_CONTEXT))
    group.ContentSequence.append(entry)
    library = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibrary,
                                         relationship_type=CONTAINS)
    library.ContentSequence = hd.sr.ContentSequence([group])
    return library
