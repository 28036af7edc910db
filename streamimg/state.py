"""Worker side of stateful analytics: one state task per batch, chained batch after batch.

Stateful operators (:mod:`streamimg.analytics.stateful`: trackers, line and zone
counters) need every frame of a stream in order, but a batch's chunks compute
in parallel and several batches are in flight at once. So the chunk tasks
(``streamimg.worker``) compute the stateless values only and hand, per frame,
the values a stateful operator or an analytics sink needs (a :class:`Pending`)
to the batch's *state task*, :func:`run_state`. That task takes the state the
previous batch's state task left (a Dask future: the tasks form a chain, one
after the other, while the chunk tasks of later batches already run), steps
each stream's operators through the batch's frames in offset order, builds the
records of the analytics sinks that read state, and returns the new state.

State is kept per input partition, as bytes: ``{partition: blob}``, where a
blob (:func:`encode_partition`) holds, per operator and stream, the operator's
``dumps``. The daemon commits the blobs a batch changed to ``<name>.state``
(one partition per input partition) in the batch's transaction with its
offsets; on assignment, and after a rewind, it restores the committed blob, so
a crash, restart or rebalance continues exactly where the last committed batch
ended. A stream is keyed by ``(partition, stream id)``: produce each stream
with its id as key (``streamimg produce`` does) so that one partition holds it.

Blobs are pickles with a version prefix: the state topic must be writable by
the daemons only (Kafka ACLs), as a consumer-offsets topic is.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streamimg.plan import Program, StateOp
from streamimg.sinks.records import lineage_headers

Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]

#: Version prefix of a partition's state blob.
MAGIC = b"streamimg-state/1\n"
#: Default largest state blob per partition (bytes): under Apache Kafka's default
#: ``max.message.bytes`` of 1 MiB (1,048,588) with room for the record's overhead.
#: ``Topology(max_state_bytes=...)`` raises it (temporal windows of large frames);
#: the daemon creates ``<name>.state`` with a ``max.message.bytes`` to match.
MAX_STATE_BYTES = Program.max_state_bytes


class StateError(RuntimeError):
    """A partition's committed state cannot be read, or has grown too large to commit."""


@dataclass
class Pending:
    """One frame's stateless values and stage timings (ms), for the state task."""

    index: int  # the frame's index in the batch
    values: dict[str, Any]
    timings: dict[str, float]


@dataclass
class StateResult:
    """What a state task returns.

    ``records[s][i]``: records of deferred sink ``s`` (see :meth:`Program.deferred`)
    for batch frame ``i``, lineage stamped. ``failures``: ``(batch frame index, stage,
    reason)`` of frames a stateful operator failed on. ``snapshot``: every partition's
    blob after the batch (the next state task starts from it); ``changed``: the
    partitions whose blob this batch changed (what the transaction commits).
    """

    records: dict[int, list[list[Record]]]
    failures: list[tuple[int, str, str]]
    snapshot: dict[int, bytes]
    changed: dict[int, bytes] = field(default_factory=dict)
    ms: float = 0.0


def encode_partition(states: dict[str, dict[str, bytes]]) -> bytes:
    """A partition's blob: ``{operator name: {stream id: operator dumps}}`` as bytes."""
    return MAGIC + pickle.dumps(states, protocol=5)


def decode_partition(blob: bytes | None) -> dict[str, dict[str, bytes]]:
    """The ``{operator name: {stream id: bytes}}`` of a blob (empty for None).

    Raises
    ------
    StateError
        If ``blob`` was not written by :func:`encode_partition`.
    """
    if not blob:
        return {}
    if not blob.startswith(MAGIC):
        raise StateError(f"state record does not start with {MAGIC!r}: {blob[:32]!r}")
    return pickle.loads(blob[len(MAGIC):])


def with_partition(snapshot: dict[int, bytes] | StateResult, partition: int,
                   blob: bytes | None) -> dict[int, bytes]:
    """``snapshot`` (or a state task's result) with ``partition``'s blob replaced."""
    if isinstance(snapshot, StateResult):
        snapshot = snapshot.snapshot
    out = dict(snapshot)
    if blob:
        out[partition] = blob
    else:
        out.pop(partition, None)
    return out


def pending_of(result: Any) -> list[Pending]:
    """The :class:`Pending` list of a chunk result (a small task next to the chunk's)."""
    return result.pending


