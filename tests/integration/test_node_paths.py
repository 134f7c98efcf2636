"""The node's other paths as a subprocess: forwarding through the outbox, TLS, reload, logs."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml

from pacs_node.config import TLS
from pacs_node.sender import send_files
from tests.conftest import free_port, node_config, storescu, wait_until
from umsrep_core.errors import DeliveryError

pytestmark = pytest.mark.integration

FORWARD_CT = {
    "apply": "first",
    "quiet_seconds": 0.5,
    "rules": [{"name": "ct-to-archive", "match": {"modality": ["CT"]},
               "forward": {"destinations": ["archive"]}},
              {"name": "rest", "ignore": {}}],
}


def archive(port: int) -> dict[str, Any]:
    return {"archive": {"ae_title": "STORESCP", "host": "127.0.0.1", "port": port}}


def studies(node: Any) -> list[dict[str, Any]]:
    listed = node.umsrep("studies", "--data-dir", str(node.data_dir), "--json")
    assert listed.returncode == 0, listed.stderr
    return list(json.loads(listed.stdout))


def test_forward_rule_delivers_once_even_when_the_study_is_sent_twice(
        serve: Any, storescp: Any, study_files: Any, tmp_path: Path) -> None:
    peer = storescp()
    config = node_config(tmp_path / "data", 0, destinations=archive(peer.port),
                         routing=FORWARD_CT)
    node = serve(config)
    files = study_files("ct", count=3)
    assert storescu(node.port, files).returncode == 0
    wait_until(lambda: len(peer.stored()) == 3)
    assert set(peer.stored()) == {str(pydicom.dcmread(f).SOPInstanceUID) for f in files}
    first = wait_until(lambda: [s for s in studies(node) if s["outbox"] == {"sent": 3}])
    assert first[0]["state"] == "done" and first[0]["route"] == "ct-to-archive"

    assert storescu(node.port, files).returncode == 0  # the PACS sends the study again
    # The same bytes: acknowledged and counted, no new version, nothing queued twice.
    again = wait_until(lambda: [s for s in studies(node) if s["duplicates"] == 3])
    assert [(s["version"], s["conflicts"], s["outbox"]) for s in studies(node)] == [
        (1, 0, {"sent": 3})]
    assert again[0]["instances"] == 3 and len(list(peer.out.iterdir())) == 3


def test_unreachable_destination_keeps_items_pending_until_it_comes_up(
        serve: Any, storescp: Any, study_files: Any, tmp_path: Path) -> None:
    port = free_port()
    config = node_config(tmp_path / "data", 0, destinations=archive(port), routing=FORWARD_CT,
                         retry={"first_delay_s": 0.5, "max_delay_s": 1.0})
    node = serve(config)
    assert storescu(node.port, study_files("ct", count=2)).returncode == 0
    pending = wait_until(lambda: [s for s in studies(node)
                                  if s["outbox"].get("pending") == 2 and s["state"] == "done"])
    assert pending
    wait_until(lambda: "archive" in node.log() and "connection" in node.log().lower())
    peer = storescp(port=port)
    wait_until(lambda: len(peer.stored()) == 2, timeout=30)
    assert wait_until(lambda: [s for s in studies(node) if s["outbox"] == {"sent": 2}])


def test_tls_node_requires_a_client_certificate(serve: Any, study_files: Any, pki: Path,
                                               tmp_path: Path) -> None:
    server = {"cert": str(pki / "server.pem"), "key": str(pki / "server.key"),
              "ca": str(pki / "ca.pem")}
    node = serve(node_config(tmp_path / "data", 0, node={"tls": server}))
    files = study_files("cr")
    client = TLS(cert=pki / "client.pem", key=pki / "client.key", ca=pki / "ca.pem")
    results = send_files("127.0.0.1", node.port, files, called_ae="UMSREP", tls=client)
    assert [r.ok for r in results] == [True]
    rogue = TLS(cert=pki / "rogue.pem", key=pki / "rogue.key", ca=pki / "ca.pem")
    with pytest.raises(DeliveryError):
        send_files("127.0.0.1", node.port, files, called_ae="UMSREP", tls=rogue)
    assert storescu(node.port, files).returncode != 0  # no TLS at all


def test_sighup_reloads_rules_and_refuses_a_broken_file(serve: Any, study_files: Any,
                                                        tmp_path: Path) -> None:
    config = node_config(tmp_path / "data", 0, routing={**FORWARD_CT, "rules": [
        {"name": "keep-everything", "ignore": {}}]})
    node = serve(config)
    config["routing"]["rules"] = [{"name": "ct-renamed", "match": {"modality": ["CT"]},
                                   "ignore": {}}]
    node.config_path.write_text(yaml.safe_dump(config))
    node.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "routing reloaded: 1 rules" in node.log())
    assert storescu(node.port, study_files("ct")).returncode == 0
    assert wait_until(lambda: [s for s in studies(node) if s["route"] == "ct-renamed"])

    node.config_path.write_text("routing:\n  rules:\n    - name: broken\n      nope: 1\n")
    node.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "routing NOT reloaded" in node.log())
    assert "nope" in node.log() and node.proc.poll() is None
    assert storescu(node.port, study_files("ct", seed=2)).returncode == 0
    assert wait_until(lambda: len([s for s in studies(node) if s["route"] == "ct-renamed"]) == 2)


def test_json_logs_one_object_per_line(tmp_path: Path, study_files: Any) -> None:
    import subprocess
    import sys

    from tests.conftest import wait_for_port

    port = free_port()
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(node_config(tmp_path / "data", port)))
    proc = subprocess.Popen([sys.executable, "-m", "pacs_node.cli", "--log-json", "serve",
                             "--config", str(config_path)], stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port, proc=proc)
        assert storescu(port, study_files("cr")).returncode == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)  # the node finishes its running job first
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert {"ts", "level", "logger", "msg"} <= set(lines[0])
    assert any(line["msg"].startswith("association released") for line in lines)
    assert proc.returncode == 0


def test_association_and_pdu_limits(serve: Any, tmp_path: Path) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    node = serve(node_config(tmp_path / "data", 0,
                             node={"max_associations": 1, "max_pdu": 65536}))
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)

    def associate() -> Any:
        # A released association holds its slot until the node's side of it has ended.
        assoc = ae.associate("127.0.0.1", node.port, ae_title="UMSREP")
        return assoc if assoc.is_established else None

    first = wait_until(associate, timeout=5)  # the fixture's C-ECHO probe just released
    assert first.acceptor.maximum_length == 65536
    second = ae.associate("127.0.0.1", node.port, ae_title="UMSREP")
    assert second.is_rejected  # local limit exceeded, transient: the sender may retry
    first.release()
    wait_until(associate, timeout=5).release()


def test_no_config_runs_on_the_packaged_defaults_with_overrides(tmp_path: Path,
                                                                study_files: Any) -> None:
    import subprocess
    import sys

    from tests.conftest import wait_for_port

    port, data_dir = free_port(), tmp_path / "elsewhere"
    proc = subprocess.Popen([sys.executable, "-m", "pacs_node.cli", "serve", "--port", str(port),
                             "--data-dir", str(data_dir), "--ae-title", "OTHERAE"],
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        wait_for_port(port, proc=proc, echo_ae="OTHERAE")
        assert storescu(port, study_files("cr"), aec="OTHERAE").returncode == 0
        assert storescu(port, study_files("cr"), aec="UMSREP").returncode != 0
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)  # the node finishes its running job first
    assert f"listening on 127.0.0.1:{port} as OTHERAE" in err
    assert (data_dir / "journal.db").exists() and not (tmp_path / "umsrep-data").exists()


def test_prometheus_metrics_follow_the_journal(serve: Any, study_files: Any,
                                               tmp_path: Path) -> None:
    import urllib.request

    metrics_port = free_port()
    keep = {"quiet_seconds": 0.5, "rules": [{"name": "keep", "ignore": {}}]}
    node = serve(node_config(tmp_path / "data", 0, routing=keep,
                             node={"metrics_port": metrics_port}))
    assert storescu(node.port, study_files("ct", count=2)).returncode == 0
    assert storescu(node.port, study_files("cr")).returncode == 0

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                    timeout=10) as reply:
            return str(reply.read().decode())

    text = wait_until(lambda: (t := scrape()) and 'umsrep_studies{state="ignored"} 2.0' in t
                      and t)
    assert "umsrep_instances_stored_total 3.0" in text
    assert 'umsrep_associations_total{outcome="released"}' in text


def test_send_and_echo_commands_and_several_called_ae_titles(serve: Any, study_files: Any,
                                                             tmp_path: Path) -> None:
    # A rule on the called AE title: it matches the title the caller asked for, not the
    # node's first (which the journal recorded before).
    routing = {"quiet_seconds": 0.5, "rules": [
        {"name": "via-second", "match": {"called_ae": ["SECOND"]}, "ignore": {}}]}
    node = serve(node_config(tmp_path / "data", 0, node={"ae_titles": ["UMSREP", "SECOND"]},
                             routing=routing))
    folder = study_files("ct", count=3)[0].parent
    (folder / "notes.txt").write_text("not DICOM")
    sent = node.umsrep("send", "127.0.0.1", str(node.port), str(folder), "--aec", "SECOND")
    assert sent.returncode == 0, sent.stderr
    assert "skipped (not DICOM)" in sent.stdout and "sent 3 of 3 files" in sent.stdout
    def routed() -> list[Any]:
        listed = node.umsrep("studies", "--data-dir", str(node.data_dir), "--json").stdout
        return [s for s in json.loads(listed) if s["state"] != "receiving"]

    [study] = wait_until(routed)
    assert (study["state"], study["route"]) == ("ignored", "via-second")
    echo = node.umsrep("echo", "127.0.0.1", str(node.port))  # the defaults reach a node
    assert echo.returncode == 0 and "status 0x0000" in echo.stdout
    wrong = node.umsrep("echo", "127.0.0.1", str(node.port), "--aec", "THIRD")
    assert wrong.returncode == 6 and "umsrep: error:" in wrong.stderr
