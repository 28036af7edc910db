"""Stream methods of the stateful operators: tracks and counts that survive crashes.

Registered on ``streamz.Stream`` beside :mod:`streamimg.stream` (which imports
this module). Each method adds a value computed by a
:class:`~streamimg.analytics.stateful.StatefulOp` per stream, frame after frame;
its state is committed to ``<name>.state`` in the batch's transaction (see
:mod:`streamimg.state`), so track ids and counts continue exactly through
crashes, restarts and rebalances. Stateful values appear in analytics records
(:func:`~streamimg.stream.to_kafka_analytics`); ``annotate`` cannot draw them.
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
