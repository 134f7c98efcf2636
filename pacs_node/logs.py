"""Logging, configured once at the entry point: plain lines or one JSON object per line.

Nothing umsrep logs carries patient name, ID or birth date; studies are named by their key.
"""

from __future__ import annotations

import json
import logging
import sys
import time

PLAIN = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup(*, as_json: bool = False, debug: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else logging.Formatter(PLAIN))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    # pynetdicom logs every PDU at INFO, highdicom every module it copies into an output:
    # keep their warnings only unless debugging.
    for name in ("pynetdicom", "highdicom"):
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)
