"""A background loop that fails on every turn (a full disk: five turns a second) logs the
failure once, again only when it changes, and once when the loop works again."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from pacs_node.logs import LoopFailures


def test_a_failing_loop_logs_each_failure_once(caplog: pytest.LogCaptureFixture) -> None:
    failures = LoopFailures(logging.getLogger("pacs_node.test"), "study completion")
    full = sqlite3.OperationalError("database or disk is full")
    with caplog.at_level(logging.INFO, logger="pacs_node.test"):
        for _ in range(25):
            failures.failed(full)
        failures.failed(OSError(5, "Input/output error"))
        failures.succeeded()
        failures.succeeded()
        failures.failed(full)
    lines = [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    failed = ("ERROR", "study completion failed (logged again only if the error changes)", True)
    assert lines == [failed, failed, ("INFO", "study completion works again", False), failed]
