"""DICOM objects for demos, tests and benchmarks: made-up identities, real chest pixels.

Every object is complete as a modality would send it (patient, study, series, equipment and
image modules, file meta) and deterministic: the same seed gives the same UIDs, dates and
pixels, so reruns and other machines agree. UIDs are `2.25.` UIDs of name-based UUIDs
derived from the kind, the seed and the instance number (see `uid`). Names, IDs and dates are
made up (PHANTOM^...): no object describes a real person.

The pixels of CR and DX objects are real chest radiographs: two frontal images of NIH
ChestX-ray8, de-identified public data released for use without restriction (sample_images/,
its README holds the acknowledgement, which each object carries in ImageComments). Every
other kind's pixels are synthetic, and so are any given as `pixels` (the phantoms of
umsrep_core come in that way).

Pixels are cheap: a base image cached per picture and size plus a slice of a cached noise
buffer at a per-image offset, so instances differ and sixty 2048 x 1760 CR images (about
7.2 MB each, the receiving benchmark's size) are made in about a second.

    write_study(Path("out"), "cr", seed=1, count=60)

Kinds: cr, dx (For Presentation), us_doppler (US with a PW spectral Doppler region),
us_bmode (US with a 2D tissue region only), ct (one or more 512 x 512 axial slices).
"""

from __future__ import annotations

import secrets
import sys
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    UltrasoundImageStorage,
)
from pydicom.valuerep import format_number_as_ds

from umsrep_core.imaging.regions import (
    SPECTRAL_SPATIAL_FORMAT,
    UNITS_CM_PER_S,
    UNITS_SECONDS,
    SpectralRegion,
)

KINDS = ("cr", "dx", "us_doppler", "us_bmode", "ct")
MANUFACTURER = "umsrep phantom"
IMPLEMENTATION_VERSION = "UMSREP_PHANTOM"
STUDY_DATE = "20240315"

# SequenceOfUltrasoundRegions codes (PS3.3 C.8.5.5.1).
REGION_2D = 1  # RegionSpatialFormat and RegionDataType: 2D tissue
UNITS_CM = 3
FLAG_SCALING_PROTECTED = 0b10

_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:umsrep:samples")
_NOISE_SPAN = 64  # noise added to X-ray / CT pixels, stored values
_NOISE_PAD = 65_521  # extra noise samples: the per-image offset range


@dataclass(frozen=True)
class ChestImage:
    """A real chest radiograph shipped in sample_images/ (512 x 512, 8-bit, display order)."""

    file: str  # under sample_images/
    label: str  # ChestX-ray8's label, mined from the report
    original: str  # ChestX-ray8's file name (patient_follow-up)


SAMPLE_IMAGES = Path(__file__).parent / "sample_images"
# Both from patients of the validation split that training holds out
# (umsrep_core.data.is_validation): the packaged model never saw them.
CHEST_IMAGES = (ChestImage("nih-normal.png", "normal", "00002754_000.png"),
                ChestImage("nih-pneumonia.png", "pneumonia", "00001317_000.png"))
ACKNOWLEDGEMENT = (
    "NIH Clinical Center, ChestX-ray8 (Wang X, Peng Y, Lu L, Lu Z, Bagheri M, "
    "Summers RM. ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks on "
    "Weakly-Supervised Classification and Localization of Common Thorax Diseases. "
    "IEEE CVPR 2017)")
# ChestX-ray8 publishes no spacing with its resized images: about 0.14 mm over some 3000
# pixels, a 41 cm field, became 1024 and then 512 pixels.
_CHEST_SPACING_MM = 0.8  # at 512 pixels


def ds_value(number: float) -> str:
    """`number` as a Decimal String that fits its VR (16 characters): a phantom's pixel
    spacing such as 0.3975946254047201 has more digits than a DS holds."""
    return format_number_as_ds(float(number))


# --- identity -------------------------------------------------------------------------------


