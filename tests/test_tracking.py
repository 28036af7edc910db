"""Stateful analytics: Tracker (trackers' ByteTrack), LineCounter and ZoneCounter (supervision).

Synthetic scene, 640x480 at 25 fps (40 ms), boxes 40x40 px:

- A ("person", id 0): left to right along y 100-140, x0 = 12 i; missed by the detector on
  frames 10, 11, 40, 41; score 0.5 (ByteTrack's low-confidence stage) on frame 15.
- C ("bag", id 1): still at (500, 200)-(540, 240), inside the zone, frames 3-20, then gone.
- B ("car", id 2): right to left along y 300-340 from frame 5, x0 = 600 - 12 (i - 5).

The line is x = 320 drawn top to bottom, so A crosses "in" (frame 27: all corners right
of it) and B "out" (frame 32). The zone is x 400-600 over the full height (bottom-centre
anchor): B is inside on frames 7-23, A on 32-48; C from its first confirmed frame (4)
until 1000 ms after it was last seen.
"""

from __future__ import annotations

import json
import math
import pickle
import warnings

import cloudpickle
import numpy as np
import pytest

from streamimg.analytics.counting import _LINE_FIXED, _LINE_STATE, LineCounter, ZoneCounter
from streamimg.analytics.detect import Detection
from streamimg.analytics.stateful import StatefulOp
from streamimg.analytics.tracking import Tracker
from streamimg.batching import FrameInfo
from streamimg.codecs.frame import FrameHeader

T0 = 1_700_000_000_000
N = 50
LINE = ((320, 0), (320, 480))
ZONE = [(400, 0), (600, 0), (600, 479), (400, 479)]


def info(i: int, ts: int) -> FrameInfo:
    header = FrameHeader(stream="cam", frame=i, timestamp_ms=ts, height=480, width=640,
                         channels=3, dtype="uint8", encoding="raw", order="rgb")
    return FrameInfo(topic="in", partition=0, offset=i, key=b"cam", header=header)


def a_box(i):
    return (12.0 * i, 100.0, 12.0 * i + 40, 140.0)


def b_box(i):
    return (600.0 - 12 * (i - 5), 300.0, 640.0 - 12 * (i - 5), 340.0)


C_BOX = (500.0, 200.0, 540.0, 240.0)


def scene(stamps=None, as_dicts=False):
    """[(FrameInfo, detections)] of the scene; ``stamps``: capture times (default 40 ms)."""
    stamps = stamps or [T0 + 40 * i for i in range(N)]
    frames = []
    for i, ts in enumerate(stamps):
        dets = []
        if i not in (10, 11, 40, 41):
            dets.append(Detection("person", 0.5 if i == 15 else 0.9, a_box(i)))
        if i >= 5:
            dets.append(Detection("car", 0.8, b_box(i)))
        if 3 <= i <= 20:
            dets.append(Detection("bag", 0.95, C_BOX))
        if as_dicts:
            dets = [d.to_dict() for d in dets]
        frames.append((info(i, ts), dets))
    return frames


def ops():
    return (Tracker(), LineCounter(line=LINE), ZoneCounter(polygon=ZONE))


def dumps_all(ops_, states):
    return [op.dumps(s) for op, s in zip(ops_, states, strict=True)]


def run(frames, ops_=None, states=None, round_trip=False, snapshots=None):
    """Values [(tracks, line, zone)] per frame, from ``states`` (default: initial).

    ``round_trip``: states go through dumps/loads before every frame. ``snapshots``: a
    list that gets the states' dumps before every frame.
    """
    ops_ = ops_ or ops()
    tracker, line, zone = ops_
    states = states or [op.initial() for op in ops_]
    out = []
    for inf, dets in frames:
        if snapshots is not None:
            snapshots.append(dumps_all(ops_, states))
        if round_trip:
            states = [op.loads(op.dumps(s)) for op, s in zip(ops_, states, strict=True)]
        states[0], tracks = tracker.step(states[0], inf, {"detections": dets})
        states[1], crossing = line.step(states[1], inf, {"tracks": tracks})
        states[2], occupancy = zone.step(states[2], inf, {"tracks": tracks})
        out.append((tracks, crossing, occupancy))
    return out


