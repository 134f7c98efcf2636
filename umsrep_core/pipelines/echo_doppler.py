"""The Doppler echocardiography pipeline: spectral Doppler strips; the envelope segmented, the
Doppler type classified, peak velocity, E and A peaks, E/A and VTI measured in the calibration
of the image's spectral region."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from umsrep_core.imaging.us import has_spectral_doppler, region_to_dicom, spectral_regions
from umsrep_core.measure.doppler import DOPPLER_TYPES, measure_doppler
from umsrep_core.pipelines.base import (
    BODY_SUBSTANCE,
    CM,
    CM_PER_S,
    RATIO,
    RETIRED_US_IMAGE,
    RETIRED_US_MULTIFRAME,
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

MEASURED = ("peak_velocity_cm_s", "e_cm_s", "a_cm_s", "e_a_ratio", "vti_cm")
# The SOP classes a spectral Doppler strip comes as: ultrasound (the retired classes
# included) or a screen capture.
ULTRASOUND_CLASSES = SECONDARY_CAPTURES | {
    uid.UltrasoundImageStorage, uid.UltrasoundMultiFrameImageStorage, RETIRED_US_IMAGE,
    RETIRED_US_MULTIFRAME}


class EchoDoppler(Pipeline):
    name = "echo_doppler"
    procedure = sct("40701008", "Echocardiography")
    seg_labels = ("envelope",)
    class_labels = DOPPLER_TYPES
    # SNOMED CT has no concept for a spectral Doppler envelope: the blood whose velocities it
    # traces.
    segments: ClassVar[Mapping[str, Segment]] = {"envelope": Segment(
        "Doppler envelope", BODY_SUBSTANCE, sct("87612001", "Blood"),
        "spectral Doppler envelope (blood flow velocities)")}
    # Nor for our Doppler types: local codes.
    label_codes: ClassVar[Mapping[str, Code]] = {
        "mitral_inflow": local("MITRAL_INFLOW", "Mitral inflow Doppler (E and A waves)"),
        "lvot_outflow": local("LVOT_OUTFLOW", "LVOT/aortic outflow Doppler"),
        "tricuspid_regurgitation": local("TR_JET", "Tricuspid regurgitation Doppler"),
        "not_doppler": local("NOT_DOPPLER", "Not a spectral Doppler image"),
    }
    measurements: ClassVar[Mapping[str, tuple[Measurement, ...]]] = {"envelope": (
        Measurement("peak_velocity_cm_s", None, ("11726-7", "LN", "Peak Velocity"), CM_PER_S),
        Measurement("e_cm_s", None, ("18037-2", "LN", "Mitral Valve E-Wave Peak Velocity"),
                    CM_PER_S),
        Measurement("a_cm_s", None, ("17978-8", "LN", "Mitral Valve A-Wave Peak Velocity"),
                    CM_PER_S),
        Measurement("e_a_ratio", None, ("18038-0", "LN", "Mitral Valve E to A Ratio"), RATIO),
        Measurement("vti_cm", None, ("20354-7", "LN", "Velocity Time Integral"), CM))}
    gates: ClassVar[Mapping[str, tuple[str, float]]] = {
        "dice.envelope": (">=", 0.90), "auc": (">=", 0.95), "psnr_gain_db": (">=", 6.0),
        "peak_velocity_rel_error": ("<=", 0.05)}
    value_errors: ClassVar[Mapping[str, tuple[str, str]]] = {
        "peak_velocity_rel_error": ("peak_velocity_cm_s", "rel"),
        "e_rel_error": ("e_cm_s", "rel"), "a_rel_error": ("a_cm_s", "rel"),
        "vti_rel_error": ("vti_cm", "rel")}
    validation_phantoms = 64  # Doppler types separate fully (AUC 1.0)

    def not_applicable(self, ds: Dataset) -> str | None:
        refused = other_class(ds, ULTRASOUND_CLASSES, "an ultrasound image")
        if refused:
            return refused
        if not ds.get("Modality"):
            return "no Modality (Type 1): its outputs could not name one"
        return None if has_spectral_doppler(ds) else "no spectral Doppler region"

    def calibrate(self, ds: Dataset) -> Calibration:
        notes: list[str] = []
        regions = spectral_regions(ds, notes)
        if len(regions) > 1:
            notes.append(f"{len(regions)} spectral regions: the first one was measured")
        return Calibration(region=regions[0] if regions else None, notes=notes)

    def measure(self, masks: dict[str, np.ndarray], label: str | None,
                calibration: Calibration, reasons: list[str]) -> dict[str, Any]:
        result: dict[str, Any] = {"doppler_type": label, **dict.fromkeys(MEASURED)}
        # the envelope: by name, or the bundle's first (only) mask
        envelope = masks.get("envelope", next(iter(masks.values()), None))
        if envelope is None:
            reasons.append("the bundle has no segmentation head: no envelope to measure")
        elif label not in DOPPLER_TYPES:
            reasons.append(f"Doppler type {label!r} unknown: nothing measured")
        else:
            doppler = measure_doppler(envelope, calibration.region, label)
            reasons += doppler.reasons
            result.update({k: v for k, v in doppler.to_json().items() if k != "reasons"})
        return result

    def reported_label(self, findings: Mapping[str, Any]) -> str | None:
        if findings.get("doppler_type") is not None:
            return str(findings["doppler_type"])
        return super().reported_label(findings)

    def describe(self, findings: Mapping[str, Any]) -> str:
        parts = [f"{name} {findings[key]:.0f} cm/s" for name, key in
                 (("peak", "peak_velocity_cm_s"), ("E", "e_cm_s"), ("A", "a_cm_s"))
                 if findings.get(key) is not None]
        if findings.get("e_a_ratio") is not None:
            parts.append(f"E/A {findings['e_a_ratio']:.2f}")
        if findings.get("vti_cm") is not None:
            parts.append(f"VTI {findings['vti_cm']:.1f} cm")
        return ", ".join(parts) or "-"

    def phantom_arrays(self, seeds: Iterable[int], size: int) -> Arrays:
        from umsrep_core.training.data import doppler_arrays  # noqa: PLC0415 - torch: training

        return doppler_arrays(seeds, size)

    def held_out_arrays(self, seeds: Iterable[int], size: int) -> HeldOut:
        """The training preparation, whose strips speckled on the model grid stand for the
        source (the denoiser is scored on those alone; `clean` is NaN for the others)."""
        from umsrep_core.training.data import HeldOut  # noqa: PLC0415

        images, clean, masks, labels = self.phantom_arrays(seeds, size)
        tiles = np.isfinite(clean[:, 0, 0, 0])  # the strips speckled on the model grid
        return HeldOut(images, clean, masks, labels, images[tiles], clean[tiles])

    def phantom_case(self, seed: int, size: int | None) -> PhantomCase:
        from umsrep_core.phantoms import make_doppler  # noqa: PLC0415 - phantoms only here

        rng = np.random.default_rng(seed)  # the capture size: its own stream, not the phantom's
        height = size or int(rng.integers(256, 601))
        width = 2 * size if size else round(height * rng.uniform(1.33, 2.0))
        p = make_doppler(seed, height=height, width=width)
        ds = phantom_dataset(p.image, bits=8, photometric="MONOCHROME2", modality="US")
        region = p.region
        if region is not None:
            ds.SequenceOfUltrasoundRegions = DicomSequence([region_to_dicom(region)])
        truth = {"peak_velocity_cm_s": p.peak_velocity_cm_s, "e_cm_s": p.e_cm_s,
                 "a_cm_s": p.a_cm_s, "vti_cm": p.vti_cm}
        return PhantomCase(
            id=f"doppler-{seed}-{p.kind}", dataset=ds,
            masks={"envelope": p.envelope} if region is not None else {},
            label=DOPPLER_TYPES.index(p.kind), clean=p.clean, truth=truth,
            box=(region.y0, region.x0, region.y1 + 1, region.x1 + 1) if region else None)


ECHO_DOPPLER = EchoDoppler()
