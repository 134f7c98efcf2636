"""The node's configuration: pydantic models, validated at start-up (fail early).

One YAML file holds everything: `node` (listening, limits, callers, TLS), `destinations`,
`broker` and `routing`. With no file at all, `defaults.yaml` beside this module applies.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from umsrep_core.pipelines import names

AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # 16 chars, no backslash, no control
OUTPUT_KINDS = ("seg", "sr", "denoised")
DEFAULTS_FILE = Path(__file__).with_name("defaults.yaml")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _error_at(loc: tuple[str | int, ...], kind: str, message: str) -> PydanticCustomError:
    """A model-level error that knows which field inside the model it is about.

    pydantic locates a model validator's error at the model itself; `ctx["loc"]` carries the
    rest of the path, so that the YAML loader can point at the offending line.
    """
    # The message is the last context value substituted into the template, so braces in it
    # (from user-given names) are left as they are.
    return PydanticCustomError(kind, "{message}", {"loc": loc, "message": message})


def _ae_title(value: str) -> str:
    if not AE_TITLE.match(value) or not value.strip():
        raise ValueError(f"{value!r} is not a valid AE title (1-16 printable characters)")
    return value.strip()


AETitle = Annotated[str, Field(min_length=1, max_length=16)]


class TLS(Strict):
    """Certificate and key of this end, and the CA that peers' certificates must chain to."""

    cert: Path
    key: Path
    ca: Path | None = None


class Caller(Strict):
    """A calling AE title allowed to associate, optionally only from one host."""

    ae_title: str = "*"
    host: str | None = None

    @field_validator("ae_title")
    @classmethod
    def _check(cls, v: str) -> str:
        return v if v == "*" else _ae_title(v)


