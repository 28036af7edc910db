"""Batches: frames read from Kafka, as Dask arrays living on the workers.

A :class:`Batch` is what flows through a topology. It holds

- ``frames``: one :class:`FrameInfo` per input frame, in input order;
- ``groups``: the frames as Dask arrays of shape (n, height, width, channels),
  one chunk per frame; frames of different shapes or dtypes go to separate
  groups (``FrameGroup.index`` maps rows back to ``frames``);
- ``values``: per-frame analytics by name, each a list of :class:`Step`
  aligned with ``frames``;
- ``drawn``: per frame, an optional :class:`Step` that draws on the output
  frame (annotation), or None;
- ``outputs``: the records sinks asked for, shared by every batch derived from
  the same input so that all of them commit in one transaction;
- ``dead``: messages that failed to decode, bound for the dead-letter topic.

Two kinds of work, two kinds of graph. Array operators (:meth:`Batch.map_frames`:
filters, convolutions, transforms) are Dask array layers, which Dask fuses with
the decode into one task per frame. Everything per frame after them (analytics,
drawing, encoding the outputs) is recorded as steps, and :func:`finish_frame`
runs all of one frame's steps in a single task, timing each: the full video
analysis costs 3 tasks per frame instead of 10, and every stage's ms reaches the
analytics record. Nothing computes until the daemon hands the outputs to Dask.
Payloads are scattered to the workers once and decoded there.
"""

from __future__ import annotations

import dataclasses
import functools
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np

from streamimg.codecs.frame import FrameDecodeError, FrameHeader, decode_payload, parse_header


@dataclass(frozen=True, slots=True)
class FrameInfo:
    """Where a frame came from and what it is.

    ``offset`` is the Kafka offset of its record in ``topic``/``partition``;
    ``header`` holds stream id, frame index, capture time (ms since epoch),
    shape (pixels) and dtype.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    header: FrameHeader
    mask: np.ndarray | None = None  # (h, w) bool, True where an assembled frame lacks a pixel

    def lineage(self) -> dict[str, Any]:
        """The source coordinates as a JSON-ready dict."""
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that could not be processed, with the reason, kept whole.

    ``stage`` is ``"decode"`` (on the daemon or the worker) or ``"process"``.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    stage: str
    reason: str


@dataclass(frozen=True, slots=True)
class FrameGroup:
    """Frames of one shape and dtype: ``array`` is (n, h, w, c), one chunk per frame.

    ``index[i]`` is the position in ``Batch.frames`` of row ``i``.
    """

    index: tuple[int, ...]
    array: da.Array


@dataclass(frozen=True)
class Timed:
    """A step's result with the ms it took, when the step knows better than a stopwatch.

    Batched inference returns its share of the batch's time per frame this way.
    :func:`finish_frame` records ``ms`` and passes ``value`` on.
    """

    value: Any
    ms: float


@dataclass(frozen=True)
class Step:
    """One piece of per-frame work, run on a worker by :func:`finish_frame`.

    ``fn(x, **kwargs, **{n: values[n] for n in needs})`` where ``x`` is the
    frame (h, w, c) of ``source`` (a ``dask.delayed`` (1, h, w, c) block; its
    key inside :func:`finish_frame`) when
    ``block`` is true, else ``source``'s value itself (e.g. a batched inference
    result), or the frame drawn by the frame's drawing step when ``drawn``.
    ``timing``: the name under which its ms go to ``timings_ms`` (None: not timed).
    """

    fn: Callable[..., Any]
    source: Any
    kwargs: dict[str, Any] = field(default_factory=dict)
    needs: tuple[str, ...] = ()
    block: bool = True
    drawn: bool = False
    timing: str | None = None


@dataclass(frozen=True)
class Sink:
    """A sink's per-frame work as seen where it sits in the pipeline.

    ``records[i]`` yields frame i's list of ``(key, value, headers)`` for
    ``topic``; ``values`` and ``drawn`` are the batch's analytics and drawing
    steps at the sink (they live on the batches derived downstream of the
    source, so each sink keeps its own view). Analytics sinks run last in
    :func:`finish_frame` so that their records carry every other stage's timing.
    """

    topic: str
    records: list[Step]
    values: dict[str, list[Step]]
    drawn: tuple[Step | None, ...] | None
    analytics: bool = False


@dataclass
class Outputs:
    """The sinks one input batch reached (all their records commit together)."""

    per_sink: list[Sink] = field(default_factory=list)

    def add(self, sink: Sink) -> None:
        """Register a sink's per-frame work."""
        self.per_sink.append(sink)


