"""SequenceOfUltrasoundRegions (PS3.3 C.8.5.5) <-> SpectralRegion, for spectral Doppler."""

from __future__ import annotations

import logging

from pydicom import Dataset

from umsrep_core.imaging.regions import (
    SPECTRAL_DATA_TYPES,
    SPECTRAL_SPATIAL_FORMAT,
    UNITS_CM_PER_S,
    UNITS_SECONDS,
    SpectralRegion,
)

__all__ = ["FLAG_SCALING_PROTECTED", "has_spectral_doppler", "region_box", "region_to_dicom",
           "spectral_regions"]

log = logging.getLogger(__name__)

FLAG_SCALING_PROTECTED = 0b10  # RegionFlags bit 1: the region's calibration must be kept
_INTEGRAL = 1e-3  # how close a folded baseline must land to a pixel row


def has_spectral_doppler(ds: Dataset) -> bool:
    """Whether `ds` declares a spectral Doppler region, calibrated or not (routing looks at
    this; spectral_regions checks the calibration)."""
    return any(int(item.get("RegionSpatialFormat", 0)) == SPECTRAL_SPATIAL_FORMAT
               or int(item.get("RegionDataType", 0)) in SPECTRAL_DATA_TYPES
               for item in ds.get("SequenceOfUltrasoundRegions") or [])


def spectral_regions(ds: Dataset, reasons: list[str] | None = None) -> list[SpectralRegion]:
    """The spectral Doppler regions of `ds`, in sequence order.

    A region is spectral when RegionSpatialFormat is 3 or RegionDataType is 3 (PW) or 4 (CW).
    One that cannot be calibrated in seconds and cm/s is skipped, and why is appended to
    `reasons` (when given) and logged.
    """
    found: list[SpectralRegion] = []
    for number, item in enumerate(ds.get("SequenceOfUltrasoundRegions") or [], start=1):
        spatial = int(item.get("RegionSpatialFormat", 0))
        data_type = int(item.get("RegionDataType", 0))
        if spatial != SPECTRAL_SPATIAL_FORMAT and data_type not in SPECTRAL_DATA_TYPES:
            continue
        region, reason = _region(item, data_type, ds)
        if region is not None:
            found.append(region)
            continue
        message = f"ultrasound region {number} skipped: {reason}"
        log.info(message)
        if reasons is not None:
            reasons.append(message)
    return found


def region_to_dicom(region: SpectralRegion) -> Dataset:
    """One SequenceOfUltrasoundRegions item describing `region` (spectral_regions' inverse)."""
    item = Dataset()
    item.RegionSpatialFormat = SPECTRAL_SPATIAL_FORMAT
    item.RegionDataType = region.data_type
    item.RegionFlags = FLAG_SCALING_PROTECTED
    item.RegionLocationMinX0, item.RegionLocationMinY0 = region.x0, region.y0
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = region.x1, region.y1
    item.PhysicalUnitsXDirection, item.PhysicalUnitsYDirection = UNITS_SECONDS, UNITS_CM_PER_S
    item.ReferencePixelX0, item.ReferencePixelY0 = region.ref_x, region.ref_y
    item.ReferencePixelPhysicalValueX, item.ReferencePixelPhysicalValueY = 0.0, 0.0
    item.PhysicalDeltaX, item.PhysicalDeltaY = region.delta_x, region.delta_y
    return item


def region_box(region: SpectralRegion) -> tuple[int, int, int, int]:
    """The region as a half-open (y0, x0, y1, x1) box, the crop of `Letterbox.fit`."""
    return region.y0, region.x0, region.y1 + 1, region.x1 + 1


def _region(item: Dataset, data_type: int, ds: Dataset) -> tuple[SpectralRegion | None, str]:
    units = (item.get("PhysicalUnitsXDirection"), item.get("PhysicalUnitsYDirection"))
    if units != (UNITS_SECONDS, UNITS_CM_PER_S):
        return None, (f"physical units (X, Y) = {units}, not seconds (4) and cm/s (7)")
    try:
        x0, y0 = int(item.RegionLocationMinX0), int(item.RegionLocationMinY0)
        x1, y1 = int(item.RegionLocationMaxX1), int(item.RegionLocationMaxY1)
        delta_x, delta_y = float(item.PhysicalDeltaX), float(item.PhysicalDeltaY)
    except (AttributeError, TypeError, ValueError) as exc:
        return None, f"incomplete calibration ({exc})"
    if not (0 <= x0 <= x1 and 0 <= y0 <= y1):
        return None, f"empty or negative box ({x0}, {y0})-({x1}, {y1})"
    if "Rows" in ds and "Columns" in ds and (x1 >= ds.Columns or y1 >= ds.Rows):
        return None, f"box ({x0}, {y0})-({x1}, {y1}) outside the {ds.Columns}x{ds.Rows} image"
    if delta_x <= 0 or delta_y == 0:
        return None, f"PhysicalDeltaX {delta_x} / PhysicalDeltaY {delta_y} unusable"
    # ReferencePixelY0 is the row of ReferencePixelPhysicalValueY; SpectralRegion wants the
    # zero-velocity row, so a non-zero value moves the baseline. A non-zero X value only
    # moves the time origin, which no measurement uses.
    ref_y = int(item.get("ReferencePixelY0", 0)) - float(
        item.get("ReferencePixelPhysicalValueY", 0.0)) / delta_y
    if abs(ref_y - round(ref_y)) > _INTEGRAL:
        return None, f"the zero-velocity baseline falls between rows (at {ref_y:.3f})"
    return SpectralRegion(x0=x0, y0=y0, x1=x1, y1=y1, ref_x=int(item.get("ReferencePixelX0", 0)),
                          ref_y=round(ref_y), delta_x=delta_x, delta_y=delta_y,
                          data_type=data_type), ""
