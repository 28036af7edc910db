"""The pixel-message path: assembly rules, exactly-once across a crash, and the seed's job."""

from __future__ import annotations

import json
import signal
import threading
import time

import numpy as np
import pytest
import scipy.ndimage as ndi
import skimage.data
import skimage.transform
from confluent_kafka import Producer

import streamimg
from streamimg.admin import committed_offsets, ensure_topics, read_topic
from streamimg.assembly import PixelAssembler, PixelFrames
from streamimg.codecs.frame import decode_payload, parse_header
from streamimg.codecs.pixel import decode_pixel, encode_pixel_text
from streamimg.codecs.pixel_frames import frame_to_pixels
from streamimg.daemon import Daemon
from streamimg.operators import kernels
from tests.helpers import ROOT, start_daemon, stop_process, wait_until, write_topology


def send(kafka, topic, records, partition=0):
    producer = Producer(kafka.producer())
    for r in records:
        producer.produce(topic, value=r, key=b"img", partition=partition)
    assert producer.flush(30) == 0


def pixels(name, frame, image, order=None):
    recs = frame_to_pixels(name, frame, image)
    return recs if order is None else [recs[i] for i in order]


@pytest.fixture
def topic(kafka, uid):
    name = f"px-{uid}"
    ensure_topics(kafka, [name])
    return name


def assemble(kafka, topic, config, max_frames=100):
    """Feed every record of ``topic`` (real consumed messages) to a fresh assembler."""
    a = PixelAssembler(config, max_frames=max_frames, max_wait_ms=0)
    for m in read_topic(kafka, topic):
        a.add(m)
    return a


def test_complete_frame_out_of_order(kafka, topic):
    image = np.arange(12, dtype=float).reshape(3, 4) / 7
    order = np.random.default_rng(1).permutation(12)
    send(kafka, topic, pixels("img", 5, image, order))
    a = assemble(kafka, topic, PixelFrames(3, 4))
    taken = a.take()
    assert len(taken.frames) == 1 and taken.dead == []
    info = taken.frames[0]
    assert (info.header.stream, info.header.frame, info.header.shape) == ("img", 5, (3, 4, 1))
    assert info.mask is None
    np.testing.assert_array_equal(taken.payloads[0][:, :, 0], image)
    assert taken.offsets == {(topic, 0): 12}
    assert json.loads(taken.states[0]) == {"v": 1, "closed": []}


def test_interleaved_frames_commit_the_contiguous_prefix(kafka, topic):
    a_img, b_img = np.ones((2, 2)), np.full((2, 2), 2.0)
    a, b = pixels("img", 0, a_img), pixels("img", 1, b_img)
    # offsets: a0 b0 a1 b1 b2 b3  -> frame 1 completes, frame 0 still lacks 2 pixels
    send(kafka, topic, [a[0], b[0], a[1], b[1], b[2], b[3]])
    asm = assemble(kafka, topic, PixelFrames(2, 2, window_ms=60_000))
    taken = asm.take()
    assert [f.header.frame for f in taken.frames] == [1]
    assert taken.offsets == {(topic, 0): 0}  # frame 0 still holds offset 0
    # frame 1's pixels lie past the committed offset: the state lists it (last offset 5)
    assert json.loads(taken.states[0])["closed"] == [["img", 1, 5]]
    send(kafka, topic, a[2:])
    for m in read_topic(kafka, topic)[6:]:
        asm.add(m)
    taken = asm.take()
    assert [f.header.frame for f in taken.frames] == [0]
    assert taken.offsets == {(topic, 0): 8}
    np.testing.assert_array_equal(taken.payloads[0][:, :, 0], a_img)


@pytest.mark.parametrize("rule,expect", [("last", 9.0), ("first", 0.0)])
def test_duplicated_pixels(kafka, topic, rule, expect):
    image = np.zeros((2, 2))
    recs = pixels("img", 0, image)
    send(kafka, topic, [recs[0], encode_pixel_text("img", 0, 0, 0, 9.0)] + recs[1:])
    asm = assemble(kafka, topic, PixelFrames(2, 2, duplicates=rule))
    taken = asm.take()
    assert asm.duplicates == 1 and len(taken.frames) == 1  # counted once: complete at 4
    assert taken.payloads[0][0, 0, 0] == expect


