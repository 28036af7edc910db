"""Committer: the thread that turns finished batches into transactions, in input order.

The daemon hands every computed batch (a
:class:`~streamimg.sinks.checkpoint.FinishedBatch`) to :meth:`Committer.put`
and keeps polling and computing; this thread commits them one transaction at a
time through the :class:`~streamimg.sinks.checkpoint.Checkpoint` (which owns the
transaction calls) and reports an :class:`~streamimg.sinks.checkpoint.Outcome`
per batch. Batches that wait together share one transaction. While no batch
comes, it probes now and then whether a newer instance has fenced this one.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import TopicPartition

from streamimg.sinks.checkpoint import (
    Checkpoint,
    FatalKafkaError,
    FinishedBatch,
    Outcome,
    TransactionAborted,
)
from streamimg.sinks.records import value_nbytes

log = logging.getLogger(__name__)

#: A blocking librdkafka call still under way this long after its own timeout is hung (s).
CALL_GRACE_S = 15.0


class Committer:
    """A thread that commits handed-over batches in order through a :class:`Checkpoint`.

    Batches waiting together (of one epoch) commit in one transaction, up to
    ``max_merge`` batches or ``max_merge_bytes`` of record values.
    :meth:`put` queues a batch; every batch ends in one :class:`Outcome`, read
    with :meth:`outcomes` on the daemon's thread. After an abort, the batches
    of the same epoch still queued are dropped (their offsets follow the
    aborted batch's, so committing them would skip its input); after a fatal
    error every later batch is dropped. :meth:`discard_before` drops queued
    batches of older epochs when the daemon discards its work in flight.

    With ``probe`` (from :func:`fencing_probe`), the thread runs
    :meth:`Checkpoint.probe` whenever no transaction has ended for
    ``probe_idle_s`` seconds, so an idle producer fenced by a newer instance
    learns it within about ``probe_idle_s`` plus one round trip; it then sets
    :attr:`fatal_error` (and drops every later batch), which the daemon reads.
    """

    def __init__(self, checkpoint: Checkpoint,
                 on_outcome: Callable[[Outcome], None] | None = None, max_merge: int = 8,
                 max_merge_bytes: int = 256 * 1024 * 1024, start: bool = True,
                 probe: tuple[list[TopicPartition], Any] | None = None,
                 probe_idle_s: float = 10.0):
        self.checkpoint = checkpoint
        self.probe, self.probe_idle_s = probe, probe_idle_s
        self.probes = 0  # fencing probes run so far
        self.fatal_error: str | None = None  # why the producer cannot go on, once it can't
        self._last_end = time.monotonic()  # when the last transaction (or probe) ended
        self.max_merge, self.max_merge_bytes = max_merge, max_merge_bytes
        self._held: list[FinishedBatch | None] = []  # read from the queue, not yet taken
        self.transactions = 0  # begun so far
        self._queue: queue.Queue[FinishedBatch | None] = queue.Queue()
        self._outcomes: queue.Queue[Outcome] = queue.Queue()
        self._floor = 0           # batches of an epoch below this are dropped
        self._fatal = False
        self._busy = 0            # batches put and not yet given an outcome
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self.call_started: float | None = None  # monotonic start of the commit under way
        self.hung = False  # check() found a Kafka call stuck: stop() must not wait for it
        self._on_outcome = on_outcome
        self._thread = threading.Thread(target=self._run, name="streamimg-committer",
                                        daemon=True)
        if start:
            self._thread.start()

    def start(self) -> None:
        """Start the thread (when made with ``start=False``)."""
        self._thread.start()

    def put(self, batch: FinishedBatch) -> None:
        """Queue ``batch`` for commit (after every batch put before it)."""
        with self._lock:
            self._busy += 1
        self._queue.put(batch)

    def discard_before(self, epoch: int) -> None:
        """Drop queued batches of epochs below ``epoch`` instead of committing them."""
        with self._lock:
            self._floor = max(self._floor, epoch)

    def outcomes(self, wait_s: float = 0.0) -> list[Outcome]:
        """Outcomes since the last call, in commit order; waits up to ``wait_s`` for one."""
        out = []
        if wait_s > 0:
            try:
                out.append(self._outcomes.get(timeout=wait_s))
            except queue.Empty:
                return out
        while True:
            try:
                out.append(self._outcomes.get_nowait())
            except queue.Empty:
                return out

    @property
    def pending(self) -> int:
        """Batches put and not yet given an outcome."""
        with self._lock:
            return self._busy

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every batch put has an outcome; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout=timeout_s)

    def check(self, stopping: bool = False) -> None:
        """The watchdog: raise :class:`FatalKafkaError` if this committer failed for good or hangs.

        Two bounds: one librdkafka call past its own timeout plus :data:`CALL_GRACE_S`
        (``send_offsets_to_transaction`` ignores its timeout when the group coordinator goes
        away, confluentinc/librdkafka#5456: measured after a broker restart, blocked for
        more than 95 s with a 30 s timeout), and a whole transaction past what its retries
        may take. ``stopping`` (a stop was requested): no grace, a stop never waits on a
        call that overran its own timeout. Such a call can be neither interrupted nor
        aborted (librdkafka refuses a second transactional call while one is under way),
        so the daemon stops with exit 3 and the next start's ``init_transactions``
        completes or aborts the transaction. Sets :attr:`hung` when it finds one.
        """
        if self.fatal_error:  # e.g. the idle fencing probe found a newer instance
            raise FatalKafkaError(self.fatal_error)
        cp, now = self.checkpoint, time.monotonic()
        call = cp.call
        grace = 0.0 if stopping else CALL_GRACE_S
        if call is not None and now - call[1] > cp.timeout_s + grace:
            self.hung = True
            raise FatalKafkaError(
                f"{call[0]} has not returned in {now - call[1]:.1f} s, past its "
                f"{cp.timeout_s:.0f} s timeout (broker restarted or unreachable?); the "
                "transaction's outcome is unknown: stopping, the next start's "
                "init_transactions completes or aborts it")
        started = self.call_started
        bound = cp.timeout_s * (cp.retries + 2) + 10.0
        if started is not None and now - started > bound:
            self.hung = True
            raise FatalKafkaError(f"a transaction has been blocked in a Kafka call for more than "
                                  f"{bound:.0f} s (broker unreachable?)")

    def wait_checked(self, timeout_s: float, stopping: Callable[[], bool]) -> bool:
        """:meth:`wait_idle` with :meth:`check` every 0.2 s; False after ``timeout_s``.

        Before the watchdog ran here, the daemon waited blind: after a broker restart
        its poll thread sat 60 s in a rewind with no log line while this thread was stuck
        in ``send_offsets_to_transaction``, a stop request unheeded.

        Raises
        ------
        FatalKafkaError
            From :meth:`check`.
        """
        deadline = time.monotonic() + timeout_s
        while not self.wait_idle(0.2):
            self.check(stopping())
            if time.monotonic() > deadline:
                return False
        return True

    def stop(self, timeout_s: float) -> bool:
        """End the thread after the queued batches; False if it is still in a Kafka call."""
        self._queue.put(None)
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _take(self) -> list[FinishedBatch] | None:
        """The next batches to commit together (None: stop): those waiting, of one epoch.

        When commits fall behind, several queued batches share one transaction, which
        costs its fixed round trips (offsets, commit, markers) once.
        """
        first = self._held.pop() if self._held else self._next()
        if first is None:
            return None
        taken, nbytes = [first], _size(first)
        while len(taken) < self.max_merge and nbytes < self.max_merge_bytes:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None or nxt.epoch != first.epoch:
                self._held.append(nxt)  # taken first next time: queue order is kept
                break
            taken.append(nxt)
            nbytes += _size(nxt)
        return taken

    def _next(self) -> FinishedBatch | None:
        """The next queued item; runs the fencing probe while none comes for a while."""
        while True:
            if self.probe is None:
                return self._queue.get()
            wait = self._last_end + self.probe_idle_s - time.monotonic()
            if wait <= 0:
                self._probe()
                continue
            try:
                return self._queue.get(timeout=wait)
            except queue.Empty:
                continue

    def _probe(self) -> None:
        with self._lock:
            fatal = self._fatal
        if fatal:  # nothing more to learn
            self._last_end = time.monotonic()
            return
        self.call_started = time.monotonic()
        self.probes += 1
        try:
            self.checkpoint.probe(*self.probe)
        except FatalKafkaError as exc:
            with self._lock:
                self._fatal = True
            self.fatal_error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a failed probe is retried after the next wait
            log.warning("fencing probe failed (%s); trying again in %.0f s", exc,
                        self.probe_idle_s)
        finally:
            self.call_started = None
            self._last_end = time.monotonic()

    def _run(self) -> None:
        while True:
            batches = self._take()
            if batches is None:
                return
            with self._lock:
                drop = self._fatal or batches[0].epoch < self._floor
            if drop:
                for b in batches:
                    self._done(Outcome(b, "dropped"))
                continue
            start = time.perf_counter()
            self.call_started = time.monotonic()
            self.transactions += 1
            status, error = "committed", ""
            try:
                self.checkpoint.commit_batches(batches)
            except TransactionAborted as exc:
                with self._lock:
                    self._floor = max(self._floor, batches[0].epoch + 1)
                status, error = "aborted", str(exc)
            except FatalKafkaError as exc:
                with self._lock:
                    self._fatal = True
                status, error = "fatal", str(exc)
                self.fatal_error = error
            except Exception as exc:  # noqa: BLE001 - never let the thread die silently
                log.exception("commit of batches %s failed", [b.seq for b in batches])
                with self._lock:
                    self._fatal = True
                status, error = "fatal", f"{type(exc).__name__}: {exc}"
            finally:
                self.call_started = None
                self._last_end = time.monotonic()
            ms = _ms(start)
            for b in batches:
                self._done(Outcome(b, status, ms, error, self.transactions, len(batches)))

    def _done(self, outcome: Outcome) -> None:
        self._outcomes.put(outcome)
        if self._on_outcome is not None:
            self._on_outcome(outcome)
        with self._idle:
            self._busy -= 1
            self._idle.notify_all()


def _size(batch: FinishedBatch) -> int:
    return sum(value_nbytes(r[2]) for r in batch.records)


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3
