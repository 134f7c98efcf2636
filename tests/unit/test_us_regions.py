"""umsrep_core.imaging.us: SequenceOfUltrasoundRegions <-> SpectralRegion."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

from umsrep_core.imaging.geometry import Letterbox
from umsrep_core.imaging.regions import SpectralRegion
from umsrep_core.imaging.us import region_box, region_to_dicom, spectral_regions

REGION = SpectralRegion(x0=20, y0=300, x1=779, y1=579, ref_x=4, ref_y=180, delta_x=0.004,
                        delta_y=-0.625, data_type=4)


def tissue_item() -> Dataset:
    item = Dataset()
    item.RegionSpatialFormat, item.RegionDataType, item.RegionFlags = 1, 1, 0
    item.RegionLocationMinX0, item.RegionLocationMinY0 = 200, 10
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = 600, 280
    item.PhysicalUnitsXDirection, item.PhysicalUnitsYDirection = 3, 3
    item.PhysicalDeltaX, item.PhysicalDeltaY = 0.03, 0.03
    return item


def us_dataset(*items: Dataset, rows: int = 600, cols: int = 800) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundImageStorage, generate_uid()
    ds.Modality, ds.Rows, ds.Columns = "US", rows, cols
    ds.SequenceOfUltrasoundRegions = list(items)
    return ds


def test_round_trip_through_a_file(tmp_path: Path) -> None:
    ds = us_dataset(tissue_item(), region_to_dicom(REGION))
    path = tmp_path / "us.dcm"
    ds.save_as(path, enforce_file_format=True)
    reasons: list[str] = []
    assert spectral_regions(dcmread(path), reasons) == [REGION]
    assert reasons == []  # the 2D tissue region is simply not spectral


def test_calibration_maps_pixels_to_seconds_and_velocity() -> None:
    [region] = spectral_regions(us_dataset(region_to_dicom(REGION)))
    assert region.velocity_cm_s(region.baseline_row) == 0.0
    assert region.velocity_cm_s(300) == pytest.approx(180 * 0.625)  # top row: towards
    assert region.time_s(24 + 250) == pytest.approx(1.0)


def test_data_type_alone_marks_a_spectral_region() -> None:
    item = region_to_dicom(REGION)
    item.RegionSpatialFormat = 0
    [region] = spectral_regions(us_dataset(item))
    assert region.data_type == 4


def test_other_units_are_skipped_with_a_reason(caplog: pytest.LogCaptureFixture) -> None:
    item = region_to_dicom(REGION)
    item.PhysicalUnitsYDirection = 5  # hertz: a spectrum not converted to velocity
    caplog.set_level(logging.INFO, logger="umsrep_core.imaging.us")
    reasons: list[str] = []
    assert spectral_regions(us_dataset(item, region_to_dicom(REGION)), reasons) == [REGION]
    assert len(reasons) == 1 and "region 1" in reasons[0] and "cm/s (7)" in reasons[0]
    assert "skipped" in caplog.text


@pytest.mark.parametrize(("change", "reason"), [
    ({"RegionLocationMaxX1": 800}, "outside"),
    ({"PhysicalDeltaY": 0.0}, "unusable"),
    ({"ReferencePixelPhysicalValueY": 0.3}, "between rows"),
])
def test_unusable_calibration_is_skipped(change: dict[str, float], reason: str) -> None:
    item = region_to_dicom(REGION)
    for keyword, value in change.items():
        setattr(item, keyword, value)
    reasons: list[str] = []
    assert spectral_regions(us_dataset(item), reasons) == []
    assert reason in reasons[0]


def test_a_reference_velocity_moves_the_baseline() -> None:
    item = region_to_dicom(REGION)
    item.ReferencePixelY0 = 100
    item.ReferencePixelPhysicalValueY = 50.0  # row 100 of the region is +50 cm/s
    [region] = spectral_regions(us_dataset(item))
    assert region.ref_y == 180  # 100 + 50 / 0.625 rows below: zero velocity


def test_region_box_is_the_letterbox_crop() -> None:
    box = region_box(REGION)
    assert box == (300, 20, 580, 780)
    image = np.zeros((600, 800), np.float32)
    image[300:580, 20:780] = 1.0
    lb = Letterbox.fit(image.shape, 256, crop=box)
    py, px = lb.pad
    nh, nw = lb.content
    assert lb.to_model(image)[py:py + nh, px:px + nw].min() == pytest.approx(1.0)
