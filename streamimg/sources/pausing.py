"""Backpressure on the consumer: pause its partitions while work in flight is at its bound.

After Quix Streams' ``PausingManager``: the consumer stops taking messages at the bound
and, when the bound holds a while, pauses its assigned partitions but keeps polling, so
heartbeats and rebalances go on; it resumes them once work drains.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, TopicPartition

log = logging.getLogger(__name__)


class PausingManager:
    """Whether the daemon is at its bound on work in flight, and the pausing that follows.

    Parameters
    ----------
    max_batches : int
        Bound on batches in flight (submitted and not yet committed).
    max_bytes : int
        Bound on their payload bytes; it applies once one batch is in flight, so a
        single batch larger than it still runs.
    pause_after_s : float
        How long the bound must hold before the partitions are paused (s). Pausing drops
        librdkafka's prefetched messages (fetched again on resume, and the batches after
        it came out small), so only a bound that holds a while pauses; the daemon uses
        min(5 s, a third of ``max.poll.interval.ms``).
    """

    def __init__(self, max_batches: int, max_bytes: int, pause_after_s: float,
                 logger: logging.Logger | logging.LoggerAdapter = log):
        self.max_batches, self.max_bytes = max_batches, max_bytes
        self.log = logger
        self.pause_after_s = pause_after_s
        self.pauses = 0  # times the partitions were paused
        self._since: float | None = None  # monotonic s since when the bound holds
        self._paused: list[TopicPartition] = []

    def at_bound(self, batches: int, nbytes: int) -> bool:
        """True while ``batches`` in flight holding ``nbytes`` of payload are at the bound."""
        at = batches >= self.max_batches or (batches > 0 and nbytes >= self.max_bytes)
        if not at:
            self._since = None
        elif self._since is None:
            self._since = time.monotonic()
        return at

    def hold(self, consumer: Consumer) -> list:
        """At the bound: once it held ``pause_after_s``, pause the assignment and poll.

        Returns the messages of one non-blocking ``consume`` (none while paused: it keeps
        the member alive in its group and serves rebalance callbacks), or none before
        then (the bound may be gone by the next batch's commit).
        """
        if self._since is None or time.monotonic() - self._since <= self.pause_after_s:
            return []
        if not self._paused:
            self._paused = list(consumer.assignment())
            if self._paused:
                consumer.pause(self._paused)
                self.pauses += 1
                self.log.info("backpressure: pausing %d partitions", len(self._paused))
        return consumer.consume(num_messages=1, timeout=0)

    def resume(self, consumer: Consumer) -> None:
        """Resume the partitions paused by :meth:`hold` that are still assigned."""
        if self._paused:
            assigned = set(consumer.assignment())
            consumer.resume([tp for tp in self._paused if tp in assigned])
            self._paused = []
