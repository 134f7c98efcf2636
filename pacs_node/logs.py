"""Logging, configured once at the entry point: plain lines or one JSON object per line.

Nothing umsrep logs carries patient name, ID or birth date; studies are named by their key.
Other libraries' messages (pydicom warns with the value it could not read) and every
traceback are scrubbed of what they quote (`umsrep_core.phi.scrub`).
"""

from __future__ import annotations

import json
import logging
import sys
import time

from umsrep_core.phi import scrub

OURS = ("pacs_node", "workers", "umsrep_core")  # loggers whose messages quote no DICOM values
PLAIN = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def scrub_record(record: logging.LogRecord) -> bool:
    """A handler filter: another library's message formatted and scrubbed, and any record's
    traceback scrubbed (an exception's message may quote a DICOM value), whichever formatter
    prints it: formatters print the `exc_text` a record carries (Celery's too)."""
    if record.name.split(".")[0] not in OURS:
        record.msg, record.args = scrub(record.getMessage()), None
    if record.exc_info and not record.exc_text:
        record.exc_text = scrub(_TRACEBACKS.formatException(record.exc_info))
    return True


_TRACEBACKS = logging.Formatter()

# pynetdicom's own lines about an association this node requested that failed: the sender
# raises DeliveryError with the reason, and the outbox logs it once per try.
SENDER_REPORTS = ("Association request failed", "TCP Initialisation Error",
                  "Association Rejected", "Result: Rejected", "Reason: ")


def not_reported_twice(record: logging.LogRecord) -> bool:
    """A handler filter: pynetdicom's failed-request lines, which the sender reports, go."""
    return not (record.name.startswith("pynetdicom")
                and str(record.msg).startswith(SENDER_REPORTS))


class LoopFailures:
    """A background loop's failures, logged with the traceback when they start or change and
    once more when the loop works again, not on every turn: a full disk fails each turn."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.logger, self.what = logger, what
        self._last: str | None = None

    def failed(self, exc: BaseException) -> None:
        current = f"{type(exc).__name__}: {exc}"
        if current != self._last:
            self.logger.error("%s failed (logged again only if the error changes)", self.what,
                              exc_info=exc)
            self._last = current

    def succeeded(self) -> None:
        if self._last is not None:
            self.logger.info("%s works again", self.what)
            self._last = None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry)


def setup(*, as_json: bool = False, debug: bool = False, verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else logging.Formatter(PLAIN))
    handler.addFilter(not_reported_twice)
    handler.addFilter(scrub_record)
    logging.captureWarnings(True)  # a library's warning quotes values too: through the filter
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    # pynetdicom logs every PDU at INFO, highdicom every module it copies into an output:
    # keep their warnings only, unless asked (--verbose: their INFO; --debug: everything).
    for name in ("pynetdicom", "highdicom"):
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.INFO if verbose
                                         else logging.WARNING)