@dataclass(frozen=True)
class Batch:
    """A batch of frames moving through a topology (see the module docstring)."""

    seq: int
    frames: tuple[FrameInfo, ...]
    groups: tuple[FrameGroup, ...]
    values: dict[str, list[Step]] = field(default_factory=dict)
    drawn: tuple[Step | None, ...] | None = None
    outputs: Outputs = field(default_factory=Outputs)
    dead: tuple[DeadLetter, ...] = ()

    def __len__(self) -> int:
        return len(self.frames)

    def map_frames(self, fn: Callable[..., da.Array], **kwargs: Any) -> Batch:
        """Apply ``fn(array, **kwargs) -> array`` to every group's (n, h, w, c) Dask array.

        ``fn`` must keep the leading frame axis and one chunk per frame.

        Raises
        ------
        ValueError
            After ``annotate``: drawing happens at output time, so frame
            operators must come before it.
        """
        if self.drawn is not None:
            raise ValueError("frame operators must come before annotate (it draws on the "
                             "output frames)")
        groups = tuple(FrameGroup(g.index, fn(g.array, **kwargs)) for g in self.groups)
        return dataclasses.replace(self, groups=groups)

    @functools.cached_property
    def _blocks(self) -> tuple[Any, ...]:
        # Cached: several stages read the same batch's blocks, and each to_delayed()
        # optimises the array graph (~25 ms for an 8-frame 720p batch, measured).
        blocks: list[Any] = [None] * len(self.frames)
        for g in self.groups:
            for i, block in zip(g.index, g.array.to_delayed().ravel(), strict=True):
                blocks[i] = block
        return tuple(blocks)

    def frame_blocks(self) -> list[Any]:
        """One ``dask.delayed`` per frame, in input order, yielding its (1, h, w, c) block."""
        return list(self._blocks)

    def with_values(self, name: str, fn: Callable[..., Any], **kwargs: Any) -> Batch:
        """Add per-frame analytics ``name``: ``fn(frame (h, w, c), **kwargs)`` on the workers.

        ``fn`` sees the frame as it is at this point of the pipeline.

        Raises
        ------
        ValueError
            If ``name`` is already taken in this batch.
        """
        return self.with_steps(name, [Step(fn, block, kwargs, timing=name)
                                      for block in self.frame_blocks()])

    def with_steps(self, name: str, steps: Sequence[Step]) -> Batch:
        """Add per-frame analytics ``name`` computed by ``steps`` (one per frame).

        Raises
        ------
        ValueError
            If ``name`` is already taken in this batch.
        """
        if name in self.values:
            raise ValueError(f"batch already has values named {name!r}")
        return dataclasses.replace(self, values={**self.values, name: list(steps)})


def _run(step: Step, sources: dict[str, Any], values: dict[str, Any],
         drawn: np.ndarray | None) -> Any:
    if step.drawn:
        x = drawn
    elif step.source is None:
        x = None
    else:
        x = sources[step.source]
        if step.block:
            x = x[0]
    return step.fn(x, **step.kwargs, **{n: values[n] for n in step.needs})


