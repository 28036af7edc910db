"""Stream methods of the stateful operators: tracks and counts that survive crashes.

Registered on ``streamz.Stream`` beside :mod:`streamimg.stream` (which imports
this module). Each method adds a value computed by a
:class:`~streamimg.analytics.stateful.StatefulOp` per stream, frame after frame;
its state is committed to ``<name>.state`` in the batch's transaction (see
:mod:`streamimg.state`), so track ids and counts continue exactly through
crashes, restarts and rebalances. Stateful values appear in analytics records
(:func:`~streamimg.stream_sinks.to_kafka_analytics`); ``annotate`` cannot draw them.

The temporal operators (``temporal``, ``background``, ``integrate_heat``; see
:mod:`streamimg.operators.temporal`) are stateful too, but their value is the
stream's output frame: frame sinks after them write it.
"""

from __future__ import annotations

import importlib
from typing import Any

from streamz import Stream

from streamimg.analytics.stateful import StatefulOp
from streamimg.topology import TopologyError


def _register(fn: Any) -> Any:
    Stream.register_api(attribute_name=fn.__name__)(fn)
    return fn


def _op(what: str, module: str, cls: str, **kwargs: Any) -> Any:
    try:
        found = getattr(importlib.import_module(f"streamimg.analytics.{module}"), cls)
    except ImportError as exc:
        raise TopologyError(f"{what} needs the packages of the `track` extra "
                            f"(pip install 'streamimg[track]'): {exc}") from None
    try:
        return found(**kwargs)
    except (ValueError, TypeError) as exc:
        raise TopologyError(f"{what}: {exc}") from None


@_register
def stateful(stream: Stream, name: str, op: StatefulOp) -> Stream:
    """Add the analytics value ``name`` from your own stateful operator ``op``.

    ``op`` follows :class:`~streamimg.analytics.stateful.StatefulOp`: it reads the values
    ``op.needs`` (computed upstream), keeps a state per stream, and its ``step`` runs on
    every frame of a stream in offset order. A frame on which it raises goes to the
    dead-letter topic and leaves the state as it was.

    Raises
    ------
    TopologyError
        If ``op`` lacks a method of the protocol; (when the topology compiles) if a
        value it needs is not computed upstream or ``name`` is taken.
    """
    if not isinstance(op, StatefulOp) or not isinstance(getattr(op, "needs", None), tuple):
        raise TopologyError(f"stateful: {op!r} is not a StatefulOp (needs a tuple `needs` and "
                            "initial/step/dumps/loads)")
    return stream.map(lambda p: p.with_state(name, op))


@_register
def track(stream: Stream, detections: str = "detections", name: str = "tracks",
          method: str = "bytetrack", **kwargs: Any) -> Stream:
    """Track the objects of ``detections`` across each stream's frames (ByteTrack).

    See :class:`streamimg.analytics.tracking.Tracker` (Roboflow's ``trackers``
    ByteTrack, Zhang et al. 2022): the value ``name`` is the frame's detections with a
    ``track_id`` each, stable while the object is tracked, in the format documented
    there. ``kwargs`` go to the tracker (``lost_track_buffer``, ``frame_rate``, ...).

    Raises
    ------
    TopologyError
        Without the ``track`` extra; for an unknown method or a bad tracker setting;
        (when the topology compiles) if no value ``detections`` is computed upstream.
    """
    op = _op("track", "tracking", "Tracker", detections=detections, method=method, **kwargs)
    return stateful(stream, name, op)


@_register
def count_line(stream: Stream, line: Any, tracks: str = "tracks", name: str = "line",
               **kwargs: Any) -> Stream:
    """Count the tracks crossing ``line`` ``((x0, y0), (x1, y1))`` (pixels) in each stream.

    See :class:`streamimg.analytics.counting.LineCounter` (supervision's ``LineZone``):
    the value ``name`` holds the stream's running in/out totals and the tracks that
    crossed on this frame.

    Raises
    ------
    TopologyError
        For a line of zero length or non-finite coordinates; (when the topology
        compiles) if no value ``tracks`` is computed upstream.
    """
    op = _op("count_line", "counting", "LineCounter", tracks=tracks, line=line, name=name, **kwargs)
    return stateful(stream, name, op)


