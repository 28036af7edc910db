"""Kafka housekeeping shared by the daemon, the CLI, the demo and the tests.

Written against the Kafka protocol only. The embedded broker answers
ListOffsets("latest") wrongly, so nothing here asks for the log end: reading
"to the end" uses ``enable.partition.eof``, and progress is measured with the
group's committed offsets.
"""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from streamimg.config import ConfigError, KafkaConfig, KafkaLog

log = logging.getLogger(__name__)


class BrokerUnreachable(ConnectionError):
    """No broker answered in time (metadata, committed offsets); the message says what."""


class MissingTopicError(ConfigError):
    """A topic that must exist does not; the message names it and close matches."""


def connect(kafka: KafkaConfig, timeout_s: float = 5.0) -> set[str]:
    """Check that the cluster answers within ``timeout_s`` s; return its topic names.

    librdkafka's log lines of this probe go to DEBUG only (a refused connection is
    retried many times a second): the exception says it once.

    Raises
    ------
    BrokerUnreachable
        If no broker at ``kafka.bootstrap`` answers within ``timeout_s`` seconds.
    """
    admin = AdminClient({**kafka.common(), "logger": KafkaLog(cap=logging.DEBUG)})
    try:
        meta = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        reason = exc.args[0].str().removeprefix("Failed to get metadata: ")
        raise BrokerUnreachable(f"no Kafka broker answered at {kafka.bootstrap} within "
                                f"{timeout_s:g} s: {reason}") from None
    return {name for name, t in meta.topics.items() if t.error is None}


def require_topics(existing: Iterable[str], topics: Iterable[str], what: str = "topic") -> None:
    """Check that every name of ``topics`` is in ``existing`` (from :func:`connect`).

    Raises
    ------
    MissingTopicError
        Naming the first missing topic and up to three existing topics with close names.
    """
    existing = set(existing)
    for name in topics:
        if name not in existing:
            close = difflib.get_close_matches(name, sorted(existing), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise MissingTopicError(f"{what} {name!r} does not exist{hint}")


def ensure_topics(kafka: KafkaConfig, topics: Iterable[str], partitions: int = 1,
                  timeout_s: float = 30.0, config: dict[str, str] | None = None) -> list[str]:
    """Create the topics that do not exist yet; return the names created.

    ``config``: topic configs for the created topics (e.g. ``{"cleanup.policy":
    "compact"}``); existing topics are left as they are.

    Raises
    ------
    KafkaException
        If the cluster is unreachable within ``timeout_s`` or refuses a topic.
    """
    admin = AdminClient(kafka.common())
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    missing = sorted(set(topics) - existing)
    if not missing:
        return []
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=-1, config=config or {})
         for t in missing],
        operation_timeout=timeout_s)
    for fut in futures.values():
        try:
            fut.result(timeout_s)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # a racing creator
                raise
    return missing


def partitions_of(kafka: KafkaConfig, topic: str, timeout_s: float = 10.0) -> list[int]:
    """Partition ids of ``topic`` (empty if it does not exist).

    Lists all topics: a metadata request naming the topic would let a broker with
    auto-creation on create it as a side effect.
    """
    meta = AdminClient(kafka.common()).list_topics(timeout=timeout_s)
    t = meta.topics.get(topic)
    return sorted(t.partitions) if t is not None and t.error is None else []


def committed_offsets(kafka: KafkaConfig, group: str, topics: Iterable[str],
                      timeout_s: float = 10.0) -> dict[tuple[str, int], int]:
    """The group's committed next offsets, ``{(topic, partition): offset}``; -1 if none."""
    consumer = Consumer({**kafka.common(), "group.id": group, "enable.auto.commit": False})
    try:
        tps = [TopicPartition(t, p) for t in topics for p in partitions_of(kafka, t, timeout_s)]
        if not tps:
            return {}
        return {(tp.topic, tp.partition): tp.offset
                for tp in consumer.committed(tps, timeout=timeout_s)}
    finally:
        consumer.close()


