"""The web console, served by the node's HTTP port at /console/ when `api.users_file` names its
users (pacs_node.users): tornado pages and templates (pacs_node/console/), no script but the
live counts.

Log in with a user of the file; the session is a signed, HttpOnly, SameSite=Strict cookie (a
day), its key derived from the API token; every form carries tornado's XSRF token. An `admin`
acts (reprocess, complete, discard, retry deliveries, pause and resume routes: what the REST
API does) and sees patient names; a `viewer` looks, without patient data. The pages: studies
with filters and paging, a study (jobs and stage timings, findings, mask overlays, the rules
and why each matches, deliveries, instances, history), routes and deliveries with retention.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
import pydicom
from PIL import Image
from tornado.web import HTTPError, RequestHandler

from pacs_node import router
from pacs_node.journal import STATES
from pacs_node.rest import Operated
from pacs_node.studies_cmd import finding_text, study_report
from pacs_node.users import User, load_users, verify
from umsrep_core.imaging.pixels import read_frames
from umsrep_core.pipelines import names, pipeline

COOKIE = "umsrep_user"
FLASH = "umsrep_message"  # what an action did, shown once on the page it returns to
TEMPLATES = Path(__file__).with_name("console")
OVERLAY_PIXELS = 512  # the longer side of a mask overlay preview
PAGE = 50
COLOURS = np.array([[230, 57, 70], [69, 123, 157], [255, 209, 102], [6, 214, 160]], np.float32)


def settings(token: str, tls: bool) -> dict[str, Any]:
    """The tornado Application settings the console needs."""
    return {"template_path": str(TEMPLATES), "xsrf_cookies": True,
            "cookie_secret": hmac.new(token.encode(), b"umsrep console cookies",
                                      hashlib.sha256).hexdigest(),
            "xsrf_cookie_kwargs": {"httponly": True, "samesite": "Strict", "secure": tls},
            "login_url": "/console/login"}


class Page(RequestHandler):
    def initialize(self, node: Operated, users_file: Path, tls: bool) -> None:
        self.node, self.journal = node, node.journal
        self.users_file, self.tls = users_file, tls

    def get_current_user(self) -> User | None:
        name = self.get_signed_cookie(COOKIE, max_age_days=1)
        # read at each request: `umsrep user add` and removals apply at once
        return None if name is None else load_users(self.users_file).get(name.decode())

    def prepare(self) -> None:
        if self.current_user is None:
            self.redirect(f"/console/login?{urlencode({'next': self.request.uri})}")

    @property
    def admin(self) -> bool:
        return bool(self.current_user and self.current_user.role == "admin")

    def need_admin(self) -> None:
        if not self.admin:
            raise HTTPError(403, "an admin may do this")

    def get_template_namespace(self) -> dict[str, Any]:
        namespace = super().get_template_namespace()
        message = self.get_signed_cookie(FLASH, max_age_days=1)
        if message is not None:
            self.clear_cookie(FLASH)
        namespace.update(message=message and message.decode(), is_admin=self.admin,
                         show_phi=self.admin, when=_when)
        return namespace

    def back(self, where: str, message: str) -> None:
        """Redirect to `where`, which shows `message` once: a signed cookie, not the query
        string, so that a reload does not show it again and a link cannot make one up."""
        self.set_signed_cookie(FLASH, message, expires_days=None, httponly=True,
                               samesite="Strict", secure=self.tls)
        self.redirect(where)


class Login(Page):
    def prepare(self) -> None:
        """Open to all."""

    def get(self) -> None:
        self.render("login.html", error=None, next_page=self.get_argument("next", "/console/"))

    def post(self) -> None:
        name, password = self.get_argument("name", ""), self.get_argument("password", "")
        user = load_users(self.users_file).get(name)
        if user is None or not verify(user, password):
            self.set_status(401)
            self.render("login.html", error="unknown user or wrong password",
                        next_page=self.get_argument("next", "/console/"))
            return
        self.set_signed_cookie(COOKIE, user.name, expires_days=1, httponly=True,
                               samesite="Strict", secure=self.tls)
        target = self.get_argument("next", "/console/")
        self.redirect(target if target.startswith("/console/") else "/console/")


class Logout(Page):
    def post(self) -> None:
        self.clear_cookie(COOKIE)
        self.redirect("/console/login")


class Counts(Page):
    def get(self) -> None:
        self.finish({"studies": self.journal.state_counts()})


class Studies(Page):
    def get(self) -> None:
        filters = {k: self.get_argument(k, "") for k in
                   ("state", "modality", "route", "calling_ae", "hours")}
        try:
            hours = float(filters["hours"]) if filters["hours"] else None
            offset = max(0, int(self.get_argument("offset", "0")))
        except ValueError as exc:
            raise HTTPError(400, "hours and offset are numbers") from exc
        found, total = self.journal.find(
            states=(filters["state"],) if filters["state"] in STATES else (),
            since=None if hours is None else time.time() - hours * 3600,
            route=filters["route"] or None, calling_ae=filters["calling_ae"] or None,
            modality=filters["modality"] or None, limit=PAGE, offset=offset)
        keys = [study.study_key for study in found]
        counts, modalities = self.journal.counts(keys), self.journal.modalities(keys)
        rows = [{**study_report(self.journal, study, counts.get(study.study_key, 0),
                                phi=self.admin),
                 "modalities": modalities.get(study.study_key, [])} for study in found]

        def page(at: int) -> str:
            return "/console/?" + urlencode({**{k: v for k, v in filters.items() if v},
                                             "offset": at})

        self.render("studies.html", rows=rows, total=total, offset=offset, limit=PAGE,
                    filters=filters, states=STATES, page=page, finding=finding_text)


class Study(Page):
    def get(self, key: str) -> None:
        study = self.journal.study(key)
        if study is None:
            raise HTTPError(404, f"no study {key}")
        instances = self.journal.instances(key)
        report = study_report(self.journal, study, len(instances),
                              phi=self.admin and study.purged_at is None)
        deliveries = [{**item, "name": Path(item["path"]).name}
                      for item in self.journal.outbox(key)]
        self.render("study.html", study=report, instances=instances,
                    events=self.journal.events(key), deliveries=deliveries,
                    rules=router.evaluate(self.node.config.routing,
                                          [i.attrs for i in instances]),
                    overlays=range(len(_segmentations(deliveries))), measured=_measured)


class StudyAction(Page):
    def post(self, key: str, action: str) -> None:
        self.need_admin()
        where = f"/console/studies/{key}"
        done = self.node.act(key, action)
        state = getattr(self.journal.study(key), "state", "unknown")
        self.back(where, f"{action}: done, the study is {state}" if done else
                  f"{action} does not apply to a study that is {state}")


class Overlay(Page):
    def get(self, key: str, number: str) -> None:
        """The n-th SEG output of the study over the image it segments, as PNG."""
        segs = _segmentations(self.journal.outbox(key))
        if int(number) >= len(segs):
            raise HTTPError(404, "no such segmentation")
        seg = pydicom.dcmread(segs[int(number)])
        source_uid = str(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
                         .ReferencedSOPInstanceUID)
        source = next((Path(i.path) for i in self.journal.instances(key)
                       if i.sop_instance_uid == source_uid), None)
        if source is None or not source.exists():
            raise HTTPError(404, "the segmented image is not in the spool")
        self.set_header("Content-Type", "image/png")
        self.finish(_overlay(pydicom.dcmread(source), seg))


class Routes(Page):
    def get(self) -> None:
        self.render("routes.html", rules=self.node.config.routing.rules,
                    paused=self.journal.paused(), outbox=self.journal.outbox_counts(),
                    retention=self.node.config.retention)


class RouteAction(Page):
    def post(self, name: str, action: str) -> None:
        self.need_admin()
        if not self.node.set_paused(name, action == "pause"):
            raise HTTPError(404, f"no rule {name}")
        self.back("/console/routes", f"route {name}: {action}d")


class RetryDeliveries(Page):
    def post(self) -> None:
        self.need_admin()
        count = self.node.retry_deliveries(self.get_argument("destination", None))
        self.back("/console/routes", f"{count} failed deliveries queued again")


def routes(node: Operated, users_file: Path, tls: bool) -> list[tuple[str, type, dict[str, Any]]]:
    kwargs = {"node": node, "users_file": users_file, "tls": tls}
    return [(pattern, handler, kwargs) for pattern, handler in (
        (r"/console/", Studies), (r"/console/login", Login), (r"/console/logout", Logout),
        (r"/console/counts", Counts), (r"/console/studies/([^/]+)", Study),
        (r"/console/studies/([^/]+)/(reprocess|complete|discard)", StudyAction),
        (r"/console/studies/([^/]+)/overlay/(\d+)\.png", Overlay),
        (r"/console/routes", Routes), (r"/console/routes/([^/]+)/(pause|resume)", RouteAction),
        (r"/console/deliveries/retry", RetryDeliveries))]


def _segmentations(items: list[dict[str, Any]]) -> list[Path]:
    """The study's SEG outputs still on disk, in outbox order, once each."""
    paths = dict.fromkeys(Path(i["path"]) for i in items if Path(i["path"]).name.startswith(
        "SEG-"))
    return [p for p in paths if p.exists()]


def _overlay(source: pydicom.Dataset, seg: pydicom.Dataset) -> bytes:
    """The source in gray as the pipeline reads it (read_frames: MONOCHROME1 inverted,
    colour and palette to luminance; a multi-frame image's first frame), contrast stretched,
    each segment tinted, at most OVERLAY_PIXELS a side."""
    image = read_frames(source)[0]
    low, high = np.percentile(image, (0.5, 99.5))
    gray = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
    rgb = np.repeat(gray[..., None] * 255, 3, axis=2)
    masks = np.asarray(seg.pixel_array).reshape(-1, *gray.shape)
    for n, mask in enumerate(masks):
        colour = COLOURS[n % len(COLOURS)]
        rgb[mask > 0] = 0.55 * rgb[mask > 0] + 0.45 * colour
    picture = Image.fromarray(rgb.astype(np.uint8))
    picture.thumbnail((OVERLAY_PIXELS, OVERLAY_PIXELS))
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def _when(at: float | None) -> str:
    return "" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _measured(finding: dict[str, Any]) -> str:
    """The measurements of a finding, as its pipeline words them."""
    modality = str(finding.get("modality", ""))
    return pipeline(modality).describe(finding) if modality in names() else "-"
