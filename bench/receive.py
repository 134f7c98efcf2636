"""Receiving throughput on loopback: umsrep serve vs a bare pynetdicom SCP vs dcmtk storescp.

dcmtk's /usr/bin/storescu sends the same N chest CR images (about 7.2 MB each, made once by
pacs_node.samples and cached) in one association to each server in turn; the send's
wall-clock time is measured and every file is checked to have arrived. Rounds interleave the
servers (the order rotates each round), so drifting machine load hits all of them alike.

    .venv/bin/python bench/receive.py [--count 60] [--repeat 3] [--json]

See bench/README.md for what is measured and the goals.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _harness import free_port, stop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
ECHOSCU = "/usr/bin/echoscu"
DCMTK_MAX_PDU = 131_072  # the largest PDU dcmtk will use, sending or receiving
SEED = 60_606
CALLING_AE = "BENCH"
SERVERS = ("storescp", "bare", "umsrep")
LABELS = {"storescp": "dcmtk storescp", "bare": "bare pynetdicom SCP", "umsrep": "umsrep serve"}
GOALS = {  # ratio name -> (numerator server, denominator server, goal)
    "umsrep vs bare pynetdicom": ("bare", "umsrep", 0.9),
    "umsrep vs storescp": ("storescp", "umsrep", 2.0),
}
UMSREP_CONFIG = """\
# Written by bench/receive.py: the packaged defaults, but a quiet period so long that no
# study completes (and nothing is processed) while the benchmark sends.
node:
  ae_titles: [UMSREP]
  bind: 127.0.0.1
  port: {port}
  data_dir: {data_dir}
  min_free_disk_mb: 100
destinations:
  results:
    folder: results
routing:
  apply: first
  quiet_seconds: 3600
  rules:
    - name: chest-xray
      match:
        modality: [CR, DX]
      process:
        pipeline: cxr
        outputs: [seg, sr]
        destinations: [results]
    - name: store-only
      ignore: {{}}
"""


class BenchError(Exception):
    pass


# --- input ----------------------------------------------------------------------------------


def prepare_inputs(cache: Path, count: int) -> list[Path]:
    """N CR images of one study, generated once: the files are deterministic, so a complete
    set in `cache` is reused."""
    from pacs_node import samples

    folder = cache / f"cr-s{SEED}-n{count}"
    expected = [folder / f"cr-s{SEED}-{n:04d}.dcm" for n in range(1, count + 1)]
    marker = folder / "complete"
    if marker.exists() and all(p.exists() for p in expected):
        return expected
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    paths = samples.write_study(folder, "cr", seed=SEED, count=count)
    marker.write_text(f"{count}\n")
    print(f"generated {count} CR images in {time.perf_counter() - start:.1f} s under {folder}",
          file=sys.stderr)
    return paths


# --- servers --------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    ae_title: str
    command: list[str]
    out_dir: Path  # where received objects end up
    count_received: Callable[[], int]
    env: dict[str, str] | None = None
    log: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def log_tail(self, lines: int = 8) -> str:
        if self.log is None or not self.log.exists():
            return ""
        text = self.log.read_text(errors="replace").strip().splitlines()
        return "\n".join(text[-lines:])


def count_files(folder: Path, pattern: str = "*") -> int:
    if not folder.exists():
        return 0
    return sum(1 for p in folder.rglob(pattern)
               if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".partial"))


def journal_instances(data_dir: Path) -> int:
    db = data_dir / "journal.db"
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute("SELECT COUNT(*) FROM instances").fetchone()
        return int(row[0])
    finally:
        conn.close()


def umsrep_command() -> list[str] | None:
    """How to start `umsrep`, or None where the CLI or its `serve` is not there yet."""
    venv_script = ROOT / ".venv" / "bin" / "umsrep"
    found = shutil.which("umsrep")
    command = [str(venv_script)] if venv_script.exists() else [found] if found else None
    if command is None:
        return None
    probe = subprocess.run([*command, "serve", "--help"], capture_output=True, text=True,
                           timeout=60, check=False)
    if probe.returncode != 0 or "--data-dir" not in probe.stdout:
        return None
    return command


def make_server(name: str, run_dir: Path, port: int, max_pdu: int,
                umsrep: list[str] | None) -> Server:
    out = run_dir / "out"
    out.mkdir(parents=True)
    log = run_dir / f"{name}.log"
    if name == "storescp":
        return Server(name, "STORESCP", [
            STORESCP, "-aet", "STORESCP", "--max-pdu", str(min(max_pdu, DCMTK_MAX_PDU)),
            "--output-directory", str(out), "--disable-host-lookup", "--accept-all",
            str(port)], out, lambda: count_files(out), log=log)
    if name == "bare":
        return Server(name, "BARE", [
            sys.executable, str(ROOT / "bench" / "bare_scp.py"), str(port), str(out),
            "--max-pdu", str(max_pdu), "--ae-title", "BARE"],
            out, lambda: count_files(out, "*.dcm"), log=log)
    if name == "umsrep":
        if umsrep is None:
            raise BenchError("not available (no `umsrep serve` yet)")
        config = run_dir / "umsrep.yaml"
        config.write_text(UMSREP_CONFIG.format(port=port, data_dir=out))

        def received() -> int:
            in_journal = journal_instances(out)
            in_spool = count_files(out / "spool", "*.dcm")
            return min(in_journal, in_spool)  # both: bytes spooled and the row committed

        return Server(name, "UMSREP", [
            *umsrep, "serve", "--config", str(config), "--port", str(port),
            "--ae-title", "UMSREP", "--data-dir", str(out)],
            out, received, log=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    raise BenchError(f"unknown server {name!r}")


def wait_ready(server: Server, port: int, timeout: float = 60.0) -> None:
    """Until the server answers a C-ECHO (association accepted: its AE is really up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.proc is not None
        if server.proc.poll() is not None:
            raise BenchError(f"exited with {server.proc.returncode} before it was ready:\n"
                             f"{server.log_tail()}")
        if listening(port):  # cheap first; closed again at once (storescp serves one peer)
            echo = subprocess.run(
                [ECHOSCU, "-aet", CALLING_AE, "-aec", server.ae_title, "-to", "5", "-ta", "5",
                 "127.0.0.1", str(port)], capture_output=True, timeout=30, check=False)
            if echo.returncode == 0:
                return
        time.sleep(0.1)
    raise BenchError(f"not ready after {timeout:.0f} s:\n{server.log_tail()}")


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def running(server: Server, port: int) -> Iterator[Server]:
    assert server.log is not None
    with open(server.log, "wb") as log:
        server.proc = subprocess.Popen(server.command, stdout=log, stderr=subprocess.STDOUT,
                                       env=server.env, start_new_session=True)
    try:
        wait_ready(server, port)
        yield server
    finally:
        stop(server.proc)


# --- one measurement ------------------------------------------------------------------------


def send(port: int, called_ae: str, files: list[Path], send_pdu: int) -> float:
    command = [STORESCU, "-aet", CALLING_AE, "-aec", called_ae,
               "--max-pdu", str(DCMTK_MAX_PDU), "--max-send-pdu", str(send_pdu),
               "127.0.0.1", str(port), *map(str, files)]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-6:])
        raise BenchError(f"storescu exited with {result.returncode}:\n{tail}")
    return elapsed


