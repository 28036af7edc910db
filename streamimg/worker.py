"""Worker side: what runs inside a Dask task. Pure computation; never touches Kafka.

The daemon splits every batch into one chunk per worker thread and submits
one task per chunk: :func:`run_chunk` with the chunk's frame payloads as
arguments (so Dask can rerun it elsewhere when a worker dies). The task
decodes the payloads, runs the topology's :class:`~streamimg.plan.Program`
(frame operators, values, drawing, every sink's records) and returns a
:class:`ChunkResult`: the records, already stamped with lineage, and the
frames that failed with their stage and reason. Whatever user code raises on a
frame is caught here and becomes that frame's failure (a dead letter), so a
task that fails as a whole always means an infrastructure problem (a worker
died, the result could not be sent), never a bad frame.

Frame operators are Dask-array functions. Their graph is built once per
operator and input (shape, dtype) and run on each (1, h, w, c) frame with
Dask's synchronous scheduler: ~0.3 ms per operator and frame, against ~4 ms to
build the graph anew (measured on 720p frames).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import dask.array as da
import numpy as np
from dask._task_spec import DataNode
from dask.core import flatten
from dask.local import get_sync

from streamimg.codecs.frame import FrameHeader, decode_payload
from streamimg.plan import ArrayOp, Frames, Program, SinkSpec, StateOp
from streamimg.sinks.records import lineage_headers
from streamimg.state import Pending

Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


@dataclass(frozen=True)
class Timed:
    """A value with the ms it took, when the step knows better than a stopwatch.

    Batched inference returns its share of the batch's time per frame this way;
    the worker records ``ms`` and passes ``value`` on.
    """

    value: Any
    ms: float


@dataclass
class ChunkResult:
    """What one chunk task returns (pickled as one object: one message frame).

    ``records[s][i]`` lists sink ``s``'s records ``(key, value, headers)`` for the
    chunk's frame ``i``, lineage headers included (empty for a failed frame, and for
    every frame of a sink whose records the state task builds). ``failures`` are
    ``(index in chunk, stage, reason)`` for frames that produced nothing. ``pending``
    (stateful programs only) hands each good frame's values and timings to the
    batch's state task (``streamimg.state``), indexed within the batch. ``ms`` is
    the task's wall time on the worker.
    """

    records: list[list[list[Record]]]
    failures: list[tuple[int, str, str]]
    ms: float
    pending: list = field(default_factory=list)


def decode_block(payload: bytes, header: FrameHeader) -> np.ndarray:
    """Decode a frame message payload into a (1, h, w, c) block.

    Raises
    ------
    FrameDecodeError
        If the payload does not match its headers (see ``decode_payload``).
    """
    return decode_payload(header, payload)[None]


def array_block(frame: np.ndarray, header: FrameHeader) -> np.ndarray:
    """An assembled frame (h, w, c) as a (1, h, w, c) block."""
    return frame.reshape((1, *header.shape))


class _Runtime:
    """A program unpickled on this worker, with its operator graphs per input kind."""

    def __init__(self, program: Program):
        self.program = program
        self._graphs: dict[tuple[int, tuple, str], tuple[dict, Any, Any]] = {}
        self._lock = threading.Lock()

    def graph(self, op: ArrayOp, shape: tuple, dtype: np.dtype) -> tuple[dict, Any, Any]:
        key = (id(op), shape, dtype.str)
        with self._lock:
            if key not in self._graphs:
                name = f"streamimg-in-{id(op)}"
                x = da.from_array(np.empty(shape, dtype), chunks=shape, name=name)
                y = op.fn(x, **op.kwargs)
                (out_key,) = list(flatten(y.__dask_keys__())) or [None]
                if y.ndim != 4 or y.shape[0] != 1 or out_key is None:
                    raise ValueError(f"{op.name} must keep the (n, h, w, c) frame axis and one "
                                     f"chunk per frame; got shape {y.shape}, chunks {y.chunks}")
                self._graphs[key] = (dict(y.__dask_graph__()), (name, 0, 0, 0, 0), out_key)
            return self._graphs[key]


_RUNTIMES: OrderedDict[str, _Runtime] = OrderedDict()
_RUNTIMES_LOCK = threading.Lock()


def _runtime(token: str, blob: bytes) -> _Runtime:
    with _RUNTIMES_LOCK:
        rt = _RUNTIMES.get(token)
        if rt is None:
            rt = _RUNTIMES[token] = _Runtime(cloudpickle.loads(blob))
            while len(_RUNTIMES) > 8:
                _RUNTIMES.popitem(last=False)
        return rt


def program_of(token: str, blob: bytes) -> Program:
    """The program ``blob`` unpickled, from this process's cache (keyed by ``token``)."""
    return _runtime(token, blob).program


