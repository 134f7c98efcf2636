"""The node and its workers on different hosts, with nothing shared but the network
(tests/hosts.py): the node host runs `umsrep serve` and Redis, each worker host a Celery worker
that sees neither the node's data directory nor its journal, only its broker and its HTTP API.
The hospital (this machine) sends with dcmtk storescu and receives in Orthanc.

What happens to a study when a worker host is killed mid-task, or cut off the network: the
node hears no heartbeat for `node.heartbeat_timeout_s`, gives the job to another worker, and
the study is processed and delivered once; the silent worker, back, ends nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import yaml

from pacs_node import samples
from pacs_node.journal import Journal, journal_path
from tests.conftest import ECHOSCU, STORESCU, UMSREP
from tests.e2e.conftest import Orthanc, wait_for
from tests.hosts import HOSPITAL, NODE, Host, Lab

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DICOM_PORT, API_PORT, REDIS_PORT = 11112, 8042, 6379
HEARTBEAT_TIMEOUT_S = 15  # the least the node accepts: a try beats every 5 s
TOKEN = "two-hosts-token-0123456789abcdef"


@dataclass
class Site:
    lab: Lab
    orthanc: Orthanc
    node_dir: Path

    def worker(self, n: int, cpus: str | None = None) -> subprocess.Popen[bytes]:
        """A Celery worker on worker host n: its config names the broker and a folder of its
        own; the node's API URL and its token file come by the environment."""
        host = self.lab.workers[n - 1]
        (host.root / "token").write_text(TOKEN)
        config = host.root / "worker.yaml"
        node = Lab.node_address(n)
        config.write_text(yaml.safe_dump({
            "broker": {"url": f"redis://{node}:{REDIS_PORT}/0"},
            "node": {"data_dir": str(host.root / "scratch")}}))
        log = host.root / "worker.log"
        proc = host.start([sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q",
                           "cxr", "-c", "1", "-l", "INFO", "-n", f"w{n}@%h"], log,
                          env={"UMSREP_CONFIG": str(config),
                               "UMSREP_NODE_URL": f"http://{node}:{API_PORT}",
                               "UMSREP_NODE_TOKEN_FILE": str(host.root / "token")},
                          cpus=cpus)
        wait_for(lambda: proc.poll() is not None or " ready." in log.read_text(), timeout=120)
        assert proc.poll() is None, log.read_text()
        return proc

    def send(self, files: list[Path], calling_ae: str = "HOSPITAL") -> None:
        sent = subprocess.run([STORESCU, "-aet", calling_ae, "-aec", "UMSREP", NODE,
                               str(DICOM_PORT), *map(str, files)], capture_output=True,
                              text=True, timeout=120)
        assert sent.returncode == 0, sent.stderr

    def studies(self) -> list[dict[str, Any]]:
        """`umsrep studies --json`, as an administrator on the node host reads it."""
        listed = subprocess.run([*UMSREP, "studies", "--data-dir", str(self.node_dir / "data"),
                                 "--json"], capture_output=True, text=True, timeout=60,
                                check=True)
        return list(json.loads(listed.stdout))

    def done(self) -> int:
        """Studies done, read in the journal as cheaply as a poll must be: `umsrep studies`
        five times a second took most of a core from the workers being timed (measured
        with it: 1.33x with a second host; without it, 1.9-2.0x)."""
        journal = Journal(journal_path(self.node_dir / "data"))
        try:
            return journal.state_counts().get("done", 0)
        finally:
            journal.close()

    def jobs(self) -> list[dict[str, Any]]:
        journal = Journal(journal_path(self.node_dir / "data"))
        try:
            return journal.jobs()
        finally:
            journal.close()

    def events(self, key: str) -> list[str]:
        journal = Journal(journal_path(self.node_dir / "data"))
        try:
            return [e["detail"] or e["state"] for e in journal.events(key)]
        finally:
            journal.close()

    def in_pacs(self, study_uid: str) -> dict[str, int]:
        """Instances of the study that Orthanc holds, by modality."""
        counts: dict[str, int] = {}
        for tags in self.orthanc.instances():
            if tags.get("StudyInstanceUID") == study_uid:
                counts[tags["Modality"]] = counts.get(tags["Modality"], 0) + 1
        return counts


