"""Synthetic phantoms with exact ground truth: PA chest radiographs and spectral Doppler strips."""

from umsrep_core.phantoms.chest import (
    FINDINGS,
    PHOTOMETRICS,
    ChestPhantom,
    add_xray_noise,
    chest_with_noise,
    make_chest,
)
from umsrep_core.phantoms.doppler import (
    DOPPLER_TYPES,
    DopplerPhantom,
    add_speckle,
    doppler_batch,
    make_doppler,
)

__all__ = [
    "DOPPLER_TYPES",
    "FINDINGS",
    "PHOTOMETRICS",
    "ChestPhantom",
    "DopplerPhantom",
    "add_speckle",
    "add_xray_noise",
    "chest_with_noise",
    "doppler_batch",
    "make_chest",
    "make_doppler",
]
