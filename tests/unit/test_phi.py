"""No patient data in an error or a log line: umsrep_core.phi and the node's log handler."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator

import pytest
from celery.utils.log import ColorFormatter

from pacs_node import logs
from umsrep_core.errors import RoutingError
from umsrep_core.phi import describe, scrub

BIRTH_DATE = "1970-01-01"
NAME = "SMITH^JOHN"


@pytest.fixture
def node_logging() -> Iterator[None]:
    """logs.setup as the node runs it, the root logger given back afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    # An earlier setup left warnings captured (logging then keeps pytest's recorder in place
    # of its own): start from none.
    logging.captureWarnings(False)
    yield
    logging.captureWarnings(False)
    root.handlers[:], root.level = saved[0], saved[1]


def test_foreign_messages_lose_their_quoted_values_but_not_the_names_of_attributes() -> None:
    assert describe(ValueError(f"Unable to convert '{BIRTH_DATE}' to 'DA' object")) == (
        "ValueError: Unable to convert '…' to 'DA' object")
    assert describe(AttributeError("'FileDataset' object has no attribute "
                                   "'ImagerPixelSpacing'")) == (
        "AttributeError: '…' object has no attribute 'ImagerPixelSpacing'")
    assert describe(KeyError("PatientName")) == "KeyError: 'PatientName'"
    assert scrub(f'Invalid value for VR PN: "{NAME}".') == "Invalid value for VR PN: '…'."
    # ours quote rule and file names, never DICOM values: kept whole
    assert describe(RoutingError("no process rule named 'echo-v2'")) == (
        "RoutingError: no process rule named 'echo-v2'")


def test_the_node_log_scrubs_other_libraries_warnings_and_every_traceback(
        node_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup()
    logging.getLogger("pydicom").warning("Invalid value for VR DA: '%s'.", BIRTH_DATE)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(f'The string "{NAME}" is unlikely to represent the intended person name',
                      UserWarning, stacklevel=1)
    ours = logging.getLogger("pacs_node.test")
    ours.info("study %s: no process rule named '%s'", "2.25.1@1", "echo-v2")
    try:
        raise ValueError(f"Unable to convert '{BIRTH_DATE}' to 'DA' object")
    except ValueError:
        ours.exception("outbox run failed")
    err = capsys.readouterr().err
    assert BIRTH_DATE not in err and "SMITH" not in err
    assert "Invalid value for VR DA: '…'." in err and "unlikely to represent" in err
    assert "no process rule named 'echo-v2'" in err  # our own line, as written
    assert "ValueError: Unable to convert '…' to 'DA' object" in err


def test_a_celery_formatter_prints_the_scrubbed_traceback() -> None:
    """The worker keeps Celery's handlers and formatters (workers.app.scrub_logs adds the
    filter): a retried task logs the error its TransientError chains, unscrubbed by itself."""
    try:
        try:
            raise OSError(f"cannot open '{NAME}.dcm'")
        except OSError as exc:
            raise RuntimeError(describe(exc)) from exc
    except RuntimeError:
        record = logging.LogRecord("celery.app.trace", logging.INFO, __file__, 1,
                                   "Task %s retry: %s", ("umsrep.process_study", "…"),
                                   exc_info=sys.exc_info())
    assert logs.scrub_record(record)
    line = ColorFormatter(use_color=False).format(record)
    assert "SMITH" not in line
    assert "OSError: cannot open '…'" in line and "Task umsrep.process_study retry" in line


def test_pynetdicom_does_not_repeat_what_the_sender_reports(
        node_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    """A delivery retry logged two pynetdicom ERROR lines besides the outbox's own."""
    logs.setup()
    transport = logging.getLogger("pynetdicom.transport")
    transport.error("Association request failed: unable to connect to remote")
    transport.error("TCP Initialisation Error: [Errno 111] Connection refused")
    logging.getLogger("pynetdicom.dul").error("Exception in DUL.run(), aborting association")
    err = capsys.readouterr().err
    assert "Association request failed" not in err and "TCP Initialisation" not in err
    assert "Exception in DUL.run(), aborting association" in err


@pytest.mark.parametrize(("flags", "shown"), [({}, False), ({"verbose": True}, True),
                                              ({"debug": True}, True)])
def test_other_libraries_info_lines_only_when_asked(node_logging: None,
                                                    capsys: pytest.CaptureFixture[str],
                                                    flags: dict[str, bool], shown: bool) -> None:
    logs.setup(**flags)
    logging.getLogger("pynetdicom.assoc").info("Requesting Association")
    logging.getLogger("highdicom.seg.sop").info("add plane position")
    logging.getLogger("pynetdicom.assoc").warning("Association Aborted")
    err = capsys.readouterr().err
    assert ("Requesting Association" in err) is shown and ("add plane" in err) is shown
    assert "Association Aborted" in err  # warnings always
