"""Configuration: Kafka client settings and batching, validated at start-up.

Every check here runs before the daemon subscribes, so a bad configuration
fails before any offset moves.
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
        """
        return {
            **self.common(), "receive.message.max.bytes": 2_147_483_647,
            "group.id": group, "client.id": client_id,
            "isolation.level": "read_committed", "enable.auto.commit": False,
            "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
            "session.timeout.ms": self.session_timeout_ms,
            "heartbeat.interval.ms": self.heartbeat_interval_ms,
            "fetch.wait.max.ms": self.fetch_wait_max_ms,
            "fetch.max.bytes": self.max_message_bytes,
            "max.partition.fetch.bytes": self.max_message_bytes,
            "fetch.queue.backoff.ms": 10,
            "partition.assignment.strategy": "cooperative-sticky",
            **self.extra,
        }

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
        Largest batch (frames); a batch closes when it has this many.
    max_wait_ms : int
        A non-empty batch closes this many ms after its first frame arrived. Under a
        backlog batches fill to ``max_frames`` at once, so this only bounds latency at
        low rates: at 20 frames/s, 30 ms gave p50 229 ms against 307 ms at 100 (measured,
        light work, bench_peers).
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