def differences(a, b, path="state"):
    """Where two object graphs differ (types, dict keys in order, array dtype/shape/values)."""
    if type(a) is not type(b):
        return [f"{path}: {type(a).__name__} vs {type(b).__name__}"]
    if isinstance(a, np.ndarray):
        same = a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
        return [] if same else [f"{path}: {a!r} vs {b!r}"]
    if isinstance(a, dict):
        if list(a) != list(b):
            return [f"{path}: keys {list(a)} vs {list(b)}"]
        return [d for k in a for d in differences(a[k], b[k], f"{path}[{k!r}]")]
    if isinstance(a, list | tuple):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True))
                for d in differences(x, y, f"{path}[{i}]")]
    if hasattr(a, "__dict__") and not isinstance(a, type):
        return differences(vars(a), vars(b), f"{path}.{type(a).__name__}")
    return [] if a == b or (a != a and b != b) else [f"{path}: {a!r} vs {b!r}"]


def same_states(ops_, blobs_a, blobs_b):
    """The Tracker's pickles may differ in memo layout only: compare what they load to;
    the counters' JSON must be byte-identical."""
    tracker = ops_[0]
    assert differences(tracker.loads(blobs_a[0]), tracker.loads(blobs_b[0])) == []
    assert blobs_a[1:] == blobs_b[1:]


@pytest.fixture(scope="module")
def values():
    return run(scene())


def track_of(tracks, box):
    [t] = [t for t in tracks if tuple(t["box"]) == box]
    return t


# ------------------------------------------------------------------ tracker


def test_track_ids_are_stable_labels_kept_and_unconfirmed_are_none(values):
    for i, (tracks, _, _) in enumerate(values):
        expected = sum((i not in (10, 11, 40, 41), i >= 5, 3 <= i <= 20))
        assert len(tracks) == expected  # every detection comes back
        if i not in (10, 11, 40, 41):
            a = track_of(tracks, a_box(i))
            assert (a["label"], a["score"]) == ("person", 0.5 if i == 15 else 0.9)
            assert a["track_id"] == (None if i == 0 else 0)
        if i >= 5:
            b = track_of(tracks, b_box(i))
            assert (b["label"], b["track_id"]) == ("car", None if i == 5 else 2)
        if 3 <= i <= 20:
            assert track_of(tracks, C_BOX)["track_id"] == (None if i == 3 else 1)


def test_tracks_come_back_in_input_order(values):
    frames = scene()
    for (_, dets), (tracks, _, _) in zip(frames, values, strict=True):
        assert [tuple(t["box"]) for t in tracks] == [d.box for d in dets]


def test_detection_objects_and_dicts_give_the_same_values(values):
    assert run(scene(as_dicts=True)) == values


def test_values_are_json(values):
    for v in values:
        assert json.loads(json.dumps(v)) == list(v)


@pytest.mark.parametrize("gap_ms, ids_after", [(500, [0, 0]), (1500, [None, 1])])
def test_lost_tracks_expire_by_capture_time(gap_ms, ids_after):
    """A track unseen for more than lost_track_buffer / 30 s (1 s) of capture time is
    dropped, however few frames that is: here one frame after a pause."""
    op = Tracker()
    state, ids = op.initial(), []
    stamps = [T0 + 40 * i for i in range(10)] + [T0 + 360 + gap_ms, T0 + 400 + gap_ms]
    for i, ts in enumerate(stamps):
        state, tracks = op.step(state, info(i, ts), {"detections": [
            Detection("person", 0.9, (100.0, 100.0, 140.0, 140.0))]})
        ids.append(tracks[0]["track_id"])
    assert ids == [None] + [0] * 9 + ids_after


def test_sort_method_tracks_too():
    out = run(scene(), (Tracker(method="sort"), LineCounter(line=LINE),
                        ZoneCounter(polygon=ZONE)))
    ids = {track_of(t, a_box(i))["track_id"] for i, (t, _, _) in enumerate(out)
           if i >= 2 and i not in (10, 11, 12, 40, 41, 42)}  # SORT: 3 frames to confirm
    assert len(ids) == 1 and None not in ids
    assert out[-1][1]["in"] == 1 and out[-1][1]["out"] == 1


