"""Ultrasound region calibration (SequenceOfUltrasoundRegions) for spectral Doppler.

A pixel (row, col) inside the region maps to time and velocity:
    t_s   = (col - x0 - ref_x) * delta_x            (PhysicalUnitsXDirection 4: seconds)
    v_cm_s = (row - y0 - ref_y) * delta_y           (PhysicalUnitsYDirection 7: cm/s)
ref_x/ref_y are ReferencePixelX0/Y0, relative to the region's top-left corner; ref_y is the
baseline (zero velocity). delta_y is usually negative so that rows above the baseline are
positive velocities (flow towards the transducer).
"""

from __future__ import annotations

from dataclasses import dataclass

UNITS_SECONDS = 4
UNITS_CM_PER_S = 7
SPECTRAL_SPATIAL_FORMAT = 3
SPECTRAL_DATA_TYPES = (3, 4)  # PW, CW spectral Doppler


@dataclass(frozen=True)
class SpectralRegion:
    x0: int  # RegionLocationMinX0
    y0: int  # RegionLocationMinY0
    x1: int  # RegionLocationMaxX1 (inclusive)
    y1: int  # RegionLocationMaxY1 (inclusive)
    ref_x: int  # ReferencePixelX0, relative to x0
    ref_y: int  # ReferencePixelY0, relative to y0: the baseline row
    delta_x: float  # seconds per pixel
    delta_y: float  # cm/s per pixel (signed)
    data_type: int = 3  # RegionDataType: 3 PW, 4 CW

    @property
    def baseline_row(self) -> int:
        return self.y0 + self.ref_y

    def velocity_cm_s(self, row: float) -> float:
        return (row - self.baseline_row) * self.delta_y

    def time_s(self, col: float) -> float:
        return (col - self.x0 - self.ref_x) * self.delta_x