@pytest.fixture
def site(orthanc: Orthanc, tmp_path: Path) -> Iterator[Site]:
    why_not = Lab.check()
    if why_not is not None:
        pytest.skip(why_not)
    lab = Lab(tmp_path / "hosts")
    try:
        lab.up(workers=2)
        node: Host = lab.node
        node_dir = node.root
        (node_dir / "token").write_text(TOKEN)
        redis = node.start(["redis-server", "--port", str(REDIS_PORT), "--bind", "0.0.0.0",
                            "--protected-mode", "no", "--save", "", "--appendonly", "no"],
                           node_dir / "redis.log")
        config = {
            "node": {"ae_titles": ["UMSREP"], "bind": "0.0.0.0", "port": DICOM_PORT,
                     "data_dir": str(node_dir / "data"), "callers": [{"host": HOSPITAL}],
                     "min_free_disk_mb": 0, "heartbeat_timeout_s": HEARTBEAT_TIMEOUT_S},
            "broker": {"url": f"redis://127.0.0.1:{REDIS_PORT}/0"},
            "api": {"port": API_PORT, "bind": "0.0.0.0", "token_file": str(node_dir / "token")},
            "destinations": {"pacs": {"ae_title": "ORTHANC", "host": HOSPITAL,
                                      "port": orthanc.dicom_port}},
            "routing": {"quiet_seconds": 1, "rules": [
                # what a caller HEAVY sends is denoised too: seconds of compute per image
                {"name": "chest-denoised", "match": {"calling_ae": ["HEAVY"]},
                 "process": {"pipeline": "cxr", "outputs": ["seg", "sr", "denoised"],
                             "destinations": ["pacs"]}},
                {"name": "chest", "match": {"modality": ["CR", "DX"]},
                 "process": {"pipeline": "cxr", "destinations": ["pacs"]}}]},
        }
        (node_dir / "node.yaml").write_text(yaml.safe_dump(config))
        serve = node.start([*UMSREP, "serve", "--config", str(node_dir / "node.yaml")],
                           node_dir / "node.log")
        wait_for(lambda: redis.poll() is not None or serve.poll() is not None or
                 subprocess.run([ECHOSCU, "-aet", "HOSPITAL", "-aec", "UMSREP", NODE,
                                 str(DICOM_PORT)], capture_output=True).returncode == 0,
                 timeout=60)
        assert redis.poll() is None and serve.poll() is None, (node_dir / "node.log").read_text()
        yield Site(lab, orthanc, node_dir)
    finally:
        lab.down()


def chest_study(out: Path, seed: int, count: int, size: int = 512) -> tuple[list[Path], str]:
    files = samples.write_study(out, "cr", seed, count, rows=size, columns=size)
    return files, str(pydicom.dcmread(files[0]).StudyInstanceUID)


def test_a_worker_host_that_sees_only_the_network_returns_the_results_to_the_pacs(
        site: Site, tmp_path: Path) -> None:
    worker_host = site.lab.workers[0]
    site.worker(1)
    assert worker_host.run(["ls", "-A", str(site.node_dir)]).stdout == ""  # nothing of the node's
    assert (site.node_dir / "data" / "journal.db").exists()  # which the node host has
    files, study_uid = chest_study(tmp_path / "cr", 31, 2, size=256)
    site.send(files)
    wait_for(lambda: site.in_pacs(study_uid) == {"SEG": 2, "SR": 2}, timeout=180)
    [study] = site.studies()
    assert study["state"] == "done" and len(study["findings"]) == 2
    assert set(study["stages"]) >= {"inference", "writing"}  # timed by the worker, remotely
    assert site.in_pacs(study_uid) == {"SEG": 2, "SR": 2}
    scratch = worker_host.root / "scratch"
    assert not (scratch / "journal.db").exists()
    assert not list(scratch.rglob("*.dcm"))  # the instances it fetched went with the task


@pytest.mark.parametrize("fault", ["killed", "cut off the network"])
def test_a_worker_host_lost_mid_task_loses_nothing_and_the_study_is_done_once(
        site: Site, tmp_path: Path, fault: str, fault_table: Any) -> None:
    first = site.worker(1)
    files, study_uid = chest_study(tmp_path / "cr", 32, 8)
    site.send(files)
    key = wait_for(lambda: next((j["study_key"] for j in site.jobs()
                                 if j["state"] == "processing"), None), timeout=120)
    host = site.lab.workers[0]
    lost_at = time.monotonic()
    if fault == "killed":
        host.kill(first)  # the whole worker, its main process too: nothing gives it back
    else:
        host.cut()
    assert [j["state"] for j in site.jobs()] == ["processing"]  # caught mid-task
    site.worker(2)  # a second host takes what the first one held, once the node gives it up
    wait_for(lambda: site.studies()[0]["state"] == "done", timeout=180)
    recovered_s = time.monotonic() - lost_at
    wait_for(lambda: site.in_pacs(study_uid) == {"SEG": 8, "SR": 8}, timeout=60)
    if fault != "killed":
        host.mend()  # the first host is back, its worker alive: it ends nothing more
        time.sleep(HEARTBEAT_TIMEOUT_S / 3)  # time for anything it might still send
        assert first.poll() is None
    events = site.events(key)
    assert events.count("job chest started") == 2
    assert any(e.startswith("no sign of life from the worker of job chest for 15 s")
               for e in events)
    assert events.count("job chest done") == 1
    [study] = site.studies()
    assert study["state"] == "done" and len(study["findings"]) == 8
    assert site.in_pacs(study_uid) == {"SEG": 8, "SR": 8}  # each output delivered once
    fault_table(f"a worker host {fault} mid-task (two hosts in network namespaces)",
                "no heartbeat: the node gives the job to the other host; the study done and "
                "delivered once", recovered_in_s=f"{recovered_s:.0f}",
                outputs_in_pacs="16 of 16")


