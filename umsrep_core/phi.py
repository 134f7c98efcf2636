"""Patient data out of every error and log line: the one place where an error becomes text
that the journal stores or a log prints (`describe`), and where another library's message is
made safe (`scrub`).

pydicom, highdicom, numpy and the standard library quote the value they could not take
("Unable to convert '1970-01-01' to 'DA' object"), and that value may be a patient's name or
birth date. A quoted part survives only where it is a DICOM keyword or a value
representation, which name attributes, never a patient; umsrep's own errors (UmsrepError)
quote no DICOM values and are kept whole.
"""

from __future__ import annotations

import re

from pydicom.datadict import keyword_dict
from pydicom.valuerep import VR

from umsrep_core.errors import UmsrepError

__all__ = ["describe", "scrub"]

_QUOTED = re.compile(r"'([^'\n]*)'|\"([^\"\n]*)\"")
_NAMES = frozenset(keyword_dict) | frozenset(VR.__members__)


def scrub(text: str) -> str:
    """`text` with every quoted part that is not a DICOM keyword or VR replaced by '…'."""
    def keep_names(match: re.Match[str]) -> str:
        inner = match.group(1) if match.group(1) is not None else match.group(2)
        return match.group(0) if inner in _NAMES else "'…'"

    return _QUOTED.sub(keep_names, text)


def describe(exc: BaseException) -> str:
    """An error as the journal and the logs may keep it: its type and its message, scrubbed
    unless it is one of ours."""
    message = str(exc) if isinstance(exc, UmsrepError) else scrub(str(exc))
    return f"{type(exc).__name__}: {message}"
