"""The long-running daemon: poll Kafka, compute on Dask, commit in order, exactly-once.

One thread drives everything, so there are no locks and the order of events
is easy to follow:

1. poll the consumer (``read_committed``, auto-commit off) and feed the
   topology's batcher, which closes a batch at ``max_frames`` frames or
   ``max_wait_ms`` (frame messages), or when frames are assembled (pixels);
2. build the :class:`~streamimg.batching.Batch` (payloads scattered to the
   workers) and emit it into the topology, which only builds Dask graphs;
   hand the per-frame outputs to Dask (``client.compute``);
3. when the oldest batch in flight is done, commit it through the
   :class:`~streamimg.sinks.checkpoint.Checkpoint`: outputs, dead letters and
   the batch's next offsets in one transaction. At most ``max_in_flight``
   batches compute at once; commits stay in input order.

Heavy work never runs here: decoding, filters, analytics and encoding run on
the workers and only encoded results come back.

Rebalances: before partitions are revoked, every batch in flight is finished
and committed, and frames read but not yet batched from the revoked
partitions are dropped (their offsets were not committed, so the next owner
reads them). An aborted transaction discards everything in flight and rewinds
the consumer to the committed offsets. A fenced producer stops the daemon.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from distributed import Client, Future, wait

from streamimg.admin import ensure_topics, partitions_of, read_record
from streamimg.batching import Batch, DeadLetter, FrameInfo, Taken, build_batch, frame_task
from streamimg.codecs.frame import FrameDecodeError
from streamimg.config import KafkaConfig
from streamimg.sinks.checkpoint import Checkpoint, FatalKafkaError, TransactionAborted
from streamimg.sinks.records import dead_letter_record, lineage_headers
from streamimg.topology import Topology

log = logging.getLogger("streamimg.daemon")

EXIT_OK, EXIT_FATAL = 0, 3


@dataclass
class InFlight:
    """A batch computing on Dask: one future per frame, each yielding records per sink."""

    batch: Batch
    taken: Taken
    futures: list[Future]
    sinks: list[str]


@dataclass
class Stats:
    """Counters of one daemon run (frames, batches, ms), written to ``stats_path``."""

    run: str
    started: float = field(default_factory=time.time)
    frames_in: int = 0
    frames_out: int = 0
    dead_letters: int = 0
    records_out: int = 0
    batches_committed: int = 0
    batches_aborted: int = 0
    rebalances: int = 0
    build_ms: float = 0.0
    commit_ms: float = 0.0
    last_commit: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready counters."""
        return dataclasses.asdict(self)


