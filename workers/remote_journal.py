"""The journal of a node on another host, as a job uses it: each call goes to the node's API
(`pacs_node.api`), the study's instances come by WADO-RS into a folder of the worker's own,
and the outputs go back by STOW-RS to the node, which keeps and delivers them. A worker that uses it
touches neither the node's SQLite nor its spool.

A worker uses it when UMSREP_NODE_URL names the node's API (`http://pacs-node:8042`), or the
task message does (the node's `api.url`), with the token in the file UMSREP_NODE_TOKEN_FILE;
its own config then needs only the broker, and its `node.data_dir` is its scratch folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pacs_node.api import multipart_related
from pacs_node.attrs import InstanceAttrs
from pacs_node.config import Process
from pacs_node.journal import Instance, Study
from pacs_node.spool import file_name
from umsrep_core.errors import ClaimLost, ConfigError, TransientError

URL_VARIABLE, TOKEN_VARIABLE = "UMSREP_NODE_URL", "UMSREP_NODE_TOKEN_FILE"
TIMEOUT_S = 60.0


class NodeUnreachable(TransientError):
    """The node's API did not answer: the task is tried again later."""


class RemoteJournal:
    def __init__(self, url: str, token: str, scratch: Path) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{URL_VARIABLE} {url!r}: an http:// or https:// URL is needed")
        self.url, self.token, self.scratch = url.rstrip("/"), token, scratch
        # deleted by close(): folders of instances fetched, outputs sent to the node
        self._fetched: list[Path] = []
        self._sent: set[Path] = set()

    @classmethod
    def from_environment(cls, scratch: Path, node: str | None = None) -> RemoteJournal | None:
        """The node's journal at UMSREP_NODE_URL, else at `node` (the task message's URL);
        None with neither: the worker shares the node's data directory."""
        url = os.environ.get(URL_VARIABLE) or node
        if not url:
            return None
        token_file = os.environ.get(TOKEN_VARIABLE)
        if not token_file:
            raise ConfigError(f"the node's API at {url} needs its token: set {TOKEN_VARIABLE}"
                              " to the token file")
        token = Path(token_file).read_text(encoding="utf-8").strip()
        return cls(url, token, scratch)

    def _request(self, path: str, body: bytes | None = None,
                 content_type: str = "") -> tuple[str, bytes]:
        """The answer's content type and body."""
        request = urllib.request.Request(self.url + path, data=body)  # noqa: S310 - http(s)
        request.add_header("Authorization", f"Bearer {self.token}")
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as reply:  # noqa: S310
                return str(reply.headers.get("Content-Type", "")), bytes(reply.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 409 and path.startswith("/api/journal/"):
                raise ClaimLost(f"node API {path}: {exc.read().decode(errors='replace')}") \
                    from exc
            if exc.code >= 500:
                raise NodeUnreachable(f"node API {path}: HTTP {exc.code}") from exc
            raise RuntimeError(f"node API {path}: HTTP {exc.code}: "
                               f"{exc.read().decode(errors='replace')}") from exc
        except OSError as exc:  # refused, reset, timed out
            raise NodeUnreachable(f"node API {path}: {exc}") from exc

    def _call(self, method: str, **kwargs: Any) -> Any:
        _, answer = self._request(f"/api/journal/{method}", json.dumps(kwargs).encode(),
                                  "application/json")
        return json.loads(answer)["result"]

    # --- the calls of run_job, the pipeline and the worker's metrics ------------------------

    def jobs(self, key: str | None = None) -> list[dict[str, Any]]:
        return list(self._call("jobs", key=key))

    def lost_tries(self, key: str, route: str) -> int:
        return int(self._call("lost_tries", key=key, route=route))

    def start_job(self, key: str, route: str) -> str | None:
        claim = self._call("start_job", key=key, route=route)
        return None if claim is None else str(claim)

    def heartbeat(self, key: str, route: str, claim: str) -> bool:
        return bool(self._call("heartbeat", key=key, route=route, claim=claim))

    def finish_job(self, key: str, route: str, error: str | None = None,
                   skipped: str | None = None, claim: str | None = None) -> None:
        self._call("finish_job", key=key, route=route, error=error, skipped=skipped,
                   claim=claim)

    def note(self, key: str, step: str, detail: str | None = None) -> None:
        self._call("note", key=key, step=step, detail=detail)

    def note_stage(self, key: str, stage: str, seconds: float, more: str = "") -> None:
        self._call("note_stage", key=key, stage=stage, seconds=seconds, more=more)

    def stage_seconds(self, key: str, since: float = 0.0) -> dict[str, float]:
        return dict(self._call("stage_seconds", key=key, since=since))

    def job_process(self, key: str, route: str) -> Process | None:
        process = self._call("job_process", key=key, route=route)
        return None if process is None else Process.model_validate(process)

    def study(self, key: str) -> Study | None:
        study = self._call("study", key=key)
        return None if study is None else Study(**study)

    def instances(self, key: str) -> list[Instance]:
        """The study version's instances, fetched by WADO-RS into the scratch folder."""
        study = self.study(key)
        if study is None:
            return []
        folder = self.scratch / "instances" / file_name(study.study_uid) / str(study.version)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        self._fetched.append(folder)
        fetched = []
        for row in self._call("instances", key=key):
            path = folder / f"{file_name(row['sop_instance_uid'])}.dcm"
            path.write_bytes(self._instance(study, row))
            fetched.append(Instance(**{**row, "path": str(path),
                                       "attrs": InstanceAttrs.from_json(row["attrs"])}))
        return fetched

    def _instance(self, study: Study, row: dict[str, Any]) -> bytes:
        """One instance's bytes, the one part of its WADO-RS answer."""
        uids = "/".join(quote(u, safe="") for u in (
            study.study_uid, "series", row["series_uid"], "instances", row["sop_instance_uid"]))
        content_type, answer = self._request(f"/dicomweb/studies/{uids}"
                                             f"?version={study.version}")
        [part] = multipart_related(content_type, answer)
        return part.body

    def enqueue(self, key: str, destination: str, paths: list[Path]) -> int:
        """Send the outputs to the node by STOW-RS; it keeps them and queues them to
        `destination`."""
        study = self.study(key)
        if study is None:
            raise RuntimeError(f"node API: no study {key}")
        boundary = uuid.uuid4().hex
        body = b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + path.read_bytes() + b"\r\n" for path in paths) + f"--{boundary}--\r\n".encode()
        _, answer = self._request(
            f"/dicomweb/studies/{quote(study.study_uid, safe='')}?version={study.version}"
            f"&destination={quote(destination)}",
            body, f'multipart/related; type="application/dicom"; boundary={boundary}')
        self._sent.update(paths)
        stow = json.loads(answer)
        failed = stow.get("00081198", {}).get("Value", [])
        if failed:  # 202: some stored, some not (409, none, raised above)
            raise RuntimeError(f"node refused {len(failed)} of {len(paths)} outputs (STOW-RS "
                               "FailedSOPSequence)")
        return len(stow.get("00081199", {}).get("Value", []))

    def close(self) -> None:
        """The task is over: the instances it fetched and the outputs the node now keeps go
        (no connection is held open)."""
        for folder in self._fetched:
            shutil.rmtree(folder, ignore_errors=True)
        for path in self._sent:
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # another task's outputs may still be there
                path.parent.rmdir()
        self._fetched.clear()
        self._sent.clear()
