"""Studies per hour through Celery workers: one worker process against two (CPU).

Each measurement starts its own redis-server (or uses --broker), a `umsrep serve` node with
that broker, and `celery -A workers.app worker -Q cxr -c N` configured as the node (UMSREP_CONFIG,
UMSREP_BROKER_URL). After N warm-up studies (one per process: every process loads its model
before the clock starts), dcmtk's storescu sends --count single-CR studies in one association;
they complete together when it ends (content rule: a single CR), and the clock runs from that
moment to the last job finished, as the journal records them. Rounds alternate the order.

    .venv/bin/python bench/throughput.py [--count 20] [--repeat 2] [--json]

See bench/README.md for what is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _harness import (
    BenchError,
    Node,
    celery_worker,
    node,
    node_config,
    query,
    redis_server,
    storescu,
    wait_until,
)

SEED = 80_800  # measured study n has seed SEED + n; warm-up studies come after them
RULE = {"name": "chest-xray", "match": {"modality": ["CR", "DX"]}, "complete_on_release": True,
        "process": {"pipeline": "cxr", "outputs": ["seg", "sr"], "destinations": ["results"]}}
DESTINATIONS = {"results": {"folder": "results"}}
DEFAULT = "default"


@dataclass
class Result:
    processes: int
    threads: str  # the workers' OMP_NUM_THREADS, or "default": theirs (cores / processes)
    windows: list[float] = field(default_factory=list)  # seconds for --count studies
    job_s: list[float] = field(default_factory=list)  # every measured job's own duration


def studies(cache: Path, first: int, count: int, rows: int, columns: int) -> list[Path]:
    """One single-CR study per seed, written once and kept between measurements."""
    from pacs_node import samples

    paths = []
    for seed in range(first, first + count):
        path = cache / f"cr-s{seed}-{rows}x{columns}.dcm"
        if not path.exists():
            samples.write(samples.cr_dataset(seed, rows=rows, columns=columns), path)
        paths.append(path)
    return paths


def study_uids(paths: list[Path]) -> list[str]:
    import pydicom

    return [str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in paths]


def jobs(served: Node, uids: list[str]) -> list[dict[str, Any]]:
    marks = ",".join("?" * len(uids))
    return query(served.data_dir,
                 "SELECT j.state, j.started_at, j.finished_at, j.error, e.at AS complete_at "
                 "FROM jobs j JOIN studies s USING (study_key) "
                 "JOIN events e ON e.study_key = s.study_key AND e.state = 'complete' "
                 f"WHERE s.study_uid IN ({marks})", tuple(uids))


def finished(served: Node, uids: list[str]) -> list[dict[str, Any]]:
    """Every study's job row once all have ended, else none; a failed job stops the run."""
    rows = jobs(served, uids)
    failed = [r["error"] for r in rows if r["state"] in ("failed", "skipped")]
    if failed:
        raise BenchError(f"{len(failed)} job(s) did not finish: {failed[0]}")
    done = len(rows) == len(uids) and all(r["state"] == "done" for r in rows)
    return rows if done else []


def process_all(served: Node, files: list[Path], timeout: float) -> list[dict[str, Any]]:
    uids = study_uids(files)
    storescu(served.port, files)
    return wait_until(lambda: finished(served, uids), timeout, f"{len(files)} studies done",
                      interval=0.1)


def measure(work: Path, setup: Result, files: list[Path], warmup: list[Path],
            broker: str | None) -> tuple[float, list[float]]:
    """(seconds from the studies' completion to the last job's end, each job's seconds)."""
    work.mkdir(parents=True)
    with redis_server(work) if broker is None else contextlib.nullcontext(broker) as url:
        config = node_config(work / "data", DESTINATIONS, RULE, broker=url)
        threads = {} if setup.threads == DEFAULT else {"OMP_NUM_THREADS": setup.threads}
        with node(work, config) as served, \
                celery_worker(work, served.config_path, url, setup.processes, env=threads):
            process_all(served, warmup, timeout=300)
            rows = process_all(served, files, timeout=60 + 30 * len(files))
    window = max(r["finished_at"] for r in rows) - min(r["complete_at"] for r in rows)
    return window, [r["finished_at"] - r["started_at"] for r in rows]