class Node(Strict):
    ae_titles: list[AETitle] = ["UMSREP"]
    bind: str = "127.0.0.1"
    port: int = Field(default=11112, ge=0, le=65535)
    data_dir: Path = Path("umsrep-data")
    # The whitelist is on by default: an empty list means nobody may associate.
    callers: list[Caller] = [Caller(host="127.0.0.1"), Caller(host="::1")]
    tls: TLS | None = None
    max_associations: int = Field(default=16, ge=1)  # of callers that passed the checks
    # Connections whose caller is not known yet (no A-ASSOCIATE-RQ whole): the oldest is
    # closed when one more arrives. Each has request_timeout_s to send its request whole,
    # TLS handshake included; once associated, each PDU must arrive whole within
    # network_timeout_s, and the peer may stay silent that long.
    max_pending_connections: int = Field(default=32, ge=1)
    request_timeout_s: float = Field(default=10.0, gt=0)
    network_timeout_s: float = Field(default=60.0, gt=0)
    max_pdu: int = Field(default=4_194_304, ge=0)  # bytes we accept per P-DATA PDU; 0 = unlimited
    max_image_pixels: int = Field(default=300_000_000, ge=1)  # rows x columns x frames
    min_free_disk_mb: int = Field(default=1024, ge=0)
    embedded_workers: int = Field(default=2, ge=1)  # the in-process pool, with no broker
    # A job whose running try sent no heartbeat this long (every 5 s while it runs) is given
    # to another try: its worker was killed, or its host is down or cut off the network.
    heartbeat_timeout_s: float = Field(default=60.0, ge=15.0)
    # Prometheus metrics on http://<metrics_bind>:<metrics_port>/metrics; None: not served.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_bind: str = "127.0.0.1"

    @field_validator("ae_titles")
    @classmethod
    def _check_titles(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one AE title is needed")
        return [_ae_title(t) for t in v]


class Destination(Strict):
    """A DICOM peer (ae_title, host, port) or a folder."""

    ae_title: str | None = None
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    tls: TLS | None = None
    folder: Path | None = None

    @field_validator("ae_title")
    @classmethod
    def _check_title(cls, v: str | None) -> str | None:
        return None if v is None else _ae_title(v)

    @model_validator(mode="after")
    def _one_kind(self) -> Destination:
        network = (self.ae_title, self.host, self.port)
        if self.folder is not None:
            if any(x is not None for x in (*network, self.tls)):
                raise ValueError("a folder destination takes no ae_title, host, port or tls")
        elif any(x is None for x in network):
            raise ValueError("a DICOM destination needs ae_title, host and port (or give folder)")
        return self


class Retry(Strict):
    first_delay_s: float = Field(default=5.0, gt=0)
    max_delay_s: float = Field(default=600.0, gt=0)
    max_attempts: int = Field(default=50, ge=1)  # then the outbox item is marked failed


class Api(Strict):
    """The node's HTTP port (pacs_node.api): DICOMweb WADO-RS of what it received, STOW-RS of
    what workers make of it, their job API. Off unless a port is given; every request needs
    `Authorization: Bearer <the token in token_file>`."""

    port: int | None = Field(default=None, ge=0, le=65535)
    bind: str = "127.0.0.1"
    # Where workers on other hosts reach this API (https://pacs-node:8042): sent with each
    # task, so that a worker needs only the token file (UMSREP_NODE_URL, where set, wins).
    url: str | None = Field(default=None, pattern=r"^https?://")
    token_file: Path | None = None
    # The web console's users (pacs_node.users, `umsrep user add`): /console/ is served when
    # this is set.
    users_file: Path | None = None
    tls: TLS | None = None  # cert and key of this end (ca: callers must show a certificate)

    @model_validator(mode="after")
    def _token_when_served(self) -> Api:
        if self.port is not None and self.token_file is None:
            raise ValueError("api.port needs api.token_file: every request must carry its token")
        return self


class Broker(Strict):
    url: str
    result_backend: str | None = None
    # A job no worker has started this long after it was sent is sent again: Redis may have
    # lost the message (it keeps nothing on a restart). Duplicates are harmless: a finished
    # job is not run again, and outputs are deterministic.
    redispatch_after_s: float = Field(default=600.0, gt=0)


# --- routing ---------------------------------------------------------------------------------


class Match(Strict):
    """Conditions of a rule; all given ones must hold for one instance of the study.

    Lists match exactly (any of; a single value is a list of one); `*_re` fields are Python
    regular expressions searched in the value, empty where the instance lacks the attribute
    (so '^$|...' reads "absent or"); `image_type_re` is searched in the values joined with a
    backslash.
    """

    modality: list[str] | None = None
    sop_class_uid: list[str] | None = None
    calling_ae: list[str] | None = None
    called_ae: list[str] | None = None
    body_part_re: str | None = None
    view_position_re: str | None = None
    image_type_re: str | None = None
    manufacturer_re: str | None = None
    study_description_re: str | None = None
    series_description_re: str | None = None
    spectral_doppler: bool | None = None

    @field_validator("modality", "sop_class_uid", "calling_ae", "called_ae", mode="before")
    @classmethod
    def _one_is_a_list_of_one(cls, v: object) -> object:
        """`modality: CR` means `[CR]`, as a person writing YAML means it."""
        return [v] if isinstance(v, str) else v

    @field_validator(
        "body_part_re", "view_position_re", "image_type_re", "manufacturer_re",
        "study_description_re", "series_description_re",
    )
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {v!r}: {exc}") from exc
        return v


class Process(Strict):
    pipeline: str  # an installed pipeline (umsrep_core.pipelines): cxr, echo_doppler
    # A bundle name (packaged: cxr, echo_doppler) or a bundle folder; default: the pipeline's.
    bundle: str | None = None
    outputs: list[Literal["seg", "sr", "denoised"]] = ["seg", "sr"]
    destinations: list[str] = []

    @field_validator("pipeline")
    @classmethod
    def _installed(cls, v: str) -> str:
        if v not in names():
            raise ValueError(f"no pipeline {v!r} is installed (installed: {', '.join(names())})")
        return v


class Forward(Strict):
    destinations: list[str] = Field(min_length=1)


class Ignore(Strict):
    pass


class Rule(Strict):
    name: str = Field(min_length=1)
    match: Match = Match()
    process: Process | None = None
    forward: Forward | None = None
    ignore: Ignore | None = None
    quiet_seconds: float | None = Field(default=None, ge=0)  # None: routing.quiet_seconds
    complete_on_release: bool = False

    @model_validator(mode="after")
    def _one_action(self) -> Rule:
        actions = [a for a in ("process", "forward", "ignore") if getattr(self, a) is not None]
        if len(actions) != 1:
            raise ValueError(f"a rule needs exactly one action of process, forward, ignore "
                             f"(got {actions or 'none'})")
        return self

    @property
    def action(self) -> Literal["process", "forward", "ignore"]:
        if self.process is not None:
            return "process"
        return "forward" if self.forward is not None else "ignore"

    @property
    def destinations(self) -> list[str]:
        if self.process is not None:
            return self.process.destinations
        return self.forward.destinations if self.forward is not None else []


class Routing(Strict):
    # first: the first matching rule applies; all: every matching rule applies.
    apply: Literal["first", "all"] = "first"
    quiet_seconds: float = Field(default=10.0, ge=0)
    # A study the node was receiving when it stopped waits at least this long from the
    # restart: its sender resends what failed when it next tries, often minutes later.
    restart_quiet_seconds: float = Field(default=300.0, ge=0)
    rules: list[Rule] = []

    @model_validator(mode="after")
    def _unique_names(self) -> Routing:
        seen: set[str] = set()
        for i, rule in enumerate(self.rules):
            if rule.name in seen:
                raise _error_at(("rules", i, "name"), "duplicate_rule_name",
                                f"rule names must be unique: {rule.name!r} is used twice")
            seen.add(rule.name)
        return self


class Retention(Strict):
    """What the node removes, and when (pacs_node.retention); None: kept for ever."""

    # The received instances of a study that ended (done, failed, skipped, ignored) with
    # nothing of it waiting in the outbox: this many days after it ended.
    spool_days: float | None = Field(default=None, gt=0)
    # An output (SEG, SR, derived image) every destination of it has: this many days after
    # it was last sent.
    outputs_days: float | None = Field(default=None, gt=0)


class Config(Strict):
    node: Node = Node()
    destinations: dict[str, Destination] = {}
    retry: Retry = Retry()
    retention: Retention = Retention()
    api: Api = Api()
    broker: Broker | None = None
    routing: Routing = Routing()

    @model_validator(mode="after")
    def _known_destinations(self) -> Config:
        for i, rule in enumerate(self.routing.rules):
            for j, name in enumerate(rule.destinations):
                if name not in self.destinations:
                    known = ", ".join(sorted(self.destinations)) or "none defined"
                    raise _error_at(("routing", "rules", i, rule.action, "destinations", j),
                                    "unknown_destination",
                                    f"rule {rule.name!r}: unknown destination {name!r} "
                                    f"(known: {known})")
        return self

    def folder(self, name: str) -> Path | None:
        """A folder destination's path; relative paths are under the data dir."""
        folder = self.destinations[name].folder
        if folder is None:
            return None
        return folder if folder.is_absolute() else self.node.data_dir / folder
