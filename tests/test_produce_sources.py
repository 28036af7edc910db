"""`streamimg produce` on image folders: recursive, sampled, any fsspec URL, and a file that
cannot be decoded published as a failed frame record that the daemon dead-letters."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading

import fsspec
import numpy as np
import pytest
from PIL import Image

import streamimg
from streamimg.admin import committed_offsets, read_topic
from streamimg.codecs.frame import FrameDecodeError, decode_payload, parse_header
from streamimg.daemon import Daemon
from streamimg.sources.folders import _sampled, image_frames
from streamimg.sources.images import read_images
from tests.helpers import ROOT, wait_until

TREE = ["a.png", "b.jpg", "c.png", "sub/d.png", "sub/e.png", "sub/f.png", "sub/deep/g.png",
        "sub/deep/h.png", "sub/deep/i.png", "z/j.png", "z/k.png", "z/l.png"]


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamimg.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, stdin=subprocess.DEVNULL)


def _image(i: int) -> np.ndarray:
    """An (8, 10, 3) uint8 image whose every pixel is ``20 * i``: frames tell their file."""
    return np.full((8, 10, 3), 20 * i, np.uint8)


def _tree(root):
    """TREE's images, a hidden file and folder (never read), and a text file (not an image)."""
    for i, rel in enumerate(TREE):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(i)).save(root / rel, quality=100)
    (root / "_tmp").mkdir()
    Image.fromarray(np.full((8, 10, 3), 250, np.uint8)).save(root / "_tmp" / "x.png")
    Image.fromarray(np.full((8, 10, 3), 250, np.uint8)).save(root / "sub" / ".hidden.png")
    (root / "sub" / "notes.txt").write_text("not an image")
    return root