# --- report ---------------------------------------------------------------------------------


def summary(results: list[Result], count: int) -> dict[str, Any]:
    def per_hour(r: Result) -> float:
        return 3600 * count / statistics.median(r.windows)

    # busy: the share of the processes' time spent in jobs (1.0: never waiting for work)
    rows = {label(r): {"processes": r.processes, "threads": r.threads,
                       "studies_per_hour": per_hour(r),
                       "median_window_s": statistics.median(r.windows),
                       "windows_s": [round(w, 3) for w in r.windows],
                       "median_job_s": statistics.median(r.job_s),
                       "busy": sum(r.job_s) / (r.processes * sum(r.windows))}
            for r in results}
    by = {(r.processes, r.threads): r for r in results}
    ratios = {f"2 vs 1 process, threads {t}": per_hour(by[2, t]) / per_hour(by[1, t])
              for t in dict.fromkeys(r.threads for r in results)
              if (1, t) in by and (2, t) in by}
    return {"setups": rows, "ratios": ratios}


def label(r: Result) -> str:
    return f"-c {r.processes}, threads {r.threads}"


def report_text(data: dict[str, Any]) -> str:
    lines = [f"{data['count']} single-CR studies {data['rows']} x {data['columns']} per run, "
             f"{data['repeat']} rounds, Celery worker -Q cxr -c N, broker {data['broker']}", "",
             f"{'worker':<24} {'studies/h':>10} {'median s':>9} {'job s':>7} {'busy':>5}"
             "  runs s"]
    for name, r in data["setups"].items():
        runs = " ".join(f"{w:.2f}" for w in r["windows_s"])
        lines.append(f"{name:<24} {r['studies_per_hour']:>10.0f} {r['median_window_s']:>9.2f} "
                     f"{r['median_job_s']:>7.3f} {r['busy']:>5.0%}  {runs}")
    lines += [""] + [f"{name:<32} {ratio:.2f}x   (studies/h with -c 2 / with -c 1)"
                     for name, ratio in data["ratios"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20, help="studies per run (20)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds (2)")
    parser.add_argument("--processes", default="1,2", help="worker -c values (1,2)")
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--columns", type=int, default=1760)
    parser.add_argument("--threads", default=DEFAULT,
                        help="OMP_NUM_THREADS values of the workers, comma-separated: "
                        f"'{DEFAULT},1' compares the workers' own share of the cores with one "
                        f"thread ({DEFAULT})")
    parser.add_argument("--broker", default=None,
                        help="a Redis URL to use (default: a redis-server per run, free port)")
    parser.add_argument("--work", type=Path, default=None, help="parent of the work folder")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    counts = sorted({int(c) for c in args.processes.split(",")})
    if args.count < 1 or args.repeat < 1 or not counts or min(counts) < 1:
        parser.error("--count, --repeat and every --processes value must be at least 1")

    work = Path(tempfile.mkdtemp(prefix="umsrep-throughput-", dir=args.work))
    files = studies(work / "in", SEED, args.count, args.rows, args.columns)
    warmup = studies(work / "in", SEED + args.count, max(counts), args.rows, args.columns)
    results = [Result(c, t.strip()) for t in args.threads.split(",") for c in counts]
    try:
        for round_no in range(args.repeat):
            for n, r in enumerate(results if round_no % 2 == 0 else results[::-1]):
                window, job_s = measure(work / f"r{round_no}-{n}", r, files,
                                        warmup[:r.processes], args.broker)
                r.windows.append(window)
                r.job_s += job_s
                if not args.json:
                    print(f"round {round_no + 1}: {label(r)}: {args.count} studies in "
                          f"{window:.2f} s", file=sys.stderr)
    except BenchError as exc:
        print(f"throughput.py: {exc}\n(logs kept in {work})", file=sys.stderr)
        return 1
    shutil.rmtree(work, ignore_errors=True)
    data = {"count": args.count, "rows": args.rows, "columns": args.columns,
            "repeat": args.repeat, "broker": args.broker or "own redis-server",
            **summary(results, args.count)}
    print(json.dumps(data, indent=2) if args.json else report_text(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