def finish_frame(sinks: list[tuple[Step, bool, list[tuple[str, Step]], Step | None]],
                 sources: dict[Any, Any]) -> bytes:
    """Run one frame's steps in one task (on a worker); return its records, pickled.

    ``sinks`` lists, per sink, ``(record step, is analytics, [(name, value
    step)], drawing step or None)``. Each distinct step runs once (steps shared
    by several sinks are the same object). Order: non-analytics sinks first,
    each after the values and drawing it needs; then analytics sinks, whose
    records get the ``ms`` of every timed step run for the frame in
    ``timings_ms`` (a :class:`Timed` result or a value's own ``ms`` wins:
    batched inference reports its share of the batch; a ``Timed`` is unwrapped
    before later steps see it). ``sources`` maps the keys of the steps'
    ``dask.delayed`` sources to their computed values.

    Returns
    -------
    bytes
        ``pickle`` of one list of ``(key, value, headers)`` records per sink, in
        sink order: one object, because distributed ships a list of bytes as one
        message frame per item (665 us per pixel record, measured).

    Raises
    ------
    Exception
        Whatever a step raises; the daemon dead-letters the frame with it.
    """
    done: dict[int, Any] = {}
    timings: dict[str, float] = {}

    def run(step: Step, values: dict[str, Any], drawn: Any) -> Any:
        if id(step) in done:
            return done[id(step)]
        start = time.perf_counter()
        result = _run(step, sources, values, drawn)
        ms = (time.perf_counter() - start) * 1e3
        if isinstance(result, Timed):
            result, ms = result.value, result.ms
        elif getattr(result, "ms", None) is not None:  # e.g. Palette times its own fit
            ms = result.ms
        if step.timing:
            timings[step.timing] = round(float(ms), 3)
        done[id(step)] = result
        return result

    out: list[Any] = [None] * len(sinks)
    for analytics_pass in (False, True):
        for i, (record, is_analytics, value_steps, draw) in enumerate(sinks):
            if is_analytics != analytics_pass:
                continue
            values = {name: run(step, {}, None) for name, step in value_steps}
            drawn = run(draw, values, None) if draw is not None else None
            if is_analytics:
                out[i] = _run(record, sources, {**values, "timings": dict(timings)}, drawn)
            else:
                out[i] = run(record, values, drawn)
    return pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)


def frame_task(batch: Batch, i: int, key: str) -> Any:
    """The ``dask.delayed`` task that finishes frame ``i`` of ``batch`` (see :func:`finish_frame`).

    Its dependencies are the distinct sources of the frame's steps: the frame's
    blocks at the points of the pipeline where steps read them, and batched
    inference results.
    """
    sources: dict[Any, Any] = {}
    renamed: dict[int, Step] = {}

    def by_key(step: Step | None) -> Step | None:
        # The task gets steps naming their source by key, and the sources in one dict:
        # dask.delayed unpacks dataclass arguments, so a Delayed inside a Step would
        # be replaced by its value there and shipped twice. One copy per step keeps
        # steps shared between sinks shared (run once).
        if step is None or step.drawn or step.source is None:
            return step
        if id(step) not in renamed:
            sources[step.source.key] = step.source
            renamed[id(step)] = dataclasses.replace(step, source=step.source.key)
        return renamed[id(step)]

    sinks = [(by_key(sink.records[i]), sink.analytics,
              [(name, by_key(steps[i])) for name, steps in sink.values.items()],
              by_key(sink.drawn[i]) if sink.drawn is not None else None)
             for sink in batch.outputs.per_sink]
    return dask.delayed(finish_frame, pure=True)(sinks, sources, dask_key_name=key)


def decode_block(payload: bytes, header: FrameHeader) -> np.ndarray:
    """Decode one frame message payload into a (1, h, w, c) block (runs on a Dask worker).

    Raises
    ------
    FrameDecodeError
        If the payload does not match its headers (see ``decode_payload``).
    """
    return decode_payload(header, payload)[None]


def array_block(frame: np.ndarray, header: FrameHeader) -> np.ndarray:
    """An assembled frame (h, w, c) as a (1, h, w, c) block (runs on a Dask worker)."""
    return frame.reshape((1, *header.shape))


@dataclass
class Taken:
    """What a batcher hands the daemon for one batch.

    ``payloads[i]`` is what ``decode(payloads[i], frames[i].header)`` turns into
    frame i's (1, h, w, c) block on a worker. ``offsets`` are the next offsets
    that are safe to commit with this batch, ``{(topic, partition): offset}``.
    ``states`` maps an input partition to the batcher state committed with the
    batch (pixel assembly), or is empty. ``original(i)`` gives frame i's input
    as ``(key, value, headers)``, dead-lettered whole if the frame fails (built
    only then).
    """

    frames: list[FrameInfo]
    payloads: list[Any]
    dead: list[DeadLetter]
    offsets: dict[tuple[str, int], int]
    decode: Callable[[Any, FrameHeader], np.ndarray] = decode_block
    states: dict[int, bytes] = field(default_factory=dict)
    original: Callable[[int], tuple[bytes | None, bytes | None, list]] = lambda i: (None, None, [])


