"""The long-running daemon: poll Kafka, compute on Dask, commit in order, exactly-once.

The daemon only schedules. Its thread (the poll thread) does four things, none
of them heavy:

1. poll the consumer (``read_committed``, auto-commit off) and feed the
   topology's batcher, which closes a :class:`~streamimg.batching.Batch` at
   ``max_frames`` frames or ``max_wait_ms`` (frame messages), or when frames
   are assembled (pixels), and at once when a worker thread is idle and
   nothing more is to be read (with nothing computing or committing, it waits
   in the consumer for the next message, up to 0.1 s);
2. hand the batch to the :class:`~streamimg.dispatch.Dispatcher`, which runs
   it on Dask as one task per chunk, one chunk per worker thread, and resubmits
   chunks lost with a worker;
3. when the oldest batch's chunks are done, hand the records, dead letters and
   offsets as a :class:`~streamimg.sinks.checkpoint.FinishedBatch` to the
   :class:`~streamimg.sinks.committer.Committer`, a thread that commits
   batches in input order while polling and computing go on;
4. read the committer's outcomes: count committed batches; after an abort,
   discard the work in flight and rewind the consumer to the committed offsets.

Backpressure: batches handed out and not yet committed are bounded in count
(``max_in_flight``) and payload bytes (``max_in_flight_bytes``). At a bound the
daemon takes no new messages; if the bound holds for min(5 s, a third of
``max.poll.interval.ms``) it pauses its partitions, and it keeps calling
``consume`` so heartbeats and rebalances go on
(:class:`~streamimg.sources.pausing.PausingManager`).

Failures: whatever user code raises on a frame is that frame's dead letter
(caught on the worker). A chunk task that fails as a whole (a worker died, the
result was lost) is infrastructure, never a bad frame: it is resubmitted from
the payloads the daemon still holds, up to ``chunk_retries`` times, and then
the batch is discarded and the consumer rewound, as after an abort. Fenced or
fatal Kafka errors stop the daemon with exit code 3; so do more than
``max_aborts`` aborts in a row, and a transactional call that hangs past its
bound (the watchdog, :meth:`~streamimg.sinks.committer.Committer.check`, runs in
the poll loop and while the daemon waits for the committer: a rewind, a drain, a
stop request). Where the consumer resumes comes from the group's committed offsets,
read again while the broker does not answer (up to ``max.poll.interval.ms``).

Rebalances and rewinds (:mod:`streamimg.rebalance`): on revoke, every batch in
flight is finished and committed within ``drain_timeout_s``; past that, all work
in flight is discarded (never committed later) and the partitions kept are
rewound. On lost, nothing is committed. On assign, positions and state come from
the committed offsets.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException
from distributed import Client

from streamimg.admin import (
    connect,
    ensure_topics,
    partitions_of,
    require_topics,
)
from streamimg.batching import Batch
from streamimg.config import KafkaConfig
from streamimg.dashboard.reporter import DashboardReporter
from streamimg.dispatch import ChunkFailed, Dispatcher
from streamimg.logs import EventLog
from streamimg.observe import Listener, Progress, Stats, consumer_lag
from streamimg.rebalance import Rebalancing
from streamimg.sinks.checkpoint import (
    Checkpoint,
    FatalKafkaError,
    FinishedBatch,
    Outcome,
    fencing_probe,
    state_topic_config,
)
from streamimg.sinks.committer import Committer
from streamimg.sources.pausing import PausingManager
from streamimg.state import StateError
from streamimg.topology import Topology, TopologyError

log = logging.getLogger("streamimg.daemon")

EXIT_OK, EXIT_FAILED, EXIT_STATE, EXIT_FATAL = 0, 1, 2, 3


class Daemon(Rebalancing):
    """Runs a :class:`~streamimg.topology.Topology` against Kafka and Dask until stopped.

    Parameters
    ----------
    topology : Topology
        Checked (compiled and run on a synthetic frame) here.
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
    listeners : sequence of Listener
        Observers of assignments, submitted batches, transaction outcomes and a
        tick of the poll loop about once a second: the public hook for metrics
        (:mod:`streamimg.metrics`) and benchmarks.
    chunk_retries, max_aborts : int
        Resubmissions of a chunk whose task failed as a whole, and aborted
        transactions in a row, before the daemon gives up (see module docstring).
    progress_s : float
        Seconds between INFO progress lines (frames/s in and out, lag per
        partition in records, batches and MB in flight, last commit latency);
        0 turns them off.
    fence_check_s : float, optional
        When no transaction has ended for this many seconds (an idle input), a
        fencing probe transaction runs (:meth:`Checkpoint.probe`), so an instance
        fenced by a newer one with the same ``instance`` stops within about this
        time plus one round trip, with exit code 3; 0 turns the probe off. By
        default ``$STREAMIMG_FENCE_CHECK_S``, else 10.

    Raises
    ------
    TopologyError
        If the topology fails its start-up check, or its ``max_state_bytes`` (plus
        64 KiB of record overhead) exceeds the client's ``max_message_bytes``.
    """

    def __init__(self, topology: Topology, kafka: KafkaConfig, client: Client, *,
                 group: str | None = None, instance: str = "0",
                 drain_timeout_s: float = 60.0, stats_path: Path | None = None,
                 listeners: Sequence[Listener] = (),
                 chunk_retries: int = 3, max_aborts: int = 5, progress_s: float = 10.0,
                 fence_check_s: float | None = None, dashboard: bool = True):
        self.topology = topology
        self.program = topology.check()
        if topology.state_topics() and topology.max_state_bytes + 65_536 > kafka.max_message_bytes:
            raise TopologyError(f"topology {topology.name!r}: max_state_bytes="
                                f"{topology.max_state_bytes:,} needs a client "
                                f"max_message_bytes of at least "
                                f"{topology.max_state_bytes + 65_536:,} (has "
                                f"{kafka.max_message_bytes:,})")
        self.kafka = kafka
        self.client = client
        self.group = group or topology.name
        self.instance = instance
        self.transactional_id = f"{topology.name}-{instance}"
        self.run_id = uuid.uuid4().hex[:12]
        #: The daemon's logger: every line carries ``run`` and ``transactional_id``
        #: (``extra`` fields: shown by ``--log-format json``), events also ``event``.
        self.log = EventLog(log, {"run": self.run_id,
                                  "transactional_id": self.transactional_id})
        self._dispatch = Dispatcher(client, self.program, self.run_id, chunk_retries)
        self.drain_timeout_s = drain_timeout_s
        self.stats_path = stats_path
        self.stats = Stats(run=self.run_id)
        self.listeners = list(listeners)
        self.chunk_retries = chunk_retries
        self.max_aborts = max_aborts
        self._stop = threading.Event()
        self._handed: dict[int, int] = {}  # seq -> payload bytes, handed to the committer
        self._batcher = topology.make_batcher(kafka.max_message_bytes)
        self._seq = 0
        self._epoch = 0
        self._aborts_in_a_row = 0
        self._last_txn = 0
        self._progress_log = Progress(progress_s)
        self._last_tick = float("-inf")  # monotonic s of the last Listener.tick
        self.fence_check_s = (float(os.environ.get("STREAMIMG_FENCE_CHECK_S", "10"))
                              if fence_check_s is None else fence_check_s)
        self._closing = False  # the consumer is closing: rebalance callbacks only log
        self._poll_interval_s = float(kafka.extra.get("max.poll.interval.ms", 300_000)) / 1e3
        cfg = topology.batching
        self._pausing = PausingManager(cfg.max_in_flight, cfg.max_in_flight_bytes,
                                       min(5.0, self._poll_interval_s / 3), self.log)
        self._consumer: Consumer | None = None
        self._committer: Committer | None = None
        self.reporter = DashboardReporter.for_daemon(self) if dashboard else None
        if self.reporter is not None:
            self.listeners.append(self.reporter)

    def stop(self) -> None:
        """Ask the loop to stop: no new polling; batches in flight finish and commit."""
        self._stop.set()

    # -- lifecycle ---------------------------------------------------------------------

    def run(self) -> int:
        """Run until :meth:`stop`; return 0, 3 after a fatal Kafka error, 2 on a state error.

        A state error: a committed operator state cannot be loaded, or has grown past
        what a state record may hold (``StateError``, logged with the operator's name).

        Raises
        ------
        KafkaException
            If topics cannot be created or the transactional producer cannot
            initialise at start-up (nothing has been consumed then).
        MissingTopicError
            If an input topic does not exist (inputs are never created here; outputs
            and the DLQ are).
        """
        t = self.topology
        require_topics(connect(self.kafka, 30.0), t.inputs, "input topic")
        ensure_topics(self.kafka, [*t.output_topics, t.dlq_topic], t.partitions)
        if t.state_topics():  # one state partition per input partition
            ensure_topics(self.kafka, t.state_topics(),
                          len(partitions_of(self.kafka, t.inputs[0])),
                          config=state_topic_config(t.max_state_bytes))
        checkpoint = Checkpoint(self.kafka.producer(self.transactional_id))
        checkpoint.start()  # fences an older instance before we read anything
        probe = fencing_probe(self.kafka.consumer(
            f"{self.transactional_id}.fencing-probe", f"{self.transactional_id}-{self.run_id}"),
            t.inputs[0]) if self.fence_check_s > 0 else None
        self._committer = Committer(checkpoint, probe=probe, probe_idle_s=self.fence_check_s)
        self._dispatch.start()
        self._consumer = Consumer(self.kafka.consumer(
            self.group, f"{self.transactional_id}-{self.run_id}"))
        self._consumer.subscribe(t.inputs, on_assign=self._on_assign,
                                 on_revoke=self._on_revoke, on_lost=self._on_lost)
        self.log.info("run %s: %s consuming %s in group %s as %s", self.run_id, t.name, t.inputs,
                      self.group, self.transactional_id, extra={"event": "start"})
        if self.reporter is not None:
            self.reporter.start()
        code = EXIT_OK
        try:
            self._loop()
            if not self._drain(self.drain_timeout_s):
                self.log.warning("work in flight did not finish in %.0f s; its offsets stay "
                            "uncommitted", self.drain_timeout_s)
        except FatalKafkaError as exc:
            self.log.error("stopping: %s", exc, extra={
                "event": "fenced" if "fenced" in str(exc).lower() else "fatal"})
            code = EXIT_FATAL
        except StateError as exc:
            self.log.error("stopping: operator state: %s", exc, extra={"event": "state"})
            code = EXIT_STATE
        finally:
            self._discard()
            # A call the watchdog found hung is not waited for again (measured: 30 s more).
            hung = not self._committer.stop(0.0 if self._committer.hung else checkpoint.timeout_s)
            if hung:
                self.log.error("a transactional Kafka call is still blocked; exiting without it")
                code = EXIT_FATAL
            try:
                # close() serves pending rebalance callbacks (measured after a broker restart:
                # an assign, then a revoke that drained for 60 s, then close() raised _DESTROY
                # and the daemon died with a traceback, exit 1). Everything in flight was
                # discarded above: the callbacks only log now, and a failed close is logged.
                self._closing = True
                self._consumer.close()  # leaves the group: partitions move at once
            except KafkaException as exc:
                self.log.warning("consumer close: %s", exc.args[0].str())
            finally:
                if not hung:
                    checkpoint.close(abandon=code == EXIT_FATAL)
                self.topology.destroy()
                self.stats.write(self.stats_path)
        self.log.info("run %s stopped: %s", self.run_id, json.dumps(self.stats.to_dict()),
                      extra={"event": "stop"})
        for listener in self.listeners:
            listener.stopped(code)
        return code

    def _loop(self) -> None:
        batcher = self._batcher
        while not self._stop.is_set():
            self._handle_outcomes()
            self._hand_over_ready()
            self._committer.check(self._stop.is_set())
            self._progress()
            if self._pausing.at_bound(*self._open()):
                self._backpressure()
                continue
            self._pausing.resume(self._consumer)
            asked = max(1, batcher.room())
            if self._dispatch.inflight or self._handed:
                # consume(n, timeout) waits for n messages or the timeout: a long one held
                # a batch's first frames past max_wait_ms (measured: p50 latency +150 ms).
                timeout = min(batcher.wait_s(), 0.005 if self._dispatch.inflight else 0.01)
                messages = self._consumer.consume(num_messages=asked, timeout=timeout)
            else:
                messages = self._consume_idle(asked)
            for m in messages:
                self._add(m)
            # A worker thread idle and nothing more to read: close the batch now rather than
            # wait out max_wait_ms, which only batches while every thread is busy anyway.
            batch = batcher.take(early=len(messages) < asked and self._dispatch.idle_threads() > 0)
            if batch is not None:
                self._submit(batch)

    def _consume_idle(self, asked: int) -> list[Any]:
        """Nothing computing or committing: wait for one message, then take what is fetched.

        Until the first message or the batcher's ``wait_s`` (0.1 s when empty): an idle poll
        thread wakes ~10 times a second, not ~100 (~70-100 us of CPU a call, measured).
        """
        messages = self._consumer.consume(num_messages=1, timeout=self._batcher.wait_s())
        if messages and asked > 1:
            messages += self._consumer.consume(num_messages=asked - 1, timeout=0)
        return messages

    def _add(self, m: Any) -> None:
        err = m.error()
        if err is None:
            self._batcher.add(m)
        elif err.fatal():
            raise FatalKafkaError(f"consumer: {err.str()}")
        elif err.code() != KafkaError._PARTITION_EOF:
            self.log.warning("consumer: %s", err.str())

    # -- batches -----------------------------------------------------------------------

    def _submit(self, batch: Batch) -> None:
        start = time.perf_counter()
        self._seq += 1
        self.stats.frames_in += len(batch.frames) + len(batch.dead)
        try:
            item = self._dispatch.submit(self._seq, self._epoch, batch)
        except ChunkFailed as exc:
            self._infrastructure_failed(exc)
            return
        ms = (time.perf_counter() - start) * 1e3
        for listener in self.listeners:
            listener.batched(item.seq, batch)
            listener.submitted(item.seq, len(batch.frames), item.nbytes, ms)

    def _hand_over_ready(self) -> None:
        """Hand every computed batch, oldest first, to the committer."""
        try:
            finished = self._dispatch.ready()
        except ChunkFailed as exc:
            self._infrastructure_failed(exc)
            return
        self.stats.chunks_resubmitted = self._dispatch.resubmitted
        for d in finished:
            item, b, t = d.item, d.item.batch, self.topology
            self._handed[item.seq] = item.nbytes
            states = {**{(t.state_topic, p): v for p, v in b.states.items()},
                      **{(t.operator_state_topic, p): v for p, v in d.states.items()}}
            self._committer.put(FinishedBatch(
                item.seq, item.epoch, self.run_id, d.frames_out, d.records, d.dead,
                t.dlq_topic, b.offsets, self._consumer.consumer_group_metadata(),
                states, item.created, b.frames))

    def _infrastructure_failed(self, exc: ChunkFailed) -> None:
        self.log.error("%s; discarding the work in flight and rewinding", exc)
        self._failed_in_a_row()
        self._rewind()
        time.sleep(1.0)  # give the cluster a moment before the batches are read again

    def _handle_outcomes(self, wait_s: float = 0.0) -> None:
        for o in self._committer.outcomes(wait_s):
            self._handed.pop(o.batch.seq, None)
            if o.status == "committed":
                self._committed(o)
            elif o.status == "aborted":
                self.stats.batches_aborted += 1
                self.log.warning("batch %d aborted (%s); rewinding to committed offsets",
                                 o.batch.seq, o.error, extra={"event": "abort"})
                for listener in self.listeners:
                    listener.outcome(o)
                if o.batch.epoch == self._epoch:
                    self._failed_in_a_row()
                    self._rewind()
            elif o.status == "fatal":
                raise FatalKafkaError(o.error)

    def _committed(self, o: Outcome) -> None:
        b = o.batch
        self._aborts_in_a_row = 0
        for d in b.dead:
            self.log.warning("dead letter %s[%d]@%d (%s): %s", d.topic, d.partition, d.offset,
                        d.stage, d.reason)
        self.stats.frames_out += b.frames
        self.stats.dead_letters += len(b.dead)
        self.stats.records_out += len(b.records) + len(b.dead)
        self.stats.batches_committed += 1
        if o.txn != self._last_txn:  # batches sharing a transaction count its time once
            self._last_txn = o.txn
            self.stats.transactions += 1
            self.stats.commit_ms += o.ms
        self.stats.last_commit = time.time()
        if b.created:
            self.stats.last_commit_latency_ms = (self.stats.last_commit - b.created) * 1e3
        for listener in self.listeners:
            listener.outcome(o)
        self.stats.write(self.stats_path)

    def _progress(self) -> None:
        """The progress line when due; every second, the listeners' :meth:`Listener.tick`."""
        line = self._progress_log.due()
        tick = bool(self.listeners) and time.monotonic() - self._last_tick >= 1.0
        if not (line or tick):
            return
        lag, (batches, nbytes) = consumer_lag(self._consumer), self._open()
        if line:
            self.log.info("%s", self._progress_log.line(self.stats, lag, batches, nbytes),
                          extra={"event": "progress"})
        if tick:
            self._last_tick = time.monotonic()
            for listener in self.listeners:
                listener.tick(lag, batches, nbytes)

    def _failed_in_a_row(self) -> None:
        self._aborts_in_a_row += 1
        if self._aborts_in_a_row > self.max_aborts:
            raise FatalKafkaError(f"{self._aborts_in_a_row} batches in a row failed or were "
                                  "aborted; giving up (nothing of them was committed)")

    # -- backpressure -------------------------------------------------------------------

    def _open(self) -> tuple[int, int]:
        batches = len(self._dispatch.inflight) + len(self._handed)
        return batches, self._dispatch.nbytes + sum(self._handed.values())

    def _backpressure(self) -> None:
        if self._dispatch.inflight:
            self._dispatch.wait_head(0.05)
        else:
            self._handle_outcomes(wait_s=0.05)
        for m in self._pausing.hold(self._consumer):
            self._add(m)
        self.stats.pauses = self._pausing.pauses

    def _drain(self, timeout_s: float) -> bool:
        """Finish and commit every batch in flight within ``timeout_s``; False if not all did."""
        deadline = time.monotonic() + timeout_s
        while self._dispatch.inflight or self._committer.pending:
            if time.monotonic() > deadline:
                return False
            # A hung commit would hold a stop request for drain_timeout_s.
            self._committer.check(self._stop.is_set())
            self._hand_over_ready()
            self._dispatch.wait_head(0.05)
            self._handle_outcomes(wait_s=0.0 if self._dispatch.inflight else 0.05)
        self._handle_outcomes()
        return True