@pytest.mark.parametrize("policy", ["mask", "dlq"])
def test_incomplete_frame_when_the_window_closes(kafka, topic, policy):
    image = np.arange(6, dtype=float).reshape(2, 3)
    send(kafka, topic, pixels("img", 3, image)[:4])  # 2 of 6 pixels never come
    window_ms = 1500  # wide enough that a loaded machine cannot overrun it before take()
    asm = assemble(kafka, topic, PixelFrames(2, 3, window_ms=window_ms, incomplete=policy,
                                             fill=-1.0))
    opened = time.monotonic()  # just after the first pixel was added
    assert asm.take() is None  # still inside its window
    time.sleep(max(0.0, opened + window_ms / 1e3 + 0.05 - time.monotonic()))
    taken = asm.take()
    assert taken.offsets == {(topic, 0): 4}
    if policy == "mask":
        (info,) = taken.frames
        np.testing.assert_array_equal(info.mask, [[False, False, False], [False, True, True]])
        np.testing.assert_array_equal(taken.payloads[0][:, :, 0], [[0, 1, 2], [3, -1, -1]])
    else:
        assert taken.frames == []
        (dead,) = taken.dead
        assert dead.reason.startswith("incomplete frame img#3: 2 of 6 pixels missing")
        partial = decode_payload(parse_header(dead.headers), dead.value)[:, :, 0]
        np.testing.assert_array_equal(partial[0], [0, 1, 2])
        assert np.isnan(partial[1, 1:]).all()


def test_an_image_smaller_than_the_frame_is_emitted_with_a_warning(kafka, topic, caplog):
    send(kafka, topic, pixels("small", 0, np.ones((2, 2))))  # a 2x2 image, 3x4 frames
    asm = assemble(kafka, topic, PixelFrames(3, 4, window_ms=1))
    time.sleep(0.05)
    with caplog.at_level("WARNING", logger="streamimg.assembly"):
        taken = asm.take()
    (info,) = taken.frames
    assert int(info.mask.sum()) == 8
    (record,) = [r for r in caplog.records if r.name == "streamimg.assembly"]
    assert record.levelname == "WARNING"
    assert "incomplete frame small#0: 8 of 12 pixels missing" in record.getMessage()
    assert "frames are 3x4" in record.getMessage()


def test_bad_and_late_pixels_are_dead_lettered(kafka, topic):
    image = np.zeros((2, 2))
    send(kafka, topic, pixels("img", 0, image) + [
        b"img;0;1;1", b"img;0;7;0;1.0", encode_pixel_text("img", 0, 1, 1, 3.0)])
    asm = assemble(kafka, topic, PixelFrames(2, 2))
    taken = asm.take()
    reasons = sorted(d.reason for d in taken.dead)
    assert len(taken.frames) == 1 and len(reasons) == 3
    assert "late pixel for frame img#0, already emitted" in reasons
    assert any("outside the configured 2x2 frame" in r for r in reasons)
    assert any("field" in r or "fields" in r for r in reasons)
    assert taken.offsets == {(topic, 0): 7}


def test_pixel_frames_config_is_checked():
    with pytest.raises(streamimg.ConfigError, match="incomplete='drop'"):
        PixelFrames(4, 4, incomplete="drop")
    with pytest.raises(streamimg.ConfigError, match="height=0"):
        PixelFrames(0, 4)


def camera(size=96) -> np.ndarray:
    """A real photograph (scikit-image's cameraman), downscaled, grey 0-255 float64."""
    img = skimage.transform.resize(skimage.data.camera(), (size, size), anti_aliasing=True)
    return np.round(img * 255.0)


def pixel_frame(messages, name, index, shape):
    out = np.full(shape, np.nan)
    for m in messages:
        px = decode_pixel(m.value())
        if (px.name, px.frame) == (name, index):
            assert np.isnan(out[px.y, px.x]), f"pixel ({px.x}, {px.y}) written twice"
            out[px.y, px.x] = px.v
    return out


