"""Configuration: Kafka client settings and batching, validated at start-up.

Every check here runs before the daemon subscribes, so a bad configuration
fails before any offset moves.

What the settings guarantee: the consumer reads only committed input
(``read_committed``) and commits nothing by itself (offsets go into the daemon's
transactions); input partitions are served fairly, a backlog on one does not starve
another (:data:`FETCH_MAX_BYTES`; the conditions are in :class:`KafkaConfig`'s Notes);
work in flight is bounded in batches and bytes (:class:`BatchConfig`).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")  # Kafka's legal topic characters and length

# The daemon's consumer fetches at most this much per response (fetch.max.bytes) and per
# partition (max.partition.fetch.bytes); a larger record batch still comes whole when it is
# the first of a response (Kafka's rule; the embedded broker's too). Why so small: when the
# daemon is slower than the broker, librdkafka's prefetch queue (64 MB) is full and fetching
# stops; each time the daemon takes a batch, fetching resumes, and the first request after
# such a pause names the same partition first every time. A broker fills a response partition
# by partition in request order, and the embedded broker ignores the per-partition bound (its
# responses stop near 5 MB), so with a response larger than the daemon's batch one response
# refilled the queue each time, always from one partition. At 256 KB a response holds one raw
# frame: the frames of a batch are refilled by several responses, which librdkafka's round
# robin takes from the partitions in turn. Measured, 2 partitions x 500 raw 640x272 frames
# (522 KB), light work, 3 runs: at 64 MB partition 1 had 119-194 frames committed when
# partition 0 was drained (6-10 s without a commit for it), at 256 KB 497-500 (never more than
# 0.8 s), at 36-43 frames/s both; an 8 MB per-partition bound alone changed nothing on the
# embedded broker. Raw 720p: 31.0 against 30.9 frames/s (medians of 4). 64 KB was fair for
# 100 KB frames too, but the embedded broker spends ~2 ms of CPU a fetch: a plain consumer of
# 100 KB frames peaked at 270-410 frames/s, against ~1,000 at 256 KB and 2,500-3,300 at 64 MB.
#: The daemon's consumer fetches at most this many bytes a response and a partition (a larger
#: record batch still comes whole): one raw frame a response, so partitions interleave.
FETCH_MAX_BYTES = 256 * 1024


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the setting."""


class KafkaLog:
    """Where librdkafka's own log lines go: Python logging, at sensible levels.

    confluent-kafka calls ``log(level, fmt, *args)`` (its ``logger`` setting) from
    ``poll``/``flush``/``consume``. Lines go to the ``streamimg.kafka`` logger at most
    at WARNING (the errors that matter reach the code as exceptions or error events),
    and a line repeated within ``quiet_s`` seconds (librdkafka retries a refused
    connection many times a second) goes to DEBUG. ``KafkaLog(cap=logging.DEBUG)``
    sends everything to DEBUG (used while probing a broker that may be down).
    """

    def __init__(self, cap: int = logging.WARNING, quiet_s: float = 60.0):
        self.logger = logging.getLogger("streamimg.kafka")
        self.cap, self.quiet_s = cap, quiet_s
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def log(self, level: int, msg: str, *args: object) -> None:
        """Log one librdkafka line (``level`` is a Python logging level)."""
        text = msg % args if args else msg
        key = re.sub(r"\d+", "#", text)  # "after 0ms", "3 identical error(s)": same line
        now = time.monotonic()
        with self._lock:
            repeat = now - self._last.get(key, -1e9) < self.quiet_s
            if len(self._last) > 1000:
                self._last.clear()
            self._last[key] = now
        self.logger.log(logging.DEBUG if repeat else min(level, self.cap), "%s", text)


KAFKA_LOG = KafkaLog()


def check_topic(name: str, what: str = "topic") -> str:
    """Return ``name`` if it is a legal Kafka topic name.

    Raises
    ------
    ConfigError
        If ``name`` is empty, longer than 249 characters, or has characters
        other than ASCII letters, digits, ``.``, ``_`` and ``-``.
    """
    if not isinstance(name, str) or not TOPIC_RE.match(name) or name in (".", ".."):
        raise ConfigError(f"{what} {name!r} is not a legal Kafka topic name")
    return name