@_register
def count_zone(stream: Stream, polygon: Any, tracks: str = "tracks", name: str = "zone",
               **kwargs: Any) -> Stream:
    """Occupancy, entries, exits and dwell time (ms) of tracks in ``polygon`` (pixels).

    See :class:`streamimg.analytics.counting.ZoneCounter` (membership by supervision's
    ``PolygonZone``; dwell from the frames' capture times).

    Raises
    ------
    TopologyError
        For a polygon of fewer than 3 points or non-finite coordinates; (when the
        topology compiles) if no value ``tracks`` is computed upstream.
    """
    op = _op("count_zone", "counting", "ZoneCounter", tracks=tracks, polygon=polygon,
             name=name, **kwargs)
    return stateful(stream, name, op)


def _frame_state(stream: Stream, what: str, name: str, cls: Any, *args: Any,
                 **kwargs: Any) -> Stream:
    """Add temporal operator ``cls(*args, input=..., **kwargs)`` as the stream's frames."""
    try:
        cls(*args, input="check", **kwargs)  # bad settings fail here, at definition
    except (ValueError, TypeError) as exc:
        raise TopologyError(f"{what}: {exc}") from None
    return stream.map(lambda p: p.with_frame_state(
        name, lambda source: cls(*args, input=source, **kwargs)))


@_register
def temporal(stream: Stream, fn: Any = "median", window: int = 3, name: str = "temporal",
             **kwargs: Any) -> Stream:
    """Frames from a window of each stream's consecutive frames (``map_overlap`` in time).

    See :class:`streamimg.operators.temporal.TemporalWindow`: frame ``t``'s output is
    ``fn`` over frames ``t - window + 1 .. t`` of its stream, across batch boundaries
    (the previous frames are committed operator state), ``fn`` one of ``"median"``
    (temporal median), ``"mean"`` (denoising), ``"difference"`` (``|F_t - F_t-1|``) or
    ``fn(window (m, h, w, c), **kwargs) -> (h, w, c)``. Only sinks and other temporal
    operators may follow it; the frames keep their channel order.

    Raises
    ------
    TopologyError
        For an unknown function name or ``window`` < 1; when the topology compiles, after
        ``annotate`` or if ``name`` is taken.
    """
    from streamimg.operators.temporal import TemporalWindow

    return _frame_state(stream, "temporal", name, TemporalWindow, fn, window, **kwargs)


@_register
def background(stream: Stream, method: str = "median", history: int = 25,
               output: str = "foreground", name: str = "background", **kwargs: Any) -> Stream:
    """Background subtraction per stream: a foreground mask (uint8 0/255, GRAY) or the background.

    See :class:`streamimg.operators.temporal.Background`: ``median`` of the previous
    ``history`` frames, ``running_average`` with ``alpha``, or ``mog2`` (Zivkovic's
    Gaussian mixture, as OpenCV's ``BackgroundSubtractorMOG2`` without shadows);
    ``threshold`` in intensity units (``mog2``: squared Mahalanobis distance). The model
    is committed operator state.

    Raises
    ------
    TopologyError
        For an unknown method or output, or bad ``history``/``alpha``/``threshold``.
    """
    from streamimg.operators.temporal import Background

    return _frame_state(stream, "background", name, Background, method, history=history,
                        output=output, **kwargs)


@_register
def integrate_heat(stream: Stream, steps: int = 1, name: str = "heat", **kwargs: Any) -> Stream:
    """One heat field per stream, each frame a source; the field (float32) is the frame out.

    See :class:`streamimg.operators.temporal.HeatField` (``alpha``, ``dt``, ``dx``,
    ``scale``, ``decay``, ``boundary``, ``cval``): the Flink ancestor's stencil with a
    source term, integrated over the stream; the field is committed operator state.
    Send it with ``to_kafka_frames(encoding="raw")`` (float32).

    Raises
    ------
    TopologyError
        For an unstable step or bad settings.
    """
    from streamimg.operators.temporal import HeatField

    return _frame_state(stream, "integrate_heat", name, HeatField, steps, **kwargs)
