"""Prometheus metrics of the node, served on node.metrics_port (loopback by default).

Counts of what the DICOM edge did are counters kept as it happens; what the journal holds
(studies by state, outbox items by state, jobs) is read from the journal at each scrape,
so that the metrics can never drift from the single source of truth.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pacs_node.journal import STATES, Journal

STORED = Counter("umsrep_instances_stored_total", "Instances stored (C-STORE Success)")
REFUSED = Counter("umsrep_instances_refused_total", "C-STORE requests refused", ["status"])
DUPLICATES = Counter("umsrep_instances_duplicate_total", "Instances received again with the "
                     "bytes already stored: acknowledged, stored once")
CONFLICTS = Counter("umsrep_instances_conflicting_total", "Instances received again with "
                    "other bytes than those stored: kept beside them")
STORE_SECONDS = Histogram("umsrep_store_seconds", "Time to check, spool and journal one "
                          "instance", buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5))
ASSOCIATIONS = Counter("umsrep_associations_total", "Associations ended", ["outcome"])
CONNECTIONS_CLOSED = Counter("umsrep_connections_closed_total", "Connections the node closed "
                             "itself: timeout, pdu_too_large, tls_handshake, pending_limit",
                             ["reason"])
ASSOCIATIONS_REJECTED = Counter("umsrep_associations_rejected_total", "A-ASSOCIATE requests "
                                "rejected: calling_ae, called_ae, limit", ["reason"])


class JournalCollector(Collector):
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def collect(self) -> Iterator[GaugeMetricFamily]:
        studies = GaugeMetricFamily("umsrep_studies", "Studies by state", labels=["state"])
        counts = self.journal.state_counts()
        for state in STATES:
            studies.add_metric([state], counts.get(state, 0))
        yield studies
        outbox = GaugeMetricFamily("umsrep_outbox_items", "Outbox items by state",
                                   labels=["destination", "state"])
        for destination, states in self.journal.outbox_counts().items():
            for state, count in states.items():
                outbox.add_metric([destination, state], count)
        yield outbox


def serve_metrics(journal: Journal, bind: str, port: int) -> None:
    REGISTRY.register(JournalCollector(journal))
    start_http_server(port, addr=bind)
