"""The journal: SQLite in WAL mode, the single source of truth of the node.

Studies (one row per version), their series and instances, every state change, the jobs
a study was queued for, the rejections at the DICOM edge, and the outbox of things to send.
Each write commits with synchronous=FULL, so a row is on disk before the caller goes on.
One connection per process, shared by threads under a lock.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacs_node.attrs import InstanceAttrs
from pacs_node.config import Process
from umsrep_core.errors import ClaimLost

STATES = ("receiving", "complete", "queued", "processing", "done", "failed", "ignored",
          "skipped", "discarded")
# A study left in one of these when the node stopped is picked up again at start.
IN_BETWEEN = ("receiving", "complete", "queued", "processing")
ENDED = ("done", "failed", "skipped", "ignored")
# What may be discarded: neither in routing nor with a job queued or running.
DISCARDABLE = ("receiving", *ENDED)

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_key TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    version INTEGER NOT NULL,
    state TEXT NOT NULL,
    route TEXT,
    reason TEXT,
    calling_ae TEXT,
    called_ae TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_instance_at REAL NOT NULL,
    purged_at REAL,  -- its received instances removed by retention
    UNIQUE (study_uid, version)
);
CREATE INDEX IF NOT EXISTS studies_state ON studies (state);
CREATE TABLE IF NOT EXISTS series (
    study_key TEXT NOT NULL REFERENCES studies (study_key),
    series_uid TEXT NOT NULL,
    modality TEXT,
    series_description TEXT,
    body_part TEXT,
    PRIMARY KEY (study_key, series_uid)
);
CREATE TABLE IF NOT EXISTS instances (
    study_key TEXT NOT NULL REFERENCES studies (study_key),
    sop_instance_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    received_at REAL NOT NULL,
    attrs TEXT NOT NULL,
    PRIMARY KEY (study_key, sop_instance_uid)
);
-- holder(): a resent instance is looked up by its spool path, on the association's thread.
CREATE INDEX IF NOT EXISTS instances_path ON instances (path);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    study_key TEXT NOT NULL,
    at REAL NOT NULL,
    state TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS events_study ON events (study_key);
CREATE TABLE IF NOT EXISTS jobs (
    study_key TEXT NOT NULL REFERENCES studies (study_key),
    route TEXT NOT NULL,
    queue TEXT NOT NULL,
    process TEXT,  -- the rule's process settings (JSON) when the study was routed
    state TEXT NOT NULL,
    dispatched_at REAL,
    started_at REAL,
    finished_at REAL,
    error TEXT,
    claim TEXT,  -- the running try's, from start_job: a try given up on can end nothing
    heartbeat_at REAL,  -- the running try's last sign of life
    PRIMARY KEY (study_key, route)
);
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    calling_ae TEXT,
    peer TEXT,
    sop_instance_uid TEXT,
    status INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    study_key TEXT NOT NULL,
    destination TEXT NOT NULL,
    path TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    created_at REAL NOT NULL,
    sent_at REAL,
    UNIQUE (destination, path)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt_at);
CREATE TABLE IF NOT EXISTS paused_routes (
    route TEXT PRIMARY KEY,
    at REAL NOT NULL
);
"""


_STAGE_NOTE = re.compile(r"(\d+(?:\.\d+)?) s(?:,|$)")  # the detail note_stage writes
_KEYS_PER_QUERY = 500  # bound variables per query: old SQLite builds take at most 999


@dataclass(frozen=True)
class Study:
    study_key: str
    study_uid: str
    version: int
    state: str
    route: str | None
    reason: str | None
    created_at: float
    updated_at: float
    last_instance_at: float
    purged_at: float | None = None  # its received instances removed by retention
    calling_ae: str | None = None  # of the association that opened it


@dataclass(frozen=True)
class Instance:
    study_key: str
    sop_instance_uid: str
    series_uid: str
    sop_class_uid: str
    transfer_syntax: str
    path: str
    size: int
    received_at: float
    attrs: InstanceAttrs


@dataclass(frozen=True)
class OutboxItem:
    id: int
    study_key: str
    destination: str
    path: str
    attempts: int