@dataclass(frozen=True)
class KafkaConfig:
    """Settings shared by the consumer and the transactional producer.

    Parameters
    ----------
    bootstrap : str
        ``host:port[,host:port...]`` of the Kafka cluster.
    session_timeout_ms : int
        Consumer-group session timeout (ms). 6000 suits both Apache Kafka and
        the embedded broker, whose group join waits ``session.timeout.ms / 2``.
    heartbeat_interval_ms : int
        Must be below a third of ``session_timeout_ms`` (Kafka's guidance).
    fetch_wait_max_ms : int
        Longest a fetch waits for data (ms). The embedded broker does not wake
        a waiting fetch on produce, so latency follows this (median 17 ms at
        100, 3 ms at 10); Apache Kafka wakes it, so a low value costs little.
    max_message_bytes : int
        Largest record (bytes) produced, and largest input record processed; a
        1080p RGB frame is 6.2 MB. The consumer still receives larger records
        (``receive.message.max.bytes`` at librdkafka's maximum: a record over the
        receive limit stalls its partition for good, with only a line on stderr)
        and the daemon dead-letters them by reference.
    extra : dict
        Further librdkafka settings, applied to both clients last.

    Notes
    -----
    Fairness between input partitions: the daemon's consumer fetches at most
    :data:`FETCH_MAX_BYTES` (256 KB) a response, so while the daemon is slower than the
    broker (a backlog) the frames it takes for each batch are refilled by several fetch
    responses, taken from the assigned partitions in turn: a backlog on one partition does
    not hold back another, which advances at the same rate. This holds when a batch spans at
    least two of the input's record batches: raw frames (a record batch each) with
    ``max_frames`` >= 2, and frames produced one per record batch (a camera at its frame
    rate). Small records packed many to a record batch (a backlog of JPEG frames produced in
    bulk, ~30 in each 1 MB batch) are served in turns of whole record batches: measured, the
    other partition had 213-292 frames committed when the first had 300 (64 MB fetches: 0-193),
    and went at most 2.5 s without a commit (64 MB: 4-9 s). Each response is one round trip
    to the broker: on a link with a long round trip, ``extra`` may raise ``fetch.max.bytes``
    and ``max.partition.fetch.bytes`` (fewer, larger responses; partitions then take turns in
    larger steps, and one may wait while another's backlog drains).
    """

    bootstrap: str = "127.0.0.1:9092"
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1500
    fetch_wait_max_ms: int = 10
    max_message_bytes: int = 64 * 1024 * 1024
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.bootstrap or " " in self.bootstrap:
            raise ConfigError(f"bootstrap {self.bootstrap!r} must be host:port[,host:port]")
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ConfigError(
                f"heartbeat_interval_ms={self.heartbeat_interval_ms} must be at most a third "
                f"of session_timeout_ms={self.session_timeout_ms}")
        if not 1024 <= self.max_message_bytes <= 1_000_000_000:
            raise ConfigError(f"max_message_bytes={self.max_message_bytes} outside [1 KiB, 1 GB]")

    def common(self) -> dict[str, Any]:
        """Librdkafka settings every client uses (admin clients and readers too).

        Includes the ``extra`` settings that concern the connection (``security.*``,
        ``sasl.*``, ``ssl.*``, ``socket.*``, ``client.*``, ``broker.*``), so SASL/TLS
        reach every client the daemon opens, and ``logger`` (:data:`KAFKA_LOG`), so
        librdkafka's own lines go through Python logging, never raw to stderr.
        """
        conn = {k: v for k, v in self.extra.items()
                if k.split(".")[0] in ("security", "sasl", "ssl", "socket", "client", "broker")}
        return {
            "bootstrap.servers": self.bootstrap,
            "message.max.bytes": self.max_message_bytes,
            "receive.message.max.bytes": self.max_message_bytes + 1024 * 1024,
            "logger": KAFKA_LOG,
            **conn,
        }

    def consumer(self, group: str, client_id: str) -> dict[str, Any]:
        """Consumer settings for exactly-once reading in consumer group ``group``.

        ``read_committed`` hides open transactions; auto-commit is off because
        offsets are committed inside the producer's transaction.
        ``fetch.queue.backoff.ms=10``: with librdkafka's default of 1000 the
        prefetch queue stalled after ~23 raw 720p frames (25 -> 41 frames/s).
        ``fetch.max.bytes`` and ``max.partition.fetch.bytes`` are :data:`FETCH_MAX_BYTES`
        (256 KB, one raw frame per response), so partitions interleave (see there); larger
        records still arrive whole. The consumer sends no records, so its
        ``message.max.bytes`` is lowered to the fetch bound (librdkafka refuses a
        ``fetch.max.bytes`` below it), whatever ``extra`` sets for the producer.
        """
        conf = {
            **self.common(), "receive.message.max.bytes": 2_147_483_647,
            "group.id": group, "client.id": client_id,
            "isolation.level": "read_committed", "enable.auto.commit": False,
            "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
            "session.timeout.ms": self.session_timeout_ms,
            "heartbeat.interval.ms": self.heartbeat_interval_ms,
            "fetch.wait.max.ms": self.fetch_wait_max_ms,
            "fetch.max.bytes": FETCH_MAX_BYTES,
            "max.partition.fetch.bytes": FETCH_MAX_BYTES,
            "fetch.queue.backoff.ms": 10,
            "partition.assignment.strategy": "cooperative-sticky",
            **self.extra,
        }
        conf["message.max.bytes"] = max(1000, min(int(conf["message.max.bytes"]),
                                                  int(conf["fetch.max.bytes"])))
        return conf

    def reader(self, read_committed: bool = True) -> dict[str, Any]:
        """Settings for a group-less reader (``assign``, no commits): tools and tests.

        A fresh random ``group.id`` (librdkafka requires one) that never commits.
        """
        return {
            **self.common(), "group.id": f"streamimg-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
            "fetch.wait.max.ms": self.fetch_wait_max_ms, "fetch.queue.backoff.ms": 10,
            "fetch.max.bytes": self.max_message_bytes,
            "max.partition.fetch.bytes": self.max_message_bytes,
        }

    def producer(self, transactional_id: str | None = None) -> dict[str, Any]:
        """Producer settings; transactional (idempotent, acks=all) when an id is given."""
        conf = {**self.common(), "linger.ms": 5, "compression.type": "none"}
        if transactional_id:
            conf.update({"transactional.id": transactional_id, "enable.idempotence": True,
                         "acks": "all", "transaction.timeout.ms": 60_000})
        return {**conf, **self.extra}


