"""Temporal operators: windows of a stream's frames that span batches, crashes and restarts.

Every expected frame here is computed over the whole clip directly in NumPy (a window
of the clip's frames, a median, a mask), never by the operator's own code; the unit part
splits the same frames into batches and chunks every which way, the Kafka part kills
``streamimg run`` with SIGKILL between producing a batch and committing it.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import streamimg
from streamimg.admin import ensure_topics
from streamimg.batching import FrameInfo
from streamimg.codecs.frame import FrameHeader, decode_payload, parse_header
from streamimg.operators.stencils import diffuse
from streamimg.operators.temporal import Background, HeatField, TemporalWindow, pack, unpack
from streamimg.sources.video import SourceFrame, produce_frames
from streamimg.state import StateError, run_state
from streamimg.topology import TopologyError
from streamimg.worker import array_block, run_program
from tests.harness.checker import read_log
from tests.helpers import (
    kill_between_produce_and_commit,
    write_topology,
)


def _median(frames: list[np.ndarray]) -> np.ndarray:
    return np.clip(np.rint(np.median(np.stack(frames), axis=0)), 0, 255).astype(np.uint8)


def expected_median(frames, k):
    return [_median(frames[max(0, t - k + 1):t + 1]) for t in range(len(frames))]


def expected_mask(frames, history, threshold):
    """Foreground masks: the median of the previous ``history`` frames as background."""
    out = []
    for t, f in enumerate(frames):
        bg = _median(frames[max(0, t - history):t]) if t else f
        diff = np.abs(f.astype(np.int32) - bg.astype(np.int32)).max(axis=2)
        out.append(np.where(diff > threshold, 255, 0).astype(np.uint8)[:, :, None])
    return out


@pytest.fixture(scope="module")
def small(bikes) -> list[np.ndarray]:
    """bikes.mp4's first 24 frames at 80x34 (real motion, small state)."""
    return [cv2.resize(f, (80, 34), interpolation=cv2.INTER_AREA) for f in bikes]


def _infos(frames, stream="s", partition=0):
    h, w, c = frames[0].shape
    return [FrameInfo("in", partition, i, stream.encode(),
                      FrameHeader(stream, i, 1_000 + 40 * i, h, w, c, "uint8", "raw",
                                  "GRAY" if c == 1 else "RGB"))
            for i in range(len(frames))]


def _topology(body, shape, name="tmp", **kwargs):
    t = streamimg.Topology(name, inputs="in", frame_shape=shape, **kwargs)
    body(t.source)
    return t


