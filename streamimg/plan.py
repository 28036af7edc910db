"""The plan a topology compiles to: what happens to every frame, as plain data.

A topology's streamz pipeline runs once, when the topology loads: the source
emits the root :class:`Plan`, every node derives a new plan from the one it
receives (an array operator, a named per-frame value, a drawing step) and
every sink node returns a :class:`SinkSpec`. ``source.emit(root)`` returns what
the downstream nodes returned (streamz collects return values), so the sinks
come back as a value: the :class:`Program`. No batch ever flows through
streamz and nothing mutates a plan; plans share their prefixes.

The program is pickled once and runs on the Dask workers, one task per chunk of
a batch (``streamimg.worker``). Nothing here touches Kafka or the cluster.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import cloudpickle


class PlanError(ValueError):
    """A pipeline is put together wrongly (e.g. a frame operator after ``annotate``)."""


@dataclass(frozen=True, eq=False)
class ArrayOp:
    """A frame operator: ``fn(frames: dask.array (n, h, w, c), **kwargs) -> dask.array``.

    ``fn`` keeps the leading frame axis; the worker builds its graph once per
    input shape and dtype and runs it on each frame with Dask's synchronous
    scheduler (see ``streamimg.worker``). ``name`` labels its ms in timings.
    """

    name: str
    fn: Callable[..., Any]
    kwargs: dict[str, Any]
    order: str | None = None  # the channel order of its output frames; None: unchanged
    per_frame: bool = False  # fn(frame (h, w, c), info: FrameInfo, **kwargs) -> frame


@dataclass(frozen=True, eq=False)
class Frames:
    """The frames at one point of a pipeline: ``op`` applied to ``parent``'s frames.

    The root (no parent, no op) stands for the decoded input frames. Plans that
    differ only in values or drawing share one ``Frames``, so a worker computes
    each point's frames once.
    """

    parent: Frames | None = None
    op: ArrayOp | None = None

    @property
    def order(self) -> str | None:
        """The channel order the last operator that sets one declares; None: the input's."""
        node: Frames | None = self
        while node is not None and node.op is not None:
            if node.op.order is not None:
                return node.op.order
            node = node.parent
        return None


@dataclass(frozen=True, eq=False)
class ValueOp:
    """A named per-frame value (analytics) computed from the frames of ``source``.

    Per frame: ``fn(frame (h, w, c), **kwargs)``. When ``batched``:
    ``fn(frames (n, h, w, c), **kwargs)`` returns one value per frame for all
    frames of one shape in a chunk (batched inference). ``needs`` are values it
    reads: each is passed as a keyword named after it, the frame's value (per
    frame) or the list of the frames' values (batched).
    """

    name: str
    fn: Callable[..., Any]
    kwargs: dict[str, Any]
    source: Frames
    batched: bool = False
    needs: tuple[ValueOp, ...] = ()
    frame: bool = False  # the value is a frame (a temporal operator's input), not analytics


@dataclass(frozen=True, eq=False)
class StateOp:
    """A named per-frame value from a stateful operator, per stream, in frame order.

    ``op`` is a :class:`~streamimg.analytics.stateful.StatefulOp` reading the values
    named in ``op.needs``. It does not run in the chunk tasks: the worker hands the
    values it needs to the batch's state task (``streamimg.state``), which steps every
    stream's state frame after frame, batch after batch.
    """

    name: str
    op: Any
    frame: bool = False  # the value is an output frame (temporal operators), not analytics


