"""The chest X-ray pipeline: frontal chest CR/DX; lungs and heart segmented, normal/abnormal
classified, the cardiothoracic ratio and the structures' areas measured."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset

from umsrep_core.imaging.morphology import one_solid_piece
from umsrep_core.imaging.pixels import pixel_spacing
from umsrep_core.measure.chest import (
    STRUCTURES,
    cardiothoracic_ratio,
    measure_chest,
    not_a_frontal_chest,
)
from umsrep_core.pipelines.base import (
    ANATOMICAL_STRUCTURE,
    MM2,
    RATIO,
    SECONDARY_CAPTURES,
    Calibration,
    Code,
    Measurement,
    PhantomCase,
    Pipeline,
    Segment,
    local,
    other_class,
    phantom_dataset,
    sct,
)

if TYPE_CHECKING:
    from umsrep_core.training.data import Arrays, HeldOut

CHEST_MODALITIES = ("CR", "DX")
# The SOP classes a chest radiograph comes as: CR, DX, or a Secondary Capture (a digitised
# film). A CT slice or a portal image labelled CR is no radiograph the model knows.
RADIOGRAPH_CLASSES = SECONDARY_CAPTURES | {
    uid.ComputedRadiographyImageStorage, uid.DigitalXRayImageStorageForPresentation,
    uid.DigitalXRayImageStorageForProcessing}
# The default chest-xray rule (pacs_node/defaults.yaml) routes by the same patterns: searched in
# BodyPartExamined and ViewPosition, empty where absent.
CHEST_BODY_PART = re.compile(r"(?i)^$|chest|thorax|t[oó]rax|torace|lung")
FRONTAL_VIEW = re.compile(r"(?i)^(PA|AP)?$")
# The probability of the class OTHER_CLASS from which an image is one the model does not know.
# The packaged cxr 0.9.0 scores every one of the 147 negatives of its validation split 0.78 or
# more, and its 171 chest radiographs at most 0.16 (the next 0.01); real images of pydicom's
# test files and the fo-dicom corpus labelled a chest CR that are none, 0.42 (a 16 x 16 cervical
# spine, whose masks the anatomy check refuses), then 0.75 or more (RGB screen captures). 0.8.0
# scored its chests up to 0.44 and measured a JPEG 2000 image of text it scored 0.30; at 0.8,
# 0.7.0 withheld 4 chests. The anatomy check is there for the negatives the score misses.
OTHER_AT = 0.5
AREA = sct("42798000", "Area")
# SNOMED CT, DCM and LOINC have no cardiothoracic ratio of a radiograph (LOINC 59076-0 is the
# fetal area ratio): a local code.
CTR = local("CTR", "Cardiothoracic ratio")


class ChestXray(Pipeline):
    name = "cxr"
    procedure = sct("399208008", "Plain chest X-ray")
    seg_labels = STRUCTURES
    class_labels = ("normal", "abnormal")
    segments: ClassVar[Mapping[str, Segment]] = {
        "right_lung": Segment("Right lung", ANATOMICAL_STRUCTURE, sct("3341006", "Right lung"),
                              "right lung"),
        "left_lung": Segment("Left lung", ANATOMICAL_STRUCTURE, sct("44029006", "Left lung"),
                             "left lung"),
        "heart": Segment("Heart", ANATOMICAL_STRUCTURE, sct("80891009", "Heart"),
                         "cardiac silhouette"),
    }
    label_codes: ClassVar[Mapping[str, Code]] = {
        "normal": sct("17621005", "Normal"),
        "abnormal": sct("263654008", "Abnormal"),  # the phantom bundles'
        "pneumonia": sct("233604007", "Pneumonia")}
    measurements: ClassVar[Mapping[str, tuple[Measurement, ...]]] = {
        "right_lung": (Measurement("areas_mm2", "right_lung", AREA, MM2),),
        "left_lung": (Measurement("areas_mm2", "left_lung", AREA, MM2),),
        "heart": (Measurement("areas_mm2", "heart", AREA, MM2),
                  Measurement("ctr", None, CTR, RATIO)),
    }
    # Issue 21's, for real radiographs (on its own phantoms the model met issue 4's stricter
    # heart Dice 0.95, AUC 0.95; real hearts have borders a reader draws to a few pixels, and
    # real pneumonia labels come from reports). The PSNR gain is on synthetic noise added to
    # the image as received.
    gates: ClassVar[Mapping[str, tuple[str, float]]] = {
        "dice.right_lung": (">=", 0.95), "dice.left_lung": (">=", 0.95),
        "dice.heart": (">=", 0.90), "auc": (">=", 0.80), "psnr_gain_db": (">=", 6.0),
        "ctr_abs_error": ("<=", 0.02)}
    value_errors: ClassVar[Mapping[str, tuple[str, str]]] = {"ctr_abs_error": ("ctr", "abs")}
    # Enough that the gates decide, not the draw: on 64 radiographs a chest AUC near its 0.95
    # gate has a standard error near 0.03 (two 1600-step runs scored 0.937 and 0.910 on the
    # first 64, 0.954 and 0.951 on 256).
    validation_phantoms = 256
    real_data = True

    def not_applicable(self, ds: Dataset) -> str | None:
        modality = str(ds.get("Modality", ""))
        if modality not in CHEST_MODALITIES:
            return f"modality {modality or 'missing'} is not CR/DX"
        refused = other_class(ds, RADIOGRAPH_CLASSES, "a radiograph")
        if refused:
            return refused
        body_part = str(ds.get("BodyPartExamined", "") or "").strip()
        if not CHEST_BODY_PART.search(body_part):
            return f"not a chest (BodyPartExamined {body_part})"
        view = str(ds.get("ViewPosition", "") or "").strip()
        return None if FRONTAL_VIEW.search(view) else f"not a frontal view (ViewPosition {view})"

    def calibrate(self, ds: Dataset) -> Calibration:
        spacing, why = pixel_spacing(ds)
        return Calibration(spacing=spacing, notes=[why] if why else [])

    def clean_masks(self, probabilities: np.ndarray) -> np.ndarray:
        """A lung or a heart is one piece, without holes."""
        return np.stack([_one_piece(p) for p in probabilities])

    def not_known(self, masks: dict[str, np.ndarray], other: float | None) -> str | None:
        """The model's own score of another kind of image, or masks that cannot be a frontal
        chest's."""
        if other is not None and other >= OTHER_AT:
            return (f"not a frontal chest radiograph: the model scores it {other:.2f} as "
                    "another kind of image")
        why = not_a_frontal_chest(masks) if masks else None
        return None if why is None else f"not a frontal chest radiograph: {why}"

    def measure(self, masks: dict[str, np.ndarray], label: str | None,
                calibration: Calibration, reasons: list[str]) -> dict[str, Any]:
        chest = measure_chest(masks, calibration.spacing)
        reasons += chest.reasons
        return {"ctr": chest.ctr, "areas_mm2": chest.areas_mm2}

    def describe(self, findings: Mapping[str, Any]) -> str:
        areas = findings.get("areas_mm2") or {}
        ctr = findings.get("ctr")
        return (f"CTR {ctr:.2f}" if ctr is not None else "CTR -") + (
            f", lungs R {_cm2(areas.get('right_lung'))} L {_cm2(areas.get('left_lung'))}, "
            f"heart {_cm2(areas.get('heart'))} cm2")

    def truth(self, masks: Mapping[str, np.ndarray]) -> dict[str, float | None]:
        if not all(s in masks for s in STRUCTURES):
            return {}
        return {"ctr": cardiothoracic_ratio(*(masks[s] for s in STRUCTURES))[0]}

    def mask_metrics(self, predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
        """The mean absolute error of the cardiothoracic ratio over the images with all three
        reference masks, each predicted structure made one solid piece as the Predictor makes
        it (an unmeasurable prediction counts as an error of the whole ratio)."""
        errors = []
        for p, t in zip(predicted, truth, strict=True):
            reference, _ = cardiothoracic_ratio(*t)
            if reference is not None:
                measured, _ = cardiothoracic_ratio(*(one_solid_piece(m) for m in p))
                errors.append(reference if measured is None else abs(measured - reference))
        return {"ctr_abs_error": float(np.mean(errors))} if errors else {}

    def phantom_arrays(self, seeds: Iterable[int], size: int) -> Arrays:
        from umsrep_core.training.data import chest_arrays  # noqa: PLC0415 - torch: training

        return chest_arrays(seeds, size)

    def held_out_arrays(self, seeds: Iterable[int], size: int) -> HeldOut:
        from umsrep_core.training.data import chest_held_out  # noqa: PLC0415

        return chest_held_out(seeds, size)

    def phantom_case(self, seed: int, size: int | None) -> PhantomCase:
        from umsrep_core.phantoms import make_chest  # noqa: PLC0415 - phantoms only here

        p = make_chest(seed, size=size)
        ds = phantom_dataset(p.image, bits=p.bits_stored, photometric=p.photometric,
                             modality="CR")
        ds.PixelSpacing = [p.pixel_spacing_mm, p.pixel_spacing_mm]
        return PhantomCase(id=f"chest-{seed}", dataset=ds, masks=p.masks,
                           label=int(p.abnormal), clean=p.clean, truth={"ctr": p.ctr})


def _one_piece(probability: np.ndarray) -> np.ndarray:
    """A structure's probabilities with its mask (at one half) made one solid piece: other
    pieces pushed just under one half, holes to one half, the kept piece's border as it was
    (the inverse letterbox resamples probabilities, then thresholds)."""
    keep = one_solid_piece(probability >= 0.5)
    out: np.ndarray = np.where(keep, np.maximum(probability, 0.5),
                               np.minimum(probability, 0.499))
    return out.astype(np.float32)


def _cm2(mm2: float | None) -> str:
    return "-" if mm2 is None else f"{mm2 / 100:.0f}"


CHEST_XRAY = ChestXray()
