"""Results sink: a topology's analytics and annotated frames into the results database.

``python -m streamimg.results.sink --bootstrap HOST:PORT --analytics T.analytics
--frames T.frames --db sqlite:///results.db --images DIR`` copies each analytics record
(``<topology>.analytics``, see the README's "Analytics record") into ``frame_results`` and
each annotated frame (``<topology>.frames``) into the image store as
``<images>/<analysis>/<topology>/<frame:08d>.jpg``, with its path in the same row. The
analysis id is the frame's stream id; the topology name is the topics' name without the
suffix (or ``--topology``). Optionally, ``--status <requests>.status`` carries the ingest
job's progress into ``analyses`` and ``--dlq <topology>.dlq`` counts the topology's dead
letters against their analyses (see :mod:`streamimg.results.records`).

Exactly-once, the standard way into a database: the consumer never commits offsets to
Kafka. Each batch's rows and the next offset of every partition it read go into the
database in ONE transaction (:meth:`~streamimg.results.store.ResultsStore.apply`), and on
assignment each partition is sought to its stored next offset. A crash before the commit
loses the batch's rows and positions together, and the next run reads the same records
again; the upserts are keyed by ``(analysis, frame, topology)``, so a replay never makes a
second row. Images are written first, under a name that is the same every time
(overwritten, atomically for a local directory): a crash between the two leaves a file
that the replay writes again and the row then names.

The consumer reads with ``isolation.level=read_committed``, so records of open
transactions are never stored. The embedded broker (Tansu 0.6) also hands over records of
aborted transactions, which a topology that crashed mid-transaction leaves behind: they are
stored like the others (the topology's replay writes the same key with the same record
afterwards, so the row ends up right; a dead letter of an aborted transaction counts).

A record that cannot be stored (not JSON, no ``stream`` or ``frame``, an unknown schema
version, a frame whose headers or payload do not decode) does not stop the sink: one
warning line with its topic, partition, offset and reason, a row in ``rejects`` and, when
its analysis is known, +1 to that analysis's ``dead_letters``; its offset moves with the
batch.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition

from streamimg.admin import connect, require_topics
from streamimg.codecs.frame import FrameDecodeError
from streamimg.codecs.gap import is_gap
from streamimg.config import ConfigError, KafkaConfig, check_topic, kafka_config
from streamimg.faults import crash_point
from streamimg.results.images import ImageStore, image_name, to_jpeg
from streamimg.results.records import (
    Malformed,
    analytics_row,
    dead_letter,
    frame_header,
    status_row,
)
from streamimg.results.store import ImageRow, Reject, ResultRow, ResultsStore, StatusRow

log = logging.getLogger(__name__)

ANALYTICS_SUFFIX, FRAMES_SUFFIX = ".analytics", ".frames"


def topology_name(analytics_topic: str, frames_topic: str | None = None,
                  topology: str | None = None) -> str:
    """The topology name rows are stored under: ``topology``, or the topics' common stem.

    Raises
    ------
    ConfigError
        If ``topology`` is not given and the topics are not ``<name>.analytics`` and
        ``<name>.frames`` of one name.
    """
    if topology:
        return topology
    stem = analytics_topic.removesuffix(ANALYTICS_SUFFIX)
    if stem == analytics_topic or not stem or (
            frames_topic is not None and frames_topic != stem + FRAMES_SUFFIX):
        raise ConfigError(f"cannot tell the topology from {analytics_topic!r} and "
                          f"{frames_topic!r}: pass --topology")
    return stem


@dataclass
class SinkStats:
    """What the sink did: counts since it started, and time spent (ms)."""

    batches: int = 0
    records: int = 0  # every record read, rejects included
    rows: int = 0  # analytics records stored
    images: int = 0  # annotated frames stored
    statuses: int = 0  # status records stored
    dead_letters: int = 0  # the topology's dead letters counted
    rejects: int = 0  # malformed records
    gaps: int = 0  # gap records (a live stream's lost captures), logged, not stored
    images_ms: float = 0.0  # reading records, decoding, encoding and writing images
    apply_ms: float = 0.0  # database transactions

    def __str__(self) -> str:
        return (f"{self.batches} batches, {self.records} records: {self.rows} rows, "
                f"{self.images} images, {self.statuses} statuses, {self.dead_letters} dead "
                f"letters, {self.rejects} rejected; {self.images_ms:.0f} ms on records and "
                f"images, {self.apply_ms:.0f} ms in the database")


class ResultsSink:
    """Copies a topology's analytics and annotated frames into a :class:`ResultsStore`.

    Parameters
    ----------
    kafka : KafkaConfig
        The cluster and client settings (``.consumer(...)``: security settings apply).
    store : ResultsStore
        Where rows and positions go; :meth:`run` creates its tables if missing.
    analytics_topic : str
        The topology's analytics topic (``<topology>.analytics``).
    frames_topic : str or None
        Its annotated-frames topic (``<topology>.frames``); None for analytics only.
    images : str or None
        Image store root (local directory or fsspec URL); needed with ``frames_topic``.
    consumer : str
        Consumer group id, and the key of this sink's positions in the database.
    topology : str, optional
        The topology name rows are stored under (default: from the topic names).
    status_topic : str, optional
        The ingest job's status topic (``<requests>.status``).
    dlq_topic : str, optional
        The topology's dead-letter topic (``<topology>.dlq``).
    max_records : int
        Largest batch (records): one database transaction each.
    max_wait_ms : int
        Longest a batch waits to fill (ms).
    jpeg_quality : int
        For frames that arrive raw or PNG.
    wait_topics_s : float
        How long (s) :meth:`run` waits for missing topics to be created (the jobs that
        create them may start at the same time).

    Raises
    ------
    ConfigError
        For an illegal topic name, a topology that cannot be told, frames without
        ``images``, or a bound out of range.
    """

    def __init__(self, kafka: KafkaConfig, store: ResultsStore, analytics_topic: str,
                 frames_topic: str | None, images: str | None,
                 consumer: str = "streamimg-results", topology: str | None = None,
                 status_topic: str | None = None, dlq_topic: str | None = None,
                 max_records: int = 500, max_wait_ms: int = 100, jpeg_quality: int = 90,
                 wait_topics_s: float = 60.0):
        self.kafka, self.store, self.name = kafka, store, consumer
        self.analytics_topic = check_topic(analytics_topic, "analytics topic")
        self.frames_topic = check_topic(frames_topic, "frames topic") if frames_topic else None
        self.status_topic = check_topic(status_topic, "status topic") if status_topic else None
        self.dlq_topic = check_topic(dlq_topic, "dead-letter topic") if dlq_topic else None
        if len(set(self.topics)) < len(self.topics):
            raise ConfigError(f"topics {self.topics} must differ")
        self.topology = topology_name(analytics_topic, frames_topic, topology)
        if self.frames_topic and not images:
            raise ConfigError("a frames topic needs an image store (--images)")
        self.images = ImageStore(images) if self.frames_topic else None
        if not 1 <= max_records <= 100_000 or not 0 <= max_wait_ms <= 60_000:
            raise ConfigError(f"max_records={max_records} must be in [1, 100000] and "
                              f"max_wait_ms={max_wait_ms} in [0, 60000]")
        self.max_records, self.max_wait_ms, self.jpeg_quality = (
            max_records, max_wait_ms, jpeg_quality)
        self.wait_topics_s = wait_topics_s
        self.stats = SinkStats()
        self._consumer: Consumer | None = None
        self._cooperative = True

    @property
    def topics(self) -> list[str]:
        """The topics read."""
        return [t for t in (self.analytics_topic, self.frames_topic, self.status_topic,
                            self.dlq_topic) if t]

    def run(self, stop: threading.Event) -> None:
        """Consume and store batches until ``stop`` is set; the batch under way finishes.

        Raises
        ------
        BrokerUnreachable, MissingTopicError
            If the cluster does not answer, or a topic is still missing after
            ``wait_topics_s``.
        KafkaException
            On a fatal consumer error.
        sqlalchemy.exc.SQLAlchemyError, OSError
            If the database or the image store fails; the batch is not stored, and the
            next run reads it again.
        """
        self.store.create()
        if not self._wait_for_topics(stop):
            return
        conf = self.kafka.consumer(self.name, f"{self.name}-{uuid.uuid4().hex[:8]}")
        self._cooperative = "cooperative" in str(conf.get("partition.assignment.strategy"))
        self._consumer = Consumer(conf)
        self._consumer.subscribe(self.topics, on_assign=self._on_assign)
        log.info("storing %s into %s as topology %s (consumer %s)", self.topics,
                 self.store.engine.url.render_as_string(hide_password=True), self.topology,
                 self.name)
        last_report = time.monotonic()
        try:
            while not stop.is_set():
                messages = self._consumer.consume(self.max_records, self.max_wait_ms / 1e3)
                if messages:
                    self._store_batch(messages)
                if time.monotonic() - last_report > 10:
                    last_report = time.monotonic()
                    log.info("%s", self.stats)
        finally:
            self._consumer.close()  # commits nothing: enable.auto.commit is off
            self._consumer = None
        log.info("stopped: %s", self.stats)

    def _wait_for_topics(self, stop: threading.Event) -> bool:
        """Wait until every topic exists (False: stopped first); MissingTopicError at the end."""
        deadline = time.monotonic() + self.wait_topics_s
        while True:
            existing = connect(self.kafka, 30.0)
            missing = [t for t in self.topics if t not in existing]
            if not missing:
                return True
            if time.monotonic() >= deadline:
                require_topics(existing, missing)  # raises MissingTopicError
            log.info("waiting for topics %s to be created", missing)
            if stop.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
                return False

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Seek each assigned partition to its stored next offset (else the beginning)."""
        stored = self.store.positions(self.name)
        for tp in partitions:
            tp.offset = stored.get((tp.topic, tp.partition), OFFSET_BEGINNING)
        log.info("assigned %s", ", ".join(
            f"{tp.topic}[{tp.partition}]@{'beginning' if tp.offset < 0 else tp.offset}"
            for tp in partitions))
        if self._cooperative:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)

    def _store_batch(self, messages: list[Message]) -> None:
        """Images first, then one database transaction with the rows and positions."""
        rows: list[ResultRow] = []
        images: list[ImageRow] = []
        rejects: list[Reject] = []
        statuses: list[StatusRow] = []
        positions: dict[tuple[str, int], int] = {}
        dead = 0
        start = time.perf_counter()
        for m in messages:
            if m.error() is not None:
                if m.error().fatal():
                    raise KafkaException(m.error())
                log.warning("consumer: %s", m.error().str())
                continue
            tp = (m.topic(), m.partition())
            positions[tp] = max(positions.get(tp, 0), m.offset() + 1)
            try:
                if m.topic() == self.analytics_topic and is_gap(m.headers()):
                    log.info("%s: %s", m.topic(), m.value().decode(errors="replace"))
                    self.stats.gaps += 1
                elif m.topic() == self.analytics_topic:
                    rows.append(analytics_row(m, self.topology))
                elif m.topic() == self.frames_topic:
                    images.append(self._image(m))
                elif m.topic() == self.status_topic:
                    statuses.append(status_row(m))
                else:
                    rejects.append(dead_letter(m))
                    dead += 1
            except Malformed as exc:
                log.warning("rejected %s[%d]@%d: %s", m.topic(), m.partition(), m.offset(), exc)
                rejects.append(Reject(m.topic(), m.partition(), m.offset(), exc.analysis,
                                      str(exc)))
        written = time.perf_counter()
        crash_point("results_after_images")
        if positions:
            self.store.apply(rows, images, positions, self.name, rejects, statuses)
        s = self.stats
        s.batches += 1
        s.records += sum(1 for m in messages if m.error() is None)
        s.rows, s.images, s.statuses = (s.rows + len(rows), s.images + len(images),
                                        s.statuses + len(statuses))
        s.dead_letters, s.rejects = s.dead_letters + dead, s.rejects + len(rejects) - dead
        s.images_ms += (written - start) * 1e3
        s.apply_ms += (time.perf_counter() - written) * 1e3

    def _image(self, m: Message) -> ImageRow:
        """Store the annotated frame of ``m`` as a JPEG; its row names where."""
        header = frame_header(m)
        try:
            jpeg = to_jpeg(header, m.value(), self.jpeg_quality)
        except FrameDecodeError as exc:
            raise Malformed(f"frame {header.frame}: {exc}", header.stream) from None
        assert self.images is not None
        where = self.images.put(image_name(header.stream, self.topology, header.frame), jpeg)
        return ImageRow(header.stream, header.frame, self.topology, header.timestamp_ms, where)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m streamimg.results.sink",
        description="Store a topology's analytics records and annotated frames in a "
                    "database, exactly-once. Exits 0 on SIGTERM/SIGINT after the current batch.")
    p.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka host:port[,...]")
    p.add_argument("--analytics", required=True, metavar="TOPIC",
                   help="analytics topic (<topology>.analytics)")
    p.add_argument("--frames", metavar="TOPIC",
                   help="annotated-frames topic (<topology>.frames); omit for analytics only")
    p.add_argument("--db", default="sqlite:///results.db",
                   help="SQLAlchemy URL of the results database (SQLite or PostgreSQL)")
    p.add_argument("--images", metavar="DIR_OR_URL",
                   help="where annotated frames go (a directory or an fsspec URL)")
    p.add_argument("--consumer", default="streamimg-results",
                   help="consumer group and positions key (one per sink job)")
    p.add_argument("--topology", help="topology name of the rows (default: from the topics)")
    p.add_argument("--status", metavar="TOPIC",
                   help="the ingest job's status topic (<requests>.status), into analyses")
    p.add_argument("--dlq", metavar="TOPIC",
                   help="the topology's dead letters (<topology>.dlq), counted per analysis")
    p.add_argument("--wait-topics", type=float, default=60.0, metavar="S",
                   help="how long to wait for missing topics to be created (s)")
    p.add_argument("--kafka", action="append", metavar="KEY=VALUE", default=[],
                   help="a librdkafka setting (repeatable)")
    p.add_argument("--max-records", type=int, default=500, help="largest batch (records)")
    p.add_argument("--max-wait-ms", type=int, default=100, help="longest a batch waits (ms)")
    p.add_argument("--jpeg-quality", type=int, default=90, help="for raw/PNG frames (0-100)")
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the sink until SIGTERM or SIGINT; return the exit code.

    0 after a stop request (the current batch is stored first); otherwise the ``streamimg``
    command's codes (:func:`streamimg.errors.error_line`): 2 for a configuration error or a
    missing topic, 4 when no broker answers, 1 for anything else (database, image store).
    """
    from streamimg.errors import error_line
    from streamimg.logs import configure

    args = _parser().parse_args(argv)
    configure(args.log_format, logging.DEBUG if args.verbose else logging.INFO)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    store = None
    try:
        store = ResultsStore(args.db)
        sink = ResultsSink(kafka_config(args.bootstrap, args.kafka), store, args.analytics,
                           args.frames, args.images, consumer=args.consumer,
                           topology=args.topology, status_topic=args.status,
                           dlq_topic=args.dlq, max_records=args.max_records,
                           max_wait_ms=args.max_wait_ms, jpeg_quality=args.jpeg_quality,
                           wait_topics_s=args.wait_topics)
        sink.run(stop)
        return 0
    except Exception as exc:  # one line, as the streamimg command reports errors
        if args.verbose:
            log.exception("results sink failed")
        code, what, hint = error_line(exc, "results-sink")
        print(f"streamimg results-sink: {what}" + (f" ({hint})" if hint else ""),
              file=sys.stderr, flush=True)
        return code
    finally:
        if store is not None:
            store.close()


if __name__ == "__main__":
    sys.exit(main())