# ------------------------------------------------------------------ line


def test_line_counts_opposite_crossings_at_the_expected_frames(values):
    for i, (_, line, _) in enumerate(values):
        assert line["crossed_in"] == ([0] if i == 27 else [])
        assert line["crossed_out"] == ([2] if i == 32 else [])
        assert line["in"] == int(i >= 27) and line["out"] == int(i >= 32)


def test_line_direction_follows_supervision():
    """A line drawn left to right counts upward movement as in (supervision's example)."""
    op = LineCounter(line=((0, 100), (200, 100)))
    state = op.initial()
    moves = [(10, 110, 20, 150), (10, 50, 20, 90), (10, 110, 20, 150)]
    got = []
    for i, box in enumerate(moves):
        state, v = op.step(state, info(i, T0 + 40 * i), {"tracks": [
            {"track_id": 7, "box": list(box)}, {"track_id": None, "box": [0, 0, 1, 1]}]})
        got.append(v)
    assert got[1] == {"in": 1, "out": 0, "crossed_in": [7], "crossed_out": []}
    assert got[2] == {"in": 1, "out": 1, "crossed_in": [], "crossed_out": [7]}


def test_minimum_crossing_threshold_ignores_short_excursions():
    op = LineCounter(line=((0, 100), (200, 100)), minimum_crossing_threshold=2)
    state, last = op.initial(), None
    for i, y in enumerate([110, 50, 110, 110, 50, 50]):
        state, last = op.step(state, info(i, T0 + 40 * i),
                              {"tracks": [{"track_id": 0, "box": [10, y, 20, y + 40]}]})
        if i == 2:
            assert last["in"] == 0  # one frame above the line is noise
    assert last == {"in": 1, "out": 0, "crossed_in": [0], "crossed_out": []}


def test_linezone_state_is_all_serialised():
    """Fails if a supervision upgrade adds LineZone state that dumps() would drop."""
    assert set(vars(LineCounter(line=LINE).initial())) == _LINE_FIXED | _LINE_STATE


# ------------------------------------------------------------------ zone


def test_zone_entries_exits_and_dwell_from_capture_times(values):
    ts = [T0 + 40 * i for i in range(N)]
    c_exit = next(i for i in range(21, N) if ts[i] - ts[20] > 1000)
    assert c_exit == 46
    for i, (_, _, z) in enumerate(values):
        inside = {}
        if 4 <= i < c_exit:
            inside["1"] = ts[min(i, 20)] - ts[4]
        if 7 <= i <= 23:
            inside["2"] = ts[i] - ts[7]
        if 32 <= i <= 48:
            inside["0"] = ts[39 if i in (40, 41) else i] - ts[32]  # unseen: dwell holds
        assert z["dwell_ms"] == dict(sorted(inside.items(), key=lambda kv: int(kv[0])))
        assert z["occupancy"] == len(inside)
        assert z["entered_ids"] == {4: [1], 7: [2], 32: [0]}.get(i, [])
        exits = {24: {"2": ts[23] - ts[7]}, c_exit: {"1": ts[20] - ts[4]},
                 49: {"0": ts[48] - ts[32]}}.get(i, {})
        assert z["exited_dwell_ms"] == exits and z["exited_ids"] == [int(k) for k in exits]
        assert z["entered"] == sum(i >= e for e in (4, 7, 32))
        assert z["exited"] == sum(i >= e for e in (24, c_exit, 49))


def test_zone_exit_after_ms_zero_exits_when_unseen():
    op = ZoneCounter(polygon=ZONE, exit_after_ms=0)
    state = op.initial()
    inside = {"track_id": 3, "box": [480, 100, 520, 140]}
    seq = [[inside], [], [inside]]
    got = []
    for i, tracks in enumerate(seq):
        state, v = op.step(state, info(i, T0 + 40 * i), {"tracks": tracks})
        got.append((v["entered"], v["exited"], v["occupancy"]))
    assert got == [(1, 0, 1), (1, 1, 0), (2, 1, 1)]