def journal_path(data_dir: Path) -> Path:
    return data_dir / "journal.db"


def study_key(study_uid: str, version: int) -> str:
    return f"{study_uid}@{version}"


class Journal:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                   timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)  # idempotent; executescript manages its own commit
        # Columns a journal of an earlier version lacks: settings kept per job, claims, purges.
        for table, column, kind in (("jobs", "process", "TEXT"), ("jobs", "claim", "TEXT"),
                                    ("jobs", "heartbeat_at", "REAL"),
                                    ("studies", "purged_at", "REAL")):
            columns = {r["name"] for r in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in columns:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; IMMEDIATE so concurrent processes queue, not deadlock."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # --- ingest ----------------------------------------------------------------------------

    def add_instance(self, *, study_uid: str, series_uid: str, sop_instance_uid: str,
                     sop_class_uid: str, transfer_syntax: str, path: Path, size: int,
                     attrs: InstanceAttrs) -> str:
        """Record a received instance in the study's receiving version; returns its study key.

        A study whose latest version is past receiving is reopened as a new version, so an
        instance that arrives late is never dropped; unless nothing has been done for that
        version yet (queued, no job started, nothing sent): the late instance supersedes its
        routing, which is undone, and the version receives again (a sender's resend after a
        crash completes the partial study it left, rather than follow it). The same instance
        received again in the same version with other bytes (`path` then names them:
        spool.versions) replaces its row; with the same bytes it is not recorded again (the
        receiver notes a duplicate).
        """
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT study_key, version, state FROM studies WHERE study_uid = ? "
                "ORDER BY version DESC LIMIT 1", (study_uid,)).fetchone()
            if row is not None and self._unroute_if_untouched(db, row, now):
                row = db.execute("SELECT study_key, version, state FROM studies "
                                 "WHERE study_key = ?", (row["study_key"],)).fetchone()
            if row is not None and row["state"] == "receiving":
                key = str(row["study_key"])
                db.execute("UPDATE studies SET last_instance_at = ?, updated_at = ? "
                           "WHERE study_key = ?", (now, now, key))
            else:
                version = 1 if row is None else int(row["version"]) + 1
                key = study_key(study_uid, version)
                db.execute(
                    "INSERT INTO studies (study_key, study_uid, version, state, calling_ae, "
                    "called_ae, created_at, updated_at, last_instance_at) "
                    "VALUES (?, ?, ?, 'receiving', ?, ?, ?, ?, ?)",
                    (key, study_uid, version, attrs.calling_ae, attrs.called_ae, now, now, now))
                detail = "new study" if row is None else f"reopened after {row['study_key']}"
                self._event(db, key, "receiving", detail, now)
            db.execute(
                "INSERT OR REPLACE INTO series (study_key, series_uid, modality, "
                "series_description, body_part) VALUES (?, ?, ?, ?, ?)",
                (key, series_uid, attrs.modality, attrs.series_description, attrs.body_part))
            db.execute(
                "INSERT OR REPLACE INTO instances (study_key, sop_instance_uid, series_uid, "
                "sop_class_uid, transfer_syntax, path, size, received_at, attrs) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, sop_instance_uid, series_uid, sop_class_uid, transfer_syntax, str(path),
                 size, now, json.dumps(attrs.to_json())))
        return key

    def _unroute_if_untouched(self, db: sqlite3.Connection, row: sqlite3.Row,
                              now: float) -> bool:
        """Undo the routing of a queued version that nothing has been done for: its jobs
        (a message already sent finds none: start_job) and unsent outbox items go, and it
        receives again. Whether it did."""
        key = str(row["study_key"])
        if row["state"] != "queued":
            return False
        touched = db.execute(
            "SELECT (SELECT count(*) FROM jobs WHERE study_key = ? "
            "        AND (state != 'queued' OR started_at IS NOT NULL)) + "
            "       (SELECT count(*) FROM outbox WHERE study_key = ? "
            "        AND (state != 'pending' OR attempts > 0))", (key, key)).fetchone()[0]
        if touched:
            return False
        db.execute("DELETE FROM outbox WHERE study_key = ?", (key,))
        self._receive_again(db, key, now, "an instance arrived before any of its jobs "
                                          "started: routing undone, receiving again")
        return True

    def _receive_again(self, db: sqlite3.Connection, key: str, now: float, why: str) -> None:
        """A routed version back to receiving, its jobs gone, as if an instance arrived now:
        the assembler completes it after its quiet period, and it is routed anew."""
        db.execute("DELETE FROM jobs WHERE study_key = ?", (key,))
        db.execute("UPDATE studies SET state = 'receiving', route = NULL, reason = NULL, "
                   "updated_at = ?, last_instance_at = ? WHERE study_key = ?", (now, now, key))
        self._event(db, key, "receiving", why, now)

    def reject(self, *, calling_ae: str, peer: str, sop_instance_uid: str | None, status: int,
               reason: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO rejections (at, calling_ae, peer, sop_instance_uid, status, reason) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (time.time(), calling_ae, peer, sop_instance_uid, status, reason))

    def rejections(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._query("SELECT * FROM rejections ORDER BY id")]

    # --- studies ---------------------------------------------------------------------------

    @staticmethod
    def _event(db: sqlite3.Connection, key: str, state: str, detail: str | None,
               at: float) -> None:
        db.execute("INSERT INTO events (study_key, at, state, detail) VALUES (?, ?, ?, ?)",
                   (key, at, state, detail))

    def set_state(self, key: str, state: str, *, reason: str | None = None,
                  route: str | None = None, expect: tuple[str, ...] | None = None) -> bool:
        """Move a study to `state`; with `expect`, only from one of those states.

        Returns whether the study moved, so that two threads racing for the same
        transition (the quiet timer and an association release) do it once.
        """
        assert state in STATES, state
        now = time.time()
        with self._tx() as db:
            sql = "UPDATE studies SET state = ?, updated_at = ?, reason = COALESCE(?, reason), " \
                  "route = COALESCE(?, route) WHERE study_key = ?"
            args: tuple[Any, ...] = (state, now, reason, route, key)
            if expect:
                sql += f" AND state IN ({','.join('?' * len(expect))})"
                args += expect
            moved = db.execute(sql, args).rowcount == 1
            if moved:
                self._event(db, key, state, reason, now)
        return moved

    def reprocess(self, key: str) -> bool:
        """A study version that ended (done, failed, skipped, ignored) receives again, its
        jobs gone: a node completes it after its quiet period and routes it by the rules it
        has then. Outputs already delivered are not sent again (the outbox sends a file to a
        destination once). Whether it was one that had ended."""
        with self._tx() as db:
            row = db.execute("SELECT state, purged_at FROM studies WHERE study_key = ?",
                             (key,)).fetchone()
            if row is None or row["state"] not in ENDED or row["purged_at"] is not None:
                return False
            self._receive_again(db, key, time.time(),
                                "reprocessing asked: routed again when complete")
        return True

    def note(self, key: str, step: str, detail: str | None = None) -> None:
        """Record a step of a study's work that is not a state change (timings, outcomes)."""
        with self._tx() as db:
            self._event(db, key, step, detail, time.time())

    def note_stage(self, key: str, stage: str, seconds: float, more: str = "") -> None:
        """Record how long a stage of a study's job took ("<seconds> s[, <more>]")."""
        self.note(key, stage, f"{seconds:.3f} s" + (f", {more}" if more else ""))

    def stage_seconds(self, key: str, since: float = 0.0) -> dict[str, float]:
        """Seconds per stage noted by note_stage at or after `since`, summed per stage."""
        totals: dict[str, float] = {}
        for event in self.events(key):
            match = _STAGE_NOTE.match(event["detail"] or "")
            if match and event["at"] >= since:
                totals[event["state"]] = totals.get(event["state"], 0.0) + float(match[1])
        return totals

    def study(self, key: str) -> Study | None:
        rows = self._query("SELECT * FROM studies WHERE study_key = ?", (key,))
        return _study(rows[0]) if rows else None

    def latest(self, study_uid: str) -> Study | None:
        """The study's latest version."""
        rows = self._query("SELECT * FROM studies WHERE study_uid = ? ORDER BY version DESC "
                           "LIMIT 1", (study_uid,))
        return _study(rows[0]) if rows else None

    def studies(self, states: tuple[str, ...] | None = None) -> list[Study]:
        if states:
            marks = ",".join("?" * len(states))  # placeholders only: values stay bound
            rows = self._query(
                f"SELECT * FROM studies WHERE state IN ({marks}) ORDER BY created_at",  # noqa: S608
                states)
        else:
            rows = self._query("SELECT * FROM studies ORDER BY created_at")
        return [_study(r) for r in rows]

    def instances(self, key: str) -> list[Instance]:
        rows = self._query("SELECT * FROM instances WHERE study_key = ? ORDER BY received_at",
                           (key,))
        return [Instance(**{**dict(r), "attrs": InstanceAttrs.from_json(json.loads(r["attrs"]))})
                for r in rows]

    def all_instances(self) -> list[Instance]:
        rows = self._query("SELECT study_key FROM studies ORDER BY created_at")
        return [i for r in rows for i in self.instances(r["study_key"])]

    def events(self, key: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self._query(
            "SELECT at, state, detail FROM events WHERE study_key = ? ORDER BY id", (key,))]

    def state_counts(self) -> dict[str, int]:
        return {r["state"]: r["n"] for r in self._query(
            "SELECT state, COUNT(*) AS n FROM studies GROUP BY state")}

    def job_counts(self) -> dict[str, int]:
        return {r["state"]: r["n"] for r in self._query(
            "SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")}

    def outbox_counts(self) -> dict[str, dict[str, int]]:
        """Outbox items per destination, per state."""
        counts: dict[str, dict[str, int]] = {}
        for r in self._query("SELECT destination, state, COUNT(*) AS n FROM outbox "
                             "GROUP BY destination, state"):
            counts.setdefault(r["destination"], {})[r["state"]] = r["n"]
        return counts

    def holder(self, path: Path) -> str | None:
        """The study key of the instance row that points at `path`, if one does."""
        rows = self._query("SELECT study_key FROM instances WHERE path = ? LIMIT 1",
                           (str(path),))
        return str(rows[0]["study_key"]) if rows else None

    def modalities(self, keys: Sequence[str]) -> dict[str, list[str]]:
        """The modalities of the series of each study of `keys`, sorted, for listing without
        loading every instance."""
        found: dict[str, list[str]] = {}
        for r in self._per_study("SELECT DISTINCT study_key, modality FROM series WHERE "
                                 "study_key IN ({}) AND modality IS NOT NULL AND "
                                 "modality != '' ORDER BY modality", keys):
            found.setdefault(r["study_key"], []).append(r["modality"])
        return found

    def counts(self, keys: Sequence[str]) -> dict[str, int]:
        """Instances per study of `keys`, for listing without loading every row."""
        return {r["study_key"]: r["n"] for r in self._per_study(
            "SELECT study_key, COUNT(*) AS n FROM instances WHERE study_key IN ({}) "
            "GROUP BY study_key", keys)}

    def _per_study(self, sql: str, keys: Sequence[str]) -> list[sqlite3.Row]:
        """`sql`, its `IN ({})` filled with `keys`, in chunks under SQLite's bound-variable
        limit. A listing asks for its page's studies only: over the whole journal the
        query would hold the lock that receiving instances waits for."""
        rows: list[sqlite3.Row] = []
        for at in range(0, len(keys), _KEYS_PER_QUERY):
            chunk = tuple(keys[at:at + _KEYS_PER_QUERY])
            rows += self._query(sql.format(", ".join("?" * len(chunk))), chunk)
        return rows

    # --- jobs ------------------------------------------------------------------------------

    def add_job(self, key: str, route: str, process: Process) -> None:
        """Queue the study for a rule's process, its settings kept as they are now: a reload
        that renames or changes the rule meanwhile changes nothing for this job."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO jobs (study_key, route, queue, process, state) "
                       "VALUES (?, ?, ?, ?, 'queued')",
                       (key, route, process.pipeline, process.model_dump_json()))

    def job_process(self, key: str, route: str) -> Process | None:
        """The process settings the job was queued with (None: queued by an older version)."""
        rows = self._query("SELECT process FROM jobs WHERE study_key = ? AND route = ?",
                           (key, route))
        stored = rows[0]["process"] if rows else None
        return Process.model_validate_json(stored) if stored else None

    def jobs_finished(self, since: float) -> list[dict[str, Any]]:
        """Jobs that ended after `since` (a time.time()), oldest first."""
        return [dict(r) for r in self._query(
            "SELECT * FROM jobs WHERE finished_at > ? ORDER BY finished_at", (since,))]

    def job_dispatched(self, key: str, route: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET dispatched_at = ? WHERE study_key = ? AND route = ?",
                       (time.time(), key, route))

    def jobs(self, key: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        """The jobs of study `key` (None: every study), in `state` (None: any)."""
        return [dict(r) for r in self._query(
            "SELECT * FROM jobs WHERE (? IS NULL OR study_key = ?) AND (? IS NULL OR state = ?)",
            (key, key, state, state))]

    def requeue_jobs(self) -> int:
        """Jobs queued or running when the node stopped go back to queued, to be dispatched
        again: a lost broker message or a killed in-process job is never a lost study."""
        with self._tx() as db:
            return db.execute(
                "UPDATE jobs SET state = 'queued', dispatched_at = NULL, started_at = NULL "
                "WHERE state IN ('queued', 'processing')").rowcount

    def lost_tries(self, key: str, route: str) -> int:
        """Tries of a job that started and never ended: no outcome and no retry noted after
        them (their process died). Read from the events that start_job, finish_job and
        retries write ("job ROUTE started", "job ROUTE done", "job ROUTE try 1 of 9...")."""
        lost, running = 0, False
        for event in self.events(key):
            detail = event["detail"] or ""
            if detail == f"job {route} started":
                lost, running = lost + running, True
            elif detail.startswith(f"job {route} "):
                running = False
        return lost + running

    def start_job(self, key: str, route: str) -> str | None:
        """Start a queued job (or one whose try died: redelivered) and return the new try's
        claim; None if there is no such job: its study received more before it started, and
        its routing was undone. A try whose claim was taken over ends nothing (finish_job)."""
        now, claim = time.time(), uuid.uuid4().hex
        with self._tx() as db:
            if not db.execute("UPDATE jobs SET state = 'processing', started_at = ?, "
                              "heartbeat_at = ?, claim = ?, error = NULL "
                              "WHERE study_key = ? AND route = ? "
                              "AND state IN ('queued', 'processing')",
                              (now, now, claim, key, route)).rowcount:
                return None
            self._set_study_from_jobs(db, key, now, f"job {route} started")
            return claim

    def heartbeat(self, key: str, route: str, claim: str) -> bool:
        """A running try is alive; False once its job is no longer its own."""
        with self._tx() as db:
            return bool(db.execute("UPDATE jobs SET heartbeat_at = ? WHERE study_key = ? AND "
                                   "route = ? AND claim = ? AND state = 'processing'",
                                   (time.time(), key, route, claim)).rowcount)

    def requeue_silent(self, timeout_s: float) -> list[tuple[str, str]]:
        """Jobs whose running try gave no sign of life for `timeout_s` (its worker killed,
        cut off the network, its host down) go back to queued, to be dispatched again; the
        silent try can no longer end them. Counted as a lost try (lost_tries)."""
        now = time.time()
        with self._tx() as db:
            silent = [(r["study_key"], r["route"]) for r in db.execute(
                "SELECT study_key, route FROM jobs WHERE state = 'processing' "
                "AND COALESCE(heartbeat_at, started_at) < ?", (now - timeout_s,))]
            for key, route in silent:
                db.execute("UPDATE jobs SET state = 'queued', claim = NULL, dispatched_at = NULL,"
                           " started_at = NULL WHERE study_key = ? AND route = ?", (key, route))
                self._set_study_from_jobs(db, key, now, f"no sign of life from the worker of "
                                                        f"job {route} for {timeout_s:.0f} s: "
                                                        "queued again")
        return silent

    def finish_job(self, key: str, route: str, error: str | None = None,
                   skipped: str | None = None, claim: str | None = None) -> None:
        """End a job: done, failed with `error`, or skipped for the reason `skipped`. With the
        claim of the try that ends it: ClaimLost if the job is no longer that try's."""
        now = time.time()
        state = "failed" if error else "skipped" if skipped else "done"
        with self._tx() as db:
            if not db.execute("UPDATE jobs SET state = ?, finished_at = ?, error = ?, "
                              "claim = NULL WHERE study_key = ? AND route = ? "
                              "AND (? IS NULL OR (claim = ? AND state = 'processing'))",
                              (state, now, error or skipped, key, route, claim,
                               claim)).rowcount and claim is not None:
                raise ClaimLost(f"study {key}: job {route} was given to another try")
            detail = f"job {route} {state}" + (f": {error or skipped}" if state != "done" else "")
            self._set_study_from_jobs(db, key, now, detail)

    def _set_study_from_jobs(self, db: sqlite3.Connection, key: str, now: float,
                             detail: str) -> None:
        """The study's state follows its jobs: processing while any runs; then failed if one
        failed, skipped if every one was skipped, else done."""
        states = {r["state"] for r in db.execute(
            "SELECT state FROM jobs WHERE study_key = ?", (key,))}
        if states & {"queued", "processing"}:
            state = "processing" if "processing" in states else "queued"
        elif "failed" in states:
            state = "failed"
        else:
            state = "skipped" if states == {"skipped"} else "done"
        reason = detail if state in ("failed", "skipped") else None
        db.execute("UPDATE studies SET state = ?, updated_at = ?, reason = COALESCE(?, reason) "
                   "WHERE study_key = ?", (state, now, reason, key))
        self._event(db, key, state, detail, now)

    def find(self, *, states: tuple[str, ...] = (), since: float | None = None,
             route: str | None = None, calling_ae: str | None = None,
             modality: str | None = None, limit: int | None = 50, offset: int = 0
             ) -> tuple[list[Study], int]:
        """A page of the studies that pass every filter given, newest first, and how many
        pass in all. `route`: one of the rules that routed it; `modality`: of a series;
        `limit` None: all of them."""
        where: list[str] = []
        args: list[Any] = []
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            args += states
        if since is not None:
            where.append("created_at >= ?")
            args.append(since)
        if route is not None:
            where.append("instr(',' || route || ',', ?) > 0")
            args.append(f",{route},")
        if calling_ae is not None:
            where.append("calling_ae = ?")
            args.append(calling_ae)
        if modality is not None:
            where.append("EXISTS (SELECT 1 FROM series s WHERE s.study_key = "
                         "studies.study_key AND s.modality = ?)")
            args.append(modality)
        clause = f" WHERE {' AND '.join(where)}" if where else ""  # placeholders only
        total = int(self._query(f"SELECT COUNT(*) AS n FROM studies{clause}",  # noqa: S608
                                tuple(args))[0]["n"])
        rows = self._query(f"SELECT * FROM studies{clause} ORDER BY created_at DESC "  # noqa: S608
                           "LIMIT ? OFFSET ?", (*args, -1 if limit is None else limit, offset))
        return [_study(r) for r in rows], total

    def discard(self, key: str, why: str) -> list[Path] | None:
        """Drop a study that is receiving or ended: its jobs and unsent outbox items go, it
        ends `discarded` (its history kept); the paths of its instances, for the caller to
        remove. None if it is in routing or has a job queued or running."""
        now = time.time()
        with self._tx() as db:
            marks = ",".join("?" * len(DISCARDABLE))
            if not db.execute(f"UPDATE studies SET state = 'discarded', updated_at = ?, "  # noqa: S608
                              f"reason = ?, purged_at = ? WHERE study_key = ? "
                              f"AND state IN ({marks})",
                              (now, why, now, key, *DISCARDABLE)).rowcount:
                return None
            db.execute("DELETE FROM jobs WHERE study_key = ?", (key,))
            db.execute("DELETE FROM outbox WHERE study_key = ? AND state != 'sent'", (key,))
            self._event(db, key, "discarded", why, now)
            return [Path(r["path"]) for r in db.execute(
                "SELECT path FROM instances WHERE study_key = ?", (key,))]

    def pause(self, route: str) -> None:
        """Queued jobs of this route wait, undispatched, until it is resumed."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO paused_routes (route, at) VALUES (?, ?)",
                       (route, time.time()))

    def resume(self, route: str) -> bool:
        with self._tx() as db:
            return bool(db.execute("DELETE FROM paused_routes WHERE route = ?",
                                   (route,)).rowcount)

    def paused(self) -> dict[str, float]:
        """Paused routes and since when."""
        return {r["route"]: r["at"] for r in self._query("SELECT * FROM paused_routes")}

    # --- retention -------------------------------------------------------------------------

    def ended_before(self, before: float) -> list[Study]:
        """Studies that ended before `before`, their instances not yet removed, with nothing
        of theirs waiting in the outbox (a forward reads the spool)."""
        marks = ",".join("?" * len(ENDED))
        rows = self._query(
            f"SELECT * FROM studies WHERE state IN ({marks}) AND updated_at < ? "  # noqa: S608
            "AND purged_at IS NULL AND NOT EXISTS (SELECT 1 FROM outbox o WHERE "
            "o.study_key = studies.study_key AND o.state = 'pending') ORDER BY updated_at",
            (*ENDED, before))
        return [_study(r) for r in rows]

    def purged(self, key: str, detail: str) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute("UPDATE studies SET purged_at = ? WHERE study_key = ?", (now, key))
            self._event(db, key, "purged", detail, now)

    def sent_before(self, before: float) -> list[str]:
        """Paths every outbox item of which was sent, the last before `before`."""
        return [r["path"] for r in self._query(
            "SELECT path FROM outbox GROUP BY path HAVING SUM(state != 'sent') = 0 "
            "AND MAX(sent_at) < ?", (before,))]

    # --- outbox ----------------------------------------------------------------------------

    def enqueue(self, key: str, destination: str, paths: list[Path]) -> int:
        """Queue files for a destination; a file already queued there is not queued twice."""
        now = time.time()
        with self._tx() as db:
            cur = db.executemany(
                "INSERT OR IGNORE INTO outbox (study_key, destination, path, next_attempt_at, "
                "created_at) VALUES (?, ?, ?, ?, ?)",
                [(key, destination, str(p), now, now) for p in paths])
            return cur.rowcount

    def due(self, now: float | None = None, limit: int = 500) -> list[OutboxItem]:
        rows = self._query(
            "SELECT id, study_key, destination, path, attempts FROM outbox "
            "WHERE state = 'pending' AND next_attempt_at <= ? ORDER BY id LIMIT ?",
            (time.time() if now is None else now, limit))
        return [OutboxItem(**dict(r)) for r in rows]

    def sent(self, item_id: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE outbox SET state = 'sent', sent_at = ?, attempts = attempts + 1, "
                       "last_error = NULL WHERE id = ?", (time.time(), item_id))

    def send_failed(self, item_id: int, error: str, retry_at: float | None) -> None:
        """Record a failed attempt; retry_at None means give up (the item is failed)."""
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, "
                "state = ?, next_attempt_at = COALESCE(?, next_attempt_at) WHERE id = ?",
                (error, "pending" if retry_at is not None else "failed", retry_at, item_id))

    def retry_failed(self, destination: str | None = None) -> int:
        """Put failed outbox items back in line, e.g. once a destination has been fixed."""
        with self._tx() as db:
            return db.execute(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ? "
                "WHERE state = 'failed' AND (? IS NULL OR destination = ?)",
                (time.time(), destination, destination)).rowcount

    def outbox(self, key: str | None = None) -> list[dict[str, Any]]:
        if key is None:
            return [dict(r) for r in self._query("SELECT * FROM outbox ORDER BY id")]
        return [dict(r) for r in self._query(
            "SELECT * FROM outbox WHERE study_key = ? ORDER BY id", (key,))]


def _study(row: sqlite3.Row) -> Study:
    return Study(**{k: row[k] for k in Study.__dataclass_fields__})
