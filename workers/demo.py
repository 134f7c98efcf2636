"""`umsrep demo`: the whole product on the embedded default, in one command.

It starts a node on a free loopback port with no broker (the pipeline runs in the node's own
pool), writes sample studies (two real chest radiographs of NIH ChestX-ray8 from patients the
chest model never trained on, a CR labelled normal and a DX labelled pneumonia; a
mitral-inflow Doppler strip from the phantoms; a lateral chest view the rules only store; a
synthetic CR of a leg that names no body part, which the chest pipeline takes and skips as no
chest; a CT that is only stored), sends them over DICOM as a PACS would, waits until every
study has settled and its results are delivered, prints one line per finding (what was sent,
label, probability, measurements, or why there are none), and writes under OUT the DICOM
objects that came back (OUT/data/results) and PNG overlays of the masks (OUT/overlays).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom

from pacs_node import samples, sender
from pacs_node.config import Config
from pacs_node.node import Node
from pacs_node.yamlconf import load_config
from umsrep_core.evaluation.report import overlay
from umsrep_core.imaging.pixels import read_frames
from umsrep_core.phantoms.doppler import make_doppler
from umsrep_core.pipelines import pipeline

SETTLED = ("done", "failed", "ignored", "skipped")


def demo_studies(folder: Path) -> list[tuple[str, list[Path]]]:
    """What each study is, and its files."""
    # Seeds 0 and 1 draw the two real chests (samples.chest_image): normal, then pneumonia.
    normal, pneumonia = samples.chest_image(0), samples.chest_image(1)
    doppler = make_doppler(2, kind="mitral_inflow")
    us = samples.us_doppler_dataset(2, pixels=doppler.image, region=doppler.region)
    lateral = samples.cr_dataset(3, view="LL", rows=1024, columns=880)
    leg = samples.cr_dataset(5, pixels=leg_pixels(1024, 768), body_part="", view="")
    leg.Laterality = ""  # Type 2C, unknown: a part not named may be a paired one
    return [
        (f"CR chest PA, NIH {normal.label}", [samples.write(samples.cr_dataset(0),
                                                            folder / "cr.dcm")]),
        (f"DX chest PA, NIH {pneumonia.label}", [samples.write(samples.dx_dataset(1),
                                                               folder / "dx.dcm")]),
        ("US Doppler phantom", [samples.write(us, folder / "doppler.dcm")]),
        ("CR chest lateral", [samples.write(lateral, folder / "lateral.dcm")]),
        ("CR leg phantom", [samples.write(leg, folder / "leg.dcm")]),
        ("CT phantom", samples.write_study(folder / "ct", "ct", 4, count=3, rows=128,
                                           columns=128)),
    ]


def leg_pixels(rows: int, columns: int) -> np.ndarray:
    """A radiograph of a lower leg, roughly: air, soft tissue, a bone with a denser cortex."""
    x = np.abs(np.linspace(-1.0, 1.0, columns, dtype=np.float32))[None, :]
    bone = np.clip(1.0 - np.abs(x - 0.05) / 0.12, 0.0, 1.0)
    image = 0.05 + 0.3 * (x < 0.35) + 0.4 * (bone > 0) + 0.2 * ((bone > 0) & (bone < 0.3))
    return np.repeat(image, rows, axis=0).astype(np.float32)


def settled(node: Node, count: int) -> bool:
    studies = node.journal.studies()
    pending = any(o["state"] == "pending" for o in node.journal.outbox())
    return len(studies) == count and all(s.state in SETTLED for s in studies) and not pending


def findings(node: Node, key: str) -> list[dict[str, Any]]:
    return [json.loads(e["detail"]) for e in node.journal.events(key)
            if e["state"] == "findings"]


def summary(result: dict[str, Any]) -> str:
    """The measurements of a finding, then why any is missing."""
    return "; ".join([pipeline(str(result["modality"])).describe(result),
                      *(result.get("reasons") or [])])


def write_overlays(results: Path, spool_of: dict[str, str], out: Path) -> list[Path]:
    """Each SEG's masks over the image it segments, as PNG."""
    import matplotlib.image  # noqa: PLC0415 - only the demo draws

    written = []
    for path in sorted(results.rglob("SEG-*.dcm")):
        seg = hd.seg.segread(path)
        source_uid = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0] \
            .ReferencedSOPInstanceUID
        if source_uid not in spool_of:
            continue
        image = read_frames(pydicom.dcmread(spool_of[source_uid]))[0]
        pixels = seg.get_pixels_by_source_instance([source_uid])[0]  # rows x cols x segments
        masks = {seg.get_segment_description(n).segment_label: pixels[..., i] > 0
                 for i, n in enumerate(seg.segment_numbers)}
        out.mkdir(parents=True, exist_ok=True)
        target = out / f"{path.stem}.png"
        matplotlib.image.imsave(target, np.clip(overlay(image, masks), 0, 1))
        written.append(target)
    return written


def shown_reason(reason: str | None) -> str:
    """A study's reason without the UIDs it names, cut short for the table."""
    return re.sub(r"\d+(\.\d+)+: ", "", reason or "")[:160]


def run_demo(out: Path, timeout_s: float = 600.0) -> int:
    """Start a node on `out`/data, send it the sample studies, show what it did. Each run
    starts from an empty node: the last run's data and overlays are replaced."""
    for previous in (out / "data", out / "overlays"):
        shutil.rmtree(previous, ignore_errors=True)
    defaults = load_config(None)
    config = Config.model_validate({
        **defaults.model_dump(),
        "node": {**defaults.node.model_dump(), "port": 0, "data_dir": out / "data"},
        "routing": {**defaults.routing.model_dump(), "quiet_seconds": 2},
    })
    node = Node(config)
    node.start()
    try:
        studies = demo_studies(out / "sent")
        files = [f for _, study in studies for f in study]
        what = {pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID: name
                for name, paths in studies}
        print(f"sending {len(files)} files ({len(studies)} studies) to "
              f"UMSREP@127.0.0.1:{node.port} ...")
        results = sender.send_files("127.0.0.1", node.port, files, called_ae="UMSREP",
                                    calling_ae="DEMO")
        print(f"stored {sum(r.ok for r in results)} of {len(results)}; processing ...")
        deadline = time.monotonic() + timeout_s
        while not settled(node, len(studies)) and time.monotonic() < deadline:
            time.sleep(0.2)
        rows = []
        for study in node.journal.studies():
            found = findings(node, study.study_key) or [{}]
            for result in found:
                probability = result.get("probability")
                rows.append((study.route or "-", what.get(study.study_uid, "?"), study.state,
                             str(result.get("label") or "-"),
                             f"{probability:.2f}" if probability is not None else "-",
                             summary(result) if result else shown_reason(study.reason)))
        header = ("ROUTE", "STUDY", "STATE", "FINDING", "PROB", "MEASUREMENTS / REASON")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        folder = config.folder("results")
        assert folder is not None
        spool_of = {i.sop_instance_uid: i.path for i in node.journal.all_instances()}
        overlays = write_overlays(folder, spool_of, out / "overlays")
        print(f"\nDICOM results (SEG, SR): {folder}\n"
              f"mask overlays: {len(overlays)} PNG in {out / 'overlays'}\n"
              f"chest radiographs: {samples.ACKNOWLEDGEMENT}\n"
              "NOT FOR CLINICAL USE: research models (README, Models).")
        return 0 if settled(node, len(studies)) else 1
    finally:
        node.stop()
