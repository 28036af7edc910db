"""Multi-object tracking per stream: Roboflow ``trackers`` (ByteTrack, SORT) as a stateful op.

:class:`Tracker` gives every detection of a frame a track id that stays the same
for the same object from frame to frame of one stream. It is a
:class:`~streamimg.analytics.stateful.StatefulOp`: one tracker object per
stream, stepped in frame order; its state is committed with the Kafka offsets,
so ids continue exactly through restarts.

The tracking is the ``trackers`` package's (``trackers.ByteTrackTracker``,
Zhang et al., "ByteTrack: Multi-Object Tracking by Associating Every Detection
Box", ECCV 2022; ``trackers.SORTTracker``, Bewley et al., "Simple Online and
Realtime Tracking", ICIP 2016): a Kalman filter per track on the box corners,
Hungarian (Jonker-Volgenant) matching on IoU. What this module adds:

- Capture time drives the filter. ``update`` gets ``timestamp`` = seconds since
  the stream's first frame (``FrameHeader.timestamp_ms``), so a dropped or
  dead-lettered frame is a longer Kalman step, and a lost track is dropped after
  ``lost_track_buffer / 30`` seconds of capture time, whatever the frame rate
  (trackers' own convention: the buffer counts 30 FPS frames). The clock never
  runs backwards: a frame stamped no later than its predecessor (clock step,
  duplicated stamp) is taken one nominal frame, ``1 / frame_rate`` s, after it,
  where trackers would skip or half-skip the frame with a warning.
- Matching ignores labels, as in trackers (``class_id`` is not used in
  association): a track's ``label`` is that of its detection on each frame.
- Every input detection comes back, in input order, with ``track_id`` None
  while its track is not confirmed (trackers' ``tracker_id == -1``: the first
  ``minimum_consecutive_frames - 1`` frames of a track, and detections that
  neither match a track nor start one). Ids are trackers' own: per stream, from 0.
- The state is a zlib-compressed pickle (24.8 kB -> 2.0 kB for 5 tracks,
  measured: the Kalman matrices are mostly zeros), tagged with the trackers
  version that wrote it.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import math
import numbers
import pickle
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import supervision as sv
import trackers

from streamimg.analytics.detections import check_box, is_real, parse_detections

if TYPE_CHECKING:
    from streamimg.batching import FrameInfo

__all__ = ["METHODS", "Tracker", "needed", "parse_tracks"]

#: Tracking methods: name -> trackers class.
METHODS = {"bytetrack": trackers.ByteTrackTracker, "sort": trackers.SORTTracker}

_MAGIC = b"streamimg-tracker/1 trackers="
_TRACKERS_VERSION = importlib.metadata.version("trackers")
# What a trackers tracker changes as it runs; its other attributes come from its settings.
_DYNAMIC = {"tracks", "_next_track_id", "_last_timestamp"}


def parse_tracks(value: Any, name: str = "tracks") -> tuple[list[int], np.ndarray]:
    """The confirmed tracks of one frame: their ids and boxes.

    Parameters
    ----------
    value : list of dict
        As :class:`~streamimg.analytics.tracking.Tracker` gives: each a dict with
        ``"track_id"`` (int >= 0, or None for an unconfirmed track, skipped) and
        ``"box"`` ``[x0, y0, x1, y1]`` (finite float pixels, ``x0 <= x1``, ``y0 <= y1``).
    name : str
        The value's name, for error messages.

    Returns
    -------
    ids : list of int
        In input order.
    boxes : ndarray, shape (len(ids), 4), float64
        Pixels.

    Raises
    ------
    ValueError
        If ``value`` is not a list of such dicts, or a track id appears twice.
    """
    if not isinstance(value, list | tuple):
        raise ValueError(f"{name} must be a list of dicts with track_id and box, "
                         f"got {type(value).__name__}: {value!r:.200}")
    ids, boxes = [], []
    for i, t in enumerate(value):
        if not isinstance(t, Mapping) or "track_id" not in t or "box" not in t:
            raise ValueError(f"{name}[{i}] must be a dict with keys track_id and box, "
                             f"got {t!r:.200}")
        tid, box = t["track_id"], t["box"]
        if tid is None:
            continue
        if not isinstance(tid, numbers.Integral) or isinstance(tid, bool) or tid < 0:
            raise ValueError(f"{name}[{i}] track_id must be an int >= 0 or None, got {tid!r}")
        ids.append(int(tid))
        boxes.append(check_box(box, f"{name}[{i}]"))
    if len(set(ids)) != len(ids):
        raise ValueError(f"{name} has a track id more than once: {ids}")
    return ids, np.array(boxes, dtype=np.float64).reshape(len(ids), 4)


def needed(op: Any, name: str, values: dict[str, Any]) -> Any:
    """``values[name]``, or a ValueError naming ``op``'s class and the values present."""
    if name not in values:
        raise ValueError(f"{type(op).__name__} needs the value {name!r}, the frame has "
                         f"{sorted(values)}")
    return values[name]