class MessageBatcher:
    """Batches frame messages: a batch closes at ``max_frames`` or ``max_wait_ms``.

    Headers are validated here, on the daemon (microseconds each); a message
    whose headers (or raw payload size) are wrong becomes a dead letter and the
    rest go on. Payloads are decoded later, on the workers.
    """

    def __init__(self, max_frames: int, max_wait_ms: int):
        self.max_frames = max_frames
        self.max_wait_s = max_wait_ms / 1e3
        self._pending: list[Any] = []
        self._since = 0.0

    def add(self, message: Any) -> None:
        """Queue a consumed ``confluent_kafka.Message`` (without error)."""
        if not self._pending:
            self._since = time.monotonic()
        self._pending.append(message)

    def room(self) -> int:
        """How many more messages the open batch takes."""
        return self.max_frames - len(self._pending)

    def wait_s(self) -> float:
        """Seconds until the open batch is due (0 if due, 0.1 when empty)."""
        if not self._pending:
            return 0.1
        return max(0.0, self.max_wait_s - (time.monotonic() - self._since))

    def take(self) -> Taken | None:
        """Close the open batch if it is full or due; None otherwise."""
        if not self._pending or (self.room() > 0 and self.wait_s() > 0):
            return None
        messages, self._pending = self._pending, []
        taken = Taken([], [], [], {})
        kept: list[Any] = []
        taken.original = lambda i: (kept[i].key(), kept[i].value(), list(kept[i].headers() or ()))
        for m in messages:
            tp = (m.topic(), m.partition())
            taken.offsets[tp] = max(taken.offsets.get(tp, -1), m.offset() + 1)
            headers = list(m.headers() or ())
            try:
                header = parse_header(headers)
                if m.value() is None:
                    raise FrameDecodeError("payload", "null value")
                if header.encoding == "raw" and len(m.value()) != header.nbytes:
                    decode_payload(header, m.value())  # raises the precise size error here
            except FrameDecodeError as exc:
                taken.dead.append(DeadLetter(m.topic(), m.partition(), m.offset(), m.key(),
                                             m.value(), headers, "decode", str(exc)))
                continue
            taken.frames.append(FrameInfo(m.topic(), m.partition(), m.offset(), m.key(), header))
            taken.payloads.append(m.value())
            kept.append(m)
        return taken

    def drop(self, partitions: set[tuple[str, int]] | None = None) -> None:
        """Forget queued messages (of ``partitions``, or all): they were not committed."""
        self._pending = [] if partitions is None else [
            m for m in self._pending if (m.topic(), m.partition()) not in partitions]


def build_batch(seq: int, taken: Taken, scatter: Callable[[list], list]) -> Batch:
    """Turn what a batcher took into a :class:`Batch` of Dask arrays.

    Payloads go to the workers with ``scatter`` (``Client.scatter`` with
    ``hash=False``) in one call and are decoded there, so the daemon never
    holds a decoded frame. Frames of one shape and dtype form one group.

    Parameters
    ----------
    seq : int
        Batch sequence number, unique within a daemon run.
    taken : Taken
        Frames, payloads and dead letters from a batcher.
    scatter : callable
        Sends a list of payloads to the workers and returns futures.
    """
    frames = taken.frames
    futures = scatter(taken.payloads) if taken.payloads else []
    by_kind: dict[tuple, list[int]] = {}
    for i, f in enumerate(frames):
        by_kind.setdefault((f.header.shape, f.header.dtype), []).append(i)
    decode = dask.delayed(taken.decode, pure=True)
    groups = []
    for (shape, dtype), index in by_kind.items():
        parts = [
            da.from_delayed(decode(futures[i], frames[i].header,
                                   dask_key_name=f"decode-{dask.base.tokenize(futures[i].key)}"),
                            shape=(1, *shape), dtype=dtype)
            for i in index
        ]
        groups.append(FrameGroup(tuple(index), da.concatenate(parts, axis=0)))
    return Batch(seq=seq, frames=tuple(frames), groups=tuple(groups), dead=tuple(taken.dead))
