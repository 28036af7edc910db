"""Line crossing and zone counts of tracked objects, per stream, as stateful ops.

Both operators read the tracks of :class:`~streamimg.analytics.tracking.Tracker`
(a list of dicts with ``"track_id"`` and ``"box"``) and keep running counts per
stream that are committed with the Kafka offsets (see
:mod:`streamimg.analytics.stateful`). Geometry is supervision's:

- :class:`LineCounter` is ``supervision.LineZone``: an object crosses when all
  its anchors (by default the four box corners) move to the other side of the
  line, within the segment's extent, and stay there for
  ``minimum_crossing_threshold`` observations. *In* is supervision's
  convention: looking along the line from its first point to its second on the
  image as displayed (y down), "in" is a crossing from the right-hand side to
  the left-hand side. So a line drawn top to bottom counts left-to-right
  movement as in; a line drawn left to right counts upward movement as in.
- :class:`ZoneCounter` tests membership with ``supervision.PolygonZone``
  (anchor point in the rasterised polygon, pixel resolution) and adds what
  supervision does not have: entries, exits and dwell time per track.

Tracks without an id (``track_id`` None: not confirmed yet) are ignored, as
supervision ignores negative tracker ids. Ids are never reused within a stream
by the trackers, so counts are of distinct tracks. A state restored by an op
with other settings (a moved line or zone) keeps its counts and per-track
history and uses the new settings from the next frame.
"""

from __future__ import annotations

import functools
import json
import math
import numbers
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import supervision as sv

from streamimg.analytics.tracking import needed, parse_tracks
from streamimg.codecs.frame import MAX_SIDE

if TYPE_CHECKING:
    from streamimg.batching import FrameInfo

__all__ = ["ANCHORS", "LineCounter", "ZoneCounter"]

#: Anchor names accepted by the counters (supervision ``Position`` values, lower case).
ANCHORS = tuple(p.value.lower() for p in sv.Position if p is not sv.Position.CENTER_OF_MASS)

# LineZone attributes: set from the settings, and changed by trigger() (serialised).
_LINE_FIXED = {"vector", "limits", "crossing_history_length", "triggering_anchors"}
_LINE_STATE = {"crossing_state_history", "_confirmed_crossing_side", "_tracker_frames_absent",
               "_in_count_per_class", "_out_count_per_class", "class_id_to_name"}

#: Largest PolygonZone mask (bytes, one per pixel up to the polygon's max x and y, in
#: every worker process): any polygon within a 16384 x 16384 frame.
_MAX_MASK = 16386 * 16386


