"""`umsrep demo`: a node on the embedded default, sent sample studies over DICOM.

It starts a node on a free loopback port with its data under OUT/data, writes synthetic
chest CR, Doppler US and CT studies, sends them with the C-STORE SCU as a PACS would,
waits until each study has been routed and handled, and prints what the journal recorded.
"""

from __future__ import annotations

import time
from pathlib import Path

from pacs_node import samples, sender
from pacs_node.config import Config
from pacs_node.node import Node
from pacs_node.studies_cmd import format_table, study_report
from pacs_node.yamlconf import load_config

SETTLED = ("done", "failed", "ignored")
STUDIES = (("cr", 1), ("us_doppler", 1), ("ct", 3))


def run_demo(out: Path, timeout_s: float = 120.0) -> int:
    defaults = load_config(None)
    config = Config.model_validate({
        **defaults.model_dump(),
        "node": {**defaults.node.model_dump(), "port": 0, "data_dir": out / "data"},
        "routing": {**defaults.routing.model_dump(), "quiet_seconds": 2},
    })
    node = Node(config)
    node.start()
    try:
        files: list[Path] = []
        for seed, (kind, count) in enumerate(STUDIES):
            files += samples.write_study(out / "samples" / kind, kind, seed, count)
        print(f"sending {len(files)} files to UMSREP@127.0.0.1:{node.port} ...")
        results = sender.send_files("127.0.0.1", node.port, files, called_ae="UMSREP",
                                    calling_ae="DEMO")
        print(f"stored {sum(r.ok for r in results)} of {len(results)}; waiting for the node")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            studies = node.journal.studies()
            if len(studies) == len(STUDIES) and all(s.state in SETTLED for s in studies):
                break
            time.sleep(0.2)
        counts = node.journal.counts()
        reports = [study_report(node.journal, s, counts.get(s.study_key, 0), phi=False)
                   for s in node.journal.studies()]
        print(format_table(reports))
        print(f"\njournal and spool under {out / 'data'}; results (when workers are "
              f"installed) under {config.folder('results')}")
        settled = all(r["state"] in SETTLED for r in reports) and len(reports) == len(STUDIES)
        return 0 if settled else 1
    finally:
        node.stop()