def test_zone_clock_never_runs_backwards():
    op = ZoneCounter(polygon=ZONE)
    state = op.initial()
    t = {"track_id": 0, "box": [480, 100, 520, 140]}
    dwell = []
    for i, ts in enumerate([T0, T0 + 80, T0 + 40, T0 + 120]):
        state, v = op.step(state, info(i, ts), {"tracks": [t]})
        dwell.append(v["dwell_ms"]["0"])
    assert dwell == [0, 80, 80, 120]


# ------------------------------------------------------------------ round trips


def irregular_stamps():
    """A dropped frame (gap), a duplicated stamp and one going backwards."""
    ts = [T0 + 40 * i for i in range(N)]
    ts[30:] = [t + 40 for t in ts[30:]]
    ts[35] = ts[34]
    ts[36] = ts[34] - 200
    return ts


@pytest.mark.parametrize("stamps, splits", [
    (None, range(N)), (irregular_stamps(), range(28, 40))], ids=["regular", "irregular"])
def test_round_trip_at_a_split_point_continues_exactly(stamps, splits):
    """Frames [:k], dumps -> loads (fresh op objects), frames [k:] == the uninterrupted run.

    The values of every later frame and the final states must be the same.
    """
    frames = scene(stamps)
    snapshots, states = [], [op.initial() for op in ops()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # trackers warns on stamps it would skip
        expected = run(frames, ops(), states, snapshots=snapshots)
        final = dumps_all(ops(), states)
        for k in splits:
            fresh = ops()
            states = [op.loads(b) for op, b in zip(fresh, snapshots[k], strict=True)]
            same_states(fresh, dumps_all(fresh, states), snapshots[k])
            assert run(frames[k:], fresh, states) == expected[k:], f"split at frame {k}"
            same_states(fresh, dumps_all(fresh, states), final)
        assert run(frames, round_trip=True) == expected


def test_dumps_of_loads_gives_the_same_state():
    tracker, line, zone = ops()
    states = [op.initial() for op in (tracker, line, zone)]
    for inf, dets in scene()[:35]:
        states[0], tracks = tracker.step(states[0], inf, {"detections": dets})
        states[1], _ = line.step(states[1], inf, {"tracks": tracks})
        states[2], _ = zone.step(states[2], inf, {"tracks": tracks})
    blobs = [op.dumps(s) for op, s in zip((tracker, line, zone), states, strict=True)]
    assert all(isinstance(b, bytes) for b in blobs)
    same_states((tracker, line, zone), blobs,
                [op.dumps(op.loads(b)) for op, b in zip((tracker, line, zone), blobs, strict=True)])
    assert differences(tracker.loads(blobs[0]), states[0]) == []
    assert len(tracker.dumps(states[0])) < 4000  # zlib: ~20 kB of pickle for 3 tracks


def test_ops_pickle_small_and_keep_working(values):
    assert all(isinstance(op, StatefulOp) for op in ops())
    for dumps in (pickle.dumps, cloudpickle.dumps):
        blobs = [dumps(op) for op in ops()]
        assert max(map(len, blobs)) < 2000  # no PolygonZone mask inside
        assert run(scene(), tuple(pickle.loads(b) for b in blobs)) == values


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "deepsort"}, r"method must be one of \['bytetrack', 'sort'\]"),
    ({"detections": ""}, "detections must be"),
    ({"lost_track_buffer": -1}, "lost_track_buffer must be an int >= 0"),
    ({"lost_track_buffer": 2.5}, "lost_track_buffer"),
    ({"frame_rate": 0}, "frame_rate must be"),
    ({"frame_rate": math.nan}, "frame_rate must be"),
    ({"minimum_consecutive_frames": 0}, "minimum_consecutive_frames must be an int >= 1"),
    ({"minimum_consecutive_frames": True}, "minimum_consecutive_frames"),
    ({"track_activation_threshold": 1.5}, r"track_activation_threshold must be .* \[0, 1\]"),
    ({"minimum_iou_threshold": -0.1}, "minimum_iou_threshold"),
    ({"high_conf_det_threshold": "high"}, "high_conf_det_threshold"),
    ({"method": "sort", "high_conf_det_threshold": 0.5}, "bytetrack' only"),
])
def test_tracker_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Tracker(**kwargs)