def uid(*parts: object) -> str:
    """A deterministic `2.25.` UID from `parts` (the same parts give the same UID).

    A name-based (version 5) UUID as an integer under `2.25` (PS3.5 B.2). Not
    `generate_uid(prefix=None, entropy_srcs=...)`: pydicom 3 ignores `entropy_srcs` when
    `prefix` is None and returns a random UUID.
    """
    name = "\x1f".join(map(str, parts))  # a separator: ("1", "23") differs from ("12", "3")
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


@dataclass(frozen=True)
class _Ids:
    kind: str
    seed: int
    study_uid: str
    series_uid: str
    instance_number: int

    @property
    def sop_instance_uid(self) -> str:
        return uid(self.kind, self.seed, self.study_uid, self.series_uid, "instance",
                   self.instance_number)


def _ids(kind: str, seed: int, study_uid: str | None, series_uid: str | None,
         instance_number: int) -> _Ids:
    if seed < 0:
        raise ValueError(f"seed must be >= 0 (got {seed})")
    if instance_number < 1:
        raise ValueError(f"instance_number must be >= 1 (got {instance_number})")
    study = study_uid or uid(kind, seed, "study")
    series = series_uid or uid(kind, seed, study, "series")
    return _Ids(kind, seed, study, series, instance_number)


# --- modules common to every kind -----------------------------------------------------------


def _base(ids: _Ids, *, sop_class: str, modality: str, patient: str, study_description: str,
          series_description: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ids.sop_instance_uid
    # Patient
    ds.PatientName = f"PHANTOM^{patient}"
    ds.PatientID = f"PHANTOM-{ids.seed:04d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "synthetic phantom, no patient data"
    # General Study
    minute = ids.seed % 600
    study_time = f"{8 + minute // 60:02d}{minute % 60:02d}00"
    ds.StudyInstanceUID = ids.study_uid
    ds.StudyDate = STUDY_DATE
    ds.StudyTime = study_time
    ds.AccessionNumber = f"PH{ids.seed:08d}"[:16]
    ds.ReferringPhysicianName = "PHANTOM^REFERRER"
    ds.StudyID = f"{ids.seed % 10**8}"
    ds.StudyDescription = study_description
    # General Series
    ds.Modality = modality
    ds.SeriesInstanceUID = ids.series_uid
    ds.SeriesNumber = 1
    ds.SeriesDate = STUDY_DATE
    ds.SeriesTime = study_time
    ds.SeriesDescription = series_description
    ds.OperatorsName = ""
    # General Equipment
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "synthetic"
    ds.InstitutionName = "umsrep"
    ds.StationName = "PHANTOM"
    ds.DeviceSerialNumber = "0001"
    ds.SoftwareVersions = "1"
    # General Image / Acquisition
    ds.InstanceNumber = ids.instance_number
    ds.ContentDate = STUDY_DATE
    ds.ContentTime = study_time
    ds.AcquisitionDate = STUDY_DATE
    ds.AcquisitionTime = study_time
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    return ds


def _set_pixels(ds: Dataset, pixels: np.ndarray, *, bits_stored: int, signed: bool = False,
                photometric: str = "MONOCHROME2") -> None:
    samples = 3 if pixels.ndim == 3 else 1
    bits_allocated = pixels.dtype.itemsize * 8
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<"),
                                                       copy=False).tobytes()
    if bits_allocated > 8:
        ds["PixelData"].VR = "OW"
    else:
        ds["PixelData"].VR = "OB"


def _file_meta(ds: Dataset) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds.file_meta = meta


# --- cheap pixels ---------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _noise(size: int) -> np.ndarray:
    """One fixed noise buffer, `_NOISE_PAD` longer than an image: images take slices of it."""
    rng = np.random.default_rng(20240315)
    buf = rng.integers(0, _NOISE_SPAN, size + _NOISE_PAD, dtype=np.uint16)
    buf.flags.writeable = False
    return buf


def _noise_slice(rows: int, columns: int, *parts: object) -> np.ndarray:
    n = rows * columns
    offset = int(uid("noise", *parts).rsplit(".", 1)[-1]) % _NOISE_PAD
    return _noise(n)[offset:offset + n].reshape(rows, columns)


