"""The ``/streamimg`` page of the Dask dashboard, served by the scheduler itself.

:class:`StreamimgPage` is a scheduler plugin: registered by every daemon on its
scheduler (``Client.register_plugin``; idempotent, so the first daemon's copy
stays), or preloaded by ``dask scheduler --preload streamimg.dashboard.page``. It
adds three routes to the dashboard's own HTTP server, beside Dask's pages and
on the same port, and a "Streamimg" link to Dask's navigation bar:

``/streamimg``
    The page (``page.html``): one card per daemon instance, refreshed every second.
``/streamimg/state.json``
    Every instance's last snapshot (:class:`~streamimg.dashboard.reporter.DashboardReporter`),
    thumbnails replaced by their URLs, with ``age_s`` (seconds since the snapshot).
``/streamimg/thumb?topology=T&instance=I&stream=S``
    The stream's last thumbnail, ``image/jpeg`` (404 when there is none).

The snapshots live in the scheduler's metadata (``("streamimg", topology,
instance)``), so the page shows every daemon of every group that reports to the
scheduler, and a stopped daemon's last figures until it reports again.
"""

from __future__ import annotations

import json
import logging
import time
from importlib import resources
from typing import Any
from urllib.parse import urlencode

from distributed.diagnostics.plugin import SchedulerPlugin
from tornado import web

from streamimg.dashboard.reporter import METADATA_KEY

log = logging.getLogger("streamimg.dashboard")


def _snapshots(scheduler: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """``{topology: {instance: snapshot}}`` from the scheduler's metadata."""
    try:
        found = scheduler.get_metadata(keys=[METADATA_KEY], default={})
    except Exception:  # noqa: BLE001 - no daemon has reported yet
        return {}
    return found if isinstance(found, dict) else {}


def page_state(scheduler: Any, now: float | None = None) -> dict[str, Any]:
    """The JSON the page shows: ``{"now": s, "instances": [snapshot, ...]}``.

    Snapshots are sorted by topology and instance; each gains ``age_s`` (seconds since
    it was taken) and, per stream, ``thumb_url`` in place of the thumbnail's bytes.
    """
    now = time.time() if now is None else now
    out = []
    for topology, instances in sorted(_snapshots(scheduler).items()):
        for instance, snap in sorted(instances.items()):
            if not isinstance(snap, dict):
                continue
            snap = dict(snap, age_s=max(0.0, now - float(snap.get("updated", now))))
            streams = {}
            for stream, entry in (snap.get("streams") or {}).items():
                entry = dict(entry)
                if entry.pop("thumb", None):
                    entry["thumb_url"] = "/streamimg/thumb?" + urlencode(
                        {"topology": topology, "instance": instance, "stream": stream,
                         "frame": entry.get("thumb_frame", "")})
                streams[stream] = entry
            snap["streams"] = streams
            out.append(snap)
    return {"now": now, "instances": out}


class _Handler(web.RequestHandler):
    def initialize(self, scheduler: Any) -> None:
        self.scheduler = scheduler


class PageHandler(_Handler):
    """``GET /streamimg``: the page."""

    def get(self) -> None:
        """Serve ``page.html``."""
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.write(resources.files("streamimg.dashboard").joinpath("page.html").read_bytes())


class StateHandler(_Handler):
    """``GET /streamimg/state.json``: :func:`page_state`."""

    def get(self) -> None:
        """Serve the snapshots as JSON."""
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.write(json.dumps(page_state(self.scheduler), default=str))


class ThumbHandler(_Handler):
    """``GET /streamimg/thumb?topology=&instance=&stream=``: a stream's last thumbnail."""

    def get(self) -> None:
        """Serve the JPEG, or 404 naming what was not found."""
        topology, instance, stream = (self.get_argument(k, "") for k in
                                      ("topology", "instance", "stream"))
        snap = _snapshots(self.scheduler).get(topology, {}).get(instance) or {}
        thumb = ((snap.get("streams") or {}).get(stream) or {}).get("thumb")
        if not thumb:
            raise web.HTTPError(404, f"no thumbnail for {topology}/{instance}/{stream}")
        self.set_header("Content-Type", "image/jpeg")
        self.set_header("Cache-Control", "max-age=60")
        self.write(bytes(thumb))


class StreamimgPage(SchedulerPlugin):
    """Adds the ``/streamimg`` routes to the scheduler's dashboard (see module docstring).

    Raises nothing: a scheduler without an HTTP server (``--no-dashboard``) gets no page.
    """

    name = "streamimg-dashboard"
    idempotent = True

    def start(self, scheduler: Any) -> None:
        """Register the routes and the navigation link on ``scheduler``'s HTTP server."""
        add_routes(scheduler)


def add_routes(scheduler: Any) -> bool:
    """Add the page's routes to ``scheduler.http_application``; False if it has none."""
    app = getattr(scheduler, "http_application", None)
    if app is None:
        return False
    if getattr(scheduler, "_streamimg_page", False):
        return True
    # At the root even under ``--dashboard-prefix`` (the scheduler does not keep its prefix).
    kw = {"scheduler": scheduler}
    app.add_handlers(r".*", [(r"/streamimg/?", PageHandler, kw),
                             (r"/streamimg/state\.json", StateHandler, kw),
                             (r"/streamimg/thumb", ThumbHandler, kw)])
    scheduler._streamimg_page = True
    try:  # the link in Dask's own navigation bar (its pages' template reads this list)
        from distributed.dashboard.scheduler import template_variables

        pages = template_variables(scheduler)["pages"]
        if "streamimg" not in pages:
            pages.append("streamimg")
    except Exception as exc:  # noqa: BLE001 - the page works without the link
        log.debug("no navigation link to /streamimg: %s", exc)
    return True


def dask_setup(scheduler: Any) -> None:
    """``dask scheduler --preload streamimg.dashboard.page``: the page from the start."""
    add_routes(scheduler)
