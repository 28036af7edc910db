"""Checkpoint: one object owning the whole lifecycle of a batch's Kafka transaction.

All Kafka transaction logic of the package lives here. For each batch, in
input order: begin, produce every output and dead letter, send the batch's
next offsets with the consumer group's metadata, commit. The consumer never
commits by itself (auto-commit is off), so an input offset moves exactly when
its outputs become visible to ``read_committed`` readers: exactly-once.

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
from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from streamimg.admin import produce

log = logging.getLogger(__name__)


class TransactionAborted(RuntimeError):
    """The batch's transaction was aborted; rewind the consumer and redo it."""


class FatalKafkaError(RuntimeError):
    """The producer cannot go on (fenced, or a fatal idempotence error)."""


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
            offsets = list(offsets) + self._produce_states(list(states))
            for topic, key, value, headers in records:
                self._produce(topic, key, value, headers)
            self._call(self._producer.send_offsets_to_transaction, offsets, group_metadata,
                       self.timeout_s, during="send_offsets_to_transaction")
            self._call(self._producer.commit_transaction, self.timeout_s,
                       during="commit_transaction")
        except TransactionAborted:
            self._abort()
            raise
        self.committed += 1
        self.commit_ms_total += (time.perf_counter() - start) * 1e3

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
            self._producer.produce(topic, value=value, partition=partition,
                                   on_delivery=delivered)
        if self._producer.flush(self.timeout_s) > 0 or failed or len(acked) != len(states):
            raise TransactionAborted(f"state records not acknowledged: {failed or 'timeout'}")
        return [TopicPartition(t, p, o) for (t, p), o in sorted(acked.items())]

    def close(self, abandon: bool = False) -> None:
        """Flush the producer; an open transaction is left to be fenced or to time out.

        ``abandon`` (after a fatal error): drop queued records instead of waiting
        for deliveries that a fenced producer can never make.
        """
        if abandon:
            self._producer.purge()
            self._producer.flush(1.0)
        else:
            self._producer.flush(self.timeout_s)

    def _produce(self, topic: str, key: bytes | None, value: bytes | None, headers: list) -> None:
        try:
            produce(self._producer, topic, value=value, key=key, headers=headers)
        except KafkaException as exc:
            self._raise(exc.args[0], "produce")

    def _abort(self) -> None:
        self.aborted += 1
        try:
            self._producer.abort_transaction(self.timeout_s)
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if err.fatal():
                raise FatalKafkaError(f"abort_transaction: {err.str()}") from exc
            log.warning("abort_transaction failed (%s); the next begin will tell", err.str())

    def _call(self, fn, *args, during: str):
        for attempt in range(self.retries + 1):
            try:
                return fn(*args)
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if err.retriable() and not err.fatal() and attempt < self.retries:
                    log.info("%s: retriable %s, retrying", during, err.str())
                    continue
                self._raise(err, during)

    def _raise(self, err: KafkaError, during: str):
        if err.fatal() or err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                                         KafkaError.INVALID_PRODUCER_EPOCH):
            raise FatalKafkaError(
                f"{during}: {err.str()} — transactional.id {self.transactional_id!r} is fenced "
                "or broken; another instance with the same id has probably started") from None
        raise TransactionAborted(f"{during}: {err.str()}") from None