@dataclass(frozen=True, eq=False)
class DrawOp:
    """Drawing on the output frame: ``fn(frame (h, w, c), **kwargs, **{n: value})``."""

    fn: Callable[..., Any]
    kwargs: dict[str, Any]
    source: Frames
    needs: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class Plan:
    """The frames at one point of a pipeline, with the values and drawing known there.

    The root plan (``Plan()``) stands for the decoded input frames. After a temporal
    operator (:meth:`with_frame_state`) the output frames are the stateful value named
    ``state_frames``, computed in the batch's state task: only sinks and further temporal
    operators may follow it.
    """

    frames: Frames = field(default_factory=Frames)
    values: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    drawn: DrawOp | None = None
    state_frames: str | None = None

    def record_values(self) -> list[str]:
        """Names of the values an analytics record carries (frame-valued ones excluded)."""
        return [n for n, v in self.values.items() if not v.frame]

    def _after_temporal(self, what: str) -> None:
        if self.state_frames is not None:
            raise PlanError(f"{what} cannot follow the temporal operator {self.state_frames!r}: "
                            "its frames are made in the state task, so only sinks and other "
                            "temporal operators may come after it; put it before")

    @property
    def order(self) -> str | None:
        """The output frames' channel order, if the pipeline sets one (RGB once drawn).

        After a temporal operator: its ``order`` attribute (None: as its input, or by
        channel count when the count changes).
        """
        name = self.state_frames
        while name is not None and isinstance(self.values[name], StateOp):
            op = self.values[name].op
            if getattr(op, "order", None) is not None:
                return op.order
            name = op.needs[0]  # its input: an earlier temporal operator's, or the frames
        return "RGB" if self.drawn is not None else self.frames.order

    def map_frames(self, name: str, fn: Callable[..., Any], /, *,
                   channel_order: str | None = None, per_frame: bool = False,
                   **kwargs: Any) -> Plan:
        """A plan whose frames are ``fn(frames, **kwargs)`` of this plan's.

        ``channel_order``: the order of ``fn``'s output (e.g. ``"HSV"``), None if unchanged.
        ``per_frame``: ``fn`` is a NumPy function of one frame and its identity,
        ``fn(frame (h, w, c), info, **kwargs)`` (e.g. an augmentation seeded by it).

        Raises
        ------
        PlanError
            After ``annotate``: drawing happens on the output frames, so frame
            operators must come before it.
        """
        if self.drawn is not None:
            raise PlanError(f"{name}: frame operators must come before annotate (it draws "
                            "on the output frames)")
        self._after_temporal(name)
        return Plan(Frames(self.frames, ArrayOp(name, fn, dict(kwargs), channel_order,
                                                per_frame)), self.values, None)

    def with_value(self, name: str, fn: Callable[..., Any], /, *, batched: bool = False,
                   needs: tuple[str, ...] = (), **kwargs: Any) -> Plan:
        """A plan that also knows value ``name`` of every frame (computed from these frames).

        ``needs``: names of values upstream that ``fn`` reads (see :class:`ValueOp`).

        Raises
        ------
        PlanError
            If a value ``name`` exists upstream already, or a needed value does not or
            comes from a stateful operator.
        """
        if name in self.values:
            raise PlanError(f"analytics name {name!r} is used twice in the pipeline")
        self._after_temporal(name)
        for need in needs:
            if not isinstance(self.values.get(need), ValueOp):
                why = "is stateful" if need in self.values else "is not computed upstream"
                raise PlanError(f"{name}: the value {need!r} it needs {why} "
                                f"(have {sorted(self.values)})")
        op = ValueOp(name, fn, dict(kwargs), self.frames, batched,
                     tuple(self.values[n] for n in needs))
        values = {**self.values, name: op}
        return Plan(self.frames, MappingProxyType(values), self.drawn)

    def with_state(self, name: str, op: Any) -> Plan:
        """A plan that also knows the stateful value ``name``: ``op`` stepped per stream.

        Raises
        ------
        PlanError
            If ``name`` exists upstream already or a value ``op`` needs does not.
        """
        if name in self.values:
            raise PlanError(f"analytics name {name!r} is used twice in the pipeline")
        for need in op.needs:
            if need not in self.values:
                raise PlanError(f"{name}: no analytics named {need!r} upstream "
                                f"(have {sorted(self.values)})")
        return Plan(self.frames, MappingProxyType({**self.values, name: StateOp(name, op)}),
                    self.drawn, self.state_frames)

    def with_frame_state(self, name: str, make: Callable[[str], Any]) -> Plan:
        """A plan whose output frames come from a temporal (stateful frame) operator.

        ``make(input name)`` returns the :class:`~streamimg.analytics.stateful.StatefulOp`;
        its ``step`` reads the frame (h, w, c) as that value and returns the output frame.
        The input is this plan's frame (a hidden value ``<name>.input``, handed from the
        chunk task to the state task) or, after another temporal operator, that
        operator's output.

        Raises
        ------
        PlanError
            After ``annotate``, or if ``name`` is taken.
        """
        if self.drawn is not None:
            raise PlanError(f"{name}: temporal operators must come before annotate")
        for taken in (name, f"{name}.input"):
            if taken in self.values:
                raise PlanError(f"analytics name {taken!r} is used twice in the pipeline")
        values = dict(self.values)
        source = self.state_frames
        if source is None:
            source = f"{name}.input"
            values[source] = ValueOp(source, _frame_itself, {}, self.frames, frame=True)
        values[name] = StateOp(name, make(source), frame=True)
        return Plan(self.frames, MappingProxyType(values), None, name)

    def with_drawing(self, fn: Callable[..., Any], needs: tuple[str, ...],
                     **kwargs: Any) -> Plan:
        """A plan whose output frames are drawn by ``fn`` with the values ``needs``.

        Raises
        ------
        PlanError
            If a needed value is not computed upstream, or drawing appears twice or
            after a temporal operator.
        """
        self._after_temporal("annotate")
        for name in needs:
            if name not in self.values:
                raise PlanError(f"annotate: no analytics named {name!r} upstream "
                                f"(have {sorted(self.values)})")
            if isinstance(self.values[name], StateOp):
                raise PlanError(f"annotate: {name!r} comes from a stateful operator, which "
                                "runs after the frames are drawn; draw stateless values")
        if self.drawn is not None:
            raise PlanError("annotate appears twice in the pipeline")
        return Plan(self.frames, self.values, DrawOp(fn, dict(kwargs), self.frames, needs))