def committed_positions(consumer: Consumer, partitions: list[TopicPartition], *,
                        stopping: Callable[[], bool] = lambda: False, bound_s: float = 120.0,
                        timeout_s: float = 10.0) -> list[TopicPartition]:
    """``consumer.committed(partitions)``, tried again while the broker does not answer.

    Each try waits up to ``timeout_s`` s; after a failed one a warning is logged and the
    next follows after a backoff of 0.5 s, doubling up to 5 s. Where a consumer resumes
    after an abort or a rebalance comes from here, so a broker restart must not end the
    daemon with a traceback (measured before: a rewind while the broker was down for more
    than 30 s raised ``_TIMED_OUT`` from ``committed`` and the daemon exited 1).

    Raises
    ------
    BrokerUnreachable
        If no answer came within ``bound_s`` s, or ``stopping()`` turned true meanwhile (a
        stop request: the positions are unknown, and nothing was read or committed).
    KafkaException
        At once, for an error that is neither retriable nor a timeout or transport error
        (an authorization failure, for example).
    """
    transient = {KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
                 KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.NOT_COORDINATOR,
                 KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.REQUEST_TIMED_OUT}
    deadline, backoff = time.monotonic() + bound_s, 0.5
    while True:
        try:
            return consumer.committed(partitions, timeout=timeout_s)
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if not (err.retriable() or err.code() in transient):
                raise
            why = err.str()
        if stopping() or time.monotonic() + backoff > deadline:
            raise BrokerUnreachable(
                f"the committed offsets of {len(partitions)} partitions could not be read "
                f"({why}) {'before the stop request' if stopping() else f'in {bound_s:g} s'}")
        log.warning("reading committed offsets: %s; trying again in %.1f s", why, backoff)
        time.sleep(backoff)
        backoff = min(5.0, backoff * 2)


def read_topic(kafka: KafkaConfig, topic: str, timeout_s: float = 30.0,
               read_committed: bool = True,
               on_progress: Callable[[int, int | None], None] | None = None) -> list[Message]:
    """Read every record of ``topic`` from the beginning to its current end.

    Uses no consumer group (``assign``), so it moves no offsets. Records come
    in offset order per partition, partitions one after another.

    ``on_progress(read, end)``, when given, is called after each batch fetched:
    ``read`` records so far, and ``end`` the sum of the partitions' high watermarks
    as the fetch responses reported them (None until every partition has reported).
    ``end`` counts offsets, so ``read`` can stay below it: transaction markers, records
    of open or aborted transactions and records deleted by retention take offsets too.

    Raises
    ------
    TimeoutError
        If the end of every partition is not reached within ``timeout_s``.
    KafkaException
        On a consumer error other than reaching a partition's end.
    """
    parts = partitions_of(kafka, topic)
    if not parts:
        return []
    consumer = Consumer({**kafka.reader(read_committed), "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])  # 0: earliest on Kafka too
    out: dict[int, list[Message]] = {p: [] for p in parts}
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout_s
    read = 0
    try:
        while len(at_end) < len(parts):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: partitions {sorted(set(parts) - at_end)} "
                                   f"did not reach their end in {timeout_s} s")
            for m in consumer.consume(1000, 0.2):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        at_end.add(m.partition())
                        continue
                    raise KafkaException(m.error())
                out[m.partition()].append(m)
                at_end.discard(m.partition())
                read += 1
            if on_progress is not None:  # cached: ListOffsets("latest") may be wrong here
                highs = [consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                        cached=True)[1] for p in parts]
                on_progress(read, sum(highs) if min(highs) >= 0 else None)
    finally:
        consumer.close()
    return [m for p in parts for m in out[p]]


def produce(producer: Producer, topic: str, **kwargs: Any) -> None:
    """``producer.produce(topic, **kwargs)``, waiting while the local queue is full.

    A full queue (``BufferError``) means librdkafka has not sent earlier records
    yet: serve delivery callbacks for 50 ms and try again, instead of failing.

    Raises
    ------
    KafkaException
        From ``produce`` itself (e.g. a record larger than ``message.max.bytes``).
    """
    while True:
        try:
            producer.produce(topic, **kwargs)
            break
        except BufferError:
            producer.poll(0.05)
    producer.poll(0)


def read_record(kafka: KafkaConfig, topic: str, partition: int, offset: int,
                timeout_s: float = 30.0) -> bytes | None:
    """The value of the record at ``offset`` of ``topic``/``partition`` (read_committed).

    Raises
    ------
    TimeoutError
        If the record does not arrive within ``timeout_s``.
    KafkaException
        On a consumer error.
    """
    consumer = Consumer(kafka.reader())
    consumer.assign([TopicPartition(topic, partition, offset)])
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            m = consumer.poll(0.2)
            if m is None:
                continue
            if m.error():
                raise KafkaException(m.error())
            if m.offset() == offset:
                return m.value()
        raise TimeoutError(f"no record at {topic}[{partition}]@{offset} after {timeout_s} s")
    finally:
        consumer.close()