def chest_image(seed: int, instance_number: int = 1) -> ChestImage:
    """The real radiograph a CR or DX sample shows: they alternate by seed and instance."""
    return CHEST_IMAGES[(seed + instance_number - 1) % len(CHEST_IMAGES)]


def _cover_box(rows: int, columns: int, side: int) -> tuple[float, float, float, float]:
    """The centre of a square `side` image at the aspect of rows x columns: a portrait
    request trims the sides, a landscape one the top and bottom; nothing is stretched."""
    height = min(side, side * rows / columns)
    width = min(side, side * columns / rows)
    return (side - width) / 2, (side - height) / 2, (side + width) / 2, (side + height) / 2


def chest_spacing(rows: int, columns: int) -> float:
    """The pixel spacing (mm) of a real chest sample made at rows x columns."""
    _, y0, _, y1 = _cover_box(rows, columns, 512)
    return _CHEST_SPACING_MM * (y1 - y0) / rows


@lru_cache(maxsize=8)
def _chest_base(file: str, rows: int, columns: int) -> np.ndarray:
    """The shipped radiograph resampled to rows x columns, 12-bit, room left for the noise."""
    with Image.open(SAMPLE_IMAGES / file) as png:
        source = png.convert("F")  # float: resampling keeps the values between the 8 bits
    box = _cover_box(rows, columns, source.width)
    resized = np.asarray(source.resize((columns, rows), Image.Resampling.BICUBIC, box=box))
    scaled = np.clip(resized, 0.0, 255.0) * ((4095 - _NOISE_SPAN) / 255.0) + 0.5
    out: np.ndarray = scaled.astype(np.uint16)
    out.flags.writeable = False
    return out


@lru_cache(maxsize=2)
def _ct_base(rows: int, columns: int) -> np.ndarray:
    """A water cylinder with a bone ring in air, stored values (HU + 1024), 12-bit."""
    y = np.linspace(-1.0, 1.0, rows, dtype=np.float32)[:, None]
    x = np.linspace(-1.0, 1.0, columns, dtype=np.float32)[None, :]
    r = np.sqrt((x / 0.8) ** 2 + (y / 0.65) ** 2)
    hu = np.full((rows, columns), -1000.0, dtype=np.float32)
    hu[r < 1.0] = 20.0
    hu[(r > 0.88) & (r < 1.0)] = 700.0
    lungs = ((np.abs(x) - 0.38) / 0.25) ** 2 + (y / 0.42) ** 2 < 1.0
    hu[lungs] = -850.0
    out: np.ndarray = np.clip(hu + 1024.0, 0, 4095 - _NOISE_SPAN).astype(np.uint16)
    out.flags.writeable = False
    return out


def _us_noise(rows: int, columns: int, *parts: object) -> np.ndarray:
    """Speckle-like uint8 noise, deterministic from `parts`."""
    return (_noise_slice(rows, columns, *parts) * 4).astype(np.uint8)


# --- CR / DX --------------------------------------------------------------------------------


def _xray_pixels(pixels: np.ndarray | None, chest: ChestImage, rows: int, columns: int,
                 monochrome: str, *parts: object) -> tuple[np.ndarray, int]:
    """The stored pixels and BitsStored: 12 unless the given pixels need more."""
    if pixels is None:
        image = _chest_base(chest.file, rows, columns) + _noise_slice(rows, columns, *parts)
        bits = 12
    else:
        image, bits = _as_unsigned(pixels)
    if monochrome == "MONOCHROME1":
        image = ((1 << bits) - 1 - image).astype(image.dtype)
    return image, bits


