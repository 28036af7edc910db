"""Dispatch: batches onto Dask, one task per chunk, and their results back in input order.

The daemon's Kafka side (``streamimg.daemon``) hands a
:class:`~streamimg.batching.Batch` to :meth:`Dispatcher.submit`; the batch is
split into one chunk per worker thread and each chunk becomes one task,
:func:`streamimg.worker.run_chunk`. :meth:`Dispatcher.ready` returns the
oldest batches whose chunks are all done, as records and dead letters, in the
order they were submitted.

How payloads travel, measured on 4-frame 720p chunks: when every worker runs
in the daemon's own process (``streamimg.cluster.in_process_cluster``) they
are handed over in memory (``worker.HANDOFF``): no copy, no pickling (through
``Client.submit`` the graph was pickled, 47 ms a chunk; through ``scatter`` 12
ms). Remote workers get them scattered straight to one worker (76 ms a chunk,
against 94 as task arguments through the scheduler).

A chunk whose task fails as a whole (its worker died, its payloads or result
were lost) is resubmitted from the payloads the daemon still holds, up to
``retries`` times; then :class:`ChunkFailed` is raised and the daemon discards
its work in flight and rewinds. User code never fails a task: a frame that
raises becomes that frame's dead letter inside the task.

A program with stateful operators adds one *state task* per batch
(:func:`streamimg.state.run_state`): it depends on the batch's chunks and on
the previous batch's state task, so every stream's state advances batch after
batch in input order while later batches' chunks compute. The chain's head is
``{partition: committed blob}`` after :meth:`Dispatcher.discard` and
:meth:`Dispatcher.restore`. A lost chunk or state task of a stateful program is
not resubmitted (the chain after it would have to be rebuilt): it raises
:class:`ChunkFailed`, and the daemon rewinds to the committed offsets and state.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from distributed import Client, Future, wait

from streamimg.batching import Batch, DeadLetter
from streamimg.plan import Program
from streamimg.sinks.records import gap_record, lineage_headers, value_nbytes
from streamimg.state import StateError, StateResult, pending_of, run_state, with_partition
from streamimg.worker import HANDOFF, ChunkResult, run_chunk, run_local_chunk

log = logging.getLogger("streamimg.dispatch")


class ChunkFailed(RuntimeError):
    """A chunk could not be computed within its retries, or no worker would take it."""


@dataclass
class InFlight:
    """A batch computing on Dask: one future per chunk of frames ``bounds[j]``."""

    seq: int
    epoch: int
    batch: Batch
    bounds: list[tuple[int, int]]
    futures: list[Future]
    attempts: list[int]
    nbytes: int
    created: float
    handoffs: list[str] = field(default_factory=list)
    state: Future | None = None  # the batch's state task (stateful programs)


@dataclass
class Done:
    """A computed batch: its records ``(topic, key, value, headers)`` and dead letters."""

    item: InFlight
    records: list[tuple[str, Any, Any, list]]
    dead: list[DeadLetter]
    states: dict[int, bytes] = field(default_factory=dict)  # partition -> state blob

    @property
    def frames_out(self) -> int:
        """Frames that produced outputs (not dead-lettered)."""
        return len(self.item.batch.frames) - (len(self.dead) - len(self.item.batch.dead))


def task_prefix(program: Program) -> str:
    """The key prefix of ``program``'s chunk tasks: ``<topology>:decode>blur>...>encode``.

    Task keys are ``<prefix>-<uuid hex>``. Dask's ``key_split`` keeps what precedes the
    first ``-`` (so ``-`` in names become ``_``): the task stream, progress and profile
    pages group the tasks under a name that reads as the topology.
    """
    return f"{program.name}:{'>'.join(program.stages())}".replace("-", "_")


class Dispatcher:
    """Runs batches of one program on a Dask cluster (see the module docstring).

    Parameters
    ----------
    client : distributed.Client
    program : Program
        The compiled topology (``Topology.check()``).
    run : str
        The daemon's run id, stamped into the lineage headers.
    retries : int
        Resubmissions of a chunk whose task failed as a whole.
    """

    def __init__(self, client: Client, program: Program, run: str, retries: int = 3):
        self.client = client
        self.program = program
        self.run = run
        self.retries = retries
        self.inflight: deque[InFlight] = deque()
        self.resubmitted = 0
        self.in_process = False  # every Dask worker runs in this process
        self._token, self._blob = program.pickled()
        self.key_prefix = task_prefix(program)
        self._workers_read: tuple[float, dict[str, int]] = (0.0, {})
        self.stateful = bool(program.stateful)
        #: What the next batch's state task starts from: the last state task in flight,
        #: or ``{partition: committed blob}``.
        self._state_head: Future | dict[int, bytes] = {}

    def start(self) -> None:
        """Find out whether the workers share this process (then payloads go in memory)."""
        try:
            pids = self.client.run(os.getpid)
        except Exception as exc:  # noqa: BLE001 - then assume remote workers
            log.warning("cannot ask the workers for their pids: %s", exc)
            pids = {}
        self.in_process = bool(pids) and set(pids.values()) == {os.getpid()}

    @property
    def nbytes(self) -> int:
        """Payload bytes of the batches in flight."""
        return sum(i.nbytes for i in self.inflight)

    def submit(self, seq: int, epoch: int, batch: Batch) -> InFlight:
        """Send ``batch`` to the workers, one task per chunk.

        Raises
        ------
        ChunkFailed
            If no worker takes a chunk (the batch is not in flight then).
        """
        n = len(batch.frames)
        k = min(n, max(1, sum(self._workers().values())))
        bounds = [(j * n // k, (j + 1) * n // k) for j in range(k)] if n else []
        item = InFlight(seq, epoch, batch, bounds, [], [0] * len(bounds),
                        sum(value_nbytes(p) for p in batch.payloads), time.time())
        try:
            item.futures = [self._submit_chunk(item, j) for j in range(len(bounds))]
        except ChunkFailed:
            self._cancel(item)
            raise
        if self.stateful:
            self._submit_state(item)
        self.inflight.append(item)
        return item

    def idle_threads(self) -> int:
        """Worker threads with no chunk task of this dispatcher to run, as best known.

        The cluster's threads as last read for a submit (the poll loop asks this on
        every turn, so it never waits on the scheduler here once a list is known) minus
        the chunk tasks submitted and not yet done; other clients' tasks are not seen.
        """
        threads = sum(self._workers_read[1].values()) or sum(self._workers().values())
        busy = sum(not f.done() for item in self.inflight for f in item.futures)
        return max(0, threads - busy)

    def restore(self, partition: int, blob: bytes | None) -> None:
        """Make ``blob`` (None: no state yet) ``partition``'s state for the next batches."""
        if isinstance(self._state_head, Future):
            self._state_head = self.client.submit(with_partition, self._state_head, partition,
                                                  blob, pure=False)
        else:
            self._state_head = with_partition(self._state_head, partition, blob)

    def ready(self) -> list[Done]:
        """The oldest batches whose chunks are all done, in submission order.

        Lost chunks are resubmitted and their batch waits.

        Raises
        ------
        ChunkFailed
            If a chunk failed more than ``retries`` times or cannot be resubmitted, or a
            task of the state chain was lost.
        StateError
            If a committed operator state cannot be loaded or has grown too large.
        """
        out: list[Done] = []
        while self.inflight and all(f.done() for f in self._futures(self.inflight[0])):
            done = self._collect(self.inflight[0])
            if done is None:
                break
            out.append(done)
            self.inflight.popleft()
        return out

    def wait_head(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for one more chunk of the oldest batch to finish.

        Only the chunks still running are waited on: with a finished one among them,
        ``FIRST_COMPLETED`` would return at once and the poll thread would spin through
        the event loop (measured: 30% of a core, and the workers starved of the GIL).
        """
        running = ([f for f in self._futures(self.inflight[0]) if not f.done()]
                   if self.inflight else [])
        if running:
            try:
                wait(running, timeout=timeout_s, return_when="FIRST_COMPLETED")
            except Exception:  # noqa: BLE001 - timeouts and cancelled futures alike: look again
                pass

    def discard(self) -> None:
        """Cancel every batch in flight: none of them will be handed out."""
        for item in self.inflight:
            self._cancel(item)
        self.inflight.clear()
        self._state_head = {}  # the daemon restores the committed state next

    # -- internals ---------------------------------------------------------------------

    @staticmethod
    def _futures(item: InFlight) -> list[Future]:
        return [*item.futures, *([item.state] if item.state is not None else [])]

    def _submit_state(self, item: InFlight) -> None:
        """The batch's state task, after its chunks and the previous batch's state task."""
        pendings = [self.client.submit(pending_of, f, key=f"pending-{f.key}", pure=False,
                                       priority=-item.seq) for f in item.futures]
        item.state = self.client.submit(
            run_state, self._token, self._blob, self._state_head, pendings, item.batch.frames,
            self.run, key=f"state:{self.program.name.replace('-', '_')}-{uuid.uuid4().hex}",
            pure=False, priority=-item.seq)
        self._state_head = item.state

    def _workers(self) -> dict[str, int]:
        """Worker address -> threads, read from the scheduler every 2 s at most."""
        read, workers = self._workers_read
        if time.monotonic() - read > 2.0 or not workers:
            try:
                workers = dict(self.client.nthreads())
            except Exception as exc:  # noqa: BLE001 - keep the last list; submit will tell
                log.warning("cannot read the cluster's workers: %s", exc)
            self._workers_read = (time.monotonic(), workers)
        return workers

    def _submit_chunk(self, item: InFlight, j: int) -> Future:
        lo, hi = item.bounds[j]
        b = item.batch
        key = f"{self.key_prefix}-{uuid.uuid4().hex}"
        if self.in_process:
            HANDOFF[key] = (b.frames[lo:hi], b.payloads[lo:hi])
            item.handoffs.append(key)
            return self.client.submit(run_local_chunk, self._token, self._blob, key, b.decode,
                                      self.run, lo, key=key, pure=False, priority=-item.seq)
        for attempt in range(3):
            workers = sorted(self._workers()) or [None]
            target = workers[(item.seq + j + item.attempts[j] + attempt) % len(workers)]
            where = [target] if target else None
            try:
                data = self.client.scatter(b.payloads[lo:hi], workers=where, hash=False,
                                           direct=True, timeout=5)
            except Exception as exc:  # noqa: BLE001 - a worker died since we listed them
                log.warning("batch %d: sending chunk %d to %s failed (%s: %s)", item.seq, j,
                            target, type(exc).__name__, exc)
                self._workers_read = (0.0, {})  # list the workers again
                continue
            return self.client.submit(run_chunk, self._token, self._blob, b.frames[lo:hi],
                                      data, b.decode, self.run, lo, key=key, pure=False,
                                      priority=-item.seq, workers=where,
                                      allow_other_workers=True)
        raise ChunkFailed(f"batch {item.seq}: no worker took chunk {j} in 3 tries")

    def _collect(self, item: InFlight) -> Done | None:
        lost = [j for j, f in enumerate(item.futures) if f.status != "finished"]
        results: list[ChunkResult] = []
        if self.stateful and item.state.status == "error":
            exc = _exception(item.state)
            if isinstance(exc, StateError):  # deterministic: redoing the batch cannot help
                raise exc
        if self.stateful and (lost or item.state.status != "finished"):
            why = _task_error(item.state if not lost else item.futures[lost[0]])
            raise ChunkFailed(f"batch {item.seq}: a {'chunk' if lost else 'state'} task of "
                              f"the state chain failed ({why})")
        if not lost:
            try:
                results = self.client.gather(item.futures)
            except Exception as exc:  # noqa: BLE001 - a worker died under the gather
                log.warning("batch %d: gathering failed (%s: %s)", item.seq,
                            type(exc).__name__, exc)
                lost = [j for j, f in enumerate(item.futures) if f.status != "finished"]
                lost = lost or list(range(len(item.futures)))
        if lost:
            for j in lost:
                why = _task_error(item.futures[j])
                if item.attempts[j] >= self.retries:
                    raise ChunkFailed(f"batch {item.seq}: chunk {j} failed "
                                      f"{item.attempts[j] + 1} times ({why})")
                item.attempts[j] += 1
                self.resubmitted += 1
                log.warning("batch %d: chunk %d lost (%s); resubmitting (attempt %d)",
                            item.seq, j, why, item.attempts[j] + 1)
                item.futures[j] = self._submit_chunk(item, j)
            return None
        state: StateResult | None = None
        if self.stateful:
            try:
                state = item.state.result(timeout=30)
            except Exception as exc:  # noqa: BLE001 - a worker died under the gather
                raise ChunkFailed(f"batch {item.seq}: gathering the state task failed "
                                  f"({type(exc).__name__}: {exc})") from None
        _release(item)
        b = item.batch
        failures = [(lo + i, stage, reason) for (lo, _), r in zip(item.bounds, results,
                                                                     strict=True)
                    for i, stage, reason in r.failures]
        failures = sorted(failures + (state.failures if state is not None else []))
        failed = {i for i, _, _ in failures}
        per_frame = [[r.records[s][i] for r in results for i in range(len(r.records[s]))]
                     for s in range(len(self.program.sinks))]
        if state is not None:
            for s, frames in state.records.items():
                per_frame[s] = frames
        records: list[tuple[str, Any, Any, list]] = []
        for s, topic in enumerate(self.program.topics):
            for i, recs in enumerate(per_frame[s]):
                if i not in failed:
                    records.extend((topic, k, v, h) for k, v, h in recs)
        for g in b.gaps:  # every analytics topic says what a live stream lost
            key, value, headers = gap_record(g)
            lineage = lineage_headers(g.topic, g.partition, g.offset, self.run)
            records.extend((topic, key, value, [*headers, *lineage])
                           for topic in sorted({s.topic for s in self.program.sinks
                                                if s.analytics}))
        dead = list(b.dead)
        for i, stage, reason in failures:
            info, (key, value, headers) = b.frames[i], b.original(i)
            where = "decode" if stage == "decode" else "process"
            why = reason if stage in ("decode", "process") else f"{stage}: {reason}"
            dead.append(DeadLetter(info.topic, info.partition, info.offset, key, value,
                                   list(headers or ()), where, why))
        return Done(item, records, dead, state.changed if state is not None else {})

    def _cancel(self, item: InFlight) -> None:
        _release(item)
        try:
            self.client.cancel(self._futures(item))
        except Exception as exc:  # noqa: BLE001 - cancelling is best effort
            log.debug("cancel failed: %s", exc)


def _release(item: InFlight) -> None:
    """Drop the daemon's in-memory hand-over of the chunks' payloads."""
    for key in item.handoffs:
        HANDOFF.pop(key, None)
    item.handoffs.clear()


def _exception(fut: Future) -> BaseException:
    try:
        return fut.exception(timeout=1)
    except Exception as e:  # noqa: BLE001
        return e


def _task_error(fut: Future) -> str:
    if fut.status == "error":
        exc = _exception(fut)
        return f"{type(exc).__name__}: {exc}"
    return fut.status
