"""The deployment files say what the code reads: a worker host's config loads and names no
more than the broker and its scratch folder, its unit and the compose file give it the node's
API by the variables the worker reads, no worker shares the node's data volume, and the
Grafana dashboard asks for the metrics and labels the node and workers export, each one."""

from __future__ import annotations

import json
import re
import tempfile
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


def exported() -> dict[str, set[str]]:
    """Every sample name the node and its workers export, with its label names."""
    from prometheus_client.metrics import MetricWrapperBase

    from pacs_node import metrics as node_metrics
    from pacs_node.journal import Journal
    from workers import metrics as worker_metrics

    names: dict[str, set[str]] = {}
    for module in (node_metrics, worker_metrics):
        for metric in vars(module).values():
            if not isinstance(metric, MetricWrapperBase):
                continue
            labels = set(metric._labelnames)
            if metric._type == "counter":
                names[f"{metric._name}_total"] = labels
            elif metric._type == "histogram":
                names.update({f"{metric._name}_bucket": labels | {"le"},
                              f"{metric._name}_sum": labels, f"{metric._name}_count": labels})
    with tempfile.TemporaryDirectory() as folder:  # the gauges read from the journal
        journal = Journal(Path(folder) / "journal.db")
        for family in node_metrics.JournalCollector(journal).collect():
            names[family.name] = {"state"} if family.name == "umsrep_studies" else {
                "destination", "state"}
        journal.close()
    return names


def test_the_grafana_dashboard_asks_only_for_metrics_and_labels_we_export() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "umsrep.json").read_text())
    names = exported()
    asked = 0
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name in re.findall(r"\bumsrep_[a-z_]+", expr):
                assert name in names, f"{panel['title']}: {name} is exported by nobody"
                asked += 1
                labels = {label for group in re.findall(r"by \(([^)]*)\)|\{([^}]*)\}", expr)
                          for part in group if part
                          for label in re.findall(r"([a-z_]+)\s*(?:=~|=|,|$)", part)}
                assert labels <= names[name], (panel["title"], labels - names[name])
    assert asked >= len(dashboard["panels"])
    families = {n.removesuffix("_total").removesuffix("_bucket") for n in names
                if not n.endswith(("_sum", "_count"))}
    shown = {n.removesuffix("_total").removesuffix("_bucket")
             for p in dashboard["panels"] for t in p["targets"]
             for n in re.findall(r"\bumsrep_[a-z_]+", t["expr"])}
    assert families == shown, families ^ shown  # every metric has its panel