def _finite(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _points(value: Any, arg: str, at_least: int) -> tuple[tuple[float, float], ...]:
    ok = isinstance(value, Sequence | np.ndarray) and not isinstance(value, str) \
        and len(value) >= at_least
    pts = []
    for p in value if ok else ():
        if not (isinstance(p, Sequence | np.ndarray) and len(p) == 2
                and all(_finite(c) and abs(c) <= MAX_SIDE for c in p)):
            ok = False
            break
        pts.append((float(p[0]), float(p[1])))
    if not ok:
        raise ValueError(f"{arg} must be {'2' if arg == 'line' else 'at least 3'} points "
                         f"(x, y) of finite pixel coordinates within +-{MAX_SIDE}, "
                         f"got {value!r:.200}")
    return tuple(pts)


def _anchors(value: str | Sequence[str]) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else tuple(value)
    if not names or not all(isinstance(a, str) and a.lower() in ANCHORS for a in names):
        raise ValueError(f"anchors must be one or more of {list(ANCHORS)}, got {value!r}")
    return tuple(dict.fromkeys(a.lower() for a in names))


def _values(op: Any, values: dict[str, Any]) -> tuple[list[int], np.ndarray]:
    return parse_tracks(needed(op, op.tracks, values), op.tracks)


def _check_names(tracks: Any, name: Any) -> None:
    for arg, v in (("tracks", tracks), ("name", name)):
        if not isinstance(v, str) or not v:
            raise ValueError(f"{arg} must be a non-empty str, got {v!r}")


class LineCounter:
    """Count tracks crossing a line, per stream, with ``supervision.LineZone``.

    Parameters
    ----------
    tracks : str
        Name of the tracks value (see
        :func:`~streamimg.analytics.tracking.parse_tracks`).
    line : ((x0, y0), (x1, y1))
        The segment, in pixels; its direction decides which way is "in" (see
        the module docstring). Required, keyword only.
    name : str
        A label for the line (dashboards, drawing); not part of the value.
    minimum_crossing_threshold : int
        Observations (frames in which the track is seen clear of the line) on
        the new side before a crossing counts, >= 1 (supervision's setting).
    anchors : str or sequence of str
        Box points that must all have crossed, from :data:`ANCHORS`; default
        supervision's four corners.

    Raises
    ------
    ValueError
        Naming the argument: ``line`` not two finite points or of zero length,
        bad ``anchors``, ``minimum_crossing_threshold`` < 1.
    RuntimeError
        If the installed supervision's LineZone holds state this class does not
        know how to save (a supervision version other than 0.31).

    Notes
    -----
    Value per frame: ``{"in": int, "out": int, "crossed_in": [int], "crossed_out":
    [int]}``: running totals for the stream, and the ids (ascending) of the
    tracks that crossed on this frame.
    """

    def __init__(self, tracks: str = "tracks", *, line: Sequence[Sequence[float]],
                 name: str = "line", minimum_crossing_threshold: int = 1,
                 anchors: str | Sequence[str] = ("top_left", "top_right", "bottom_left",
                                                 "bottom_right")) -> None:
        _check_names(tracks, name)
        self.line = _points(line, "line", 2)
        if len(self.line) != 2 or self.line[0] == self.line[1]:
            raise ValueError(f"line must be 2 distinct points, got {line!r:.200}")
        t = minimum_crossing_threshold
        if not isinstance(t, numbers.Integral) or isinstance(t, bool) or t < 1:
            raise ValueError(f"minimum_crossing_threshold must be an int >= 1, got {t!r}")
        self.tracks, self.name, self.anchors = tracks, name, _anchors(anchors)
        self.minimum_crossing_threshold = int(t)
        self.needs: tuple[str, ...] = (tracks,)
        unknown = set(vars(self.initial())) - _LINE_FIXED - _LINE_STATE
        if unknown:
            raise RuntimeError(f"supervision {sv.__version__} LineZone has state "
                               f"{sorted(unknown)} that LineCounter cannot save")

    def initial(self) -> sv.LineZone:
        """A fresh ``sv.LineZone`` with this counter's settings."""
        (x0, y0), (x1, y1) = self.line
        return sv.LineZone(start=sv.Point(x0, y0), end=sv.Point(x1, y1),
                           triggering_anchors=[sv.Position(a.upper()) for a in self.anchors],
                           minimum_crossing_threshold=self.minimum_crossing_threshold)

    def step(self, state: sv.LineZone, info: FrameInfo,
             values: dict[str, Any]) -> tuple[sv.LineZone, dict[str, Any]]:
        """Count one frame's crossings; see the class Notes for the value.

        Raises
        ------
        ValueError
            If the tracks are missing or malformed (the state is left untouched).
        """
        ids, boxes = _values(self, values)
        dets = sv.Detections(xyxy=boxes, tracker_id=np.array(ids, dtype=int))
        crossed_in, crossed_out = (a.tolist() for a in state.trigger(dets))
        return state, {"in": state.in_count, "out": state.out_count,
                       "crossed_in": sorted(i for i, c in zip(ids, crossed_in, strict=True) if c),
                       "crossed_out": sorted(i for i, c in zip(ids, crossed_out, strict=True)
                                             if c)}

    def dumps(self, state: sv.LineZone) -> bytes:
        """The LineZone's changing attributes as JSON (dicts as ordered ``[key, value]`` pairs)."""
        doc = {"v": 1, "history": [[k, list(d)] for k, d in state.crossing_state_history.items()]}
        for key, d in (("confirmed", state._confirmed_crossing_side),
                       ("absent", state._tracker_frames_absent),
                       ("in", state._in_count_per_class), ("out", state._out_count_per_class),
                       ("names", state.class_id_to_name)):
            doc[key] = [[k, v] for k, v in d.items()]
        return json.dumps(doc, separators=(",", ":")).encode()

    def loads(self, data: bytes) -> sv.LineZone:
        """A fresh LineZone (:meth:`initial`) given the state :meth:`dumps` wrote as ``data``.

        Raises
        ------
        ValueError
            If ``data`` is not a LineCounter state.
        """
        try:
            doc = json.loads(data)
            if doc.get("v") != 1:
                raise ValueError(f"unknown version {doc.get('v')!r}")
            lz = self.initial()
            for k, d in doc["history"]:
                lz.crossing_state_history[int(k)] = deque(map(bool, d),
                                                          maxlen=lz.crossing_history_length)
            lz._confirmed_crossing_side.update((int(k), bool(v)) for k, v in doc["confirmed"])
            lz._tracker_frames_absent.update((int(k), int(v)) for k, v in doc["absent"])
            lz._in_count_per_class.update({k: int(v) for k, v in doc["in"]})
            lz._out_count_per_class.update({k: int(v) for k, v in doc["out"]})
            lz.class_id_to_name.update((int(k), str(v)) for k, v in doc["names"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a LineCounter state ({exc}): {bytes(data[:80])!r}") from exc
        return lz


@functools.lru_cache(maxsize=64)
def _zone(polygon: tuple[tuple[float, float], ...], anchors: tuple[str, ...]) -> sv.PolygonZone:
    # Built once per process (it rasterises the polygon into a mask of (max y + 2) x
    # (max x + 2) bytes), never pickled with the operator. trigger() only sets
    # current_count, which nothing here reads, so threads may share it.
    return sv.PolygonZone(polygon=np.array(polygon, dtype=np.float64),
                          triggering_anchors=[sv.Position(a.upper()) for a in anchors])


class ZoneCounter:
    """Occupancy, entries, exits and dwell time of tracks in a polygon, per stream.

    Parameters
    ----------
    tracks : str
        Name of the tracks value (see
        :func:`~streamimg.analytics.tracking.parse_tracks`).
    polygon : sequence of (x, y)
        At least 3 vertices in pixels, enclosing a non-zero area. Required,
        keyword only. Membership is ``supervision.PolygonZone``'s: every anchor
        inside the polygon rasterised at pixel resolution (edges included).
    name : str
        A label for the zone (dashboards, drawing); not part of the value.
    anchors : str or sequence of str
        Box points that must be inside, from :data:`ANCHORS`; default
        ``"bottom_center"`` (supervision's: where a standing object touches the ground).
    exit_after_ms : float
        A track inside the zone that is not seen (missed by the detector, occluded,
        gone) stays inside until it has been unseen for more than this many ms of
        capture time, then counts as exited. Default 1000 ms: the trackers'
        default lost-track budget (30 frames at 30 FPS), after which a lost id
        never comes back. A track seen outside the zone exits at once.

    Raises
    ------
    ValueError
        Naming the argument: ``polygon`` with fewer than 3 points, non-finite
        coordinates, no area, or reaching beyond x or y = 16384 (its mask would
        be over 256 MiB); bad ``anchors``; ``exit_after_ms`` < 0.

    Notes
    -----
    Value per frame::

        {"occupancy": int,          # tracks inside now (unseen ones within exit_after_ms too)
         "entered": int, "exited": int,        # running totals for the stream
         "entered_ids": [int], "exited_ids": [int],   # on this frame, ascending
         "dwell_ms": {str(track_id): int},     # tracks inside now, ascending id
         "exited_dwell_ms": {str(track_id): int}}     # final dwell of exited_ids

    Dwell is between observations, in capture-time ms: the last frame a track
    was seen inside minus the first frame it was seen inside (0 on its entry
    frame). A frame stamped earlier than its predecessor is taken at the
    predecessor's time, so dwell never decreases.
    """

    def __init__(self, tracks: str = "tracks", *, polygon: Sequence[Sequence[float]],
                 name: str = "zone", anchors: str | Sequence[str] = "bottom_center",
                 exit_after_ms: float = 1000.0) -> None:
        _check_names(tracks, name)
        self.polygon = _points(polygon, "polygon", 3)
        xy = np.array(self.polygon)
        area = 0.5 * abs(np.dot(xy[:, 0], np.roll(xy[:, 1], 1))
                         - np.dot(xy[:, 1], np.roll(xy[:, 0], 1)))  # shoelace formula
        if area == 0:
            raise ValueError(f"polygon encloses no area: {polygon!r:.200}")
        mask = (max(xy[:, 0].max(), 0) + 2) * (max(xy[:, 1].max(), 0) + 2)
        if mask > _MAX_MASK:
            raise ValueError(f"polygon reaches too far: supervision.PolygonZone would "
                             f"allocate a {mask / 2**20:.0f} MiB mask (> {_MAX_MASK >> 20}); "
                             f"clip it to the frame: {polygon!r:.200}")
        if not _finite(exit_after_ms) or exit_after_ms < 0:
            raise ValueError(f"exit_after_ms must be a finite number >= 0, got {exit_after_ms!r}")
        self.tracks, self.name, self.anchors = tracks, name, _anchors(anchors)
        self.exit_after_ms = float(exit_after_ms)
        self.needs: tuple[str, ...] = (tracks,)
        try:
            _zone(self.polygon, self.anchors)
        except (ValueError, TypeError) as exc:  # e.g. a polygon wholly at negative x or y
            raise ValueError(f"polygon {polygon!r:.200} is not usable by "
                             f"supervision.PolygonZone: {exc}") from exc

    def initial(self) -> dict[str, Any]:
        """A fresh state: no track inside, totals 0, no clock.

        The state is ``{"inside": {str(track_id): [first_ms, last_ms]}, "entered": int,
        "exited": int, "clock_ms": int or None}``: first and last capture times (ms since
        the epoch) each track inside was seen inside, and the last frame's time.
        """
        return {"inside": {}, "entered": 0, "exited": 0, "clock_ms": None}

    def step(self, state: dict[str, Any], info: FrameInfo,
             values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Update the zone with one frame's tracks; see the class Notes for the value.

        Raises
        ------
        ValueError
            If the tracks are missing or malformed (the state is left untouched).
        """
        ids, boxes = _values(self, values)
        flags = _zone(self.polygon, self.anchors).trigger(
            sv.Detections(xyxy=boxes)).tolist() if ids else []
        clock = state["clock_ms"]
        now = int(info.header.timestamp_ms) if clock is None \
            else max(clock, int(info.header.timestamp_ms))
        inside: dict[str, list[int]] = state["inside"]
        entered, exited = [], {}
        for tid, flag in zip(ids, flags, strict=True):
            key = str(tid)
            if flag and key in inside:
                inside[key][1] = now
            elif flag:
                inside[key] = [now, now]
                entered.append(tid)
            elif key in inside:
                first, last = inside.pop(key)
                exited[tid] = last - first
        seen = set(map(str, ids))
        for key in [k for k, (_, last) in inside.items()
                    if k not in seen and now - last > self.exit_after_ms]:
            first, last = inside.pop(key)
            exited[int(key)] = last - first
        state["entered"] += len(entered)
        state["exited"] += len(exited)
        state["clock_ms"] = now
        order = sorted(map(int, inside))
        return state, {"occupancy": len(inside), "entered": state["entered"],
                       "exited": state["exited"], "entered_ids": sorted(entered),
                       "exited_ids": sorted(exited),
                       "dwell_ms": {str(t): inside[str(t)][1] - inside[str(t)][0]
                                    for t in order},
                       "exited_dwell_ms": {str(t): exited[t] for t in sorted(exited)}}

    def dumps(self, state: dict[str, Any]) -> bytes:
        """``state`` as compact JSON."""
        return json.dumps({"v": 1, **state}, separators=(",", ":")).encode()

    def loads(self, data: bytes) -> dict[str, Any]:
        """The state :meth:`dumps` wrote as ``data``.

        Raises
        ------
        ValueError
            If ``data`` is not a ZoneCounter state.
        """
        try:
            doc = json.loads(data)
            if doc.pop("v") != 1 or set(doc) != set(self.initial()):
                raise ValueError(f"unexpected keys or version: {sorted(doc)}")
            state = {"inside": {str(int(k)): [int(a), int(b)] for k, (a, b)
                                in doc["inside"].items()},
                     "entered": int(doc["entered"]), "exited": int(doc["exited"]),
                     "clock_ms": None if doc["clock_ms"] is None else int(doc["clock_ms"])}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a ZoneCounter state ({exc}): {bytes(data[:80])!r}") from exc
        return state
