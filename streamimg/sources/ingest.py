"""Analysis on request: a videos topic whose requests become frames, exactly-once, resumable.

The Spark video-analysis ancestor had a ``videos`` topic (video id, source URL,
models, frame step) consumed by an ingestion job that wrote each video's frames
to ``frames``. :class:`Ingest` is that job. A request record has the video id
as key and a JSON value (:class:`VideoRequest`)::

    {"id": "talk-42", "source": "https://example.org/talk.mp4", "frame_step": 5,
     "limit": null, "models": ["faces", "palette"]}

The job consumes requests in a consumer group, one request at a time per
assignment, and produces the video's frames to the frames topic (key and
stream id = the request id, frame index = the kept frame's number, capture
time = the request record's timestamp plus the frame's presentation time) in
transactions of ``chunk_frames`` frames. Each transaction also carries:

- the position (frames done so far) in a state record of ``<requests>.ingest``
  (one partition per request partition), committed for the group the way the
  daemon commits operator state (see :mod:`streamimg.sinks.checkpoint`);
- a status record to ``<requests>.status`` (key = id; ``state`` ``running``,
  ``done`` or ``failed``, ``frames``, ``error``): the latest per key is the status;
- the request's offset: its own while the video is under way, the next once it is done.

Killed mid-video, the next owner of the partition reads the committed position
and resumes at that frame: decoding is deterministic, so no frame is lost or
produced twice among committed records. A request that cannot be parsed or
opened, or whose video fails mid-way, goes to ``<requests>.dlq`` with the
reason (frames already committed stay), and its status says ``failed``.

While a video is read, the job pauses its partitions and keeps polling between
transactions, so heartbeats and rebalances go on (as Quix Streams'
``PausingManager``); a revoke ends the current video after its last commit.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import av
from confluent_kafka import Consumer, Message, TopicPartition

from streamimg.admin import committed_positions, ensure_topics, partitions_of, read_record
from streamimg.batching import DeadLetter
from streamimg.codecs.frame import encode_frame
from streamimg.config import KafkaConfig, check_topic
from streamimg.sinks.checkpoint import Checkpoint, FatalKafkaError, TransactionAborted
from streamimg.sinks.records import dead_letter_record
from streamimg.sources.video import SourceFrame, read_video

log = logging.getLogger("streamimg.ingest")


class RequestError(ValueError):
    """A request record that is not a valid :class:`VideoRequest` (the reason names the field)."""


@dataclass(frozen=True)
class VideoRequest:
    """One analysis request.

    ``id`` names the video (key of its frames and status; 1-200 characters);
    ``source`` a path or URL PyAV opens; every ``frame_step``-th frame (>= 1) is kept,
    at most ``limit`` of them; ``models`` travel along for the analysis side.
    """

    id: str
    source: str
    frame_step: int = 1
    limit: int | None = None
    models: tuple[str, ...] = ()

    @classmethod
    def parse(cls, key: bytes | None, value: bytes | None) -> VideoRequest:
        """The request in a record.

        Raises
        ------
        RequestError
            If the value is not a JSON object with a valid ``source``, ``frame_step``,
            ``limit`` and ``models``, or its ``id`` is missing and the key empty.
        """
        try:
            doc = json.loads(value or b"")
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestError(f"value is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise RequestError(f"value must be a JSON object, got {type(doc).__name__}")
        vid = doc.get("id") or (key or b"").decode("utf-8", "replace")
        if not isinstance(vid, str) or not 0 < len(vid) <= 200:
            raise RequestError(f"id must be a string of 1-200 characters, got {vid!r:.80}")
        source = doc.get("source")
        if not isinstance(source, str) or not source:
            raise RequestError(f"source must be a path or URL, got {source!r:.80}")
        step, limit = doc.get("frame_step", 1), doc.get("limit")
        if not isinstance(step, int) or isinstance(step, bool) or step < 1:
            raise RequestError(f"frame_step must be an integer >= 1, got {step!r:.40}")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                                  or limit < 0):
            raise RequestError(f"limit must be null or an integer >= 0, got {limit!r:.40}")
        models = doc.get("models", [])
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise RequestError(f"models must be a list of names, got {models!r:.80}")
        return cls(vid, source, step, limit, tuple(models))

    def to_json(self) -> bytes:
        """The record value of this request."""
        return json.dumps({"id": self.id, "source": self.source, "frame_step": self.frame_step,
                           "limit": self.limit, "models": list(self.models)}).encode()


@dataclass
class IngestStats:
    """What the job did: requests finished (``done``), ``failed``, frames produced."""

    done: int = 0
    failed: int = 0
    frames: int = 0
    transactions: int = 0
    resumed: list[tuple[str, int]] = field(default_factory=list)  # (id, first frame)


class Ingest:
    """The ingestion job (see the module docstring).

    Parameters
    ----------
    kafka : KafkaConfig
    requests, frames : str
        The request topic (created with one partition if missing) and the frames topic.
    group : str
        Consumer group; ``transactional.id`` is ``<group>-<instance>``.
    chunk_frames : int
        Frames per transaction (>= 1): what a crash redoes at most.
    encoding : {"jpeg", "png", "raw"}
        Frame payloads (JPEG at ``jpeg_quality``).

    Raises
    ------
    ValueError
        For an illegal topic name or ``chunk_frames`` < 1.
    """

    def __init__(self, kafka: KafkaConfig, requests: str, frames: str, *,
                 group: str = "streamimg-ingest", instance: str = "0", chunk_frames: int = 25,
                 encoding: str = "jpeg", jpeg_quality: int = 90):
        for topic in (requests, frames):
            check_topic(topic)
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
        self.kafka, self.requests, self.frames = kafka, requests, frames
        self.dlq, self.status = f"{requests}.dlq", f"{requests}.status"
        self.state_topic = f"{requests}.ingest"
        self.group, self.transactional_id = group, f"{group}-{instance}"
        self.chunk_frames, self.encoding, self.jpeg_quality = chunk_frames, encoding, jpeg_quality
        self.stats = IngestStats()
        self._resume: dict[int, dict[str, Any]] = {}  # partition -> committed position
        self._revoked: set[int] = set()
        self._busy = False  # a request's video is being read
        self._consumer: Consumer | None = None
        self._checkpoint: Checkpoint | None = None

    def run(self, stop: threading.Event) -> int:
        """Consume requests until ``stop`` is set; return 0.

        Raises
        ------
        KafkaException
            If topics cannot be created or the transactional producer cannot start.
        FatalKafkaError
            If fenced by a newer instance with the same ``transactional.id``.
        """
        ensure_topics(self.kafka, [self.requests])
        parts = len(partitions_of(self.kafka, self.requests))
        ensure_topics(self.kafka, [self.frames, self.dlq, self.status])
        ensure_topics(self.kafka, [self.state_topic], parts)
        self._checkpoint = Checkpoint(self.kafka.producer(self.transactional_id))
        self._checkpoint.start()
        self._consumer = Consumer(self.kafka.consumer(self.group, self.transactional_id))
        self._consumer.subscribe([self.requests], on_assign=self._on_assign,
                                 on_revoke=self._on_revoke, on_lost=self._on_revoke)
        log.info("ingest: %s -> %s as %s", self.requests, self.frames, self.transactional_id)
        try:
            while not stop.is_set():
                msg = self._consumer.poll(0.2)
                if msg is None or msg.error() is not None:
                    continue
                self._handle(msg, stop)
        finally:
            self._consumer.close()
            self._checkpoint.close()
        return 0

    # -- one request -------------------------------------------------------------------

    def _handle(self, msg: Message, stop: threading.Event) -> None:
        p, o = msg.partition(), msg.offset()
        try:
            req = VideoRequest.parse(msg.key(), msg.value())
        except RequestError as exc:
            self._fail(msg, None, 0, f"bad request: {exc}")
            return
        self._busy = True
        self._consumer.pause(self._consumer.assignment())  # poll for the group, take nothing
        try:
            for attempt in range(1, 6):
                resume = self._resume.get(p, {})
                first = int(resume.get("next_frame", 0)) if resume.get("offset") == o else 0
                if first:
                    self.stats.resumed.append((req.id, first))
                    log.info("ingest %s: resuming at frame %d", req.id, first)
                try:
                    self._ingest(msg, req, first, stop)
                    return
                except TransactionAborted as exc:  # redo from the committed position
                    log.warning("ingest %s: transaction aborted (%s); attempt %d of 5",
                                req.id, exc, attempt)
            # Give the request back: it is read again after a restart or a rebalance.
            self._consumer.seek(TopicPartition(self.requests, p, o))
            raise FatalKafkaError(f"ingest {req.id}: 5 transactions in a row aborted")
        finally:
            self._busy = False
            self._consumer.resume([tp for tp in self._consumer.assignment()
                                   if tp.partition not in self._revoked])
            self._revoked.discard(p)

    def _ingest(self, msg: Message, req: VideoRequest, first: int, stop: threading.Event) -> None:
        """Produce ``req``'s frames from ``first`` on; raises TransactionAborted to be redone."""
        p, o = msg.partition(), msg.offset()
        frames = read_video(req.source, frame_step=req.frame_step, limit=req.limit,
                            start_ms=msg.timestamp()[1])
        done, chunk = first, []
        while True:
            try:  # only reading the video is the request's failure; Kafka errors are not
                f = next(frames, None)
            except (OSError, ValueError, RuntimeError, av.FFmpegError) as exc:
                if chunk:
                    done = self._commit_chunk(p, o, req, chunk)
                self._fail(msg, req, done, f"{type(exc).__name__}: {exc}")
                return
            if f is None:
                break
            if f.index < first:
                continue
            chunk.append(f)
            if len(chunk) == self.chunk_frames:
                done = self._commit_chunk(p, o, req, chunk)
                chunk = []
                self._serve_group()
                if stop.is_set() or p in self._revoked:
                    log.info("ingest %s: stopped at frame %d (resumes there)", req.id, done)
                    return
        records = self._frame_records(req, chunk)
        done += len(chunk)
        self._commit(p, o + 1, records + [self._status(req, "done", done)], None)
        self.stats.done += 1
        log.info("ingest %s: done, %d frames", req.id, done)

    def _serve_group(self) -> None:
        """Poll once with every partition paused: heartbeats and rebalance callbacks."""
        msg = self._consumer.poll(0)
        if msg is not None and msg.error() is None:  # a partition assigned just now: give back
            self._consumer.seek(TopicPartition(msg.topic(), msg.partition(), msg.offset()))
        self._consumer.pause(self._consumer.assignment())

    def _commit_chunk(self, p: int, o: int, req: VideoRequest, chunk: list[SourceFrame]) -> int:
        done = chunk[-1].index + 1
        records = self._frame_records(req, chunk) + [self._status(req, "running", done)]
        self._commit(p, o, records, {"offset": o, "id": req.id, "next_frame": done})
        return done

    def _fail(self, msg: Message, req: VideoRequest | None, frames: int, reason: str) -> None:
        p, o = msg.partition(), msg.offset()
        log.warning("request %s[%d]@%d failed: %s", self.requests, p, o, reason)
        dead = DeadLetter(self.requests, p, o, msg.key(), msg.value(),
                          list(msg.headers() or ()), "ingest", reason)
        records = [(self.dlq, *dead_letter_record(dead, self.transactional_id))]
        if req is not None:
            records.append(self._status(req, "failed", frames, reason))
        self._commit(p, o + 1, records, None)
        self.stats.failed += 1

    def _frame_records(self, req: VideoRequest, chunk: list[SourceFrame]) -> list[tuple]:
        out = []
        for f in chunk:
            value, headers = encode_frame(f.image, stream=req.id, index=f.index,
                                          timestamp_ms=f.timestamp_ms, encoding=self.encoding,
                                          jpeg_quality=self.jpeg_quality)
            out.append((self.frames, req.id.encode(), value, headers))
        self.stats.frames += len(chunk)
        return out

    def _status(self, req: VideoRequest, state: str, frames: int, error: str = "") -> tuple:
        value = json.dumps({"id": req.id, "state": state, "frames": frames, "error": error,
                            "source": req.source, "models": list(req.models),
                            "updated_ms": int(time.time() * 1000)}).encode()
        return (self.status, req.id.encode(), value, [])

    def _commit(self, p: int, next_offset: int, records: list[tuple],
                position: dict[str, Any] | None) -> None:
        """One transaction: ``records``, the position of partition ``p``, its offset."""
        state = json.dumps(position or {}).encode()
        self._checkpoint.commit(records, [TopicPartition(self.requests, p, next_offset)],
                                self._consumer.consumer_group_metadata(),
                                [(self.state_topic, p, state)])
        self._resume[p] = position or {}
        self.stats.transactions += 1

    # -- rebalances ----------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._busy:  # a video is under way: these wait for it, as the others do
            consumer.pause(partitions)
        wanted = [TopicPartition(self.state_topic, tp.partition) for tp in partitions]
        for tp in committed_positions(consumer, wanted):
            value = (read_record(self.kafka, self.state_topic, tp.partition, tp.offset)
                     if tp.offset >= 0 else None)
            self._resume[tp.partition] = json.loads(value) if value else {}
            self._revoked.discard(tp.partition)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._revoked |= {tp.partition for tp in partitions}