def run_chunk(token: str, blob: bytes, frames: list, payloads: list, decode: Any,
              run: str, first: int = 0) -> ChunkResult:
    """Process one chunk of a batch (a Dask task; see the module docstring).

    Parameters
    ----------
    token, blob : str, bytes
        The program from :meth:`Program.pickled`.
    frames : list of FrameInfo
        The chunk's frames in input order.
    payloads : list
        What ``decode(payloads[i], frames[i].header)`` turns into frame i's
        (1, h, w, c) block.
    decode : callable
        :func:`decode_block` (frame messages) or :func:`array_block` (assembled frames).
    run : str
        The daemon's run id, for the lineage headers.
    first : int
        The batch index of the chunk's first frame (for the state task's ``pending``).
    """
    return run_program(_runtime(token, blob), frames, payloads, decode, run, first)


# Chunks handed to worker threads of this very process (an in-process cluster): the
# task gets a key and takes frames and payloads from here, with no copy and no pickling.
# Through Client.submit the payloads cost 47 ms per 4-frame 720p chunk in-process (the
# graph is pickled), through scatter 12 ms, through this dict nothing (measured).
HANDOFF: dict[str, tuple[list, list]] = {}


def run_local_chunk(token: str, blob: bytes, handoff: str, decode: Any, run: str,
                    first: int = 0) -> ChunkResult:
    """:func:`run_chunk` on the frames and payloads the daemon left in ``HANDOFF[handoff]``.

    Raises
    ------
    KeyError
        If the task runs in another process than the daemon's (the daemon uses it
        only when every worker shares its process).
    """
    frames, payloads = HANDOFF[handoff]
    return run_chunk(token, blob, frames, payloads, decode, run, first)


