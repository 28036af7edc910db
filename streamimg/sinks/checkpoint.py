"""Checkpoint: one object owning the whole lifecycle of a batch's Kafka transaction.

All Kafka transaction logic of the package lives here. The daemon hands a
:class:`FinishedBatch` (records per sink, dead letters, next offsets, operator
state) to the :class:`~streamimg.sinks.committer.Committer`, a thread that
commits batches one after the other in input order through a
:class:`Checkpoint` while the daemon keeps polling and computing. For each
batch: begin, produce the state records, every output and dead letter, send
the batch's next offsets with the consumer group's metadata, commit. The
consumer never commits by itself (auto-commit is off), so an input offset
moves exactly when its outputs become visible to ``read_committed`` readers:
exactly-once.

Errors, as librdkafka classifies them (KIP-98, KIP-447):

- retriable (a broker timeout during commit): the same call is retried, up to
  ``retries`` times; commit and send_offsets are safe to retry;
- abortable (``txn_requires_abort``: a produce failed, the coordinator moved):
  the transaction is aborted and :class:`TransactionAborted` tells the daemon to
  rewind its consumer to the committed offsets and redo the work;
- fatal (fenced by a newer instance with the same ``transactional.id``, or an
  idempotence failure): :class:`FatalKafkaError`; the daemon must stop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from streamimg.admin import produce
from streamimg.batching import DeadLetter
from streamimg.faults import crash_point
from streamimg.sinks.records import dead_letter_record

log = logging.getLogger(__name__)


def state_topic_config(max_state_bytes: int) -> dict[str, str]:
    """Topic configs of a state topic (``<name>.state``, ``<name>.assembler``).

    Compacted (Kafka keeps the last record per key, and its cleaner drops aborted
    transactions' records and stops at the last stable offset, so the committed record a
    restart reads stays), and ``max.message.bytes`` large enough for a record of
    ``max_state_bytes`` (bytes) plus 64 KiB of record overhead, never below Apache
    Kafka's default of 1,048,588. State records are keyed by their partition.
    """
    return {"cleanup.policy": "compact",
            "max.message.bytes": str(max(1_048_588, max_state_bytes + 65_536))}


class TransactionAborted(RuntimeError):
    """The batch's transaction was aborted; rewind the consumer and redo it."""


class FatalKafkaError(RuntimeError):
    """The producer cannot go on (fenced, or a fatal idempotence error)."""


@dataclass
class FinishedBatch:
    """A computed batch, ready to become one transaction.

    ``records`` are ``(topic, key, value, headers)`` in production order (per
    sink, frames in input order, lineage headers already stamped on the
    workers); ``dead`` are the batch's dead letters (for ``dlq_topic``); ``offsets`` the next
    offsets to commit, ``{(topic, partition): offset}``; ``states`` the operator
    state to commit with them, ``{(state topic, partition): blob}`` (one state
    partition per input partition: the pixel assembler's, ``<name>.assembler``,
    and the stateful operators', ``<name>.state``). ``epoch`` is the daemon's
    epoch when the batch was submitted: the committer drops batches of an
    epoch that was discarded (after an abort, a revoke or a lost assignment).
    ``group_metadata`` comes from the consumer when the batch is handed over.
    ``sources`` are the ``FrameInfo`` of the batch's frames (input partition, offset,
    capture time), for observers; frames dead-lettered while computing are among them.
    """

    seq: int
    epoch: int
    run: str
    frames: int
    records: list[tuple[str, bytes | None, bytes | None, list]]
    dead: list[DeadLetter]
    dlq_topic: str
    offsets: dict[tuple[str, int], int]
    group_metadata: Any
    states: dict[tuple[str, int], bytes] = field(default_factory=dict)
    created: float = 0.0  # time.time() when the batch closed
    sources: list = field(default_factory=list)  # FrameInfo of the batch's frames (observers)


@dataclass(frozen=True)
class Outcome:
    """What became of a handed-over batch: ``committed``, ``aborted``, ``dropped`` or ``fatal``.

    ``ms`` is the time the transaction took; ``error`` the reason, if any. Batches
    that shared a transaction share ``txn`` (the committer's transaction number,
    from 1) and ``ms``; ``batches`` is how many batches that transaction held.
    """

    batch: FinishedBatch
    status: str
    ms: float = 0.0
    error: str = ""
    txn: int = 0
    batches: int = 1