class WorkerClock:
    """The CPU seconds of the worker hosts' programs (each in a session of its own:
    Host.start), sampled twenty times a second while a batch runs, reading only their own
    /proc entries: a scan of every process at that rate would take CPU from them."""

    def __init__(self, sessions: set[int]) -> None:
        self.pids = [int(stat.parent.name) for stat in Path("/proc").glob("[0-9]*/stat")
                     if (fields := _stat(stat)) and int(fields[3]) in sessions]
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            ticks = sum(sum(map(int, fields[11:13])) for pid in self.pids
                        if (fields := _stat(Path(f"/proc/{pid}/stat"))))
            self.samples.append((time.time(), ticks / os.sysconf("SC_CLK_TCK")))
            self._stop.wait(0.05)

    def cores(self, start: float, end: float) -> float:
        """Cores the workers kept busy from `start` to `end` (times of the node's clock)."""
        self._stop.set()
        self._thread.join()
        at, seconds = zip(*self.samples, strict=True)
        return float(np.interp(end, at, seconds) - np.interp(start, at, seconds)) / (end - start)


def _stat(path: Path) -> list[str]:
    """The fields of a /proc/PID/stat after the command's name (state first); none once the
    process has ended."""
    try:
        return path.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def test_a_second_worker_host_shares_the_batches(site: Site, tmp_path: Path,
                                                 fault_table: Any) -> None:
    """Studies per hour (one 2048 x 2048 CR each: SEG and SR, then SEG, SR and a denoised
    image) with one worker host, then two (a core of its own each, their models loaded before
    the clock starts): reported, not asserted (timings are bench/'s to judge); asserted: both
    hosts work, and each study is done and delivered once. Beside them, the cores that the
    workers kept busy: what the node, Redis, Orthanc and the test take of this machine's
    cores, the workers lack."""
    sent, workers = 0, set[int]()

    def batch(count: int, caller: str = "HOSPITAL") -> tuple[float, float]:
        """Studies per hour from the batch complete (sent in one association: each single-CR
        study completes at its release) to its last job done, as the node's journal says;
        and the cores the workers kept busy meanwhile."""
        nonlocal sent
        studies = [chest_study(tmp_path / f"cr{sent + n}", 100 + sent + n, 1, size=2048)
                   for n in range(count)]
        sent += count
        clock = WorkerClock(workers)
        site.send([f for files, _ in studies for f in files], calling_ae=caller)
        wait_for(lambda: site.done() == sent, timeout=600)
        for _, study_uid in studies:
            wait_for(lambda uid=study_uid: (found := site.in_pacs(uid)).get("SEG") == 1 and
                     found.get("SR") == 1 and sum(found.values()) == 2 + (caller == "HEAVY"),
                     timeout=60)
        journal = Journal(journal_path(site.node_dir / "data"))
        try:
            keys = [s.study_key for s in journal.studies()][-count:]
            events = [e for key in keys for e in journal.events(key)]
        finally:
            journal.close()
        start = min(e["at"] for e in events if e["state"] == "complete")
        end = max(e["at"] for e in events if e["state"] == "done")
        return count * 3600 / (end - start), clock.cores(start, end)

    def started(host: int) -> int:
        log = (site.lab.workers[host - 1].root / "worker.log").read_text()
        return len(re.findall(r"job chest(?:-denoised)? started", log))

    workers.add(site.worker(1, cpus="0").pid)
    batch(1)  # its model loaded
    one = (batch(16), batch(8, "HEAVY"))
    workers.add(site.worker(2, cpus="1").pid)
    while not started(2):  # both idle: a study goes to each, until the second has had one
        batch(2)
    before = started(2)
    two = (batch(16), batch(8, "HEAVY"))
    took = [started(1), started(2)]
    assert sum(took) == sent and took[1] > before, took  # each study once; both hosts worked
    fault_table("studies with one worker host, then with two (a core each): 16 with SEG and "
                "SR, 8 denoised too", "shared between the hosts, each study done and delivered "
                "once", studies_per_host="/".join(map(str, took)),
                studies_per_hour=f"{one[0][0]:.0f} and {one[1][0]:.0f} denoised with one "
                                 f"host, {two[0][0]:.0f} and {two[1][0]:.0f} with two",
                two_hosts_give=f"{two[0][0] / one[0][0]:.2f}x and {two[1][0] / one[1][0]:.2f}x",
                worker_cores_busy=f"{one[0][1]:.2f} and {one[1][1]:.2f} with one host, "
                                  f"{two[0][1]:.2f} and {two[1][1]:.2f} with two",
                # the same with cores of their own: what the scaling is, this machine aside
                per_busy_worker_core=f"{one[0][0] / one[0][1]:.0f} and "
                                     f"{one[1][0] / one[1][1]:.0f} with one host, "
                                     f"{two[0][0] / two[0][1]:.0f} and "
                                     f"{two[1][0] / two[1][1]:.0f} with two")