def _as_unsigned(pixels: np.ndarray) -> tuple[np.ndarray, int]:
    """Given 2D pixels as stored values: floats in [0, 1] become 12-bit; ints are kept."""
    if pixels.ndim != 2:
        raise ValueError(f"pixels must be 2D (rows, columns), got shape {pixels.shape}")
    if np.issubdtype(pixels.dtype, np.floating):
        scaled = np.clip(pixels, 0.0, 1.0) * 4095.0 + 0.5
        return scaled.astype(np.uint16), 12
    if not np.issubdtype(pixels.dtype, np.integer):
        raise ValueError(f"pixels must be integers or floats in [0, 1], got {pixels.dtype}")
    if pixels.size and int(pixels.min()) < 0:
        raise ValueError("pixels must be >= 0 (stored values, PixelRepresentation 0)")
    if pixels.dtype.itemsize == 1:
        return pixels.astype(np.uint8, copy=False), 8
    top = int(pixels.max()) if pixels.size else 0
    if top > 0xFFFF:
        raise ValueError(f"pixels exceed 16 bits (max {top})")
    return pixels.astype(np.uint16, copy=False), max(12, top.bit_length())


def _xray(kind: str, seed: int, *, study_uid: str | None, series_uid: str | None,
          instance_number: int, pixels: np.ndarray | None, rows: int, columns: int,
          monochrome: str, body_part: str, view: str, pixel_spacing: float | None) -> Dataset:
    if monochrome not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"monochrome must be MONOCHROME1 or MONOCHROME2, not {monochrome!r}")
    ids = _ids(kind, seed, study_uid, series_uid, instance_number)
    dx = kind == "dx"
    ds = _base(ids, sop_class=DigitalXRayImageStorageForPresentation if dx
               else ComputedRadiographyImageStorage,
               modality="DX" if dx else "CR", patient="CXR",
               study_description=f"XR {body_part} {view}".strip(),
               series_description=f"{body_part} {view}".strip())
    chest = chest_image(seed, instance_number)
    image, bits = _xray_pixels(pixels, chest, rows, columns, monochrome, kind, seed,
                               ids.study_uid, instance_number)
    if pixels is None:
        ds.DeidentificationMethod = "NIH ChestX-ray8, de-identified by the NIH Clinical Center"
        ds.ImageComments = (f"Image: {ACKNOWLEDGEMENT}. File {chest.original}, labelled "
                            f"{chest.label}. Name, IDs and dates made up.")
        spacing = chest_spacing(rows, columns) if pixel_spacing is None else pixel_spacing
    else:
        spacing = 0.143 if pixel_spacing is None else pixel_spacing
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.BodyPartExamined = body_part
    ds.ViewPosition = view
    ds.PatientOrientation = ["L", "F"] if view in ("PA", "AP") else ["A", "F"]
    ds.KVP = "120"
    ds.ExposureTime = 10
    ds.XRayTubeCurrent = 250
    ds.Exposure = 3
    ds.DistanceSourceToDetector = "1800"
    ds.ImagerPixelSpacing = ds.PixelSpacing = [ds_value(spacing)] * 2
    _set_pixels(ds, image, bits_stored=bits, photometric=monochrome)
    top = (1 << bits) - 1
    ds.WindowCenter = str((top + 1) // 2)
    ds.WindowWidth = str(top + 1)
    ds.WindowCenterWidthExplanation = "FULL RANGE"
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    if dx:
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageLaterality = "U"
        ds.AnatomicRegionSequence = Sequence([_code("51185008", "SCT", "Chest")])
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = -1 if monochrome == "MONOCHROME1" else 1
        ds.PresentationLUTShape = "INVERSE" if monochrome == "MONOCHROME1" else "IDENTITY"
        ds.DetectorType = "SCINTILLATOR"
        ds.AcquisitionContextSequence = Sequence()
        ds.ViewCodeSequence = Sequence([_code(*_VIEW_CODES.get(view, _VIEW_CODES["PA"]))])
        ds.PatientOrientationCodeSequence = Sequence([_code("C86043", "NCIt", "Erect")])
        ds.PositionerType = "NONE"
    else:
        ds.CassetteOrientation = "PORTRAIT" if rows >= columns else "LANDSCAPE"
        ds.CassetteSize = "35CMX43CM"
    _file_meta(ds)
    return ds


_VIEW_CODES = {
    "PA": ("399348003", "SCT", "postero-anterior"),
    "AP": ("399182000", "SCT", "antero-posterior"),
    "LL": ("399198007", "SCT", "left lateral"),
    "RL": ("399173006", "SCT", "right lateral"),
    "LATERAL": ("399067008", "SCT", "lateral"),
}


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def cr_dataset(seed: int, *, study_uid: str | None = None, series_uid: str | None = None,
               instance_number: int = 1, pixels: np.ndarray | None = None, rows: int = 2048,
               columns: int = 1760, monochrome: str = "MONOCHROME2", body_part: str = "CHEST",
               view: str = "PA", pixel_spacing: float | None = None) -> Dataset:
    """A CR image: 16-bit allocated, BitsStored 12 unless `pixels` need more.

    Without `pixels`, a real chest radiograph (`chest_image(seed, instance_number)`)
    resampled to rows x columns, its centre at their aspect, with per-instance noise; its
    pixel spacing by default `chest_spacing(rows, columns)`. `pixels` (2D) are stored values:
    unsigned integers as they are (8-bit stays 8-bit), floats clipped to [0, 1] and scaled to
    12 bits; their shape overrides `rows` and `columns`; spacing 0.143 mm by default.
    With MONOCHROME1 the values are inverted so that the picture looks the same.
    """
    return _xray("cr", seed, study_uid=study_uid, series_uid=series_uid,
                 instance_number=instance_number, pixels=pixels, rows=rows, columns=columns,
                 monochrome=monochrome, body_part=body_part, view=view,
                 pixel_spacing=pixel_spacing)


def dx_dataset(seed: int, *, study_uid: str | None = None, series_uid: str | None = None,
               instance_number: int = 1, pixels: np.ndarray | None = None, rows: int = 2048,
               columns: int = 1760, monochrome: str = "MONOCHROME2", body_part: str = "CHEST",
               view: str = "PA", pixel_spacing: float | None = None) -> Dataset:
    """A DX image, For Presentation; otherwise as `cr_dataset`."""
    return _xray("dx", seed, study_uid=study_uid, series_uid=series_uid,
                 instance_number=instance_number, pixels=pixels, rows=rows, columns=columns,
                 monochrome=monochrome, body_part=body_part, view=view,
                 pixel_spacing=pixel_spacing)


# --- US -------------------------------------------------------------------------------------


def default_spectral_region(rows: int = 600, columns: int = 800) -> SpectralRegion:
    """The PW Doppler strip of a typical layout: the lower half, baseline at 2/3 of it.

    About 3.6 s across and +-100 cm/s (towards the transducer above the baseline) at 600 x 800.
    """
    x0, x1 = columns * 5 // 100, columns * 95 // 100 - 1
    y0, y1 = rows // 2, rows * 96 // 100 - 1
    ref_y = (y1 - y0) * 2 // 3
    return SpectralRegion(x0=x0, y0=y0, x1=x1, y1=y1, ref_x=0, ref_y=ref_y,
                          delta_x=3.6 / (x1 - x0 + 1), delta_y=-100.0 / ref_y, data_type=3)


def _tissue_box(rows: int, columns: int) -> tuple[int, int, int, int]:
    """The 2D (B-mode) region of the Doppler layout: the upper part, centred."""
    return columns // 4, rows // 50, columns * 3 // 4 - 1, rows * 46 // 100 - 1


def _region_item(*, spatial: int, data_type: int, flags: int, box: tuple[int, int, int, int],
                 units: tuple[int, int], ref: tuple[int, int], delta: tuple[float, float],
                 ref_values: tuple[float, float] = (0.0, 0.0)) -> Dataset:
    item = Dataset()
    item.RegionSpatialFormat = spatial
    item.RegionDataType = data_type
    item.RegionFlags = flags
    item.RegionLocationMinX0, item.RegionLocationMinY0 = box[0], box[1]
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = box[2], box[3]
    item.PhysicalUnitsXDirection, item.PhysicalUnitsYDirection = units
    item.ReferencePixelX0, item.ReferencePixelY0 = ref
    item.ReferencePixelPhysicalValueX, item.ReferencePixelPhysicalValueY = ref_values
    item.PhysicalDeltaX, item.PhysicalDeltaY = delta
    return item


def _tissue_region(box: tuple[int, int, int, int], cm_per_pixel: float) -> Dataset:
    item = _region_item(spatial=REGION_2D, data_type=REGION_2D, flags=0, box=box,
                        units=(UNITS_CM, UNITS_CM), ref=((box[2] - box[0]) // 2, 0),
                        delta=(cm_per_pixel, cm_per_pixel))
    item.TransducerFrequency = 3500  # kHz
    return item


def _spectral_region(region: SpectralRegion) -> Dataset:
    item = _region_item(spatial=SPECTRAL_SPATIAL_FORMAT, data_type=region.data_type,
                        flags=FLAG_SCALING_PROTECTED,
                        box=(region.x0, region.y0, region.x1, region.y1),
                        units=(UNITS_SECONDS, UNITS_CM_PER_S),
                        ref=(region.ref_x, region.ref_y),
                        delta=(region.delta_x, region.delta_y))
    item.TransducerFrequency = 2500  # kHz
    item.PulseRepetitionFrequency = 5000  # Hz
    item.DopplerCorrectionAngle = 0.0
    return item


def _doppler_pixels(rows: int, columns: int, region: SpectralRegion,
                    tissue: tuple[int, int, int, int], *parts: object) -> np.ndarray:
    """A dark frame with speckle in the 2D box and a pulsatile PW spectrum in the strip."""
    image = np.zeros((rows, columns), dtype=np.uint8)
    speckle = _us_noise(rows, columns, *parts)
    x0, y0, x1, y1 = tissue
    image[y0:y1 + 1, x0:x1 + 1] = speckle[y0:y1 + 1, x0:x1 + 1] // 2 + 30
    cols = np.arange(region.x0, region.x1 + 1)
    t = (cols - region.x0 - region.ref_x) * region.delta_x
    phase = (t % 0.8) / 0.8  # 75 beats per minute
    # Systolic peak about 80 cm/s, a small diastolic wave, flow towards the transducer.
    v = 80.0 * np.exp(-(((phase - 0.15) / 0.07) ** 2)) + 25.0 * np.exp(-(((phase - 0.6) / 0.1)
                                                                         ** 2))
    envelope = region.baseline_row + v / region.delta_y  # rows (delta_y < 0: above baseline)
    row_idx = np.arange(region.y0, region.y1 + 1)[:, None]
    inside = (row_idx >= envelope[None, :]) & (row_idx <= region.baseline_row)
    strip = speckle[region.y0:region.y1 + 1, region.x0:region.x1 + 1]
    values = np.where(inside, 140 + strip // 2, strip // 8)
    image[region.y0:region.y1 + 1, region.x0:region.x1 + 1] = values.astype(np.uint8)
    image[region.baseline_row, region.x0:region.x1 + 1] = 200  # the baseline
    return image


def _bmode_pixels(rows: int, columns: int, *parts: object) -> np.ndarray:
    """A sector of speckle on black."""
    y = np.arange(rows, dtype=np.float32)[:, None]
    x = np.arange(columns, dtype=np.float32)[None, :] - columns / 2
    angle = np.abs(np.arctan2(x, y + 1.0))
    sector = (angle < 0.6) & (y < rows * 0.95)
    depth_gain = (1.0 - 0.5 * y / rows)
    speckle = _us_noise(rows, columns, *parts).astype(np.float32)
    return np.where(sector, (40 + speckle * 0.7) * depth_gain, 0).astype(np.uint8)


def _check_us_pixels(pixels: np.ndarray) -> tuple[np.ndarray, str]:
    if pixels.dtype != np.uint8:
        raise ValueError(f"US pixels must be uint8, got {pixels.dtype}")
    if pixels.ndim == 2:
        return pixels, "MONOCHROME2"
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return pixels, "RGB"
    raise ValueError(f"US pixels must be (rows, columns) or (rows, columns, 3), got "
                     f"{pixels.shape}")


def _us(kind: str, seed: int, *, study_uid: str | None, series_uid: str | None,
        instance_number: int, pixels: np.ndarray | None, region: SpectralRegion | None,
        rows: int, columns: int) -> Dataset:
    ids = _ids(kind, seed, study_uid, series_uid, instance_number)
    doppler = kind == "us_doppler"
    ds = _base(ids, sop_class=UltrasoundImageStorage, modality="US", patient="ECHO",
               study_description="ECHO TTE", series_description="PW DOPPLER" if doppler
               else "2D")
    if pixels is not None:
        pixels, photometric = _check_us_pixels(pixels)
        rows, columns = int(pixels.shape[0]), int(pixels.shape[1])
    else:
        photometric = "MONOCHROME2"
    tissue = _tissue_box(rows, columns) if doppler else (0, 0, columns - 1, rows - 1)
    cm_per_pixel = round(16.0 / rows, 6) if not doppler else round(8.0 / rows, 6)
    regions = [_tissue_region(tissue, cm_per_pixel)]
    if doppler:
        region = region or default_spectral_region(rows, columns)
        if not (0 <= region.x0 <= region.x1 < columns and 0 <= region.y0 <= region.y1 < rows):
            raise ValueError(f"the spectral region {region} is not inside {rows} x {columns}")
        regions.append(_spectral_region(region))
        if pixels is None:
            pixels = _doppler_pixels(rows, columns, region, tissue, kind, seed, ids.study_uid,
                                     instance_number)
    elif pixels is None:
        pixels = _bmode_pixels(rows, columns, kind, seed, ids.study_uid, instance_number)
    mode_bits = 0x0009 if doppler else 0x0001  # PS3.3 C.8.5.6.1.1: 2D (1) + PW Doppler (8)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "CHEST", f"{mode_bits:04X}"]  # value 3: region
    ds.BodyPartExamined = "HEART"
    ds.PatientOrientation = ""
    ds.SequenceOfUltrasoundRegions = Sequence(regions)
    ds.TransducerData = "S5-1"
    ds.ProcessingFunction = "CARDIAC"
    ds.HeartRate = 75
    _set_pixels(ds, pixels, bits_stored=8, photometric=photometric)
    _file_meta(ds)
    return ds


def us_doppler_dataset(seed: int, *, study_uid: str | None = None,
                       series_uid: str | None = None, instance_number: int = 1,
                       pixels: np.ndarray | None = None, region: SpectralRegion | None = None,
                       rows: int = 600, columns: int = 800) -> Dataset:
    """A single-frame US image with a 2D region and a PW spectral Doppler region.

    `pixels`: uint8, (rows, columns) for MONOCHROME2 or (rows, columns, 3) for RGB; its shape
    overrides `rows` and `columns`. `region` defaults to `default_spectral_region`.
    """
    return _us("us_doppler", seed, study_uid=study_uid, series_uid=series_uid,
               instance_number=instance_number, pixels=pixels, region=region, rows=rows,
               columns=columns)


def us_bmode_dataset(seed: int, *, study_uid: str | None = None,
                     series_uid: str | None = None, instance_number: int = 1,
                     pixels: np.ndarray | None = None, rows: int = 600,
                     columns: int = 800) -> Dataset:
    """A single-frame 2D (B-mode) US image: one 2D tissue region, no spectral region."""
    return _us("us_bmode", seed, study_uid=study_uid, series_uid=series_uid,
               instance_number=instance_number, pixels=pixels, region=None, rows=rows,
               columns=columns)


# --- CT -------------------------------------------------------------------------------------


def ct_dataset(seed: int, *, study_uid: str | None = None, series_uid: str | None = None,
               instance_number: int = 1, pixels: np.ndarray | None = None, rows: int = 512,
               columns: int = 512, pixel_spacing: float = 0.7,
               slice_thickness: float = 2.5) -> Dataset:
    """An axial CT slice, 16-bit, BitsStored 12, RescaleIntercept -1024 (stored = HU + 1024).

    `pixels` are Hounsfield units (clipped to [-1024, 3071]); slice `instance_number` lies
    at z = -(instance_number - 1) * slice_thickness.
    """
    ids = _ids("ct", seed, study_uid, series_uid, instance_number)
    ds = _base(ids, sop_class=CTImageStorage, modality="CT", patient="CT",
               study_description="CT CHEST", series_description="AXIAL")
    if pixels is None:
        stored = _ct_base(rows, columns) + _noise_slice(rows, columns, "ct", seed,
                                                        ids.study_uid, instance_number)
    else:
        if pixels.ndim != 2:
            raise ValueError(f"pixels must be 2D (rows, columns), got shape {pixels.shape}")
        stored = (np.clip(pixels, -1024, 3071) + 1024).astype(np.uint16)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = uid("ct", seed, ids.study_uid, "frame-of-reference")
    ds.PositionReferenceIndicator = ""
    ds.SliceThickness = ds_value(slice_thickness)
    z = ds_value(-(instance_number - 1) * slice_thickness)
    half = ds_value(-stored.shape[1] * pixel_spacing / 2)
    ds.ImagePositionPatient = [half, half, z]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SliceLocation = z
    ds.PixelSpacing = [ds_value(pixel_spacing)] * 2
    ds.KVP = "120"
    ds.AcquisitionNumber = 1
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    _set_pixels(ds, stored, bits_stored=12)
    _file_meta(ds)
    return ds


# --- files ----------------------------------------------------------------------------------

_BUILDERS: dict[str, Any] = {
    "cr": cr_dataset,
    "dx": dx_dataset,
    "us_doppler": us_doppler_dataset,
    "us_bmode": us_bmode_dataset,
    "ct": ct_dataset,
}


def write(ds: Dataset, path: Path | str) -> Path:
    """Write `ds` as a DICOM file (preamble, file meta); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(path, ds, enforce_file_format=True)
    return path


def study_uid_for(kind: str, seed: int) -> str:
    """The StudyInstanceUID that `write_study(..., kind, seed)` gives by default."""
    _check_kind(kind)
    return uid(kind, seed, "study")


def _check_kind(kind: str) -> None:
    if kind not in _BUILDERS:
        raise ValueError(f"unknown sample kind {kind!r} (known: {', '.join(KINDS)})")


def write_study(out_dir: Path | str, kind: str, seed: int, count: int = 1,
                **kw: Any) -> list[Path]:
    """Write `count` instances of one study and series (distinct SOP instance UIDs).

    Files are `out_dir/<kind>-s<seed>-<n>.dcm`; `kw` go to the kind's builder (rows, columns,
    pixels, region, study_uid, series_uid, ...).
    """
    _check_kind(kind)
    if count < 1:
        raise ValueError(f"count must be >= 1 (got {count})")
    out = Path(out_dir)
    build = _BUILDERS[kind]
    paths = []
    for n in range(1, count + 1):
        ds = build(seed, instance_number=n, **kw)
        paths.append(write(ds, out / f"{kind}-s{seed}-{n:04d}.dcm"))
    return paths


def main_samples(out: Path, kind: str, count: int, seed: int | None,  # noqa: PLR0917 - CLI's
                 rows: int | None, columns: int | None) -> int:
    """`umsrep samples`: write a sample study and say where, which study and which seed (a
    new one unless given: each run a new study, not the last one reopened)."""
    seed = secrets.randbelow(1_000_000) if seed is None else seed
    kw: dict[str, Any] = {}
    if rows is not None:
        kw["rows"] = rows
    if columns is not None:
        kw["columns"] = columns
    try:
        paths = write_study(out, kind, seed, count, **kw)
    except ValueError as exc:
        print(f"umsrep samples: {exc}", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in paths)
    print(f"wrote {len(paths)} {kind} file(s), {size / 1e6:.1f} MB, under {out}")
    print(f"study {study_uid_for(kind, seed)} (seed {seed})")
    return 0
