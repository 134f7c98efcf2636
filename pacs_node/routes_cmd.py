"""`umsrep routes check` and `umsrep routes test`: validate rules, dry-run files through them.

Output names studies by UID and shows only routing attributes: never patient name, ID or
birth date. Files that cannot be read as DICOM are reported on stderr and skipped.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydicom import dcmread

from pacs_node import router
from pacs_node.attrs import InstanceAttrs, extract
from pacs_node.config import Config, Routing, Rule
from pacs_node.yamlconf import load_config
from umsrep_core.bundle_files import BundleError, read_manifest, resolve
from umsrep_core.errors import ConfigError

NO_RULE = "store only (no rule matched)"


def check(path: Path) -> int:
    """Validate a config file, and what it names: each process rule's bundle (there, and a
    model of its pipeline) and each folder destination (writable). Raises ConfigError."""
    config = load_config(path)
    problems = [*_bundle_problems(config), *_folder_problems(config)]
    if problems:
        raise ConfigError("\n".join(f"{path}: {problem}" for problem in problems))
    routing = config.routing
    rules = f"{len(routing.rules)} rule{'' if len(routing.rules) == 1 else 's'}"
    print(f"OK: {path}: {rules} (apply: {routing.apply}), "
          f"destinations: {', '.join(config.destinations) or 'none'}")
    return 0


def _bundle_problems(config: Config) -> Iterator[str]:
    for rule in config.routing.rules:
        if rule.process is None:
            continue
        name = rule.process.bundle or rule.process.pipeline
        try:
            modality = read_manifest(resolve(name)).get("modality")
        except BundleError as exc:
            yield f"rule {rule.name!r}: {exc}"
            continue
        if modality != rule.process.pipeline:
            yield (f"rule {rule.name!r}: bundle {name} is a model for {modality!r}, the "
                   f"pipeline is {rule.process.pipeline!r}")


def _folder_problems(config: Config) -> Iterator[str]:
    for name in config.destinations:
        folder = config.folder(name)
        if folder is None:
            continue
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        if not (existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)):
            yield f"destination {name!r}: {folder} cannot be written ({existing} is not a " \
                  "writable folder)"


def test(config_path: Path | None, paths: list[Path], as_json: bool = False,
         calling_ae: str = "", called_ae: str | None = None) -> int:
    """Route the studies in DICOM files and folders as the node would, sending nothing.

    `calling_ae` stands for the sender's title, `called_ae` for the one it calls (default:
    the node's first).
    """
    config = load_config(config_path)
    studies = _read_studies(paths, calling_ae, called_ae or config.node.ae_titles[0])
    reports = [_report(config.routing, uid, attrs) for uid, attrs in studies.items()]
    if as_json:
        print(json.dumps(reports, indent=2))
        return 0
    if not reports:
        print("no DICOM files found")
    for report in reports:
        _print(report)
    return 0


def _files(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            yield path
        else:
            _skipped(path, "not found")


def _read_studies(paths: list[Path], calling_ae: str, called_ae: str
                  ) -> dict[str, list[InstanceAttrs]]:
    studies: dict[str, list[InstanceAttrs]] = {}
    for file in _files(paths):
        try:
            ds = dcmread(file, stop_before_pixels=True, force=True)
            uid = str(ds.get("StudyInstanceUID") or "").strip()
            attrs = extract(ds, calling_ae, called_ae)
        except Exception as exc:  # force=True reads any bytes: garbage fails in many ways
            _skipped(file, f"not DICOM ({type(exc).__name__})")
            continue
        if not uid:  # what force=True makes of a file that is no DICOM dataset
            _skipped(file, "not DICOM (no StudyInstanceUID)")
            continue
        studies.setdefault(uid, []).append(attrs)
    return studies


def _skipped(path: Path, why: str) -> None:
    print(f"skipped {path}: {why}", file=sys.stderr)


def _report(routing: Routing, uid: str, instances: list[InstanceAttrs]) -> dict[str, Any]:
    applied = router.route(routing, instances)
    return {
        "study_instance_uid": uid,
        "instances": len(instances),
        "modalities": sorted({i.modality for i in instances if i.modality}),
        "rules": [{"name": r.rule.name, "matched": r.matched, "reasons": r.reasons}
                  for r in router.evaluate(routing, instances)],
        "applied": [rule.name for rule in applied],
        "actions": [_action(rule) for rule in applied] or [NO_RULE],
    }


def _action(rule: Rule) -> str:
    if rule.process is not None:
        p = rule.process
        return (f"process pipeline {p.pipeline} ({', '.join(p.outputs)}) -> "
                f"{', '.join(p.destinations) or 'no destination'}")
    if rule.forward is not None:
        return f"forward -> {', '.join(rule.forward.destinations)}"
    return "ignore"


def _print(report: dict[str, Any]) -> None:
    count = report["instances"]
    print(f"study {report['study_instance_uid']}: {count} instance{'' if count == 1 else 's'}, "
          f"modalities: {', '.join(report['modalities']) or '(none)'}")
    width = max(len(r["name"]) for r in report["rules"]) if report["rules"] else 0
    for rule in report["rules"]:
        mark = "MATCH" if rule["matched"] else "no"
        first, *more = rule["reasons"]
        print(f"  {mark:<5} {rule['name']:<{width}}  {first}")
        for reason in more:  # one reason a line, aligned under the first
            print(f"  {'':<5} {'':<{width}}  {reason}")
    applied = report["applied"]
    actions = ([f"{name}: {action}" for name, action in
                zip(applied, report["actions"], strict=True)] if applied else [NO_RULE])
    for action in actions:
        print(f"  -> {action}")
    print()