def test_tracker_defaults_are_trackers_defaults():
    s = Tracker().settings
    assert s == {"lost_track_buffer": 30, "frame_rate": 25.0, "track_activation_threshold": 0.7,
                 "minimum_consecutive_frames": 2, "minimum_iou_threshold": 0.1,
                 "high_conf_det_threshold": 0.6}


GOOD = {"label": "x", "score": 0.9, "box": [0, 0, 10, 10]}


@pytest.mark.parametrize("value, match", [
    (None, "detections must be a list"),
    ([("x", 0.9, (0, 0, 1, 1))], r"detections\[0\] must be a Detection or a dict"),
    ([GOOD, {"label": "x", "score": 0.9}], r"detections\[1\] must be a Detection or a dict"),
    ([{**GOOD, "label": 3}], "label must be a str"),
    ([{**GOOD, "score": 1.5}], r"score must be a number in \[0, 1\]"),
    ([{**GOOD, "score": math.nan}], "score"),
    ([{**GOOD, "box": [0, 0, 10]}], "box must be 4 finite"),
    ([{**GOOD, "box": [0, 0, math.inf, 10]}], "box must be 4 finite"),
    ([{**GOOD, "box": [10, 0, 0, 10]}], "x0 <= x1"),
])
def test_tracker_rejects_bad_detections_and_keeps_its_state(value, match):
    op = Tracker()
    state = op.initial()
    for inf, dets in scene()[:8]:
        state, _ = op.step(state, inf, {"detections": dets})
    before = op.dumps(state)
    with pytest.raises(ValueError, match=match):
        op.step(state, info(8, T0 + 320), {"detections": value})
    assert op.dumps(state) == before
    with pytest.raises(ValueError, match="needs the value 'detections'"):
        op.step(state, info(8, T0 + 320), {"boxes": []})


