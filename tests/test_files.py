"""The to_files sink: image files through fsspec, written whole, redone whole after a crash.

Files are read back with OpenCV (``cv2.imdecode`` with ``IMREAD_UNCHANGED``), never with
our own code, and compared with the frames the same run committed to Kafka.
"""

from __future__ import annotations

import cv2
import fsspec
import numpy as np
import pytest

import streamimg
from streamimg.admin import ensure_topics
from streamimg.batching import FrameInfo
from streamimg.codecs.frame import FrameHeader, decode_payload, parse_header
from streamimg.sinks.files import file_records, image_file, safe_name, write_whole
from streamimg.sources.video import SourceFrame, produce_frames
from streamimg.topology import TopologyError
from tests.harness.checker import read_log
from tests.harness.s3 import CREDENTIALS, MotoS3
from tests.helpers import (
    kill_between_produce_and_commit,
    write_topology,
)


def _read(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


@pytest.mark.parametrize("fmt", ["png", "tiff"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_lossless_formats_keep_every_bit_and_channel(fmt, dtype, channels):
    rng = np.random.default_rng(channels)
    frame = rng.integers(0, np.iinfo(dtype).max, (5, 7, channels), dtype=dtype)
    back = _read(image_file(frame, fmt))
    back = back[:, :, None] if back.ndim == 2 else back
    assert back.dtype == dtype
    # Files hold BGR(A) as OpenCV reads them; the frame was RGB(A).
    want = frame if channels == 1 else frame[:, :, [2, 1, 0, 3][:channels]]
    assert np.array_equal(back, want)


def test_orders_and_lossy_formats():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert np.array_equal(_read(image_file(rgb[:, :, ::-1].copy(), "png", "BGR")),
                          _read(image_file(rgb, "png", "RGB")))
    for fmt in ("jpeg", "webp"):
        flat = np.full((16, 16, 3), (200, 40, 10), np.uint8)
        back = _read(image_file(flat, fmt, quality=95))
        assert np.abs(back.astype(int) - [10, 40, 200]).max() <= 3, fmt  # BGR on disk


@pytest.mark.parametrize("frame,fmt,order,match", [
    (np.zeros((4, 4, 3), np.float32), "png", None, "stores uint8 or uint16"),
    (np.zeros((4, 4, 3), np.uint16), "jpeg", None, "stores uint8"),
    (np.zeros((4, 4, 4), np.uint8), "jpeg", None, "no alpha"),
    (np.zeros((4, 4, 3), np.uint8), "png", "HSV", "not pictures"),
    (np.zeros((4, 4), np.uint8), "png", None, "shape"),
])
def test_frames_a_format_cannot_store_are_named(frame, fmt, order, match):
    with pytest.raises(ValueError, match=match):
        image_file(frame, fmt, order)


def test_stream_ids_cannot_leave_the_folder(tmp_path):
    assert safe_name("cam-1_a.mp4") == "cam-1_a.mp4"
    assert "/" not in safe_name("../../etc/passwd") and safe_name("..") == "%2E%2E"
    info = FrameInfo("in", 0, 3, b"k", FrameHeader("../up", 7, 0, 2, 2, 1, "uint8", "raw",
                                                     "GRAY"))
    template = str(tmp_path / "out" / "{stream}" / "{frame:03d}.png")
    assert file_records(np.zeros((2, 2, 1), np.uint8), info, template=template, format="png",
                        quality=90) == []
    [written] = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written == tmp_path / "out" / "..%2Fup" / "007.png"


def test_writes_are_whole_and_leave_no_temporary_files(tmp_path):
    target = tmp_path / "a" / "b.bin"
    write_whole(str(target), b"x" * 10)
    write_whole(str(target), b"y" * 5)
    assert target.read_bytes() == b"y" * 5
    assert [p.name for p in target.parent.iterdir()] == ["b.bin"]
    write_whole("memory://streamimg-files/f.bin", b"z")
    assert fsspec.filesystem("memory").cat_file("/streamimg-files/f.bin") == b"z"


def test_frames_go_to_s3(tmp_path):
    with MotoS3(tmp_path) as s3:
        options = {"key": CREDENTIALS["AWS_ACCESS_KEY_ID"],
                   "secret": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                   "endpoint_url": s3.endpoint, "client_kwargs": {"region_name": "us-east-1"},
                   "skip_instance_cache": True}
        frame = np.arange(48, dtype=np.uint16).reshape(4, 4, 3) * 1000
        info = FrameInfo("in", 0, 0, b"c", FrameHeader("cam", 1, 0, 4, 4, 3, "uint16", "raw",
                                                         "RGB"))
        file_records(frame, info, template=f"s3://{s3.bucket}/out/{{stream}}/{{frame}}.png",
                     format="png", quality=90, storage_options=options)
        data = fsspec.filesystem("s3", **options).cat_file(f"{s3.bucket}/out/cam/1.png")
        assert np.array_equal(_read(data)[:, :, ::-1], frame)


@pytest.mark.parametrize("kwargs,match", [
    ({"template": "out/{camera}.png"}, "unknown field 'camera'"),
    ({"template": "out/all.png"}, "neither"),
    ({"template": "out/{frame}.gif"}, "cannot tell the image format"),
    ({"template": "out/{frame}.png", "format": "jpeg"}, "ends in .png"),
    ({"template": "out/{frame}", "format": "bmp"}, "not one of"),
    ({"template": "out/{frame}.jpg", "quality": 0}, "quality"),
])
def test_bad_sinks_fail_at_definition(kwargs, match):
    t = streamimg.Topology("files", inputs="in")
    with pytest.raises(TopologyError, match=match):
        t.source.to_files(**kwargs)


def test_frames_a_format_cannot_store_fail_at_start_up(tmp_path):
    t = streamimg.Topology("files", inputs="in", frame_dtype="float32")
    t.source.to_files(str(tmp_path / "{frame}.png"))
    with pytest.raises(TopologyError, match="png stores uint8 or uint16"):
        t.check()


@pytest.mark.timeout(300)
def test_files_after_a_kill_are_the_committed_frames_once_each(kafka, cluster, tmp_path, uid):
    """SIGKILL between producing a transaction and committing it, then a restart: the
    folder holds one whole 16-bit PNG per frame, equal to the frame committed to Kafka,
    and no temporary file."""
    topic, name = f"in-{uid}", f"files-{uid}"
    ensure_topics(kafka, [topic], partitions=2)
    rng = np.random.default_rng(3)
    for p, s in enumerate(("a", "b")):
        frames = [rng.integers(0, 65535, (12, 16, 3), dtype=np.uint16) for _ in range(15)]
        produce_frames(kafka, topic, (SourceFrame(i, 1_000 + i, f) for i, f in enumerate(frames)),
                       stream=s, partition=p)
    out = tmp_path / "out"
    body = (f".gaussian_blur(1.0).to_files({str(out / '{stream}' / '{frame:04d}.png')!r})"
            f".to_kafka_frames(encoding='raw')")
    path = write_topology(tmp_path / "t.py", name, topic, body, max_frames=3, max_wait_ms=20,
                          frame_shape=(12, 16, 3), frame_dtype="uint16")
    kill_between_produce_and_commit(path, kafka, cluster, tmp_path / "daemon.log", name, topic,
                                    30, 3)
    committed_frames = {}
    for r in read_log(kafka.bootstrap, f"{name}.frames"):
        if r.outcome == "committed":
            h = parse_header(r.headers)
            committed_frames[(h.stream, h.frame)] = decode_payload(h, r.value)
    assert len(committed_frames) == 30
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == [f"{s}/{i:04d}.png" for s in ("a", "b") for i in range(15)]
    for (s, i), frame in committed_frames.items():
        back = _read((out / s / f"{i:04d}.png").read_bytes())
        assert back.dtype == np.uint16 and np.array_equal(back[:, :, ::-1], frame), (s, i)
