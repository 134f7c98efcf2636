"""pacs_node.samples: complete, valid, deterministic DICOM objects; real chest pixels."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    UltrasoundImageStorage,
)

from pacs_node import samples
from pacs_node.attrs import extract
from tests.conftest import dciodvfy_errors, overlong_values, shared_data
from umsrep_core.data import is_validation
from umsrep_core.imaging.regions import SpectralRegion
from umsrep_core.imaging.us import has_spectral_doppler

DCIODVFY = Path("/usr/bin/dciodvfy")
SMALL = {  # small images keep the tests fast; the full sizes are checked once below
    "cr": {"rows": 256, "columns": 220},
    "dx": {"rows": 256, "columns": 220},
    "us_doppler": {},
    "us_bmode": {"rows": 300, "columns": 400},
    "ct": {"rows": 128, "columns": 128},
}
EXPECTED = {
    "cr": ("CR", ComputedRadiographyImageStorage),
    "dx": ("DX", DigitalXRayImageStorageForPresentation),
    "us_doppler": ("US", UltrasoundImageStorage),
    "us_bmode": ("US", UltrasoundImageStorage),
    "ct": ("CT", CTImageStorage),
}


@pytest.mark.parametrize("kind", samples.KINDS)
def test_written_file_reads_back_complete(kind: str, tmp_path: Path) -> None:
    [path] = samples.write_study(tmp_path, kind, seed=5, **SMALL[kind])
    ds = dcmread(path)
    modality, sop_class = EXPECTED[kind]
    assert ds.Modality == modality
    assert ds.SOPClassUID == sop_class
    assert ds.file_meta.MediaStorageSOPClassUID == sop_class
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert path.read_bytes()[128:132] == b"DICM"
    assert str(ds.PatientName).startswith("PHANTOM^")
    assert ds.PatientID == "PHANTOM-0005"
    assert ds.Manufacturer == "umsrep phantom"
    for keyword in ("StudyDate", "StudyTime", "AccessionNumber", "StudyID", "SeriesNumber",
                    "InstanceNumber", "ReferringPhysicianName"):
        assert keyword in ds, keyword
    assert ds.StudyInstanceUID == samples.study_uid_for(kind, 5)
    pixels = ds.pixel_array
    assert pixels.shape[:2] == (ds.Rows, ds.Columns)
    assert pixels.any()


def test_cr_full_size_is_the_benchmark_size(tmp_path: Path) -> None:
    ds = samples.cr_dataset(1)
    assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored) == (2048, 1760, 16, 12)
    assert ds.BodyPartExamined == "CHEST"
    assert ds.ViewPosition == "PA"
    assert [float(v) for v in ds.PixelSpacing] == [0.2, 0.2]  # the chest's 0.8 mm at 512
    size = samples.write(ds, tmp_path / "cr.dcm").stat().st_size
    assert 7_000_000 < size < 7_500_000
    assert int(ds.pixel_array.max()) < 4096


def _shipped(chest: samples.ChestImage) -> np.ndarray:
    return np.asarray(Image.open(samples.SAMPLE_IMAGES / chest.file), dtype=np.float64)


def test_shipped_chest_images_are_small_held_out_and_acknowledged() -> None:
    assert [c.label for c in samples.CHEST_IMAGES] == ["normal", "pneumonia"]
    readme = (samples.SAMPLE_IMAGES / "README.md").read_text()
    for chest in samples.CHEST_IMAGES:
        path = samples.SAMPLE_IMAGES / chest.file
        assert path.stat().st_size < 300_000
        with Image.open(path) as png:
            assert (png.mode, png.size) == ("L", (512, 512))
        patient = chest.original.split("_")[0]
        assert is_validation(patient), f"{chest.original}: the model trains on patient {patient}"
        assert chest.file in readme and chest.original in readme
    assert "NIH Clinical Center" in readme and "Wang X" in readme and "CVPR 2017" in readme
    assert "JSRT" in readme


def test_shipped_chest_images_are_the_shared_files_with_their_labels() -> None:
    root = shared_data("nih-cxr8")
    labels = {r["file"]: r["label"] for r in json.loads((root / "labels.json").read_text())}
    for chest in samples.CHEST_IMAGES:
        assert labels[chest.original] == chest.label
        shipped = (samples.SAMPLE_IMAGES / chest.file).read_bytes()
        assert shipped == (root / "images" / chest.original).read_bytes()


def test_cr_and_dx_alternate_the_real_chests_by_seed_and_instance() -> None:
    normal, pneumonia = samples.CHEST_IMAGES
    assert samples.chest_image(0) == normal and samples.chest_image(1) == pneumonia
    assert samples.chest_image(0, instance_number=2) == pneumonia
    assert samples.chest_image(1, instance_number=2) == normal
    for seed, kind in ((0, "cr"), (1, "dx")):
        ds = getattr(samples, f"{kind}_dataset")(seed, rows=512, columns=512)
        expected = np.floor(_shipped(samples.chest_image(seed)) * (4095 - 64) / 255 + 0.5)
        noise = ds.pixel_array.astype(np.float64) - expected  # the per-instance slice
        assert noise.min() >= 0 and noise.max() <= 63 and noise.std() > 10, kind


@pytest.mark.parametrize(("rows", "columns"), [(2048, 1760), (256, 220), (300, 400)])
def test_a_real_chest_is_resampled_to_the_size_asked(rows: int, columns: int) -> None:
    ds = samples.cr_dataset(0, rows=rows, columns=columns)
    pixels = ds.pixel_array
    assert pixels.shape == (rows, columns) and pixels.dtype == np.uint16
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 12, 11)
    assert int(pixels.max()) < 4096
    # The picture's centre at the size's aspect, not stretched: the same as Pillow's.
    box = samples._cover_box(rows, columns, 512)
    with Image.open(samples.SAMPLE_IMAGES / samples.CHEST_IMAGES[0].file) as png:
        reference = np.asarray(png.resize((columns, rows), Image.Resampling.BILINEAR, box=box),
                               dtype=np.float64)
    assert np.corrcoef(reference.ravel(), pixels.ravel())[0, 1] > 0.98
    spacing = float(ds.PixelSpacing[0])
    assert spacing == pytest.approx(samples.chest_spacing(rows, columns), abs=1e-6)
    # The field of view stays the picture's: 0.8 mm over the 512 pixels taken across.
    assert columns * spacing == pytest.approx(0.8 * (box[2] - box[0]), rel=1e-6)


def test_instances_and_seeds_differ_only_in_their_noise() -> None:
    a, b = (samples.cr_dataset(0, rows=128, columns=110), samples.cr_dataset(2, rows=128,
                                                                            columns=110))
    again = samples.cr_dataset(0, rows=128, columns=110)
    assert a.PixelData == again.PixelData  # deterministic per seed
    assert a.PixelData != b.PixelData  # the same chest, another noise slice
    difference = a.pixel_array.astype(np.int32) - b.pixel_array.astype(np.int32)
    assert np.abs(difference).max() <= 63


def test_real_chest_objects_carry_the_acknowledgement(tmp_path: Path) -> None:
    for seed, kind in ((0, "cr"), (1, "dx")):
        [path] = samples.write_study(tmp_path, kind, seed=seed, rows=128, columns=110)
        ds = dcmread(path)
        chest = samples.chest_image(seed)
        assert samples.ACKNOWLEDGEMENT in ds.ImageComments
        assert chest.original in ds.ImageComments and chest.label in ds.ImageComments
        assert "NIH Clinical Center" in ds.DeidentificationMethod
        assert ds.PatientIdentityRemoved == "YES"
        assert overlong_values(ds) == [], kind
    # Given pixels are no NIH image and say so.
    phantom = samples.cr_dataset(1, pixels=np.zeros((8, 8), dtype=np.uint16))
    assert "ImageComments" not in phantom
    assert phantom.DeidentificationMethod == "synthetic phantom, no patient data"
    assert float(phantom.PixelSpacing[0]) == 0.143


def test_spectral_doppler_region_detected_only_for_doppler() -> None:
    doppler = samples.us_doppler_dataset(1)
    bmode = samples.us_bmode_dataset(1)
    assert has_spectral_doppler(doppler)
    assert not has_spectral_doppler(bmode)
    assert extract(doppler).spectral_doppler
    assert not extract(bmode).spectral_doppler
    [region] = bmode.SequenceOfUltrasoundRegions
    assert (region.RegionSpatialFormat, region.RegionDataType) == (1, 1)


def test_spectral_region_carries_the_calibration() -> None:
    region = SpectralRegion(x0=10, y0=320, x1=789, y1=589, ref_x=5, ref_y=180,
                            delta_x=0.004, delta_y=-0.625, data_type=4)
    ds = samples.us_doppler_dataset(2, region=region)
    [item] = [r for r in ds.SequenceOfUltrasoundRegions if r.RegionSpatialFormat == 3]
    assert item.RegionDataType == 4
    assert item.RegionFlags == samples.FLAG_SCALING_PROTECTED
    assert (item.RegionLocationMinX0, item.RegionLocationMinY0) == (10, 320)
    assert (item.RegionLocationMaxX1, item.RegionLocationMaxY1) == (789, 589)
    assert (item.ReferencePixelX0, item.ReferencePixelY0) == (5, 180)
    assert (item.PhysicalUnitsXDirection, item.PhysicalUnitsYDirection) == (4, 7)
    assert item.PhysicalDeltaX == pytest.approx(0.004)
    assert item.PhysicalDeltaY == pytest.approx(-0.625)


def test_default_spectral_region_has_a_pulsatile_spectrum() -> None:
    region = samples.default_spectral_region()
    ds = samples.us_doppler_dataset(3)
    pixels = ds.pixel_array
    strip = pixels[region.y0:region.baseline_row, region.x0:region.x1 + 1]
    assert region.delta_y < 0 < region.delta_x
    assert region.velocity_cm_s(region.y0) == pytest.approx(100.0, rel=0.02)
    # Bright signal above the baseline, varying along time.
    column_energy = (strip > 100).sum(axis=0)
    assert column_energy.max() > 5 * max(1, int(np.median(column_energy)))


def test_region_outside_the_image_is_refused() -> None:
    region = SpectralRegion(x0=0, y0=0, x1=900, y1=10, ref_x=0, ref_y=5, delta_x=0.01,
                            delta_y=-1.0)
    with pytest.raises(ValueError, match="not inside"):
        samples.us_doppler_dataset(1, region=region)


def test_uids_are_deterministic_by_seed(tmp_path: Path) -> None:
    a = samples.cr_dataset(7, rows=64, columns=64)
    b = samples.cr_dataset(7, rows=64, columns=64)
    c = samples.cr_dataset(8, rows=64, columns=64)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert a[keyword].value == b[keyword].value
        assert a[keyword].value != c[keyword].value
        assert len(a[keyword].value) <= 64
        assert a[keyword].value.startswith("2.25.")
    assert a.PixelData == b.PixelData
    assert a.PixelData != c.PixelData
    first = samples.write(a, tmp_path / "a.dcm").read_bytes()
    assert first == samples.write(b, tmp_path / "b.dcm").read_bytes()
    # Kinds do not share studies for the same seed.
    assert samples.study_uid_for("cr", 7) != samples.study_uid_for("dx", 7)


def test_write_study_one_study_distinct_instances(tmp_path: Path) -> None:
    paths = samples.write_study(tmp_path, "ct", seed=3, count=4, rows=32, columns=32)
    assert [p.name for p in paths] == [f"ct-s3-{n:04d}.dcm" for n in range(1, 5)]
    datasets = [dcmread(p) for p in paths]
    assert len({d.StudyInstanceUID for d in datasets}) == 1
    assert len({d.SeriesInstanceUID for d in datasets}) == 1
    assert len({d.SOPInstanceUID for d in datasets}) == 4
    assert [d.InstanceNumber for d in datasets] == [1, 2, 3, 4]
    assert [float(d.ImagePositionPatient[2]) for d in datasets] == [0.0, -2.5, -5.0, -7.5]
    assert datasets[0].PixelData != datasets[1].PixelData  # per-image variation
    again = samples.write_study(tmp_path / "again", "ct", seed=3, count=4, rows=32, columns=32)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]


def test_write_study_keeps_a_given_study_uid(tmp_path: Path) -> None:
    paths = samples.write_study(tmp_path, "us_doppler", seed=1, count=2, study_uid="1.2.3.4")
    assert {dcmread(p).StudyInstanceUID for p in paths} == {"1.2.3.4"}


def test_given_pixels_decide_the_format() -> None:
    float_ds = samples.cr_dataset(1, pixels=np.linspace(0, 1, 50 * 40).reshape(50, 40))
    assert (float_ds.Rows, float_ds.Columns, float_ds.BitsStored) == (50, 40, 12)
    assert int(float_ds.pixel_array.max()) == 4095
    wide = samples.cr_dataset(1, pixels=np.full((8, 8), 60000, dtype=np.uint16))
    assert (wide.BitsAllocated, wide.BitsStored, wide.HighBit) == (16, 16, 15)
    narrow = samples.dx_dataset(1, pixels=np.full((8, 8), 200, dtype=np.uint8))
    assert (narrow.BitsAllocated, narrow.BitsStored) == (8, 8)
    rgb = samples.us_doppler_dataset(1, pixels=np.zeros((480, 640, 3), dtype=np.uint8))
    assert (rgb.PhotometricInterpretation, rgb.SamplesPerPixel, rgb.PlanarConfiguration) == (
        "RGB", 3, 0)
    assert rgb.pixel_array.shape == (480, 640, 3)
    ct = samples.ct_dataset(1, pixels=np.full((16, 16), -1000.0))
    hu = ct.pixel_array * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
    assert np.all(hu == -1000)
    with pytest.raises(ValueError, match=">= 0"):
        samples.cr_dataset(1, pixels=np.full((4, 4), -1, dtype=np.int16))
    with pytest.raises(ValueError, match="uint8"):
        samples.us_bmode_dataset(1, pixels=np.zeros((4, 4), dtype=np.uint16))


def test_monochrome1_inverts_the_values() -> None:
    m2 = samples.cr_dataset(4, rows=64, columns=64)
    m1 = samples.cr_dataset(4, rows=64, columns=64, monochrome="MONOCHROME1")
    assert m1.PhotometricInterpretation == "MONOCHROME1"
    assert np.array_equal(m1.pixel_array, 4095 - m2.pixel_array)
    dx = samples.dx_dataset(4, rows=64, columns=64, monochrome="MONOCHROME1")
    assert dx.PresentationLUTShape == "INVERSE"
    with pytest.raises(ValueError, match="MONOCHROME"):
        samples.cr_dataset(4, monochrome="RGB")


def test_unknown_kind_and_bad_counts() -> None:
    with pytest.raises(ValueError, match="unknown sample kind"):
        samples.write_study(Path("unused"), "mr", seed=1)
    with pytest.raises(ValueError, match="count"):
        samples.write_study(Path("unused"), "cr", seed=1, count=0)
    with pytest.raises(ValueError, match="seed"):
        samples.cr_dataset(-1)


def test_main_samples_reports_files_and_study(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert samples.main_samples(tmp_path, "cr", 3, 11, 64, 48) == 0
    out = capsys.readouterr().out
    assert "wrote 3 cr file(s)" in out
    assert samples.study_uid_for("cr", 11) in out
    assert len(list(tmp_path.glob("*.dcm"))) == 3
    assert dcmread(next(tmp_path.glob("*.dcm"))).Columns == 48
    assert samples.main_samples(tmp_path, "mr", 1, 1, None, None) == 2
    assert "unknown sample kind" in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.skipif(not DCIODVFY.exists(), reason="dicom3tools dciodvfy not installed")
@pytest.mark.parametrize("kind", samples.KINDS)
def test_dciodvfy_reports_no_errors(kind: str, tmp_path: Path) -> None:
    [path] = samples.write_study(tmp_path, kind, seed=2, **SMALL[kind])
    result = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True,
                            timeout=60, check=False)
    report = result.stdout + result.stderr
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert not errors, report


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("/usr/bin/dcmdump") is None, reason="dcmtk not installed")
def test_dcmdump_reads_every_kind(tmp_path: Path) -> None:
    for kind in samples.KINDS:
        [path] = samples.write_study(tmp_path, kind, seed=2, **SMALL[kind])
        result = subprocess.run(["/usr/bin/dcmdump", "-q", str(path)], capture_output=True,
                                text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        assert "(0008,0060) CS [" in result.stdout


@pytest.mark.integration
def test_a_phantom_pixel_spacing_is_written_as_a_valid_ds(tmp_path: Path) -> None:
    # `umsrep demo` passes its chest phantom's spacing: more digits than a DS holds.
    cr = samples.cr_dataset(4, rows=64, columns=64, pixel_spacing=0.3975946254047201)
    ct = samples.ct_dataset(5, rows=64, columns=64, pixel_spacing=0.7, slice_thickness=1 / 3,
                            instance_number=4)
    for name, ds in (("cr", cr), ("ct", ct)):
        path = samples.write(ds, tmp_path / f"{name}.dcm")
        written = dcmread(path)
        assert overlong_values(written) == [], name
        assert dciodvfy_errors(path) == [], name
    assert abs(float(dcmread(tmp_path / "cr.dcm").ImagerPixelSpacing[0]) - 0.3975946254) < 1e-9