@pytest.mark.timeout(300)
def test_pixel_convolution_topology_equals_scipy(kafka, client, uid, monkeypatch, tmp_path):
    image = camera()
    monkeypatch.setenv("PIXEL_FRAME_SIZE", "96x96")
    src = (ROOT / "topologies" / "pixel_convolution.py").read_text()
    path = tmp_path / "pixel_convolution.py"  # same pipeline, topics of its own
    path.write_text(src.replace('"pixel_convolution', f'"pc-{uid}').replace(
        'inputs="pixels"', f'inputs="pixels-{uid}"'))
    topology = streamimg.load_topology(path)
    ensure_topics(kafka, [f"pixels-{uid}"])
    send(kafka, f"pixels-{uid}", pixels("camera", 0, image) + pixels("camera", 1, image[::-1]))
    daemon = Daemon(topology, kafka, client, drain_timeout_s=60)
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        wait_until(lambda: committed_offsets(kafka, f"pc-{uid}", [f"pixels-{uid}"]).get(
            (f"pixels-{uid}", 0), -1) >= 2 * 96 * 96, 120, "all pixels committed")
    finally:
        daemon.stop()
        thread.join(60)
    blur = read_topic(kafka, f"pc-{uid}.blur")
    log = read_topic(kafka, f"pc-{uid}.log")
    assert len(blur) == len(log) == 2 * 96 * 96
    for index, img in ((0, image), (1, image[::-1])):
        np.testing.assert_allclose(pixel_frame(blur, "camera", index, img.shape),
                                   ndi.convolve(img, kernels.box(3), mode="wrap"), atol=1e-9)
        np.testing.assert_allclose(
            pixel_frame(log, "camera", index, img.shape),
            ndi.convolve(img, kernels.laplacian_of_gaussian(1.4, 11), mode="wrap"), atol=1e-9)
    headers = dict(blur[0].headers())
    assert headers["streamimg.source.topic"] == f"pixels-{uid}".encode()


@pytest.mark.timeout(300)
def test_crash_between_pixels_of_a_frame_loses_nothing_and_emits_nothing_twice(
        kafka, cluster, uid, tmp_path):
    topic, name = f"pixels-{uid}", f"crash-{uid}"
    ensure_topics(kafka, [topic])
    a_img, b_img = np.full((8, 8), 1.0), np.full((8, 8), 2.0)
    a, b = pixels("img", 0, a_img), pixels("img", 1, b_img)
    # Frame 0 starts first; frame 1 interleaves and completes; frame 0 lacks 20 pixels.
    first = [r for pair in zip(a[:44], b[:44], strict=True) for r in pair] + b[44:]
    send(kafka, topic, first)
    body = f".to_kafka_analytics().to_kafka_pixels('{name}.out')"

    def topology(window_ms):
        return write_topology(tmp_path / "t.py", name, topic, body, max_frames=4,
                              max_wait_ms=20, pixels=PixelFrames(8, 8, window_ms=window_ms))

    topology(600_000)
    log = tmp_path / "daemon.log"
    run1 = start_daemon(tmp_path / "t.py", kafka, cluster, log)
    try:  # frame 1 is emitted and committed; the offset stays at frame 0's first pixel
        wait_until(lambda: len(read_topic(kafka, f"{name}.analytics")) == 1, 120,
                   "frame 1 committed")
        assert committed_offsets(kafka, name, [topic])[(topic, 0)] == 0
    finally:
        stop_process(run1, signal.SIGKILL)  # crash with frame 0 half assembled
    send(kafka, topic, a[44:])
    # A short window now: if frame 1's re-read pixels were assembled again, they would
    # come out as a second (incomplete) frame 1 before the offsets reach the end.
    topology(1_000)
    run2 = start_daemon(tmp_path / "t.py", kafka, cluster, log)
    try:
        wait_until(lambda: committed_offsets(kafka, name, [topic]).get((topic, 0), -1)
                   >= 128, 120, "all pixels committed")
    finally:
        assert stop_process(run2) == 0, log.read_text()[-2000:]
    analytics = [json.loads(m.value()) for m in read_topic(kafka, f"{name}.analytics")]
    assert sorted(x["frame"] for x in analytics) == [0, 1]
    assert all("missing_pixels" not in x for x in analytics)
    assert read_topic(kafka, f"{name}.dlq") == []
    out = read_topic(kafka, f"{name}.out")
    np.testing.assert_array_equal(pixel_frame(out, "img", 0, (8, 8)), a_img)
    np.testing.assert_array_equal(pixel_frame(out, "img", 1, (8, 8)), b_img)
    assert len(out) == 128