class Tracker:
    """Track the detections of each stream (a :class:`~streamimg.analytics.stateful.StatefulOp`).

    Parameters
    ----------
    detections : str
        Name of the analytics value holding each frame's detections (see
        :func:`parse_detections`).
    method : {"bytetrack", "sort"}
        ``trackers.ByteTrackTracker`` (two-stage matching: low-confidence
        detections can continue tracks) or ``trackers.SORTTracker``.
    lost_track_buffer : int
        How long a lost track is kept for re-association, in 30 FPS frames (so
        30 = 1 s of capture time), >= 0.
    frame_rate : float
        Nominal frames per second, > 0: the Kalman filter's time unit (a step of
        one frame period is one filter step) and the step taken for a frame
        whose capture time does not advance.
    track_activation_threshold : float or None
        Lowest detection score, in [0, 1], that starts a track. None: trackers'
        default (bytetrack 0.7, sort 0.25 in trackers 2.6).
    minimum_consecutive_frames : int or None
        Frames a track must be matched in a row before it gets an id, >= 1.
        None: trackers' default (bytetrack 2, sort 3).
    minimum_iou_threshold : float or None
        Lowest IoU, in [0, 1], that matches a detection to a track. None:
        trackers' default (bytetrack 0.1, sort 0.3).
    high_conf_det_threshold : float or None
        ByteTrack only: score, in [0, 1], splitting high- from low-confidence
        detections. None: trackers' default (0.6).

    Raises
    ------
    ValueError
        Naming the argument, if one is out of range or of the wrong type, or
        ``method`` is unknown, or ``high_conf_det_threshold`` is given for "sort".

    Notes
    -----
    Value per frame: a list, one dict per input detection in input order,
    ``{"label": str, "score": float, "box": [x0, y0, x1, y1] (float pixels, the
    detection's own box), "track_id": int >= 0 or None}``.

    A state restored by an op whose settings differ from the writer's keeps its
    tracks and ids and runs with the new settings from the next frame.
    """

    def __init__(self, detections: str = "detections", method: str = "bytetrack",
                 lost_track_buffer: int = 30, frame_rate: float = 25.0,
                 track_activation_threshold: float | None = None,
                 minimum_consecutive_frames: int | None = None,
                 minimum_iou_threshold: float | None = None,
                 high_conf_det_threshold: float | None = None) -> None:
        if not isinstance(detections, str) or not detections:
            raise ValueError(f"detections must be a value name (non-empty str), "
                             f"got {detections!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
        if method == "sort" and high_conf_det_threshold is not None:
            raise ValueError(f"high_conf_det_threshold applies to method 'bytetrack' only, "
                             f"got {high_conf_det_threshold!r} with method 'sort'")
        defaults = {k: p.default for k, p in
                    inspect.signature(METHODS[method].__init__).parameters.items()}
        given = {"track_activation_threshold": track_activation_threshold,
                 "minimum_consecutive_frames": minimum_consecutive_frames,
                 "minimum_iou_threshold": minimum_iou_threshold,
                 "high_conf_det_threshold": high_conf_det_threshold}
        settings: dict[str, Any] = {"lost_track_buffer": lost_track_buffer,
                                    "frame_rate": frame_rate}
        for key, val in given.items():
            if key in defaults:
                settings[key] = defaults[key] if val is None else val
        for key in ("lost_track_buffer", "minimum_consecutive_frames"):
            val, low = settings[key], 0 if key == "lost_track_buffer" else 1
            if not isinstance(val, numbers.Integral) or isinstance(val, bool) or val < low:
                raise ValueError(f"{key} must be an int >= {low}, got {val!r}")
            settings[key] = int(val)
        if not is_real(frame_rate) or not math.isfinite(frame_rate) or frame_rate <= 0:
            raise ValueError(f"frame_rate must be a finite number > 0 (frames per second), "
                             f"got {frame_rate!r}")
        settings["frame_rate"] = float(frame_rate)
        for key in ("track_activation_threshold", "minimum_iou_threshold",
                    "high_conf_det_threshold"):
            val = settings.get(key, 0.0)
            if not is_real(val) or not 0.0 <= val <= 1.0:
                raise ValueError(f"{key} must be a number in [0, 1], got {val!r}")
        self.detections = detections
        self.method = method
        self.settings = settings
        self.needs: tuple[str, ...] = (detections,)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings.items())
        return f"Tracker(detections={self.detections!r}, method={self.method!r}, {args})"

    def initial(self) -> dict[str, Any]:
        """A fresh state: ``{"tracker": trackers object, "origin_ms": None, "clock_s": None}``.

        ``origin_ms`` is the first frame's capture time (ms since the epoch),
        ``clock_s`` the last time given to the tracker (s since ``origin_ms``).
        """
        return {"tracker": METHODS[self.method](**self.settings), "origin_ms": None,
                "clock_s": None}

    def step(self, state: dict[str, Any], info: FrameInfo,
             values: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Track one frame's detections.

        Parameters
        ----------
        state : dict
            From :meth:`initial`, :meth:`loads` or the previous step; updated in place.
        info : FrameInfo
            ``info.header.timestamp_ms`` (capture time, ms) drives the filter.
        values : dict
            Must hold ``self.detections``.

        Returns
        -------
        (dict, list of dict)
            The state, and the frame's tracks (see the class Notes).

        Raises
        ------
        ValueError
            If the detections are missing or malformed (the state is left untouched).
        """
        dets = parse_detections(needed(self, self.detections, values), self.detections)
        ts_ms = int(info.header.timestamp_ms)
        origin = ts_ms if state["origin_ms"] is None else state["origin_ms"]
        clock = (ts_ms - origin) / 1000.0
        last = state["clock_s"]
        if last is not None and clock <= last:
            clock = last + 1.0 / self.settings["frame_rate"]
        n = len(dets)
        boxes = np.array([d[2] for d in dets], dtype=np.float64).reshape(n, 4)
        detections = sv.Detections(xyxy=boxes,
                                   confidence=np.array([d[1] for d in dets], dtype=np.float64),
                                   data={"index": np.arange(n)})
        result = state["tracker"].update(detections, timestamp=clock)
        state["origin_ms"], state["clock_s"] = origin, clock
        ids: list[int | None] = [None] * n
        index = result.data.get("index", np.empty(0, dtype=int))
        for i, tid in zip(index.tolist(), result.tracker_id.tolist(), strict=True):
            ids[i] = int(tid) if tid >= 0 else None
        return state, [{"label": label, "score": score, "box": list(box), "track_id": tid}
                       for (label, score, box), tid in zip(dets, ids, strict=True)]

    def dumps(self, state: dict[str, Any]) -> bytes:
        """``state`` as bytes: a version tag, then the zlib-compressed pickle of ``state``."""
        return (_MAGIC + _TRACKERS_VERSION.encode() + b"\n"
                + zlib.compress(pickle.dumps(state, protocol=5)))

    def loads(self, data: bytes) -> dict[str, Any]:
        """The state :meth:`dumps` wrote as ``data``.

        Raises
        ------
        ValueError
            If ``data`` was not written by :meth:`dumps`, or cannot be read with
            the installed trackers version (the message names both versions).
        """
        head, sep, body = bytes(data).partition(b"\n")
        if not sep or not head.startswith(_MAGIC):
            raise ValueError(f"not a Tracker state: starts with {bytes(data[:40])!r}")
        version = head[len(_MAGIC):].decode(errors="replace")
        try:
            state = pickle.loads(zlib.decompress(body))
        except Exception as exc:
            raise ValueError(f"cannot read a Tracker state written with trackers {version} "
                             f"using trackers {_TRACKERS_VERSION}: {exc!r}") from exc
        tracker = state.get("tracker") if isinstance(state, dict) else None
        if not isinstance(tracker, METHODS[self.method]):
            raise ValueError(f"the state is not a {self.method} Tracker state: {state!r:.200}")
        fresh = vars(self.initial()["tracker"])
        if set(vars(tracker)) != set(fresh) or not _DYNAMIC <= set(fresh):
            raise ValueError(f"cannot read a Tracker state written with trackers {version} "
                             f"using trackers {_TRACKERS_VERSION}: the tracker's attributes "
                             f"changed to {sorted(fresh)}")
        for key, val in fresh.items():  # this op's settings, which may have changed
            if key not in _DYNAMIC:
                setattr(tracker, key, val)
        return state