@dataclass(frozen=True, eq=False)
class SinkSpec:
    """What a sink writes for every frame: ``builder(frame, info, **kwargs)`` -> records.

    ``frame`` is the (h, w, c) frame of ``plan`` (drawn, if the plan draws), or
    None for ``analytics`` sinks, whose builder gets ``values=`` (every value of
    ``plan`` for the frame) and ``timings=`` (ms per stage) instead. Records
    are ``(key, value, headers)`` for ``topic``. ``timing`` labels the
    builder's ms (None: not timed). An ``external`` sink writes outside Kafka
    (files) and returns no records; it runs after a frame's Kafka sinks, so a
    frame that fails in one of those leaves no file.
    """

    topic: str
    builder: Callable[..., list]
    kwargs: dict[str, Any]
    plan: Plan
    analytics: bool = False
    timing: str | None = None
    external: bool = False


@dataclass(frozen=True)
class Program:
    """Everything a worker needs to process frames: the sinks, and through them the plans.

    ``blob`` is the program pickled once (cloudpickle: functions defined in a
    topology file travel by value) and ``token`` its SHA-1; workers cache the
    unpickled program by token.
    """

    name: str
    sinks: tuple[SinkSpec, ...]
    #: Largest committed state per input partition, bytes (``Topology(max_state_bytes=)``);
    #: the default stays under Apache Kafka's default ``max.message.bytes`` (1 MiB).
    max_state_bytes: int = 1_000_000

    @property
    def topics(self) -> list[str]:
        """Output topics in sink order."""
        return [s.topic for s in self.sinks]

    def sink_order(self, sinks: list[int] | None = None) -> list[int]:
        """Sink indices in the order a frame's records are built.

        Frame sinks, then analytics sinks (their records carry the frame sinks'
        timings), then external sinks (files).
        """
        return sorted(range(len(self.sinks)) if sinks is None else sinks,
                      key=lambda s: (self.sinks[s].external, self.sinks[s].analytics))

    @property
    def stateful(self) -> list[StateOp]:
        """The stateful values of every sink, each once, in pipeline order."""
        out: dict[int, StateOp] = {}
        for sink in self.sinks:
            for v in sink.plan.values.values():
                if isinstance(v, StateOp):
                    out.setdefault(id(v), v)
        return list(out.values())

    def deferred(self, s: int) -> bool:
        """Whether sink ``s``'s records are built in the state task (it reads state).

        Analytics sinks with a stateful value, and frame sinks after a temporal operator.
        """
        sink = self.sinks[s]
        if not sink.analytics:
            return sink.plan.state_frames is not None
        return any(isinstance(v, StateOp) for v in sink.plan.values.values())

    def stages(self) -> list[str]:
        """The stages a frame goes through, in order, as timings and task keys name them.

        ``decode``, each frame operator, each analytics value, ``annotate`` when a sink
        draws, and each sink's builder (e.g. ``encode``); each name once.
        """
        names = ["decode"]
        for sink in self.sinks:
            ops, node = [], sink.plan.frames
            while node is not None and node.op is not None:
                ops.append(node.op.name)
                node = node.parent
            later = [*reversed(ops), *(n for n, v in sink.plan.values.items()
                                        if not (v.frame and isinstance(v, ValueOp))),
                     *(["annotate"] if sink.plan.drawn is not None else []), sink.timing]
            for name in later:
                if name and name not in names:
                    names.append(name)
        return names

    def pickled(self) -> tuple[str, bytes]:
        """``(token, blob)``: the program as bytes for the workers, and their SHA-1."""
        blob = cloudpickle.dumps(self)
        return hashlib.sha1(blob).hexdigest(), blob


def _frame_itself(frame: Any) -> Any:
    """The frame (h, w, c) as a value: a temporal operator's input, for the state task."""
    return frame