def measure(name: str, files: list[Path], *, work: Path, run_no: int, max_pdu: int,
            send_pdu: int, umsrep: list[str] | None) -> float:
    run_dir = work / f"{name}-{run_no}"
    port = free_port()
    server = make_server(name, run_dir, port, max_pdu, umsrep)
    try:
        with running(server, port):
            os.sync()  # start each run with no dirty pages left by the previous one
            elapsed = send(port, server.ae_title, files, send_pdu)
            received = server.count_received()
        if received != len(files):
            raise BenchError(f"{received} of {len(files)} instances stored\n{server.log_tail()}")
        return elapsed
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


# --- report ---------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    times: list[float] = field(default_factory=list)
    error: str | None = None

    def stat(self, fn: Callable[[list[float]], float]) -> float | None:
        return fn(self.times) if self.times and self.error is None else None

    @property
    def median(self) -> float | None:
        return self.stat(statistics.median)

    @property
    def best(self) -> float | None:
        return self.stat(min)


def ratios(results: dict[str, Result]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for label, (num, den, goal) in GOALS.items():
        a, b = results[num].median, results[den].median
        value = a / b if a is not None and b is not None else None
        out[label] = {"ratio": value, "goal": goal,
                      "pass": None if value is None else value >= goal,
                      "definition": f"{num} median / {den} median"}
    a, b = results["storescp"].median, results["bare"].median
    out["bare pynetdicom vs storescp (reference)"] = {
        "ratio": a / b if a is not None and b is not None else None, "goal": None,
        "pass": None, "definition": "storescp median / bare median"}
    return out


def report_json(results: dict[str, Result], files: list[Path], args: argparse.Namespace,
                total_bytes: int) -> dict[str, Any]:
    return {
        "count": len(files), "bytes": total_bytes, "repeat": args.repeat,
        "send_pdu": args.send_pdu, "max_pdu": args.max_pdu,
        "servers": {
            name: {"label": LABELS[name], "times_s": [round(t, 4) for t in r.times],
                   "min_s": r.best, "median_s": r.median,
                   "mb_per_s": total_bytes / 1e6 / r.median if r.median else None,
                   "error": r.error}
            for name, r in results.items()},
        "ratios": ratios(results),
    }


def report_text(data: dict[str, Any]) -> str:
    lines = [f"{data['count']} CR images, {data['bytes'] / 1e6:.0f} MB, dcmtk storescu in one "
             f"association (send PDU {data['send_pdu']}), {data['repeat']} rounds", ""]
    lines.append(f"{'server':<22} {'min s':>7} {'median s':>9} {'MB/s':>7}  runs")
    for s in data["servers"].values():
        if s["error"]:
            lines.append(f"{s['label']:<22} {'-':>7} {'-':>9} {'-':>7}  {s['error']}")
            continue
        runs = " ".join(f"{t:.2f}" for t in s["times_s"])
        lines.append(f"{s['label']:<22} {s['min_s']:>7.2f} {s['median_s']:>9.2f} "
                     f"{s['mb_per_s']:>7.0f}  {runs}")
    lines.append("")
    for label, r in data["ratios"].items():
        value = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        if r["goal"] is None:
            mark = ""
        else:
            verdict = {True: "PASS", False: "FAIL", None: "n/a"}[r["pass"]]
            mark = f"  goal >= {r['goal']:g}x  {verdict}"
        lines.append(f"{label:<40} {value:>7}{mark}   ({r['definition']})")
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="C-STORE receiving throughput: umsrep serve vs bare pynetdicom vs storescp",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            ratios are medians: bare/umsrep (goal >= 0.9) and storescp/umsrep (goal >= 2)"""))
    parser.add_argument("--count", type=int, default=60, help="images sent per run (60)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (3)")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help=f"comma-separated subset of {','.join(SERVERS)}")
    parser.add_argument("--cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "umsrep-bench-cache",
                        help="where the generated images are kept between runs")
    parser.add_argument("--work", type=Path, default=None,
                        help="parent of the servers' output folders (default: system temp); "
                        "use the disk umsrep will really write to")
    parser.add_argument("--max-pdu", type=int, default=4_194_304,
                        help="max PDU of the bare SCP (umsrep's default, 4194304); storescp "
                        f"is capped at {DCMTK_MAX_PDU}")
    parser.add_argument("--send-pdu", type=int, default=DCMTK_MAX_PDU,
                        help=f"storescu --max-send-pdu, same for all servers ({DCMTK_MAX_PDU})")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--check", action="store_true",
                        help="exit 3 when a goal is missed (and 1 when a server failed)")
    args = parser.parse_args(argv)

    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SERVERS))
    if unknown or not names:
        parser.error(f"unknown servers {unknown} (known: {', '.join(SERVERS)})")
    for tool in (STORESCU, ECHOSCU, *([STORESCP] if "storescp" in names else [])):
        if not Path(tool).exists():
            print(f"receive.py: {tool} not found (install dcmtk)", file=sys.stderr)
            return 2

    files = prepare_inputs(args.cache, args.count)
    total_bytes = sum(p.stat().st_size for p in files)
    results = {n: Result(n) for n in SERVERS}
    for n in SERVERS:
        if n not in names:
            results[n].error = "not run"
    umsrep = umsrep_command() if "umsrep" in names else None
    if "umsrep" in names and umsrep is None:
        results["umsrep"].error = "not available (no `umsrep serve` yet)"
    active = [n for n in names if results[n].error is None]

    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="umsrep-bench-", dir=args.work))
    try:
        for round_no in range(args.repeat):
            k = round_no % len(active) if active else 0
            for name in active[k:] + active[:k]:
                if results[name].error is not None:
                    continue
                try:
                    elapsed = measure(name, files, work=work, run_no=round_no,
                                      max_pdu=args.max_pdu, send_pdu=args.send_pdu,
                                      umsrep=umsrep)
                except (BenchError, subprocess.TimeoutExpired) as exc:
                    lines = str(exc).strip().splitlines() or [type(exc).__name__]
                    summary = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"
                    results[name].error = f"FAILED: {summary}"
                    print(f"{LABELS[name]}: {exc}", file=sys.stderr)
                    continue
                results[name].times.append(elapsed)
                if not args.json:
                    print(f"round {round_no + 1}: {LABELS[name]:<20} {elapsed:6.2f} s",
                          file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    data = report_json(results, files, args, total_bytes)
    print(json.dumps(data, indent=2) if args.json else report_text(data))
    if args.check:
        if any(results[n].error and results[n].error != "not run" for n in SERVERS):
            return 1
        if any(r["pass"] is False for r in data["ratios"].values()):
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
