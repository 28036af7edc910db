"""Prometheus metrics and HTTP health endpoints of one daemon (``streamimg run --metrics-port``).

:class:`DaemonMetrics` is a :class:`~streamimg.observe.Listener`: it learns
everything from the daemon's hooks (assignments, committed and aborted batches,
the periodic :meth:`~streamimg.observe.Listener.tick`), and keeps it in a private
``CollectorRegistry`` (never the process-global one, so several daemons in one
process do not mix). :meth:`DaemonMetrics.serve` exposes, on one port:

``/metrics``
    The Prometheus text format. Every series carries ``topology`` and
    ``instance`` labels:

    - ``streamimg_frames_consumed_total{topic,partition}``: messages read from the
      input partition and put in a batch (counted again when read again after an
      abort or a rewind);
    - ``streamimg_frames_committed_total{topic,partition}``: frames of the input
      partition whose outputs were committed;
    - ``streamimg_dead_letters_total{topic,partition,stage}``: committed dead
      letters, by input partition and stage (``decode`` or ``process``);
    - ``streamimg_transactions_total{outcome}``: Kafka transactions ``committed``
      or ``aborted`` (batches that shared a transaction count once);
    - ``streamimg_consumer_lag_frames{topic,partition}`` (gauge): records between
      the consumer's position and the cached high watermark, per assigned partition;
    - ``streamimg_batches_in_flight`` (gauge): batches read and not yet committed;
    - ``streamimg_stage_seconds{stage}`` (histogram, seconds per frame): the
      per-stage times the workers measure (``decode``, each operator, each
      analytics stage, ``annotate``, ``encode``), read from the
      ``streamimg.timings_ms`` header of committed analytics records, one
      observation per frame and stage (a topology without an analytics sink has none);
    - ``streamimg_commit_latency_seconds`` (histogram): from the moment a batch
      closed to its transaction's commit, one observation per batch.

``/healthz``
    200 while the poll loop is alive (it ticked within ``stale_s`` seconds), else 503.
``/readyz``
    200 while partitions are assigned (which happens only after the transactional
    producer is initialised), else 503.

Lag and batches in flight refresh with each tick (about once a second); counters
and histograms with each batch, as it is read (``frames_consumed``) or committed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from streamimg.observe import Listener, committed_per_partition, frame_timings
from streamimg.sinks.checkpoint import Outcome

if TYPE_CHECKING:
    from streamimg.batching import Batch
    from streamimg.daemon import Daemon

log = logging.getLogger("streamimg.metrics")

#: Buckets of ``streamimg_stage_seconds`` (s per frame): 0.5 ms to 10 s.
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                 2.5, 5.0, 10.0)
#: Buckets of ``streamimg_commit_latency_seconds`` (s per batch): 10 ms to 2 min.
COMMIT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class DaemonMetrics(Listener):
    """Prometheus metrics, liveness and readiness of one daemon (see the module docstring).

    Parameters
    ----------
    topology, instance : str
        The values of the ``topology`` and ``instance`` labels on every series.
    stale_s : float
        ``/healthz`` answers 503 when the poll loop has not ticked for this many seconds.
    """

    def __init__(self, topology: str, instance: str, stale_s: float = 30.0):
        self.registry = CollectorRegistry(auto_describe=True)
        self.labels = {"topology": topology, "instance": instance}
        self.stale_s = stale_s
        base = list(self.labels)
        r = self.registry
        where = [*base, "topic", "partition"]
        self.consumed = Counter("streamimg_frames_consumed", "Messages read from the input "
                                "topics into batches (frames)", where, registry=r)
        self.committed = Counter("streamimg_frames_committed", "Frames whose outputs were "
                                 "committed (frames)", where, registry=r)
        self.dead_letters = Counter("streamimg_dead_letters", "Committed dead letters",
                                    [*where, "stage"], registry=r)
        self.transactions = Counter("streamimg_transactions", "Kafka transactions by outcome",
                                    [*base, "outcome"], registry=r)
        self.lag = Gauge("streamimg_consumer_lag_frames", "Records behind the cached high "
                         "watermark, per assigned input partition (frames)",
                         [*base, "topic", "partition"], registry=r)
        self.in_flight = Gauge("streamimg_batches_in_flight", "Batches read and not yet "
                               "committed (batches)", base, registry=r)
        self.stage = Histogram("streamimg_stage_seconds", "Time per frame in each stage, "
                               "measured on the workers (s)", [*base, "stage"],
                               buckets=STAGE_BUCKETS, registry=r)
        self.commit_latency = Histogram("streamimg_commit_latency_seconds", "From a batch "
                                        "closing to its transaction's commit (s)", base,
                                        buckets=COMMIT_BUCKETS, registry=r)
        for outcome in ("committed", "aborted"):  # both series exist from the start
            self.transactions.labels(**self.labels, outcome=outcome)
        self.in_flight.labels(**self.labels).set(0)
        self.commit_latency.labels(**self.labels)
        self._assigned: set[tuple[str, int]] = set()
        self._lag_series: set[tuple[str, str]] = set()
        self._last_txn: dict[str, int] = {}
        self._last_tick: float | None = None  # time.monotonic() of the last tick
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def attach(cls, daemon: Daemon, stale_s: float = 30.0) -> DaemonMetrics:
        """Metrics for ``daemon``, added to its listeners (before :meth:`Daemon.run`)."""
        metrics = cls(daemon.topology.name, daemon.instance, stale_s)
        daemon.listeners.append(metrics)
        return metrics

    # -- health --------------------------------------------------------------------------

    def healthy(self) -> bool:
        """Whether the poll loop ticked within the last ``stale_s`` seconds."""
        last = self._last_tick
        return last is not None and time.monotonic() - last <= self.stale_s

    def ready(self) -> bool:
        """Whether partitions are assigned (the transactional producer is initialised then)."""
        return bool(self._assigned)

    # -- Listener hooks (on the daemon's poll thread) ------------------------------------

    def assigned(self, partitions: list[tuple[str, int]]) -> None:
        """Record the assignment (readiness)."""
        self._assigned |= set(partitions)

    def revoked(self, partitions: list[tuple[str, int]]) -> None:
        """Forget the partitions and their lag series."""
        self._assigned -= set(partitions)
        for topic, p in partitions:
            self._drop_lag((topic, str(p)))

    def batched(self, seq: int, batch: Batch) -> None:
        """Count the batch's messages (frames and dead letters) per input partition."""
        counts: dict[tuple[str, int], int] = {}
        for f in batch.frames:
            counts[(f.topic, f.partition)] = counts.get((f.topic, f.partition), 0) + 1
        for d in batch.dead:
            counts[(d.topic, d.partition)] = counts.get((d.topic, d.partition), 0) + 1
        for (topic, p), n in counts.items():
            self.consumed.labels(**self.labels, topic=topic, partition=str(p)).inc(n)

    def outcome(self, outcome: Outcome) -> None:
        """Count a committed or aborted batch; observe its frames' stage times and latency."""
        status = outcome.status
        if status not in ("committed", "aborted"):
            return
        if not outcome.txn or self._last_txn.get(status) != outcome.txn:
            self._last_txn[status] = outcome.txn
            self.transactions.labels(**self.labels, outcome=status).inc()
        if status != "committed":
            return  # an aborted batch is read and computed again
        b = outcome.batch
        for (topic, p), n in committed_per_partition(b).items():
            self.committed.labels(**self.labels, topic=topic, partition=str(p)).inc(n)
        for d in b.dead:
            self.dead_letters.labels(**self.labels, topic=d.topic, partition=str(d.partition),
                                     stage=d.stage).inc()
        if b.created:
            self.commit_latency.labels(**self.labels).observe(max(0.0, time.time() - b.created))
        for timings in frame_timings(b):  # one observation per frame, however many sinks
            for stage, ms in timings.items():
                self.stage.labels(**self.labels, stage=stage).observe(ms / 1e3)

    def tick(self, lag: dict[str, int], batches: int, nbytes: int) -> None:
        """Mark the loop alive; set lag per partition and batches in flight."""
        self._last_tick = time.monotonic()
        self.in_flight.labels(**self.labels).set(batches)
        current = set()
        for name, n in lag.items():
            topic, _, p = name.rpartition("[")
            key = (topic, p.rstrip("]"))
            current.add(key)
            self.lag.labels(**self.labels, topic=key[0], partition=key[1]).set(n)
        for key in self._lag_series - current:
            self._drop_lag(key)
        self._lag_series = current

    def _drop_lag(self, key: tuple[str, str]) -> None:
        try:
            self.lag.remove(*self.labels.values(), *key)
        except KeyError:
            pass
        self._lag_series.discard(key)

    # -- HTTP ----------------------------------------------------------------------------

    def app(self) -> Callable[..., Any]:
        """The WSGI application: ``/metrics``, ``/healthz``, ``/readyz`` (404 elsewhere)."""
        metrics = make_wsgi_app(self.registry)

        def app(environ: dict, start_response: Callable) -> list[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == "/metrics":
                return metrics(environ, start_response)
            checks = {"/healthz": self.healthy, "/readyz": self.ready}
            if path not in checks:
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [b"not found: try /metrics, /healthz or /readyz\n"]
            ok = checks[path]()
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "text/plain")])
            return [b"ok\n" if ok else b"unavailable\n"]
        return app

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve :meth:`app` on ``host:port`` from a daemon thread; return the bound port.

        ``port`` 0 binds a free port. Raises ``OSError`` if the address is taken.
        """
        self._server = make_server(host, port, self.app(), server_class=_Server,
                                   handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="streamimg-metrics")
        self._thread.start()
        bound = self._server.server_port
        log.info("metrics on http://%s:%d/metrics (health /healthz, readiness /readyz)",
                 host, bound)
        return bound

    def close(self) -> None:
        """Stop serving (nothing when not serving); waits up to 5 s for the server thread."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5.0)
            self._server = self._thread = None


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        """No access log: scrapes come every few seconds."""
