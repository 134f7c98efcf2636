"""What a modality pipeline provides (`Pipeline`), in plain values: no torch at import, and
codes as (value, scheme, meaning) triples that the workers make DICOM of (workers.outputs)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from umsrep_core.imaging.regions import SpectralRegion

if TYPE_CHECKING:
    from umsrep_core.training.data import Arrays, HeldOut

# A coded concept: (code value, coding scheme designator, code meaning).
Code = tuple[str, str, str]
Spacing = float | tuple[float, float] | None
LOCAL_SCHEME = "99UMSREP"  # ours, where the standard has no concept

# The classes a screen capture or a digitised film comes as; each pipeline takes these beside
# its own modality's (`not_applicable`, `other_class`).
SECONDARY_CAPTURES = frozenset({
    uid.SecondaryCaptureImageStorage, uid.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    uid.MultiFrameTrueColorSecondaryCaptureImageStorage})
# Retired ultrasound classes, which PACS still store (pydicom names no constant for them).
RETIRED_US_IMAGE = uid.UID("1.2.840.10008.5.1.4.1.1.6")
RETIRED_US_MULTIFRAME = uid.UID("1.2.840.10008.5.1.4.1.1.3")


def other_class(ds: Dataset, classes: frozenset[str], kind: str) -> str | None:
    """Why `ds` is not `kind` by its SOP class (not one of `classes`), or None."""
    sop_class = uid.UID(str(ds.get("SOPClassUID", "")))
    return None if sop_class in classes else f"not {kind}: SOP class {sop_class.name or 'missing'}"


def sct(value: str, meaning: str) -> Code:
    return (value, "SCT", meaning)


def ucum(value: str, meaning: str) -> Code:
    return (value, "UCUM", meaning)


def local(value: str, meaning: str) -> Code:
    return (value, LOCAL_SCHEME, meaning)


ANATOMICAL_STRUCTURE = sct("91723000", "Anatomical Structure")
BODY_SUBSTANCE = sct("91720002", "Body Substance")
MM2, CM = ucum("mm2", "square millimeter"), ucum("cm", "centimeter")
RATIO = ucum("{ratio}", "ratio")
CM_PER_S = ucum("cm/s", "centimeter per second")


@dataclass(frozen=True)
class Segment:
    """A mask's SEG segment: its label, segmented property category and type, description."""

    label: str
    category: Code
    type: Code
    description: str


@dataclass(frozen=True)
class Measurement:
    """A value of the findings (`key`, or `key`[`sub`]) reported in the SR group of a mask."""

    key: str
    sub: str | None
    concept: Code
    unit: Code


@dataclass(frozen=True)
class Calibration:
    """What turns an image's pixels into physical values: a pixel spacing (mm) or a spectral
    Doppler region, and why either is missing or partial."""

    spacing: Spacing = None
    region: SpectralRegion | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class PhantomCase:
    """A held-out phantom as a DICOM image and its truth, for `umsrep model evaluate`."""

    id: str
    dataset: Dataset
    masks: dict[str, np.ndarray]
    label: int
    clean: np.ndarray
    truth: dict[str, float | None]
    box: tuple[int, int, int, int] | None = None  # where denoising is scored; None: all


def phantom_dataset(pixels: np.ndarray, *, bits: int, photometric: str, modality: str
                    ) -> Dataset:
    """A minimal single-frame DICOM dataset around stored values, as a modality sends them."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Modality = modality
    ds.Rows, ds.Columns = (int(v) for v in pixels.shape)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


class Pipeline:
    """One modality. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str]  # rules' `pipeline`, bundles' `modality`, the Celery queue
    procedure: ClassVar[Code]  # the SR's procedure reported
    seg_labels: ClassVar[tuple[str, ...]]  # the segmentation head's masks, in order
    class_labels: ClassVar[tuple[str, ...]]  # the classification head's classes (phantoms)
    segments: ClassVar[Mapping[str, Segment]]  # mask -> its SEG segment, in segment order
    label_codes: ClassVar[Mapping[str, Code]]  # reported label -> its coded value
    measurements: ClassVar[Mapping[str, tuple[Measurement, ...]]]  # mask -> its SR values
    gates: ClassVar[Mapping[str, tuple[str, float]]]  # metric -> (">=" or "<=", threshold)
    # evaluation metric -> (the truth and measurement key it compares, "abs" or "rel" error)
    value_errors: ClassVar[Mapping[str, tuple[str, str]]] = {}
    validation_phantoms: ClassVar[int]  # held-out phantoms a training run is scored on
    real_data: ClassVar[bool] = False  # whether umsrep_core.data's real data sets hold it

    # --- serving ----------------------------------------------------------------------------

    def not_applicable(self, ds: Dataset) -> str | None:
        """Why the pipeline does not apply to this instance, by its header; None: it does."""
        raise NotImplementedError

    def calibrate(self, ds: Dataset) -> Calibration:
        raise NotImplementedError

    def clean_masks(self, probabilities: np.ndarray) -> np.ndarray:
        """The segmentation probabilities (masks, H, W) on the model grid, made anatomical."""
        return probabilities

    def not_known(self, masks: dict[str, np.ndarray], other: float | None) -> str | None:
        """Why the image is not one the model knows (its masks; `other`: the model's score of
        another kind of image, where it has that class); None when it is or none can tell."""
        return None

    def measure(self, masks: dict[str, np.ndarray], label: str | None,
                calibration: Calibration, reasons: list[str]) -> dict[str, Any]:
        """The measurements (keys of `predict --json`); why one is missing goes to reasons.
        With no masks and no label: every key, null."""
        raise NotImplementedError

    def reported_label(self, findings: Mapping[str, Any]) -> str | None:
        """The label the SR reports as its classification."""
        label = findings.get("label")
        return None if label is None else str(label)

    def describe(self, findings: Mapping[str, Any]) -> str:
        """The measurements of a finding, in one line for people."""
        raise NotImplementedError

    # --- training and evaluation ------------------------------------------------------------

    def truth(self, masks: Mapping[str, np.ndarray]) -> dict[str, float | None]:
        """Reference values that reference masks give (evaluation of real images)."""
        return {}

    def mask_metrics(self, predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
        """Validation metrics of a training run beyond Dice, from its predicted and reference
        masks (N, masks, H, W) on the model grid."""
        return {}

    def phantom_arrays(self, seeds: Iterable[int], size: int) -> Arrays:
        """Training phantoms as the Predictor sees them (umsrep_core.training.data)."""
        raise NotImplementedError

    def held_out_arrays(self, seeds: Iterable[int], size: int) -> HeldOut:
        """A run's validation phantoms, as a served bundle sees them."""
        raise NotImplementedError

    def phantom_case(self, seed: int, size: int | None) -> PhantomCase:
        """One held-out phantom for `evaluate`; `size`: a fixed size (tests)."""
        raise NotImplementedError
