"""The deployment files say what the code reads: a worker host's config loads and names no
more than the broker and its scratch folder, its unit and the compose file give it the node's
API by the variables the worker reads, and no worker shares the node's data volume."""

from __future__ import annotations

from pathlib import Path

import yaml

from pacs_node.yamlconf import load_config
from workers.remote_journal import TOKEN_VARIABLE, URL_VARIABLE

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_a_worker_host_config_names_the_broker_and_its_own_folder_only() -> None:
    raw = yaml.safe_load((DEPLOY / "worker.yaml").read_text())
    assert set(raw) == {"broker", "node"} and set(raw["node"]) == {"data_dir"}
    config = load_config(DEPLOY / "worker.yaml")
    assert config.broker is not None and config.node.data_dir != Path("/var/lib/umsrep")


def test_worker_units_lead_to_the_node_api_and_share_no_data() -> None:
    unit = (DEPLOY / "systemd" / "umsrep-worker@.service").read_text()
    for variable in (URL_VARIABLE, TOKEN_VARIABLE):
        assert f"Environment={variable}=" in unit
    assert "UMSREP_CONFIG=/etc/umsrep/worker.yaml" in unit
    assert "/var/lib/umsrep\n" not in unit  # not the node's data directory
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    worker = services["worker"]
    assert {URL_VARIABLE, TOKEN_VARIABLE} <= set(worker["environment"])
    node_volumes = {v.split(":")[0] for v in services["node"]["volumes"]}
    shared = node_volumes & {v.split(":")[0] for v in worker.get("volumes", [])}
    assert shared <= {"./api-token"}, shared