class Checkpoint:
    """A transactional producer and the per-batch transaction lifecycle.

    Parameters
    ----------
    producer_conf : dict
        librdkafka settings including a stable ``transactional.id``: the same
        id on restart fences the previous instance and aborts its open
        transaction (on Apache Kafka its records then stay hidden from
        ``read_committed`` readers).
    timeout_s : float
        Bound on each blocking transactional call (s).
    retries : int
        Times a retriable error is retried before the transaction is aborted.

    Raises
    ------
    FatalKafkaError
        From :meth:`start` if ``init_transactions`` fails for good.
    """

    def __init__(self, producer_conf: dict[str, Any], timeout_s: float = 30.0, retries: int = 3):
        if not producer_conf.get("transactional.id"):
            raise ValueError("Checkpoint needs a producer_conf with a transactional.id")
        self.transactional_id = producer_conf["transactional.id"]
        self.timeout_s = timeout_s
        self.retries = retries
        self._producer = Producer(producer_conf)
        #: The blocking librdkafka call under way, ``(name, time.monotonic() at its start)``;
        #: None between calls. Each is given ``timeout_s``, but librdkafka does not always
        #: return: ``send_offsets_to_transaction`` waits for the group coordinator with no
        #: bound at all (confluentinc/librdkafka#5456; measured here over 95 s with a 30 s
        #: timeout after a broker restart). The daemon's watchdog reads this.
        self.call: tuple[str, float] | None = None
        self.committed = 0
        self.aborted = 0
        self.commit_ms_total = 0.0

    def start(self) -> None:
        """Register the transactional id, fencing any older instance that uses it."""
        self._call(self._producer.init_transactions, self.timeout_s, during="init_transactions")

    def commit(self, records: Iterable[tuple[str, bytes | None, bytes | None, list]],
               offsets: list[TopicPartition], group_metadata: Any,
               states: Iterable[tuple[str, int, bytes]] = ()) -> None:
        """Produce ``records`` and commit them atomically with ``offsets`` (and states).

        Parameters
        ----------
        records : iterable of (topic, key, value, headers)
            Everything the batch outputs, dead letters included.
        offsets : list of TopicPartition
            The next offset to read for every partition the batch consumed.
        group_metadata : ConsumerGroupMetadata
            From ``consumer.consumer_group_metadata()``; lets the broker fence
            a zombie of an older group generation (KIP-447).
        states : iterable of (topic, partition, value)
            Operator state to commit with the batch. Each state record is
            produced first and, once the broker has acknowledged it, its own
            offset is committed for the group on that state partition. After a
            restart the committed offset names exactly the committed state
            record. (Offset-commit metadata would be the usual carrier, but the
            embedded broker drops it; this works on both.)

        Raises
        ------
        TransactionAborted
            The transaction was aborted; nothing of it is committed.
        FatalKafkaError
            The producer is fenced or broken; stop.
        """
        start = time.perf_counter()
        self._call(self._producer.begin_transaction, during="begin_transaction")
        try:
            crash_point("after_begin")
            offsets = list(offsets) + self._produce_states(list(states))
            for topic, key, value, headers in records:
                self._produce(topic, key, value, headers)
            self._flush()  # every record acknowledged before the offsets join the transaction
            crash_point("after_produce")
            self._call(self._producer.send_offsets_to_transaction, offsets, group_metadata,
                       self.timeout_s, during="send_offsets_to_transaction")
            crash_point("before_commit")
            self._commit_transaction("commit_transaction")
            crash_point("after_commit")
        except TransactionAborted:
            self._abort()
            raise
        self.committed += 1
        self.commit_ms_total += (time.perf_counter() - start) * 1e3

    def commit_batches(self, batches: list[FinishedBatch]) -> None:
        """Commit consecutive ``batches`` in one transaction (records, dead letters, offsets).

        Offsets and states of a later batch replace an earlier one's for the same
        partition (they only move forward); records keep their order.

        Raises
        ------
        TransactionAborted, FatalKafkaError
            As :meth:`commit`.
        """
        records: list[tuple[str, bytes | None, bytes | None, list]] = []
        offsets: dict[tuple[str, int], int] = {}
        states: dict[tuple[str, int], bytes] = {}
        for b in batches:
            records.extend(b.records)
            records.extend((b.dlq_topic, *dead_letter_record(d, b.run)) for d in b.dead)
            for tp, o in b.offsets.items():
                if o < offsets.get(tp, -1):
                    raise ValueError(f"offsets of {tp} go backwards: {offsets[tp]} -> {o}")
                offsets[tp] = o
            states.update(b.states)
        self.commit(records, [TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())],
                    batches[-1].group_metadata,
                    [(t, p, v) for (t, p), v in sorted(states.items())])

    def probe(self, offsets: list[TopicPartition], group_metadata: Any) -> None:
        """Commit a transaction of only ``offsets``: tells whether this producer is fenced.

        A fenced producer learns it only when it talks to the transaction
        coordinator; an idle daemon would not until its next batch. This
        transaction reaches the coordinator (``send_offsets_to_transaction``) and
        changes nothing when the producer is alone (see :func:`fencing_probe`).

        Raises
        ------
        FatalKafkaError
            Another producer with the same ``transactional.id`` has fenced this one.
        TransactionAborted
            A transient error; the transaction was aborted (nothing to redo).
        """
        self._call(self._producer.begin_transaction, during="begin_transaction")
        try:
            try:  # one attempt: the transaction is empty, nothing to redo if it fails
                with self._blocking("fencing probe"):
                    self._producer.send_offsets_to_transaction(offsets, group_metadata,
                                                               self.timeout_s)
            except KafkaException as exc:
                self._raise(exc.args[0], "fencing probe")
            self._commit_transaction("fencing probe")
        except TransactionAborted:
            self._abort()
            raise

    def _produce_states(self, states: list[tuple[str, int, bytes]]) -> list[TopicPartition]:
        if not states:
            return []
        acked: dict[tuple[str, int], int] = {}
        failed: list[str] = []

        def delivered(err, msg):
            if err is not None:
                failed.append(err.str())
            else:
                acked[(msg.topic(), msg.partition())] = msg.offset()

        for topic, partition, value in states:
            self._producer.produce(topic, key=b"%d" % partition, value=value,
                                   partition=partition, on_delivery=delivered)
        with self._blocking("flush"):
            left = self._producer.flush(self.timeout_s)
        if left > 0 or failed or len(acked) != len(states):
            raise TransactionAborted(f"state records not acknowledged: {failed or 'timeout'}")
        return [TopicPartition(t, p, o) for (t, p), o in sorted(acked.items())]

    def close(self, abandon: bool = False) -> None:
        """Flush the producer; an open transaction is left to be fenced or to time out.

        ``abandon`` (after a fatal error): drop queued records instead of waiting
        for deliveries that a fenced producer can never make. Never raises: a
        fenced or broken producer raises its fatal error from ``flush``, and at
        close there is nothing left to do about it but say so.
        """
        try:
            if abandon:
                self._producer.purge()
                self._producer.flush(1.0)
            else:
                self._producer.flush(self.timeout_s)
        except KafkaException as exc:
            log.info("producer closed with %s", exc.args[0].str())

    def _produce(self, topic: str, key: bytes | None, value: bytes | None, headers: list) -> None:
        try:
            produce(self._producer, topic, value=value, key=key, headers=headers)
        except KafkaException as exc:
            self._raise(exc.args[0], "produce")

    def _flush(self) -> None:
        try:
            with self._blocking("flush"):
                left = self._producer.flush(self.timeout_s)
        except KafkaException as exc:
            self._raise(exc.args[0], "flush")
        if left:
            raise TransactionAborted(f"flush: {left} records not acknowledged in "
                                     f"{self.timeout_s:.0f} s")

    def _abort(self) -> None:
        self.aborted += 1
        try:
            with self._blocking("abort_transaction"):
                self._producer.abort_transaction(self.timeout_s)
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if err.fatal():
                raise FatalKafkaError(f"abort_transaction: {err.str()}") from exc
            log.warning("abort_transaction failed (%s); the next begin will tell", err.str())

    def _commit_transaction(self, during: str) -> None:
        """``commit_transaction``, resumed while it times out (librdkafka's contract).

        A commit that timed out is still in progress: librdkafka refuses to abort it
        ("Conflicting commit_transaction API call is already in progress") and every
        later ``begin_transaction`` fails the same way, so the only ways on are to call
        it again (it resumes) or to stop. Seen under load with the fencing probe: an
        abort after the timeout left the producer stuck for good. Tansu 0.6 also lands
        here when a newer producer with the same id started during the commit: it closes
        the connection on each EndTxn instead of answering PRODUCER_FENCED (librdkafka
        retries the transport error until the timeout). After ``retries``
        resumptions the outcome is unknown (the records may yet become visible), so
        aborting and redoing the batch could duplicate it: stop instead, and let the
        next start's ``init_transactions`` complete or abort it.

        Raises
        ------
        TransactionAborted
            The commit failed with an abortable error (nothing of it is committed).
        FatalKafkaError
            Fenced, fatal, or still timing out after ``retries`` resumptions.
        """
        for attempt in range(self.retries + 1):
            try:
                with self._blocking(during):
                    self._producer.commit_transaction(self.timeout_s)
                return
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if not err.retriable() or err.fatal():
                    self._raise(err, during)
                if attempt < self.retries:
                    log.info("%s: %s; resuming the commit", during, err.str())
                    continue
                raise FatalKafkaError(
                    f"{during}: {err.str()}, {attempt + 1} times: the transaction's outcome "
                    "is unknown (a commit in progress cannot be aborted); stopping, the next "
                    "start's init_transactions completes or aborts it (on Tansu, the embedded "
                    "broker, also what a newer instance with the same transactional.id looks "
                    "like: it drops the connection instead of answering PRODUCER_FENCED)"
                ) from None

    @contextmanager
    def _blocking(self, during: str) -> Iterator[None]:
        """Mark a blocking librdkafka call (given ``timeout_s``) as under way: :attr:`call`."""
        self.call = (during, time.monotonic())
        try:
            yield
        finally:
            self.call = None

    def _call(self, fn, *args, during: str):
        for attempt in range(self.retries + 1):
            try:
                with self._blocking(during):
                    return fn(*args)
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if err.retriable() and not err.fatal() and attempt < self.retries:
                    log.info("%s: retriable %s, retrying", during, err.str())
                    continue
                self._raise(err, during)

    def _raise(self, err: KafkaError, during: str):
        if err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                          KafkaError.INVALID_PRODUCER_EPOCH):
            log.debug("%s: %s", during, err.str())
            raise FatalKafkaError(
                f"fenced: another instance with transactional.id {self.transactional_id!r} "
                "(the same topology and --instance) took over; this one stops, and what it "
                "had not committed is redone by the new one") from None
        if err.fatal():
            raise FatalKafkaError(
                f"{during}: {err.str()} — the transactional producer "
                f"{self.transactional_id!r} cannot go on") from None
        raise TransactionAborted(f"{during}: {err.str()}") from None


def fencing_probe(consumer_conf: dict[str, Any], topic: str) -> tuple[list[TopicPartition], Any]:
    """Offsets and group metadata for :meth:`Checkpoint.probe`: ``topic`` [0] at 0, own group.

    The probe commits offset 0 of partition 0 of ``topic`` (which must exist) for
    the group of ``consumer_conf`` (``group.id``, which must be used for nothing
    else: ``<transactional.id>.fencing-probe``), never for the daemon's group. Re-
    committing the daemon's own offsets would race with a rebalance (a partition
    that has moved on may be committed further by its new owner) and has nothing
    to commit before the first batch or without partitions. The group never has
    members, so on Apache Kafka its generation check (KIP-447) does not apply.
    The consumer is only used for its metadata and closed at once.
    """
    from confluent_kafka import Consumer

    consumer = Consumer(consumer_conf)
    try:
        return [TopicPartition(topic, 0, 0)], consumer.consumer_group_metadata()
    finally:
        consumer.close()
