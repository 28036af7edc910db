"""The daemon's side of the ``/streamimg`` page: what one instance reports to the scheduler.

:class:`DashboardReporter` is a :class:`~streamimg.observe.Listener`. On the poll
thread it only counts and keeps references (microseconds per batch); a thread of
its own, once a second, turns that into a JSON-ready snapshot, makes the stream
thumbnails, and stores the snapshot on the Dask scheduler under
``("streamimg", topology, instance)`` with ``Client.set_metadata``. The page
(:mod:`streamimg.dashboard.page`) reads it there, so it shows every daemon that
reports to the scheduler, side by side, and the last snapshot of a stopped one
until the same instance reports again.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from streamimg.codecs.frame import decode_payload, parse_header
from streamimg.observe import Listener, committed_per_partition, frame_timings
from streamimg.sinks.checkpoint import Outcome

if TYPE_CHECKING:
    from distributed import Client

    from streamimg.batching import Batch
    from streamimg.daemon import Daemon

log = logging.getLogger("streamimg.dashboard")

#: Root of the scheduler metadata the daemons write and the page reads.
METADATA_KEY = "streamimg"
#: Seconds of history behind the latency percentiles and the per-stage means.
WINDOW_S = 60.0
#: Latencies outside [0, this) ms are left out: the capture time is not on the wall clock
#: (a video file's own clock read faster than real time, frames numbered from 0).
MAX_LATENCY_MS = 86_400_000
#: Width of a stream's thumbnail (pixels); height follows the frame's aspect ratio.
THUMB_WIDTH = 320


def _partition(topic: str, partition: int) -> str:
    return f"{topic}[{partition}]"


class DashboardReporter(Listener):
    """Reports one daemon's figures to the Dask scheduler for the ``/streamimg`` page.

    The snapshot, a dict stored at ``("streamimg", topology, instance)``: ``state``
    (``running`` or ``stopped``), ``updated`` (Unix s), ``totals`` (frames in and out,
    dead letters, transactions committed and aborted, rebalances), ``rates`` (frames/s
    in and out over the last interval), ``in_flight`` (batches, bytes), ``latency_ms``
    (capture time to commit: p50, p95, p99 and ``n`` over the last :data:`WINDOW_S` s;
    frames whose capture time is not a wall-clock time are left out, see
    :data:`MAX_LATENCY_MS`), ``stages_ms`` (mean ms per frame of each stage over that
    window, ``transaction`` included), ``partitions`` (per input partition this run has
    owned: frames/s in and out, frames in and out, lag in records, next offset
    committed, whether assigned now), ``dead_letters`` (the last 10, with reasons),
    ``streams`` (per stream: last frame index, capture time, palette, detections and a
    JPEG thumbnail of the last output frame, ``bytes``, :data:`THUMB_WIDTH` pixels wide).

    Parameters
    ----------
    client : distributed.Client
        The daemon's client; snapshots go to its scheduler.
    topology, instance, group, transactional_id, run : str
        Who reports (shown on the page; ``topology`` and ``instance`` key the snapshot).
    interval_s : float
        Seconds between snapshots (and at most one new thumbnail per stream each time).
    """

    def __init__(self, client: Client, *, topology: str, instance: str, group: str,
                 transactional_id: str, run: str, interval_s: float = 1.0):
        self.client = client
        self.key = [METADATA_KEY, topology, instance]
        self.interval_s = interval_s
        self._static = {"topology": topology, "instance": instance, "group": group,
                        "transactional_id": transactional_id, "run": run,
                        "host": socket.gethostname(), "pid": os.getpid(),
                        "started": time.time()}
        self._lock = threading.Lock()
        self._totals = dict.fromkeys(("frames_in", "frames_out", "dead_letters", "commits",
                                      "aborts", "rebalances"), 0)
        self._in: dict[str, int] = {}  # partition -> frames read into batches
        self._out: dict[str, int] = {}  # partition -> frames committed
        self._committed: dict[str, int] = {}  # partition -> next offset committed
        self._lag: dict[str, int] = {}
        self._owned: set[str] = set()  # partitions assigned now
        self._in_flight = (0, 0)
        self._latency: deque[tuple[float, float]] = deque(maxlen=20_000)  # (t, ms)
        self._stages: deque[tuple[float, dict[str, float]]] = deque(maxlen=20_000)
        self._dead: deque[dict[str, Any]] = deque(maxlen=10)
        self._frames: dict[bytes | None, tuple[bytes, list]] = {}  # key -> last frame record
        self._values: dict[bytes | None, bytes] = {}  # key -> last analytics record value
        self._thumbs: dict[str, tuple[int, bytes]] = {}  # stream -> (frame, JPEG)
        self._state = "running"
        self._last: tuple[float, dict[str, int], dict[str, int], int, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._publish_loop, name="streamimg-dashboard",
                                        daemon=True)
        self._failures = 0

    @classmethod
    def for_daemon(cls, daemon: Daemon, interval_s: float = 1.0) -> DashboardReporter:
        """A reporter for ``daemon`` (add it to ``daemon.listeners``, then :meth:`start`)."""
        return cls(daemon.client, topology=daemon.topology.name, instance=daemon.instance,
                   group=daemon.group, transactional_id=daemon.transactional_id,
                   run=daemon.run_id, interval_s=interval_s)

    def start(self) -> None:
        """Register the page on the scheduler and start reporting (never raises).

        A scheduler that cannot take the plugin (e.g. streamimg is not installed where
        it runs) gets the snapshots all the same; ``dask scheduler --preload
        streamimg.dashboard.page`` serves the page there.
        """
        from streamimg.dashboard.page import StreamimgPage

        try:
            self.client.register_plugin(StreamimgPage())
        except Exception as exc:  # noqa: BLE001 - the stream runs without its page
            log.warning("the Dask scheduler did not take the /streamimg page (%s: %s); "
                        "preload streamimg.dashboard.page there to serve it",
                        type(exc).__name__, exc)
        if not self._thread.is_alive():
            self._thread.start()

    # -- Listener hooks (poll thread: count and keep references only) -------------------

    def batched(self, seq: int, batch: Batch) -> None:
        """Count the batch's messages (frames and dead letters) per input partition."""
        with self._lock:
            for f in [*batch.frames, *batch.dead]:
                p = _partition(f.topic, f.partition)
                self._in[p] = self._in.get(p, 0) + 1
            self._totals["frames_in"] += len(batch.frames) + len(batch.dead)

    def outcome(self, outcome: Outcome) -> None:
        """Count a committed or aborted batch; keep its latencies, timings and last frames."""
        b = outcome.batch
        now = time.time()
        with self._lock:
            if outcome.status == "aborted":
                self._totals["aborts"] += 1
                return
            if outcome.status != "committed":
                return
            self._totals["commits"] += 1
            self._totals["frames_out"] += b.frames
            self._totals["dead_letters"] += len(b.dead)
            for (topic, part), n in committed_per_partition(b).items():
                p = _partition(topic, part)
                self._out[p] = self._out.get(p, 0) + n
            for f in b.sources:
                latency = now * 1e3 - f.header.timestamp_ms
                if 0 <= latency < MAX_LATENCY_MS:  # else not a wall-clock capture time
                    self._latency.append((now, latency))
            for (topic, part), offset in b.offsets.items():
                self._committed[_partition(topic, part)] = offset
            txn_ms = outcome.ms / max(1, b.frames * outcome.batches)
            for timings in frame_timings(b) or [{}] * b.frames:
                self._stages.append((now, {**timings, "transaction": txn_ms}))
            for d in b.dead:
                self._dead.append({"time": now, "topic": d.topic, "partition": d.partition,
                                   "offset": d.offset, "stage": d.stage, "reason": d.reason})
            # The last record of each key (the input's key: its stream id when produced
            # by streamimg); parsed by the reporter's thread, never here.
            for _topic, key, value, headers in b.records:
                h = dict(headers or ())
                if h.get("content-type") == b"application/json":
                    self._values[key] = value
                elif "streamimg.encoding" in h and value is not None:
                    self._frames[key] = (value, headers)

    def assigned(self, partitions: list[tuple[str, int]]) -> None:
        """Count a rebalance; note the partitions now owned."""
        with self._lock:
            self._totals["rebalances"] += 1
            self._owned |= {_partition(t, p) for t, p in partitions}

    def revoked(self, partitions: list[tuple[str, int]]) -> None:
        """Forget the revoked partitions' lag; keep their counts, marked not assigned."""
        with self._lock:
            for topic, part in partitions:
                self._lag.pop(_partition(topic, part), None)
                self._owned.discard(_partition(topic, part))

    def tick(self, lag: dict[str, int], batches: int, nbytes: int) -> None:
        """Keep the latest lag per partition and the work in flight."""
        with self._lock:
            self._lag = dict(lag)
            self._in_flight = (batches, nbytes)

    def stopped(self, code: int) -> None:
        """Publish a last snapshot with ``state: stopped`` and end the reporter's thread."""
        self._state = "stopped" if code == 0 else f"stopped (exit {code})"
        self.close()

    def close(self) -> None:
        """Stop the reporter's thread after one last snapshot (at most ~5 s)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    # -- the reporter's thread -----------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The current snapshot (see the class docstring); thumbnails made here."""
        now, mono = time.time(), time.monotonic()
        with self._lock:
            totals, ins, outs = dict(self._totals), dict(self._in), dict(self._out)
            lag, committed, (batches, nbytes) = dict(self._lag), dict(self._committed), \
                self._in_flight
            owned = set(self._owned)
            while self._latency and self._latency[0][0] < now - WINDOW_S:
                self._latency.popleft()
            while self._stages and self._stages[0][0] < now - WINDOW_S:
                self._stages.popleft()
            latency = np.array([ms for _, ms in self._latency])
            stage_rows = [t for _, t in self._stages]
            dead = list(self._dead)
            frames, values = dict(self._frames), dict(self._values)
        last = self._last or (mono - 1e-9, {}, {}, 0, 0)
        span = max(mono - last[0], 1e-3)
        self._last = (mono, ins, outs, totals["frames_in"], totals["frames_out"])
        stages: dict[str, float] = {}
        for row in stage_rows:
            for name, ms in row.items():
                stages[name] = stages.get(name, 0.0) + ms
        parts = sorted(set(ins) | set(outs) | set(lag) | set(committed))
        return {
            **self._static, "state": self._state, "updated": now, "totals": totals,
            "rates": {"in": (totals["frames_in"] - last[3]) / span,
                      "out": (totals["frames_out"] - last[4]) / span},
            "in_flight": {"batches": batches, "bytes": nbytes},
            "latency_ms": ({q: float(np.percentile(latency, int(q[1:])))
                            for q in ("p50", "p95", "p99")} | {"n": int(latency.size)}
                           if latency.size else {"n": 0}),
            "stages_ms": {k: v / len(stage_rows) for k, v in stages.items()},
            "partitions": {p: {"in_fps": (ins.get(p, 0) - last[1].get(p, 0)) / span,
                               "out_fps": (outs.get(p, 0) - last[2].get(p, 0)) / span,
                               "frames_in": ins.get(p, 0), "frames_out": outs.get(p, 0),
                               "lag": lag.get(p), "committed": committed.get(p),
                               "assigned": p in owned}
                           for p in parts},
            "dead_letters": dead,
            "streams": self._streams(frames, values),
        }

    def _streams(self, frames: dict[bytes | None, tuple[bytes, list]],
                 values: dict[bytes | None, bytes]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for raw in values.values():
            try:
                body = json.loads(raw)
            except ValueError:
                continue
            out[str(body.get("stream"))] = {
                "frame": body.get("frame"), "timestamp_ms": body.get("timestamp_ms"),
                "palette": _find(body, "colors"), "detections": _detections(body)}
        for value, headers in frames.values():
            try:
                header = parse_header(headers)
                stream = header.stream
                if self._thumbs.get(stream, (None,))[0] != header.frame:
                    self._thumbs[stream] = (header.frame, _thumbnail(header, value))
            except Exception as exc:  # noqa: BLE001 - a thumbnail is never worth a failure
                log.debug("no thumbnail for stream %s: %s", stream, exc)
                continue
            entry = out.setdefault(stream, {})
            entry.setdefault("frame", header.frame)
            entry.setdefault("timestamp_ms", header.timestamp_ms)
            entry["thumb_frame"], entry["thumb"] = self._thumbs[stream]
        return out

    def publish(self) -> None:
        """Store the current snapshot on the scheduler (blocks for one round trip)."""
        self.client.set_metadata(self.key, self.snapshot())

    def _publish_loop(self) -> None:
        while True:
            stopping = self._stop.wait(self.interval_s)
            try:
                self.publish()
                self._failures = 0
            except Exception as exc:  # noqa: BLE001 - the page must never stop the stream
                self._failures += 1
                if self._failures in (1, 60):
                    log.warning("cannot report to the Dask dashboard (%s: %s)",
                                type(exc).__name__, exc)
            if stopping:
                return


def _find(body: dict[str, Any], field: str) -> Any:
    """The first analytics value in ``body`` that has ``field`` (e.g. a palette's colors)."""
    for value in body.values():
        if isinstance(value, dict) and field in value:
            return value
    return None


def _detections(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Detections in an analytics body: lists of dicts with a ``box``, at most 20."""
    found = []
    for name, value in body.items():
        items = value.get("detections") if isinstance(value, dict) else value
        if isinstance(items, list) and items and isinstance(items[0], dict) \
                and "box" in items[0]:
            found += [{"analytics": name, **d} for d in items]
    return found[:20]


def _thumbnail(header: Any, value: bytes) -> bytes:
    """A JPEG, :data:`THUMB_WIDTH` pixels wide, of one output frame record."""
    frame = decode_payload(header, value)
    if frame.dtype != np.uint8:  # e.g. float fields from a stencil: scale to 0-255
        lo, hi = float(np.min(frame)), float(np.max(frame))
        frame = ((frame - lo) * (255.0 / (hi - lo or 1.0))).astype(np.uint8)
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    h, w = frame.shape[:2]
    size = (THUMB_WIDTH, max(1, round(h * THUMB_WIDTH / w)))
    small = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    order = header.order
    if small.ndim == 3 and order in ("RGB", "RGBA"):  # cv2 writes BGR
        small = cv2.cvtColor(small, cv2.COLOR_RGBA2BGR if order == "RGBA" else cv2.COLOR_RGB2BGR)
    elif small.ndim == 3 and order == "BGRA":
        small = cv2.cvtColor(small, cv2.COLOR_BGRA2BGR)
    ok, jpeg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        raise ValueError("cv2.imencode failed")
    return jpeg.tobytes()