def _run(program, frames, infos, batches, chunks):
    """Frames out of every frame sink, per sink, running batches and chunks as given."""
    token, blob = program.pickled()
    state, lo = {}, 0
    out: dict[int, dict[int, np.ndarray]] = {}
    for n in batches:
        bf, bi = frames[lo:lo + n], infos[lo:lo + n]
        bounds = [(j * n // chunks, (j + 1) * n // chunks) for j in range(chunks)]
        pendings = [run_program(program, bi[a:b], bf[a:b], array_block, "r", a).pending
                    for a, b in bounds]
        state = run_state(token, blob, state, pendings, bi, "r")
        assert not state.failures, state.failures
        for s, per_frame in state.records.items():
            for recs in per_frame:
                for _, value, headers in recs:
                    h = parse_header(headers)
                    out.setdefault(s, {})[h.frame] = decode_payload(h, value)
        lo += n
    return out


@pytest.mark.parametrize("batches,chunks", [([24], 1), ([1] * 24, 1), ([5, 7, 3, 9], 2),
                                            ([2, 11, 11], 3)])
def test_any_split_gives_the_whole_clip_windows(small, batches, chunks):
    """A 4-frame median, then a background mask of the medians (chained): every frame
    equals the windows of the whole clip, whatever the batches and chunks."""
    t = _topology(lambda s: s.temporal("median", window=4, name="med")
                  .to_kafka_frames(encoding="raw", topic="o1")
                  .background("median", history=3, threshold=20, name="fg")
                  .to_kafka_frames(encoding="raw", topic="o2"), (34, 80, 3))
    out = _run(t.check(), small, _infos(small), batches, chunks)
    med = expected_median(small, 4)
    masks = expected_mask(med, 3, 20)
    assert [out[0][i].tolist() for i in range(24)] == [m.tolist() for m in med]
    assert [out[1][i].tolist() for i in range(24)] == [m.tolist() for m in masks]
    assert 0 < np.mean([m.mean() for m in masks]) < 255  # the cyclists move: some foreground


def _own(window, gain):
    """A user's window function: the brightest value over the window, scaled."""
    return (np.max(window, axis=0) * gain).astype(np.uint8)


@pytest.mark.parametrize("fn,k,kwargs,expect", [
    ("mean", 3, {}, lambda w: np.rint(np.stack(w).astype(np.float64).mean(0)).astype(np.uint8)),
    ("difference", 2, {}, lambda w: (np.abs(w[-1].astype(int) - w[-2].astype(int))
                                     .astype(np.uint8) if len(w) > 1 else np.zeros_like(w[-1]))),
    (_own, 5, {"gain": 0.5}, lambda w: (np.stack(w).max(0) * 0.5).astype(np.uint8)),
])
def test_mean_difference_and_your_own_function(small, fn, k, kwargs, expect):
    frames = small[:9]
    t = _topology(lambda s: s.temporal(fn, window=k, **kwargs).to_kafka_frames(encoding="raw"),
                  (34, 80, 3))
    out = _run(t.check(), frames, _infos(frames), [4, 5], 2)[0]
    for i in range(len(frames)):
        assert np.array_equal(out[i], expect(frames[max(0, i - k + 1):i + 1])), i


def test_running_average_background_and_its_header(small):
    frames = small[:10]
    t = _topology(lambda s: s.background("running_average", alpha=0.25, output="background")
                  .to_kafka_frames(encoding="raw"), (34, 80, 3))
    out = _run(t.check(), frames, _infos(frames), [3, 3, 4], 2)[0]
    mean = frames[0].astype(np.float32)
    for i, f in enumerate(frames):
        assert np.array_equal(out[i], np.clip(np.rint(mean), 0, 255).astype(np.uint8)), i
        mean = (0.75 * mean + 0.25 * f).astype(np.float32)
    fg = _topology(lambda s: s.background().to_kafka_frames(encoding="png"), (34, 80, 3))
    prog = fg.check()
    token, blob = prog.pickled()
    infos = _infos(frames[:2])
    pend = run_program(prog, infos, frames[:2], array_block, "r").pending
    (recs, _), = [run_state(token, blob, {}, [pend], infos, "r").records[0]]
    header = parse_header(recs[0][2])
    assert (header.channels, header.order, header.encoding) == (1, "GRAY", "png")


def test_a_temporal_fn_that_reuses_its_output_array_gives_each_frame_its_own(small):
    """A frame record's value may alias the frame; the state task's records must not."""
    frames, reused = small[:6], np.empty((34, 80, 3), np.uint8)

    def newest(window):
        np.copyto(reused, window[-1])
        return reused

    t = _topology(lambda s: s.temporal(newest, window=2).to_kafka_frames(encoding="raw"),
                  (34, 80, 3))
    out = _run(t.check(), frames, _infos(frames), [6], 2)[0]
    for i, f in enumerate(frames):
        assert np.array_equal(out[i], f), i


def test_heat_field_integrates_over_the_stream(small):
    frames = [f[:, :, :1] for f in small[:6]]
    t = _topology(lambda s: s.integrate_heat(steps=2, alpha=0.2, scale=0.01, decay=0.1)
                  .to_kafka_frames(encoding="raw"), (34, 80, 1))
    out = _run(t.check(), frames, _infos(frames), [2, 1, 3], 2)[0]
    field = np.zeros((34, 80), np.float32)
    for i, f in enumerate(frames):
        field = diffuse(field * np.float32(0.9), 2, 0.2, 1.0, 1.0,
                        source=f[:, :, 0].astype(np.float32) * np.float32(0.01))
        assert out[i].dtype == np.float32 and np.array_equal(out[i][:, :, 0], field), i
    assert out[5].sum() > out[0].sum() > 0  # heat accumulates


def test_state_round_trip_and_shape_changes_restart_the_window():
    op = TemporalWindow("median", 3, "x")
    rng = np.random.default_rng(1)
    a = [rng.integers(0, 256, (4, 5, 3), dtype=np.uint8) for _ in range(4)]
    state = op.initial()
    for f in a:
        state, _ = op.step(state, None, {"x": f})
    assert [s.tolist() for s in op.loads(op.dumps(state))] == [s.tolist() for s in a[-2:]]
    big = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    state, out = op.step(state, None, {"x": big})  # a new resolution: a new window
    assert np.array_equal(out, big) and len(state) == 1
    fl = [np.linspace(0, 1, 12, dtype=np.float32).reshape(2, 2, 3)]
    assert unpack(pack(fl))[0].tolist() == fl[0].tolist()


@pytest.mark.parametrize("make,match", [
    (lambda: TemporalWindow("mode", 3, "x"), "not one of"),
    (lambda: TemporalWindow("median", 0, "x"), "window must be"),
    (lambda: TemporalWindow("difference", 1, "x"), "window >= 2"),
    (lambda: Background("mog3"), "not one of"),
    (lambda: Background("median", history=0), "history"),
    (lambda: Background("running_average", alpha=0), "alpha"),
    (lambda: Background(output="edges"), "output"),
    (lambda: HeatField(1, alpha=1.0), "stability bound"),
    (lambda: HeatField(1, decay=1.0), "decay"),
])
def test_bad_settings_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("body,match", [
    (lambda s: s.temporal().gaussian_blur(1.0).to_kafka_frames(), "cannot follow"),
    (lambda s: s.temporal().palette(k=2).to_kafka_analytics(), "cannot follow"),
    (lambda s: s.temporal().annotate().to_kafka_frames(), "cannot follow"),
    (lambda s: s.background("knn"), "knn"),
    (lambda s: s.temporal(window=2, name="t").temporal(name="t").to_kafka_frames(), "twice"),
])
def test_bad_temporal_topologies_fail_at_start_up(body, match):
    with pytest.raises(TopologyError, match=match):
        _topology(body, (8, 8, 3)).check()


def test_a_window_over_max_state_bytes_stops_with_a_state_error(small):
    t = _topology(lambda s: s.temporal("median", window=8).to_kafka_frames(encoding="raw"),
                  (34, 80, 3), max_state_bytes=4096)
    prog = t.compile()
    token, blob = prog.pickled()
    infos = _infos(small[:6])
    pend = run_program(prog, infos, small[:6], array_block, "r").pending
    with pytest.raises(StateError, match="max_state_bytes"):
        run_state(token, blob, {}, [pend], infos, "r")


@pytest.mark.timeout(300)
def test_windows_continue_exactly_after_a_kill_between_produce_and_commit(
        kafka, cluster, tmp_path, uid, small):
    """SIGKILL with a transaction's records produced and not committed, then a restart:
    every frame's median and mask equal the whole clip's, each committed once, and the
    state topic is compacted and keyed."""
    topic, name = f"in-{uid}", f"tw-{uid}"
    ensure_topics(kafka, [topic], partitions=2)
    streams = {"a": small, "b": small[::-1]}
    for p, (s, frames) in enumerate(streams.items()):
        produce_frames(kafka, topic, (SourceFrame(i, 1_000 + 40 * i, f)
                                      for i, f in enumerate(frames)), stream=s, partition=p)
    body = (f".temporal('median', window=4).to_kafka_frames(encoding='raw', topic='{name}.med')"
            f".background('median', history=3, threshold=20)"
            f".to_kafka_frames(encoding='png', topic='{name}.fg')")
    path = write_topology(tmp_path / "t.py", name, topic, body, max_frames=3, max_wait_ms=20,
                          max_in_flight=3, frame_shape=(34, 80, 3))
    kill_between_produce_and_commit(path, kafka, cluster, tmp_path / "daemon.log", name, topic,
                                    48, 4)

    for sink, expect in (("med", lambda f: expected_median(f, 4)),
                         ("fg", lambda f: expected_mask(expected_median(f, 4), 3, 20))):
        got: dict[tuple[str, int], np.ndarray] = {}
        for r in read_log(kafka.bootstrap, f"{name}.{sink}"):
            if r.outcome == "committed":
                h = parse_header(r.headers)
                assert (h.stream, h.frame) not in got, f"{sink} {h.stream}/{h.frame} twice"
                got[(h.stream, h.frame)] = decode_payload(h, r.value)
        for s, frames in streams.items():
            want = expect(frames)
            for i in range(24):
                assert np.array_equal(got[(s, i)], want[i]), (sink, s, i)
    states = read_log(kafka.bootstrap, f"{name}.state")
    assert any(r.outcome != "committed" for r in states), "run 1 left no uncommitted state"
    assert {r.key for r in states} == {b"0", b"1"}  # keyed by partition, for compaction
    from confluent_kafka.admin import AdminClient, ConfigResource
    admin = AdminClient(kafka.common())  # kept alive until the answer comes
    (future,) = admin.describe_configs([ConfigResource("topic", f"{name}.state")]).values()
    assert future.result(30)["cleanup.policy"].value == "compact"


def test_mog2_masks_agree_with_opencv_and_survive_a_state_round_trip(small):
    """Zivkovic's MOG2 as arrays: its masks on bikes.mp4 agree with OpenCV's
    ``BackgroundSubtractorMOG2`` (no shadows, same history) on >= 99 % of the pixels of
    every frame, and a model packed and unpacked half-way gives the same masks after."""
    opencv = cv2.createBackgroundSubtractorMOG2(history=30, detectShadows=False)
    op = Background("mog2", history=30, input="x")
    state, masks = op.initial(), []
    for i, f in enumerate(small):
        if i == 12:
            state = op.loads(op.dumps(state))
        state, mask = op.step(state, None, {"x": f})
        masks.append(mask)
        theirs = opencv.apply(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        assert mask.shape == (34, 80, 1) and mask.dtype == np.uint8
        assert (mask[:, :, 0] == theirs).mean() >= 0.99, i
    assert 0.02 < np.mean([m.mean() / 255 for m in masks[5:]]) < 0.6  # the cyclists move
    state, again = op.initial(), []
    for f in small:
        state, mask = op.step(state, None, {"x": f})
        again.append(mask)
    assert all(np.array_equal(a, b) for a, b in zip(masks, again, strict=True))


@pytest.mark.parametrize("batches,chunks", [([24], 1), ([5, 7, 3, 9], 2)])
def test_mog2_through_batches_equals_one_pass(small, batches, chunks):
    t = _topology(lambda s: s.background("mog2", history=20, name="fg")
                  .to_kafka_frames(encoding="png"), (34, 80, 3), max_state_bytes=4_000_000)
    out = _run(t.check(), small, _infos(small), batches, chunks)[0]
    op, state = Background("mog2", history=20, input="x"), []
    for i, f in enumerate(small):
        state, mask = op.step(state, None, {"x": f})
        assert np.array_equal(out[i], mask), i
