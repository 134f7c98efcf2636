"""Modality pipelines as plug-ins: each modality (cxr, echo_doppler) is one module holding one
`Pipeline` (umsrep_core.pipelines.base), found through the entry-point group
`umsrep.pipelines` (pyproject.toml). It says when it applies, how an image is calibrated, what
its heads are, how masks become measurements, its SEG segments and SR codes, its quality gates
and its phantoms; the node, the workers, inference, training and evaluation ask it instead of
knowing modalities. A new modality is a new module and one entry point.

`names()` reads the entry points without importing them, so the node (which never imports
torch) validates rules against the installed pipelines.
"""

from __future__ import annotations

import functools
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from umsrep_core.pipelines.base import Pipeline

GROUP = "umsrep.pipelines"


@functools.cache
def names() -> tuple[str, ...]:
    """The installed pipelines' names: rules' `pipeline`, bundles' `modality`, Celery queues."""
    return tuple(sorted({ep.name for ep in entry_points(group=GROUP)}))


@functools.cache
def pipeline(name: str) -> Pipeline:
    """The installed pipeline of that name."""
    for ep in entry_points(group=GROUP, name=name):
        plugin: Pipeline = ep.load()
        return plugin
    raise ValueError(f"no pipeline {name!r} installed (entry points {GROUP}: "
                     f"{', '.join(names()) or 'none'})")
