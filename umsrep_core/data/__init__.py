"""Readers of public chest X-ray data sets (JSRT+SCR, NIH ChestX-ray8, Montgomery, Shenzhen) and
generic folders, and the fixed patient split that training holds out."""

from umsrep_core.data.loaders import (
    DataError,
    Dataset,
    Sample,
    is_validation,
    load_folder,
    load_jsrt,
    load_jsrt_scr,
    load_montgomery,
    load_nih_cxr8,
    load_shenzhen,
    open_dataset,
    split,
)

__all__ = [
    "DataError",
    "Dataset",
    "Sample",
    "is_validation",
    "load_folder",
    "load_jsrt",
    "load_jsrt_scr",
    "load_montgomery",
    "load_nih_cxr8",
    "load_shenzhen",
    "open_dataset",
    "split",
]