def run_program(rt: _Runtime | Program, frames: list, payloads: list, decode: Any,
                run: str, first: int = 0) -> ChunkResult:
    """:func:`run_chunk` on an unpickled program (the daemon's start-up check uses it)."""
    start = time.perf_counter()
    if isinstance(rt, Program):
        rt = _Runtime(rt)
    n = len(frames)
    timings: list[dict[str, float]] = [{} for _ in range(n)]
    failed: dict[int, tuple[str, str]] = {}
    blocks: dict[int, list[Any]] = {}   # id(Frames) -> per frame block or None
    values: dict[int, list[Any]] = {}   # id(ValueOp) -> per frame value

    def fail(i: int, stage: str, exc: BaseException) -> None:
        if i not in failed:
            failed[i] = (stage, f"{type(exc).__name__}: {exc}")

    def alive() -> list[int]:
        return [i for i in range(n) if i not in failed]

    def frames_at(node: Frames) -> list[Any]:
        if id(node) in blocks:
            return blocks[id(node)]
        out: list[Any] = [None] * n
        if node.op is None:  # the root: decode
            for i in range(n):
                t0 = time.perf_counter()
                try:
                    out[i] = decode(payloads[i], frames[i].header)
                except Exception as exc:  # noqa: BLE001 - any decode failure is the frame's
                    fail(i, "decode", exc)
                timings[i]["decode"] = _ms(t0)
        else:
            parent, op = frames_at(node.parent), node.op
            for i in alive():
                t0 = time.perf_counter()
                try:
                    if op.per_frame:
                        out[i] = op.fn(parent[i][0], frames[i], **op.kwargs)[None]
                        timings[i][op.name] = _ms(t0)
                        continue
                    dsk, in_key, out_key = rt.graph(op, parent[i].shape, parent[i].dtype)
                    dsk = dict(dsk)
                    dsk[in_key] = DataNode(in_key, parent[i])
                    out[i] = get_sync(dsk, out_key)
                except Exception as exc:  # noqa: BLE001
                    fail(i, op.name, exc)
                timings[i][op.name] = _ms(t0)
        blocks[id(node)] = out
        return out

    def value_of(vop: Any) -> list[Any]:
        if id(vop) in values:
            return values[id(vop)]
        src = frames_at(vop.source)
        needed = {v.name: value_of(v) for v in vop.needs}
        out: list[Any] = [None] * n
        if vop.batched:
            by_shape: dict[tuple, list[int]] = {}
            for i in alive():
                by_shape.setdefault((src[i].shape, src[i].dtype.str), []).append(i)
            for index in by_shape.values():
                t0 = time.perf_counter()
                try:
                    results = vop.fn(np.concatenate([src[i] for i in index]), **vop.kwargs,
                                     **{k: [v[i] for i in index] for k, v in needed.items()})
                    ms = _ms(t0) / len(index)
                    for i, r in zip(index, results, strict=True):
                        out[i], timings[i][vop.name] = _unwrap(r, ms)
                except Exception:  # noqa: BLE001 - isolate the failing frame(s) one by one
                    for i in index:
                        t0 = time.perf_counter()
                        try:
                            (r,) = vop.fn(src[i], **vop.kwargs,
                                          **{k: [v[i]] for k, v in needed.items()})
                            out[i], timings[i][vop.name] = _unwrap(r, _ms(t0))
                        except Exception as exc:  # noqa: BLE001
                            fail(i, vop.name, exc)
        else:
            for i in alive():
                t0 = time.perf_counter()
                try:
                    out[i], timings[i][vop.name] = _unwrap(
                        vop.fn(src[i][0], **vop.kwargs, **{k: v[i] for k, v in needed.items()}),
                        None, t0)
                except Exception as exc:  # noqa: BLE001
                    fail(i, vop.name, exc)
        values[id(vop)] = out
        return out

    drawn_memo: dict[int, list[Any]] = {}

    def output_frames(sink: SinkSpec) -> list[Any]:
        draw = sink.plan.drawn
        if draw is None:
            return [b if b is None else b[0] for b in frames_at(sink.plan.frames)]
        if id(draw) not in drawn_memo:
            src = frames_at(draw.source)
            needed = {name: value_of(sink.plan.values[name]) for name in draw.needs}
            out: list[Any] = [None] * n
            for i in alive():
                t0 = time.perf_counter()
                try:
                    out[i] = draw.fn(src[i][0], **draw.kwargs,
                                     **{k: v[i] for k, v in needed.items()})
                except Exception as exc:  # noqa: BLE001
                    fail(i, "annotate", exc)
                timings[i]["annotate"] = _ms(t0)
            drawn_memo[id(draw)] = out
        return drawn_memo[id(draw)]

    program = rt.program
    sinks = program.sinks
    per_sink: list[list[list[Record]]] = [[[] for _ in range(n)] for _ in sinks]
    order = program.sink_order()
    handed: dict[str, Any] = {}  # values the state task needs: name -> ValueOp
    for s in order:
        sink = sinks[s]
        if program.deferred(s):
            handed.update((k, v) for k, v in sink.plan.values.items()
                          if not isinstance(v, StateOp))
            continue
        if sink.analytics:
            vals = {name: value_of(sink.plan.values[name]) for name in sink.plan.record_values()}
            for i in alive():
                try:
                    per_sink[s][i] = sink.builder(None, frames[i], **sink.kwargs,
                                                  values={k: v[i] for k, v in vals.items()},
                                                  timings=dict(timings[i]))
                except Exception as exc:  # noqa: BLE001
                    fail(i, sink.topic, exc)
            continue
        for vop in sink.plan.values.values():
            if not isinstance(vop, StateOp):
                value_of(vop)  # a frame failing in any value produces no record anywhere
        out = output_frames(sink)
        for i in alive():
            t0 = time.perf_counter()
            try:
                per_sink[s][i] = sink.builder(out[i], frames[i], **sink.kwargs)
            except Exception as exc:  # noqa: BLE001
                fail(i, sink.timing or sink.topic, exc)
            if sink.timing:
                timings[i][sink.timing] = _ms(t0)

    for vop in handed.values():
        value_of(vop)
    pending = [Pending(first + i, {k: values[id(v)][i] for k, v in handed.items()},
                       dict(timings[i])) for i in alive()] if program.stateful else []
    records: list[list[list[Record]]] = [[[] for _ in range(n)] for _ in sinks]
    for i in alive():
        f = frames[i]
        lineage = lineage_headers(f.topic, f.partition, f.offset, run)
        for s in range(len(sinks)):
            records[s][i] = [(k, v, [*h, *lineage]) for k, v, h in per_sink[s][i]]
    failures = [(i, stage, reason) for i, (stage, reason) in sorted(failed.items())]
    return ChunkResult(records, failures, _ms(start), pending)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1e3, 3)


def _unwrap(result: Any, ms: float | None, t0: float | None = None) -> tuple[Any, float]:
    """``(value, ms)``: a :class:`Timed` or a value's own ``ms`` wins over the stopwatch."""
    if isinstance(result, Timed):
        return result.value, round(float(result.ms), 3)
    own = getattr(result, "ms", None)
    if own is not None:
        return result, round(float(own), 3)
    return result, ms if ms is not None else _ms(t0)