class Daemon:
    """Runs a :class:`~streamimg.topology.Topology` against Kafka and Dask until stopped.

    Parameters
    ----------
    topology : Topology
    kafka : KafkaConfig
    client : distributed.Client
        The Dask cluster that computes the batches.
    group : str, optional
        Consumer group; the topology's name by default. Run more instances in
        the same group to share the partitions.
    instance : str
        Stable id of this instance within the group. The producer's
        ``transactional.id`` is ``<topology>-<instance>``: restarting with the
        same instance fences the old process and aborts its open transaction.
    drain_timeout_s : float
        On stop or revoke, how long batches in flight may take to finish (s).
    stats_path : Path, optional
        Where to write :class:`Stats` as JSON after each commit (for the demo).
    """

    def __init__(self, topology: Topology, kafka: KafkaConfig, client: Client, *,
                 group: str | None = None, instance: str = "0",
                 drain_timeout_s: float = 60.0, stats_path: Path | None = None):
        self.topology = topology
        self.kafka = kafka
        self.client = client
        self.group = group or topology.name
        self.instance = instance
        self.transactional_id = f"{topology.name}-{instance}"
        self.run_id = uuid.uuid4().hex[:12]
        self.drain_timeout_s = drain_timeout_s
        self.stats_path = stats_path
        self.stats = Stats(run=self.run_id)
        self._stop = threading.Event()
        self._inflight: deque[InFlight] = deque()
        self._batcher = topology.make_batcher()
        self._seq = 0
        self._consumer: Consumer | None = None
        self._checkpoint: Checkpoint | None = None

    def stop(self) -> None:
        """Ask the loop to stop: no new polling; batches in flight finish and commit."""
        self._stop.set()

    # -- lifecycle ---------------------------------------------------------------------

    def run(self) -> int:
        """Run until :meth:`stop`; return 0, or 3 after a fatal Kafka error.

        Raises
        ------
        KafkaException
            If topics cannot be created or the transactional producer cannot
            initialise at start-up (nothing has been consumed then).
        """
        t = self.topology
        ensure_topics(self.kafka, [*t.inputs, *t.output_topics, t.dlq_topic], t.partitions)
        if t.state_topic:  # one state partition per input partition
            ensure_topics(self.kafka, [t.state_topic], len(partitions_of(self.kafka, t.inputs[0])))
        self._checkpoint = Checkpoint(self.kafka.producer(self.transactional_id))
        self._checkpoint.start()  # fences an older instance before we read anything
        self._consumer = Consumer(self.kafka.consumer(
            self.group, f"{self.transactional_id}-{self.run_id}"))
        self._consumer.subscribe(t.inputs, on_assign=self._on_assign,
                                 on_revoke=self._on_revoke, on_lost=self._on_lost)
        log.info("run %s: %s consuming %s in group %s as %s", self.run_id, t.name, t.inputs,
                 self.group, self.transactional_id)
        code = EXIT_OK
        try:
            self._loop()
            self._drain()
        except _Rewound:
            log.warning("stopping after an aborted batch; its offsets stay uncommitted")
        except FatalKafkaError as exc:
            log.error("stopping: %s", exc)
            code = EXIT_FATAL
        finally:
            self._discard_inflight()
            try:
                t0 = time.monotonic()
                self._consumer.close()  # leaves the group: partitions move at once
                log.debug("consumer closed in %.1f s", time.monotonic() - t0)
            finally:
                t0 = time.monotonic()
                self._checkpoint.close(abandon=code == EXIT_FATAL)
                log.debug("producer closed in %.1f s", time.monotonic() - t0)
                self.topology.destroy()
                self._write_stats()
        log.info("run %s stopped: %s", self.run_id, json.dumps(self.stats.to_dict()))
        return code

    def _loop(self) -> None:
        max_in_flight = self.topology.batching.max_in_flight
        batcher = self._batcher
        while not self._stop.is_set():
            try:
                self._commit_ready()
            except _Rewound:
                continue
            if len(self._inflight) >= max_in_flight:
                self._wait_head(0.1)
                continue
            timeout = min(batcher.wait_s(), 0.01 if self._inflight else 0.1)
            for m in self._consumer.consume(num_messages=max(1, batcher.room()),
                                            timeout=timeout):
                if m.error():
                    self._on_consumer_error(m.error())
                    continue
                batcher.add(m)
            taken = batcher.take()
            if taken is not None:
                self._submit(taken)

    def _on_consumer_error(self, err: KafkaError) -> None:
        if err.fatal():
            raise FatalKafkaError(f"consumer: {err.str()}")
        log.warning("consumer: %s", err.str())

    # -- batches -----------------------------------------------------------------------

    def _submit(self, taken: Taken) -> None:
        start = time.perf_counter()
        self._seq += 1
        batch = build_batch(self._seq, taken,
                            scatter=lambda p: self.client.scatter(p, hash=False))
        futures: list[Future] = []
        sinks: list[str] = []
        try:
            self.topology.source.emit(batch)
            sinks = [sink.topic for sink in batch.outputs.per_sink]
            per_frame = [frame_task(batch, i, f"frame-{uuid.uuid4().hex}")
                         for i in range(len(batch.frames))]
            # fifo_timeout=0: older batches first. The default (60 s) gives every batch
            # of the last minute the same priority, so batches finished together and the
            # workers idled while they committed (first commit 1.6-3.7 s -> 0.9-1.3 s).
            futures = self.client.compute(per_frame, fifo_timeout=0) if sinks else []
        except Exception as exc:  # the pipeline itself failed on this batch: dead-letter it
            log.exception("topology failed on batch %d", self._seq)
            dead = tuple(_dead(info, taken.original(i), "topology", exc)
                         for i, info in enumerate(batch.frames))
            batch = dataclasses.replace(batch, frames=(), groups=(), dead=batch.dead + dead)
            futures, sinks = [], []
        self._inflight.append(InFlight(batch, taken, futures, sinks))
        self.stats.frames_in += len(taken.frames) + len(taken.dead)
        self.stats.build_ms += (time.perf_counter() - start) * 1e3

    def _wait_head(self, timeout_s: float) -> None:
        try:
            wait(self._inflight[0].futures, timeout=timeout_s)
        except TimeoutError:
            pass

    def _commit_ready(self) -> None:
        while self._inflight and all(f.done() for f in self._inflight[0].futures):
            self._commit(self._inflight[0])
            self._inflight.popleft()

    def _commit(self, item: InFlight) -> None:
        batch, run = item.batch, self.run_id
        records: list[tuple[str, bytes | None, bytes | None, list]] = []
        dead = list(batch.dead)
        done = [f for f in item.futures if f.status == "finished"]
        frames_out = len(done)
        results = iter(self.client.gather(done)) if done else iter(())
        for i, (info, fut) in enumerate(zip(batch.frames, item.futures, strict=True)):
            if fut.status != "finished":
                exc = fut.exception()
                stage = "decode" if isinstance(exc, FrameDecodeError) else "process"
                dead.append(_dead(info, item.taken.original(i), stage, exc))
                continue
            lineage = lineage_headers(info.topic, info.partition, info.offset, run)
            for topic, recs in zip(item.sinks, pickle.loads(next(results)), strict=True):
                records.extend((topic, k, v, h + lineage) for k, v, h in recs)
        dlq = self.topology.dlq_topic
        records.extend((dlq, *dead_letter_record(d, run)) for d in dead)
        offsets = [TopicPartition(t, p, o) for (t, p), o in sorted(item.taken.offsets.items())]
        states = [(self.topology.state_topic, p, v) for p, v in sorted(item.taken.states.items())]
        try:
            self._checkpoint.commit(records, offsets, self._consumer.consumer_group_metadata(),
                                    states)
        except TransactionAborted as exc:
            log.warning("batch %d aborted (%s); rewinding to committed offsets", batch.seq, exc)
            self.stats.batches_aborted += 1
            self._rewind()
            raise _Rewound() from None
        for d in dead:
            log.warning("dead letter %s[%d]@%d (%s): %s", d.topic, d.partition, d.offset,
                        d.stage, d.reason)
        self.stats.frames_out += frames_out  # counted once committed, not when computed
        self.stats.dead_letters += len(dead)
        self.stats.records_out += len(records)
        self.stats.batches_committed += 1
        self.stats.commit_ms = self._checkpoint.commit_ms_total
        self.stats.last_commit = time.time()
        self._write_stats()

    def _drain(self) -> None:
        """Finish and commit every batch in flight (within ``drain_timeout_s``)."""
        deadline = time.monotonic() + self.drain_timeout_s
        while self._inflight and time.monotonic() < deadline:
            self._wait_head(min(0.1, max(0.0, deadline - time.monotonic())))
            self._commit_ready()
        if self._inflight:
            log.warning("%d batches did not finish in %.0f s; their offsets stay uncommitted",
                        len(self._inflight), self.drain_timeout_s)

    def _discard_inflight(self) -> None:
        for item in self._inflight:
            self.client.cancel(item.futures)
        self._inflight.clear()
        self._batcher.drop(None)

    def _rewind(self) -> None:
        self._discard_inflight()
        assigned = self._consumer.assignment()
        if not assigned:
            return
        self._restore_state(assigned)
        for tp in self._consumer.committed(assigned, timeout=30):
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            self._consumer.seek(TopicPartition(tp.topic, tp.partition, offset))

    def _restore_state(self, partitions: list[TopicPartition]) -> None:
        """Give the batcher the state committed with each partition's offsets (pixels only).

        The group's committed offset on ``<name>.assembler`` partition p is the
        offset of the state record committed in the same transaction, so a
        restart reads exactly that record and never an aborted one.
        """
        state_topic = self.topology.state_topic
        if not state_topic:
            return
        wanted = [TopicPartition(state_topic, tp.partition) for tp in partitions]
        for tp in self._consumer.committed(wanted, timeout=30):
            value = (read_record(self.kafka, state_topic, tp.partition, tp.offset)
                     if tp.offset >= 0 else None)
            self._batcher.restore(tp.partition, value)

    # -- rebalance callbacks (run inside consume(), on this thread) -------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.stats.rebalances += 1
        log.info("assigned %s", [(p.topic, p.partition) for p in partitions])
        self._restore_state(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("revoking %s", [(p.topic, p.partition) for p in partitions])
        try:
            self._drain()
        except _Rewound:
            pass
        self._batcher.drop({(p.topic, p.partition) for p in partitions})

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("lost %s: discarding work in flight", [(p.topic, p.partition)
                                                             for p in partitions])
        self._discard_inflight()

    def _write_stats(self) -> None:
        if self.stats_path:
            tmp = Path(f"{self.stats_path}.tmp")
            tmp.write_text(json.dumps(self.stats.to_dict()))
            tmp.replace(self.stats_path)


class _Rewound(Exception):
    """Internal: a batch was aborted and the consumer rewound; restart the loop step."""


def _dead(info: FrameInfo, original: tuple, stage: str, exc: BaseException | None) -> DeadLetter:
    reason = f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"
    key, value, headers = original
    return DeadLetter(info.topic, info.partition, info.offset, key, value, list(headers or ()),
                      stage, reason)
