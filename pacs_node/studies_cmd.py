"""`umsrep studies`: what the journal knows of each study, without patient data by default;
filtered by state, age and route; each study's findings in the table and the JSON."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pydicom

from pacs_node.journal import Journal, Study, journal_path

PHI_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate")


def study_report(journal: Journal, study: Study, count: int, phi: bool) -> dict[str, Any]:
    # The first time each state was entered: the stage timings of the study.
    reached: dict[str, float] = {}
    resent = {"duplicate": 0, "conflict": 0}  # instances received again (scp: never over)
    # per image: label, probability, measurements (workers.pipeline); the last try's, where a
    # try that lost its job (its worker silent, then back) noted them too
    findings: dict[str, Any] = {}
    for event in journal.events(study.study_key):
        reached.setdefault(event["state"], event["at"])
        if event["state"] in resent:
            resent[event["state"]] += 1
        elif event["state"] == "findings":
            finding = json.loads(event["detail"])
            image = finding.get("sop_instance_uid", str(len(findings)))
            findings.pop(image, None)  # in the order of the last
            findings[image] = finding
    outbox: dict[str, int] = {}
    for item in journal.outbox(study.study_key):
        outbox[item["state"]] = outbox.get(item["state"], 0) + 1
    report: dict[str, Any] = {
        "study_key": study.study_key,
        "study_instance_uid": study.study_uid,
        "version": study.version,
        "state": study.state,
        "instances": count,
        "duplicates": resent["duplicate"],
        "conflicts": resent["conflict"],
        "route": study.route,
        "calling_ae": study.calling_ae,
        "reason": study.reason,
        "created_at": study.created_at,
        "last_instance_at": study.last_instance_at,
        "updated_at": study.updated_at,
        "purged_at": study.purged_at,  # its received instances removed by retention
        "timestamps": reached,
        "stages": journal.stage_seconds(study.study_key),  # load, inference... of its jobs
        "jobs": [{k: j[k] for k in ("route", "queue", "state", "started_at", "finished_at",
                                    "error")} for j in journal.jobs(study.study_key)],
        "outbox": outbox,
        "findings": list(findings.values()),
    }
    if phi and study.purged_at is None:
        instances = journal.instances(study.study_key)
        if instances:
            ds = pydicom.dcmread(instances[0].path, stop_before_pixels=True, force=True)
            report.update({k: str(ds.get(k, "")) for k in PHI_KEYWORDS})
    return report


def list_studies(data_dir: Path, *, as_json: bool = False, phi: bool = False,
                 states: list[str] | None = None, since: float | None = None,
                 route: str | None = None) -> int:
    """The studies, those in `states`, created after `since` (a time.time()) and routed by
    `route` (one of a study's rules) where given."""
    path = journal_path(data_dir)
    if not path.exists():
        print(f"no journal at {path}: nothing received yet")
        return 0
    journal = Journal(path)
    found, _ = journal.find(states=tuple(states or ()), since=since, route=route, limit=None)
    counts = journal.counts([s.study_key for s in found])
    reports = [study_report(journal, s, counts.get(s.study_key, 0), phi)
               for s in reversed(found)]  # oldest first
    journal.close()
    if as_json:
        print(json.dumps(reports, indent=2))
        return 0
    print(format_table(reports, phi))
    return 0


def finding_text(finding: dict[str, Any]) -> str:
    """`pneumonia 0.82`: an image's label and its probability."""
    probability = finding.get("probability")
    label = str(finding.get("label") or "-")
    return f"{label} {probability:.2f}" if isinstance(probability, float) else label


def _stage(report: dict[str, Any], start: str, end: str) -> str:
    t = report["timestamps"]
    return f"{t[end] - t[start]:.2f}" if start in t and end in t else "-"


def format_table(reports: list[dict[str, Any]], phi: bool = False) -> str:
    header = ["STUDY KEY", "STATE", "INST", "DUP", "CONFLICT", "ROUTE", "RECEIVED", "WAIT s",
              "QUEUE s", "RUN s", "INFER s", "OUTBOX", "FINDINGS", "REASON"]
    if phi:
        header[1:1] = ["PATIENT", "ID"]
    rows = []
    for r in reports:
        finished = next((s for s in ("done", "failed") if s in r["timestamps"]), "")
        row = [
            r["study_key"], r["state"], str(r["instances"]), str(r["duplicates"]),
            str(r["conflicts"]), r["route"] or "-",
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created_at"])),
            _stage(r, "receiving", "complete"), _stage(r, "queued", "processing"),
            _stage(r, "processing", finished) if finished else "-",
            f"{r['stages']['inference']:.2f}" if "inference" in r["stages"] else "-",
            " ".join(f"{k}:{v}" for k, v in sorted(r["outbox"].items())) or "-",
            ", ".join(finding_text(f) for f in r["findings"]) or "-",
            r["reason"] or "",  # whole: the last column
        ]
        if phi:
            row[1:1] = [r.get("PatientName", ""), r.get("PatientID", "")]
        rows.append(row)
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
             for line in [header, *rows]]
    return "\n".join(lines) if rows else "no studies"
