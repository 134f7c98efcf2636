"""The `umsrep` command line: exit codes, one clear line per error, small commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pacs_node.cli import main
from pacs_node.journal import Journal
from tests.unit.test_journal import add

UMSREP = [sys.executable, "-m", "pacs_node.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*UMSREP, *args], capture_output=True, text=True, timeout=60)


def test_broken_config_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("node:\n  port: nope\n")
    result = run("serve", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.startswith(f"umsrep: error: {config}:2: node.port:")
    assert "Traceback" not in result.stderr


def test_studies_on_an_empty_data_dir(tmp_path: Path) -> None:
    result = run("studies", "--data-dir", str(tmp_path))
    assert result.returncode == 0 and "nothing received yet" in result.stdout


def test_retry_puts_failed_items_back(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    key = add(journal, "1.2.3.1.1")
    journal.enqueue(key, "pacs", [Path("/s/a")])
    journal.send_failed(journal.due()[0].id, "refused", retry_at=None)
    journal.close()
    result = run("retry", "--data-dir", str(tmp_path), "--destination", "pacs")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("1 failed item(s) queued again")
    assert [o["state"] for o in Journal(tmp_path / "journal.db").outbox()] == ["pending"]


def test_echo_to_nobody_fails_clearly() -> None:
    from tests.conftest import free_port

    result = run("echo", "127.0.0.1", str(free_port()))
    assert result.returncode == 6  # DeliveryError
    last = result.stderr.strip().splitlines()[-1]  # after pynetdicom's own error lines
    assert last.startswith("umsrep: error:") and "connection failed" in last
    assert "Traceback" not in result.stderr


def test_samples_write_a_new_study_each_time_unless_seeded(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def study(*seed: str) -> str:
        assert main(["samples", str(tmp_path / "s"), "--kind", "ct", *seed]) == 0
        return next(line for line in capsys.readouterr().out.splitlines()
                    if line.startswith("study "))

    assert study() != study()
    assert study("--seed", "7") == study("--seed", "7")


def test_studies_filter_by_state_age_and_route_and_show_findings(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal = Journal(tmp_path / "journal.db")
    chest = add(journal, "1.2.3.1.1", study="1.2.3")
    journal.set_state(chest, "done", route="chest-xray,archive")
    journal.note(chest, "findings", json.dumps({"label": "pneumonia", "probability": 0.82}))
    long_reason = "job chest-xray failed: InferenceError: " + "cannot decode pixel data, " * 4 + "."
    other = add(journal, "1.2.4.1.1", study="1.2.4")
    journal.set_state(other, "failed", route="echo", reason=long_reason)
    journal.close()

    def studies(*args: str) -> list[dict[str, Any]]:
        assert main(["studies", "--data-dir", str(tmp_path), "--json", *args]) == 0
        return list(json.loads(capsys.readouterr().out))

    assert [(s["study_key"], s["instances"]) for s in studies("--state", "done")] == [(chest, 1)]
    assert [s["study_key"] for s in studies("--state", "done", "--state", "failed")] == [
        chest, other]
    assert [s["study_key"] for s in studies("--route", "archive")] == [chest]
    assert len(studies("--since", "1h")) == 2
    assert studies("--state", "done")[0]["findings"] == [{"label": "pneumonia",
                                                          "probability": 0.82}]
    assert main(["studies", "--data-dir", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "pneumonia 0.82" in table and long_reason in table  # the reason whole
    with pytest.raises(SystemExit):
        main(["studies", "--data-dir", str(tmp_path), "--since", "yesterday"])
    assert "'yesterday' is no age" in capsys.readouterr().err
