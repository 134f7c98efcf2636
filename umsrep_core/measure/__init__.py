"""Measurements derived from masks and envelopes: CTR and areas (chest), velocities (Doppler)."""

from umsrep_core.measure.chest import (
    STRUCTURES,
    ChestMeasurements,
    measure_chest,
    not_a_frontal_chest,
)
from umsrep_core.measure.doppler import DOPPLER_TYPES, DopplerMeasurements, measure_doppler

__all__ = [
    "DOPPLER_TYPES",
    "STRUCTURES",
    "ChestMeasurements",
    "DopplerMeasurements",
    "measure_chest",
    "measure_doppler",
    "not_a_frontal_chest",
]