def _produce(kafka, topic, source, *args):
    done = run_cli("produce", str(source), "--topic", topic, "--bootstrap", kafka.bootstrap,
                   "--stream", "tree", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _files_of(kafka, topic) -> list[tuple[int, str]]:
    """``(frame index, file of TREE)`` of each record, in offset order (pixels name the file)."""
    out = []
    for m in read_topic(kafka, topic):
        header = parse_header(m.headers())
        pixel = int(decode_payload(header, m.value())[0, 0, 0])
        out.append((header.frame, TREE[round(pixel / 20)]))
    return out


def test_recursive_sampled_folder_is_deterministic_and_read_as_read_images_lists(
        kafka, uid, tmp_path):
    root = _tree(tmp_path / "tree")
    kept = [rel for rel in sorted(TREE) if _sampled(rel, 7) < 0.5]  # relative path order
    assert 3 <= len(kept) <= 9  # the seed keeps some and drops some
    # read_images lists and samples the same files (it also reads the text file).
    listed = read_images(str(root), recursive=True, sample_ratio=0.5, seed=7).origin
    assert [o.split("/tree/", 1)[1] for o in listed if not o.endswith(".txt")] == kept

    args = ("--recursive", "--sample-ratio", "0.5", "--seed", "7", "--encoding", "png")
    first = _produce(kafka, f"tree-{uid}", root, *args)
    again = _produce(kafka, f"tree2-{uid}", f"file://{root}", *args)  # a file:// URL
    assert first["frames"] == again["frames"] == len(kept)
    assert first["failed"] == first["skipped"] == []
    got = _files_of(kafka, f"tree-{uid}")
    assert got == list(enumerate(kept))  # relative path order, index = position
    assert _files_of(kafka, f"tree2-{uid}") == got

    # Another seed keeps other files, still in relative path order (sub/deep/ before sub/e);
    # without --recursive only the top level is read, every --frame-step-th file.
    other = [f for f in sorted(TREE) if _sampled(f, 8) < 0.5]
    frames = image_frames(root, recursive=True, sample_ratio=0.5, seed=8)
    assert [TREE[round(int(f.image[0, 0, 0]) / 20)] for f in frames] == other != kept
    top = list(read_images(str(root)).origin)  # a.png, b.jpg, c.png: origins as Spark's
    assert [(f.index, f.origin) for f in image_frames(root, frame_step=2)] == [
        (0, top[0]), (1, top[2])]


def test_memory_url_folder_and_bad_sources():
    fs = fsspec.filesystem("memory")
    root = "/streamimg-test-produce"
    try:
        for i, rel in enumerate(["b/2.png", "a.png", "b/1.png", "c.txt"]):
            buf = io.BytesIO()
            Image.fromarray(_image(i)).save(buf, format="PNG")
            fs.pipe(f"{root}/{rel}", buf.getvalue())
        fs.pipe(f"{root}/b/3.png", b"junk")
        *frames, junk = image_frames(f"memory://{root}", recursive=True, keep_failed=True)
        assert [f.origin for f in frames] == [f"memory://{root}/{r}"
                                              for r in ("a.png", "b/1.png", "b/2.png")]
        for f, i in zip(frames, (1, 2, 0), strict=True):
            np.testing.assert_array_equal(f.image, _image(i))
            assert f.error is None and f.timestamp_ms > 0
        assert (junk.index, junk.image, junk.origin, junk.error) == (
            3, None, f"memory://{root}/b/3.png",
            "cannot decode image: not a format Pillow reads (4 bytes)")
        assert [f.index for f in image_frames(f"memory://{root}")] == [0]  # a.png only
    finally:
        fs.rm(root, recursive=True)
    with pytest.raises(FileNotFoundError, match="streamimg-test-produce"):
        next(image_frames(f"memory://{root}"))
    with pytest.raises(ValueError, match=r"sample_ratio must be in \(0, 1\], got 0"):
        next(image_frames(".", sample_ratio=0))

    # The command checks before connecting (the broker address is never used).
    for args, message in [(["memory://nowhere"], "no folder at memory://nowhere"),
                          (["nosuch://x"], "cannot open nosuch://x"),
                          ([".", "--sample-ratio", "1.5"], "--sample-ratio 1.5 is not in (0, 1]"),
                          (["README.md", "--recursive"], "apply to image folders only")]:
        done = run_cli("produce", *args, "--topic", "t", "--bootstrap", "127.0.0.1:1")
        assert done.returncode == 2, done.stderr
        assert message in done.stderr, done.stderr


def test_corrupt_file_is_a_failed_frame_record_and_dead_lettered(kafka, client, uid, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(_image(i)).save(folder / f"img_{i}.png")
    (folder / "img_1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (origin,) = read_images(str(folder / "img_1.png")).origin  # the same file URL

    skips = []  # what --drop-failures does: skip it (a gap at index 1), list it
    kept = image_frames(folder, on_skip=lambda *a: skips.append(a))
    assert [f.index for f in kept] == [0, 2, 3]
    assert [(path, name) for path, name, _ in skips] == [(f"{folder}/img_1.png", "img_1.png")]
    with pytest.raises(ValueError, match=f"{folder}/img_1.png: cannot decode image: "):
        list(image_frames(folder))  # neither keep_failed nor on_skip

    topic = f"failed-{uid}"
    summary = _produce(kafka, topic, folder)
    assert (summary["frames"], summary["skipped"], summary["failed"]) == (3, [], [origin])
    records = read_topic(kafka, topic)  # confluent_kafka, read_committed
    assert [int(dict(m.headers())["streamimg.frame"]) for m in records] == [0, 1, 2, 3]
    failed = records[1]
    assert failed.key() == b"tree" and failed.value() == b""
    headers = dict(failed.headers())
    assert sorted(headers) == sorted(f"streamimg.{k}" for k in
                                     ("schema", "stream", "frame", "ts", "origin", "error"))
    assert (headers["streamimg.schema"], headers["streamimg.stream"]) == (b"1", b"tree")
    assert headers["streamimg.origin"].decode() == origin
    assert int(headers["streamimg.ts"]) == int((folder / "img_1.png").stat().st_mtime * 1000)
    reason = headers["streamimg.error"].decode()
    assert reason.startswith("cannot decode image: ")
    with pytest.raises(FrameDecodeError) as caught:
        parse_header(failed.headers())
    assert caught.value.field == "streamimg.error" and reason in str(caught.value)

    # The daemon dead-letters it with the producer's reason and processes the others.
    name = f"fail-{uid}"
    topology = streamimg.Topology(name, inputs=topic, max_frames=4, max_wait_ms=50)
    topology.source.gaussian_blur(sigma=1.0).to_kafka_frames(encoding="png")
    daemon = Daemon(topology, kafka, client, drain_timeout_s=30)
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        wait_until(lambda: committed_offsets(kafka, name, [topic]).get((topic, 0), -1) >= 4,
                   60, "the 4 records committed")
    finally:
        daemon.stop()
        thread.join(60)
    assert not thread.is_alive(), "daemon did not stop within 60 s"
    (dead,) = read_topic(kafka, f"{name}.dlq")
    dlq = dict(dead.headers())
    assert dlq["streamimg.dlq.stage"] == b"decode"
    assert dlq["streamimg.dlq.reason"].decode() == (
        f"streamimg.error: the producer could not read this frame ({origin}): {reason}")
    assert dlq["streamimg.error"].decode() == reason and not dead.value()
    outs = read_topic(kafka, f"{name}.frames")
    assert [parse_header(m.headers()).frame for m in outs] == [0, 2, 3]
