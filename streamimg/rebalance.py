"""Where the daemon's consumer reads from: rewinds, restored state, rebalance callbacks.

A mixin of :class:`~streamimg.daemon.Daemon` (it uses the daemon's consumer,
committer, dispatcher, batcher and listeners), kept apart so the poll loop reads
in one sitting.

- **Rewind** (after an aborted transaction, a chunk lost with its worker past its
  retries, a revoke that did not drain in time): all work in flight is discarded
  (its epoch is never committed) and the consumer seeks to the group's committed
  offsets, read again while the broker does not answer (up to
  ``max.poll.interval.ms``).
- **Assign**: positions come from the committed offsets, and operator state from
  the state record committed with them (:meth:`Rebalancing._restore_state`).
- **Revoke**: every batch in flight is finished and committed within
  ``drain_timeout_s``; past that, all work in flight is discarded and the
  partitions kept are rewound.
- **Lost**: nothing is committed; the work in flight is discarded.

The callbacks run inside ``consume()``, on the poll thread.
"""

from __future__ import annotations

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from streamimg.admin import BrokerUnreachable, committed_positions, read_record
from streamimg.sinks.checkpoint import FatalKafkaError


class Rebalancing:
    """Rewinds and rebalance callbacks of the :class:`~streamimg.daemon.Daemon`.

    Not used on its own: the daemon provides ``_consumer``, ``_committer``,
    ``_dispatch``, ``_batcher``, ``_pausing``, ``_stop``, ``_epoch``, ``_closing``,
    ``_poll_interval_s``, ``_drain``, ``_handle_outcomes``, ``topology``, ``kafka``,
    ``stats``, ``listeners`` and ``log``.
    """

    def _discard(self) -> None:
        """Forget all work in flight: it will never be committed."""
        self._epoch += 1
        if self._committer is not None:
            self._committer.discard_before(self._epoch)
        self._dispatch.discard()
        self._batcher.drop(None)

    def _rewind(self, partitions: list[TopicPartition] | None = None) -> None:
        """Discard work in flight; seek ``partitions`` (all assigned) to the committed offsets."""
        self._discard()
        bound = self._committer.checkpoint.timeout_s * 2
        if not self._committer.wait_checked(bound, self._stop.is_set):
            raise FatalKafkaError(f"the committer did not finish within {bound:.0f} s")
        self._handle_outcomes()
        assigned = partitions if partitions is not None else self._consumer.assignment()
        if not assigned:
            return
        self._restore_state(assigned)
        for tp in self._positions(assigned):
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            self._consumer.seek(TopicPartition(tp.topic, tp.partition, offset))

    def _positions(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """The group's committed offsets of ``partitions``, retried while the broker is away.

        Raises
        ------
        FatalKafkaError
            If they cannot be read within ``max.poll.interval.ms`` or before a stop request.
        """
        try:
            return committed_positions(self._consumer, partitions, stopping=self._stop.is_set,
                                       bound_s=self._poll_interval_s)
        except BrokerUnreachable as exc:
            raise FatalKafkaError(f"{exc}: the consumer cannot be positioned") from None

    def _restore_state(self, partitions: list[TopicPartition]) -> None:
        """Restore the state committed with each partition's offsets.

        The pixel assembler's (``<name>.assembler``) goes to the batcher, the stateful
        operators' (``<name>.state``) to the dispatcher. The group's committed offset
        on a state topic's partition p is the offset of the state record committed in
        the same transaction as input partition p's offset, so a restart reads exactly
        that record and never an aborted one.
        """
        t = self.topology
        for topic in t.state_topics():
            wanted = [TopicPartition(topic, tp.partition) for tp in partitions]
            for tp in self._positions(wanted):
                value = (read_record(self.kafka, topic, tp.partition, tp.offset)
                         if tp.offset >= 0 else None)
                if topic == t.state_topic:
                    self._batcher.restore(tp.partition, value)
                else:
                    self._dispatch.restore(tp.partition, value)

    # -- rebalance callbacks (run inside consume(), on the poll thread) ----------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._closing:
            return
        self.stats.rebalances += 1
        self.log.info("assigned %s", [(p.topic, p.partition) for p in partitions],
                      extra={"event": "assign"})
        self._restore_state(partitions)
        for listener in self.listeners:
            listener.assigned([(p.topic, p.partition) for p in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {(p.topic, p.partition) for p in partitions}
        self.log.info("revoking %s", sorted(revoked), extra={"event": "revoke"})
        if self._closing:  # run() discarded all work in flight already: nothing to drain
            self._tell_revoked(revoked)
            return
        self._pausing.resume(self._consumer)
        if not self._drain(self.drain_timeout_s):
            self.log.warning("revoke: work in flight did not finish in %.0f s; discarding it",
                        self.drain_timeout_s)
            kept = [tp for tp in consumer.assignment() if (tp.topic, tp.partition) not in revoked]
            self._rewind(kept)
        self._batcher.drop(revoked)
        self._tell_revoked(revoked)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = {(p.topic, p.partition) for p in partitions}
        self.log.warning("lost %s: discarding work in flight", sorted(lost),
                         extra={"event": "lost"})
        if not self._closing:
            self._pausing.resume(self._consumer)
            kept = [tp for tp in consumer.assignment() if (tp.topic, tp.partition) not in lost]
            self._rewind(kept)
        self._tell_revoked(lost)

    def _tell_revoked(self, partitions: set[tuple[str, int]]) -> None:
        for listener in self.listeners:
            listener.revoked(sorted(partitions))
