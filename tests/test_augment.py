"""Augmentation seeded by the frame's identity: the same frame, the same pixels, anywhere."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

import streamimg
from streamimg.batching import FrameInfo
from streamimg.codecs.frame import FrameHeader, decode_payload, parse_header
from streamimg.operators.augment import Augment, augment_frame, frame_rng
from streamimg.topology import TopologyError
from streamimg.worker import array_block, run_program

RNG = np.random.default_rng(0)
FRAMES = [RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(6)]


def info(stream: str, i: int) -> FrameInfo:
    return FrameInfo("in", 0, i, stream.encode(),
                     FrameHeader(stream, i, 1000 + i, 24, 32, 3, "uint8", "raw", "RGB"))


def run(program, frames, infos, chunks):
    out = {}
    bounds = np.array_split(np.arange(len(frames)), chunks)
    for idx in bounds:
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        result = run_program(program, infos[lo:hi], frames[lo:hi], array_block, "r", lo)
        assert result.failures == []
        for i, recs in enumerate(result.records[0]):
            (_, value, headers), = recs
            out[lo + i] = decode_payload(parse_header(headers), value)
    return out


def test_a_frame_gets_the_same_augmentation_in_any_batch_and_another_frame_another():
    t = streamimg.Topology("aug", inputs="in", frame_shape=(24, 32, 3))
    t.source.augment(hflip=0.5, vflip=0.5, rotate=20, crop=0.7, brightness=0.2,
                     contrast=0.3, noise=4.0, seed=7).to_kafka_frames(encoding="raw")
    program = t.check()
    infos = [info("cam", i) for i in range(6)]
    one = run(program, FRAMES, infos, 1)
    three = run(program, FRAMES, infos, 3)
    for i in range(6):
        np.testing.assert_array_equal(one[i], three[i])
        assert one[i].shape == (24, 32, 3) and one[i].dtype == np.uint8
    # The same pixels under another frame index or stream id are augmented differently.
    again = run(program, [FRAMES[0]] * 2, [info("cam", 1), info("other", 0)], 1)
    assert not np.array_equal(again[0], one[0]) and not np.array_equal(again[1], one[0])


def test_each_transformation_does_what_it_says():
    f, i = FRAMES[0], info("cam", 3)
    np.testing.assert_array_equal(augment_frame(f, i, Augment()), f)
    np.testing.assert_array_equal(augment_frame(f, i, Augment(hflip=1.0)), f[:, ::-1])
    np.testing.assert_array_equal(augment_frame(f, i, Augment(vflip=1.0)), f[::-1])
    bright = augment_frame(np.full((4, 4, 3), 100, np.uint8), i, Augment(brightness=0.2))
    rng = frame_rng(0, "cam", 3)
    draws = rng.uniform(1.0, 1.0), rng.random(), rng.random(), rng.uniform(0, 0), \
        rng.random(), rng.random(), rng.uniform(1, 1), rng.uniform(-0.2, 0.2)
    assert np.all(bright == np.clip(np.rint(100 + draws[-1] * 255), 0, 255))
    noisy = augment_frame(np.full((200, 200, 1), 128.0, np.float32), i, Augment(noise=5.0))
    assert abs(float(noisy.mean()) - 128) < 0.2 and abs(float(noisy.std()) - 5) < 0.2
    # A 90-degree bound allows any angle in [-90, 90]; 0 contrast keeps the mean.
    rot = augment_frame(f, i, Augment(rotate=90))
    angle = frame_rng(0, "cam", 3)
    angle.uniform(1, 1), angle.random(), angle.random()
    m = cv2.getRotationMatrix2D((15.5, 11.5), angle.uniform(-90, 90), 1.0)
    expect = cv2.warpAffine(f.astype(np.float32), m, (32, 24), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT_101)
    np.testing.assert_array_equal(rot, np.clip(np.rint(expect), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("kwargs,words", [({"hflip": 1.5}, "hflip is a probability"),
                                          ({"rotate": -1}, "rotate must be"),
                                          ({"crop": 0}, "crop is the smallest")])
def test_bad_settings_fail_when_the_topology_is_written(kwargs, words):
    with pytest.raises(TopologyError, match=f"augment: {words}"):
        streamimg.Topology("aug-bad", inputs="in").source.augment(**kwargs)


def test_augmented_frames_carry_their_identity_into_analytics():
    t = streamimg.Topology("aug2", inputs="in", frame_shape=(24, 32, 3))
    (t.source.augment(hflip=1.0).analyze("corner", lambda f: f[0, 0].tolist())
     .to_kafka_analytics())
    program = t.check()
    result = run_program(program, [info("cam", 0)], [FRAMES[0]], array_block, "r")
    (_, value, _), = result.records[0][0]
    assert json.loads(value)["corner"] == FRAMES[0][0, -1].tolist()
