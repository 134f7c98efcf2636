"""Readers of public chest X-ray data sets (Montgomery, Shenzhen, JSRT+SCR) and generic folders."""

from umsrep_core.data.loaders import (
    DataError,
    Dataset,
    Sample,
    load_folder,
    load_jsrt,
    load_montgomery,
    load_shenzhen,
    open_dataset,
)

__all__ = [
    "DataError",
    "Dataset",
    "Sample",
    "load_folder",
    "load_jsrt",
    "load_montgomery",
    "load_shenzhen",
    "open_dataset",
]