@pytest.mark.parametrize("cls, kwargs, match", [
    (LineCounter, {"line": ((0, 0), (0, 0))}, "line must be 2 distinct points"),
    (LineCounter, {"line": ((0, 0), (math.nan, 5))}, "line must be 2 points"),
    (LineCounter, {"line": ((0, 0), (1, 1), (2, 2))}, "line must be 2 distinct points"),
    (LineCounter, {"line": "ab"}, "line must be 2 points"),
    (LineCounter, {"line": LINE, "anchors": "middle"}, "anchors must be one or more of"),
    (LineCounter, {"line": LINE, "minimum_crossing_threshold": 0}, "minimum_crossing"),
    (LineCounter, {"line": LINE, "tracks": ""}, "tracks must be a non-empty str"),
    (ZoneCounter, {"polygon": [(0, 0), (5, 5)]}, "polygon must be at least 3 points"),
    (ZoneCounter, {"polygon": [(0, 0), (5, 5), (math.inf, 1)]}, "polygon must be at least 3"),
    (ZoneCounter, {"polygon": [(0, 0), (1e9, 0), (0, 5)]}, "within"),
    (ZoneCounter, {"polygon": [(0, 0), (20000, 0), (0, 20000)]}, "allocate a 382 MiB mask"),
    (ZoneCounter, {"polygon": [(0, 0), (5, 5), (10, 10)]}, "polygon encloses no area"),
    (ZoneCounter, {"polygon": [(-9, -9), (-5, -9), (-5, -5)]}, "not usable by supervision"),
    (ZoneCounter, {"polygon": ZONE, "exit_after_ms": -1}, "exit_after_ms must be"),
    (ZoneCounter, {"polygon": ZONE, "anchors": ["center", "center_of_mass"]}, "anchors"),
    (ZoneCounter, {"polygon": ZONE, "name": None}, "name must be a non-empty str"),
])
def test_counters_reject_bad_geometry(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize("value, match", [
    ("tracks", "tracks must be a list"),
    ([{"box": [0, 0, 1, 1]}], r"tracks\[0\] must be a dict with keys track_id and box"),
    ([{"track_id": -1, "box": [0, 0, 1, 1]}], "track_id must be an int >= 0 or None"),
    ([{"track_id": "3", "box": [0, 0, 1, 1]}], "track_id must be an int"),
    ([{"track_id": 3, "box": [0, 0, 1, math.nan]}], "box must be 4 finite"),
    ([{"track_id": 3, "box": [0, 0, 1, 1]}, {"track_id": 3, "box": [5, 5, 6, 6]}],
     "track id more than once"),
])
@pytest.mark.parametrize("make", [lambda: LineCounter(line=LINE),
                                  lambda: ZoneCounter(polygon=ZONE)], ids=["line", "zone"])
def test_counters_reject_bad_tracks_and_keep_their_state(make, value, match):
    op = make()
    state = op.initial()
    state, _ = op.step(state, info(0, T0), {"tracks": [{"track_id": 0, "box": [480, 90, 520,
                                                                              130]}]})
    before = op.dumps(state)
    with pytest.raises(ValueError, match=match):
        op.step(state, info(1, T0 + 40), {"tracks": value})
    assert op.dumps(state) == before
    with pytest.raises(ValueError, match="needs the value 'tracks'"):
        op.step(state, info(1, T0 + 40), {})


@pytest.mark.parametrize("op", ops(), ids=["tracker", "line", "zone"])
@pytest.mark.parametrize("data", [b"", b"garbage", b'{"v": 2}', b"streamimg-tracker/1 "
                                  b"trackers=0.1\nxx", b"\xff\xfe"])
def test_loads_rejects_foreign_bytes(op, data):
    with pytest.raises(ValueError, match="not a|cannot read"):
        op.loads(data)


def test_restored_tracker_takes_the_new_settings():
    op = Tracker()
    state = op.initial()
    for inf, dets in scene()[:8]:
        state, _ = op.step(state, inf, {"detections": dets})
    changed = Tracker(lost_track_buffer=0, frame_rate=50.0, minimum_iou_threshold=0.5)
    restored = changed.loads(op.dumps(state))["tracker"]
    assert restored.maximum_frames_without_update == 0 and restored._frame_rate == 50.0
    assert restored.minimum_iou_threshold == 0.5
    assert [t.tracker_id for t in restored.tracks] == [0, 1, 2]
    assert restored._next_track_id == 3


def test_tracker_loads_rejects_another_methods_state():
    data = Tracker(method="sort").dumps(Tracker(method="sort").initial())
    with pytest.raises(ValueError, match="not a bytetrack Tracker state"):
        Tracker().loads(data)


def test_a_real_face_keeps_one_track_id_through_a_clip_and_a_restart():
    """CenterFace on 40 frames of carphone_pristine.mp4 (one man on the phone), tracked with
    the clip's capture times: one confirmed id for the face from the second frame on, and
    a dumps/loads half-way gives the same values as the uninterrupted run."""
    from streamimg.analytics.faces import FaceDetector
    from streamimg.sources.video import read_video
    from tests.helpers import clip

    detector, tracker = FaceDetector(), Tracker(detections="faces")
    frames = list(read_video(clip("carphone_pristine.mp4"), limit=40, start_ms=T0))
    faces = [detector.detect(f.image) for f in frames]
    assert sum(1 for d in faces if d) >= 36, [len(d) for d in faces]

    def run(split=None):
        state, out = tracker.initial(), []
        for i, (f, d) in enumerate(zip(frames, faces, strict=True)):
            if i == split:
                state = tracker.loads(tracker.dumps(state))
            h = FrameHeader("phone", f.index, f.timestamp_ms, 144, 176, 3, "uint8", "raw", "RGB")
            state, value = tracker.step(state, FrameInfo("in", 0, i, b"phone", h), {"faces": d})
            out.append(value)
        return out

    values = run()
    ids = {t["track_id"] for v in values[1:] for t in v if t["track_id"] is not None}
    assert ids == {0}, ids
    assert all(v[0]["track_id"] == 0 for v in values[2:] if v)
    assert run(split=20) == values