def run_state(token: str, blob: bytes, previous: dict[int, bytes] | StateResult,
              pendings: list[list[Pending]], frames: list, run: str) -> StateResult:
    """Step the program's stateful operators through one batch (a Dask task).

    Parameters
    ----------
    token, blob : str, bytes
        The program from :meth:`Program.pickled`.
    previous : dict or StateResult
        ``{partition: blob}`` before this batch, or the previous batch's result.
    pendings : list of lists of Pending
        Per chunk, what its frames computed (failed frames absent).
    frames : list of FrameInfo
        The batch's frames, in input order.
    run : str
        The daemon's run id, for the lineage headers.

    Raises
    ------
    StateError
        If a committed blob cannot be read, or a partition's new blob exceeds
        the program's ``max_state_bytes``. Operator errors never raise: they fail the frame.
    """
    from streamimg.worker import program_of  # the chunk tasks' program cache

    start = time.perf_counter()
    program = program_of(token, blob)
    snapshot = previous.snapshot if isinstance(previous, StateResult) else previous
    ops = program.stateful
    pending = {p.index: p for chunk in pendings for p in chunk}
    streams: dict[tuple[int, str], list[int]] = {}
    for i, info in enumerate(frames):
        if i in pending:
            streams.setdefault((info.partition, info.header.stream), []).append(i)
    failures: dict[int, tuple[str, str]] = {}
    deferred = program.sink_order([s for s in range(len(program.sinks)) if program.deferred(s)])
    records: dict[int, list[list[Record]]] = {s: [[] for _ in frames] for s in deferred}

    def build(i: int, values: dict[str, Any], timings: dict[str, float]) -> None:
        info = frames[i]
        lineage = lineage_headers(info.topic, info.partition, info.offset, run)
        for s in deferred:
            sink = program.sinks[s]
            if sink.analytics:
                recs = sink.builder(None, info, **sink.kwargs,
                                    values={n: values[n] for n in sink.plan.record_values()},
                                    timings=dict(timings))
            else:  # the frames of a temporal operator, copied: a record value may be the
                # frame's own buffer (encode_frame(buffer=True)), and an operator's function
                # may write its next frame into the same array, before this one is produced
                recs = [(k, v.tobytes() if hasattr(v, "tobytes") else v, h) for k, v, h in
                        sink.builder(values[sink.plan.state_frames], info, **sink.kwargs)]
            records[s][i] = [(k, v, [*h, *lineage]) for k, v, h in recs]

    decoded = {p: decode_partition(snapshot.get(p)) for p in {p for p, _ in streams}}
    for (partition, stream), order in streams.items():
        states = decoded[partition]
        saved = {op.name: states.get(op.name, {}).get(stream) for op in ops}
        after = _step_stream(ops, saved, [frames[i] for i in order],
                             [pending[i] for i in order], build, failures)
        for op in ops:
            states.setdefault(op.name, {})[stream] = after[op.name]
    new = dict(snapshot)
    changed = {}
    for partition, states in decoded.items():
        changed[partition] = new[partition] = encode_partition(states)
        if len(changed[partition]) > program.max_state_bytes:
            raise StateError(f"operator state of partition {partition} is "
                             f"{len(changed[partition]):,} bytes, over the "
                             f"{program.max_state_bytes:,} a state record may hold "
                             "(Topology(max_state_bytes=...))")
    for s in deferred:
        for i in failures:
            records[s][i] = []
    return StateResult(records, [(i, s, r) for i, (s, r) in sorted(failures.items())], new,
                       changed, round((time.perf_counter() - start) * 1e3, 3))


def _step_stream(ops: list[StateOp], saved: dict[str, bytes | None], infos: list,
                 pendings: list[Pending], build: Callable[[int, dict, dict], None],
                 failures: dict[int, tuple[str, str]]) -> dict[str, bytes]:
    """Step one stream's operators through its frames; return each operator's new bytes.

    After each frame's steps, ``build(batch index, values, timings)`` makes its records.
    A frame on which an operator or ``build`` fails is recorded in ``failures`` and
    leaves every operator's state as it was before it: the stream's states are loaded
    again from ``saved`` and the frames before it that succeeded are stepped again
    (operators are deterministic, which exactly-once requires anyway).
    """
    def load() -> dict[str, Any]:
        out = {}
        for o in ops:
            try:
                out[o.name] = (o.op.loads(saved[o.name]) if saved[o.name] is not None
                               else o.op.initial())
            except Exception as exc:  # not the frame's fault: the daemon must stop
                raise StateError(f"{o.name}: the committed state of stream "
                                 f"{infos[0].header.stream!r} (partition "
                                 f"{infos[0].partition}) cannot be loaded: "
                                 f"{type(exc).__name__}: {exc}") from exc
        return out

    def step(k: int, states: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
        values, timings = dict(pendings[k].values), dict(pendings[k].timings)
        for o in ops:
            t0 = time.perf_counter()
            try:
                states[o.name], values[o.name] = o.op.step(states[o.name], infos[k], values)
            except Exception as exc:
                raise _Failed(o.name, exc) from exc
            timings[o.name] = round((time.perf_counter() - t0) * 1e3, 3)
        return values, timings

    states = load()
    done: list[int] = []
    for k, p in enumerate(pendings):
        try:
            values, timings = step(k, states)
            try:
                build(p.index, values, timings)
            except Exception as exc:
                raise _Failed("records", exc) from exc
            done.append(k)
        except _Failed as f:  # the frame's failure, not the task's
            failures[p.index] = (f.stage, f"{type(f.exc).__name__}: {f.exc}")
            states = load()
            for j in done:  # replay the frames before it, as they went
                step(j, states)
    return {o.name: o.op.dumps(states[o.name]) for o in ops}


class _Failed(Exception):
    def __init__(self, stage: str, exc: BaseException):
        super().__init__(stage)
        self.stage, self.exc = stage, exc
