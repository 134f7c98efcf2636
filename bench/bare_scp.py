"""The reference "bare pynetdicom SCP" of the receiving benchmark.

An AE accepting every storage SOP class in every transfer syntax pynetdicom knows, whose
C-STORE handler only writes what arrived (preamble, file meta, the dataset's bytes as
received: no decode) to DIR/<SOPInstanceUID>.dcm, flushes, fsyncs and answers Success.
No journal, no temporary file and rename, no checks beyond a UID that is safe as a name.
It is the floor umsrep's own SCP is compared with.

    python bench/bare_scp.py PORT DIR [--max-pdu N] [--ae-title BARE]

Prints one line "listening on PORT" when ready; stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dsutils import encode_file_meta

VERIFICATION = "1.2.840.10008.1.1"  # the Verification SOP class (C-ECHO)
UMSREP_DEFAULT_MAX_PDU = 4_194_304  # umsrep's node.max_pdu default
UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
SUCCESS = 0x0000
CANNOT_UNDERSTAND = 0xC000  # a SOPInstanceUID not usable as a file name
OUT_OF_RESOURCES = 0xA700
PREAMBLE = b"\x00" * 128 + b"DICM"


def make_handler(out_dir: Path) -> Any:
    def handle_store(event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID or "").strip().rstrip("\0")
        if len(uid) > 64 or not UID.match(uid):
            return CANNOT_UNDERSTAND
        path = out_dir / f"{uid}.dcm"
        try:
            with open(path, "wb") as f:
                f.write(PREAMBLE + encode_file_meta(event.file_meta))
                f.write(event.request.DataSet.getbuffer())  # the bytes as received, no copy
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            return OUT_OF_RESOURCES
        return SUCCESS

    return handle_store


def build_ae(ae_title: str, max_pdu: int) -> AE:
    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = max_pdu
    ae.maximum_associations = 16
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(VERIFICATION, ALL_TRANSFER_SYNTAXES)
    return ae


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("port", type=int)
    parser.add_argument("dir", type=Path)
    parser.add_argument("--max-pdu", type=int, default=UMSREP_DEFAULT_MAX_PDU,
                        help=f"maximum PDU size we accept (default {UMSREP_DEFAULT_MAX_PDU}, "
                        "as umsrep; 0 = unlimited)")
    parser.add_argument("--ae-title", default="BARE")
    parser.add_argument("--bind", default="127.0.0.1")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING)
    args.dir.mkdir(parents=True, exist_ok=True)
    ae = build_ae(args.ae_title, args.max_pdu)
    server = ae.start_server((args.bind, args.port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, make_handler(args.dir))])
    assert server is not None  # block=False returns the server
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"listening on {server.server_address[1]}", flush=True)
    stop.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
