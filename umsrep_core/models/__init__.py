"""UMS-Rep models: the shared encoder with its task heads, and bundles of trained weights."""

from umsrep_core.models.bundle import (
    BUNDLES_DIR,
    Bundle,
    BundleError,
    available_bundles,
    load_bundle,
    save_bundle,
)
from umsrep_core.models.umsrep import (
    HEADS,
    STRATEGIES,
    ClassHead,
    Encoder,
    ModelConfig,
    SingleTask,
    UMSRep,
    UNetDecoder,
    count_parameters,
    for_inference,
    set_trainable,
)

__all__ = [
    "BUNDLES_DIR",
    "HEADS",
    "STRATEGIES",
    "Bundle",
    "BundleError",
    "ClassHead",
    "Encoder",
    "ModelConfig",
    "SingleTask",
    "UMSRep",
    "UNetDecoder",
    "available_bundles",
    "count_parameters",
    "for_inference",
    "load_bundle",
    "save_bundle",
    "set_trainable",
]