@dataclass(frozen=True)
class BatchConfig:
    """How the source groups frames into batches and how many run at once.

    Parameters
    ----------
    max_frames : int
        Largest batch (frames); a batch closes when it has this many. Under a backlog a
        batch takes frames from every assigned partition in turn (see
        :class:`KafkaConfig`, Notes); at 1 the partition fetched first after each batch is
        favoured (measured, raw frames: 200 frames of one partition committed when another
        had 300), at 2 and more partitions were served equally.
    max_wait_ms : int
        A non-empty batch closes this many ms after its first frame arrived, or at once
        when a worker thread is idle and the consumer has nothing more to give. Under a
        backlog batches fill to ``max_frames`` at once, so this only bounds latency at
        low rates while every thread is busy: at 20 frames/s, 30 ms gave p50 229 ms
        against 307 ms at 100 (measured, light work, bench_peers).
    max_in_flight : int
        Batches submitted and not yet committed; commits stay in input order.
    max_in_flight_bytes : int
        Bound on the payload bytes of those batches (what the workers and the
        transaction hold). At either bound the consumer stops taking new
        messages and, if the bound holds for min(5 s, max.poll.interval.ms / 3),
        pauses its partitions while it keeps polling (heartbeats and rebalances go on).
    """

    max_frames: int = 8
    max_wait_ms: int = 30
    max_in_flight: int = 4
    max_in_flight_bytes: int = 512 * 1024 * 1024

    def __post_init__(self) -> None:
        for name, lo, hi in (("max_frames", 1, 10_000), ("max_wait_ms", 0, 3_600_000),
                             ("max_in_flight", 1, 1_000),
                             ("max_in_flight_bytes", 1024, 1 << 40)):
            value = getattr(self, name)
            if not isinstance(value, int) or not lo <= value <= hi:
                raise ConfigError(f"{name}={value!r} must be an integer in [{lo}, {hi}]")


def kafka_config(bootstrap: str, items: list[str]) -> KafkaConfig:
    """A :class:`KafkaConfig` from ``--kafka KEY=VALUE`` items (group timeouts as fields).

    Raises
    ------
    ConfigError
        For an item that is not KEY=VALUE, or timeouts that do not fit together.
    """
    extra, fields = {}, {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--kafka {item!r}: expected KEY=VALUE (a librdkafka setting)")
        if key in ("session.timeout.ms", "heartbeat.interval.ms"):
            if not value.isdigit():
                raise ConfigError(f"--kafka {item!r}: {key} must be a whole number of ms")
            fields[key.replace(".", "_")] = int(value)
        else:
            extra[key] = value
    return KafkaConfig(bootstrap=bootstrap, extra=extra, **fields)
