"""Per-frame analytics end to end: palettes, faces, annotation and classification via Kafka."""

from __future__ import annotations

import json
import threading

import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster

import streamimg
from streamimg.admin import committed_offsets, ensure_topics, read_topic
from streamimg.analytics.annotate import draw_detections, draw_palette
from streamimg.analytics.classify import OnnxClassifier
from streamimg.analytics.faces import FaceDetector
from streamimg.analytics.palette import palette
from streamimg.codecs.frame import decode_payload, parse_header
from streamimg.daemon import Daemon
from streamimg.operators.blur import gaussian_blur
from streamimg.sources.video import SourceFrame, produce_frames, read_video
from tests.helpers import ROOT, clip, wait_until
from tests.test_classify import channel_mean_model


def run_until_committed(topology, kafka, client, topic, end, timeout_s=180):
    daemon = Daemon(topology, kafka, client, drain_timeout_s=60)
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        wait_until(lambda: committed_offsets(kafka, topology.name, [topic]).get((topic, 0), -1)
                   >= end, timeout_s, "all frames committed")
    finally:
        daemon.stop()
        thread.join(60)
    return daemon


def test_palette_finds_planted_colours():
    rng = np.random.default_rng(7)
    colours = np.array([[200, 30, 40], [10, 180, 90], [240, 240, 250]], np.uint8)
    labels = rng.choice(3, size=(240, 320), p=[0.5, 0.3, 0.2])
    frame = colours[labels]
    p = palette(frame, k=3, sample=10_000, seed=0)
    np.testing.assert_array_equal(p.colors, colours)  # sorted by fraction, largest first
    # Sample of 10,000: standard error <= 0.005; allow 4 of them.
    np.testing.assert_allclose(p.fractions, [0.5, 0.3, 0.2], atol=0.02)
    assert p.fractions.sum() == pytest.approx(1.0)


def test_palette_is_deterministic_across_runs_and_worker_counts(client, bikes):
    frames = bikes[:6]
    local = [palette(f).to_dict() for f in frames]
    assert [palette(f).to_dict() for f in frames] == local
    two = client.gather(client.map(lambda f: palette(f).to_dict(), frames, pure=False))
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0",
                      host="127.0.0.1") as cluster, Client(cluster) as one_client:
        one = one_client.gather(one_client.map(lambda f: palette(f).to_dict(), frames,
                                               pure=False))
    assert two == local and one == local


@pytest.mark.timeout(300)
def test_video_analysis_records_equal_direct_computation(kafka, client, uid, tmp_path):
    """carphone has a real face in every frame: faces, palette and annotated frames."""
    topic = f"frames-{uid}"
    ensure_topics(kafka, [topic])
    frames = [f.image for f in read_video(clip("carphone_pristine.mp4"), limit=10)]
    ends = produce_frames(kafka, topic, (SourceFrame(i, i, f) for i, f in enumerate(frames)),
                          stream="carphone")
    src = (ROOT / "topologies" / "video_analysis.py").read_text()
    path = tmp_path / "va.py"
    path.write_text(src.replace('"video_analysis"', f'"va-{uid}"')
                    .replace('inputs="frames"', f'inputs="{topic}"')
                    .replace('encoding="jpeg"', 'encoding="png"'))  # lossless, to compare
    topology = streamimg.load_topology(path)
    run_until_committed(topology, kafka, client, topic, ends[0])

    messages = read_topic(kafka, f"va-{uid}.analytics")
    analytics = {a["frame"]: a for a in (json.loads(m.value()) for m in messages)}
    timings = {json.loads(m.value())["frame"]: json.loads(dict(m.headers())["streamimg.timings_ms"])
               for m in messages}
    annotated = {parse_header(m.headers()).frame: decode_payload(parse_header(m.headers()),
                                                                  m.value())
                 for m in read_topic(kafka, f"va-{uid}.frames")}
    assert sorted(analytics) == sorted(annotated) == list(range(10))
    detector = FaceDetector(max_side=640)
    blurred = gaussian_blur(da.from_array(np.stack(frames), chunks=(1, -1, -1, -1)),
                            2.0).compute(scheduler="sync")
    for i, frame in enumerate(frames):
        record = analytics[i]
        faces = detector.detect(frame)
        assert faces, f"no face found in carphone frame {i}"
        assert record["faces"] == [d.to_dict() for d in faces]
        pal = palette(blurred[i], k=5, sample=10_000, seed=0)
        assert record["palette"] == pal.to_dict()
        assert set(timings[i]) == {"decode", "gaussian_blur", "faces", "palette", "annotate",
                                   "encode"}
        assert "timings_ms" not in record  # the body is the same in every run
        assert record["source"] == {"topic": topic, "partition": 0, "offset": i}
        h = frame.shape[0]
        expect = draw_palette(draw_detections(blurred[i], faces), pal.colors, pal.fractions,
                              strip_height=max(16, h // 8))
        np.testing.assert_array_equal(annotated[i], expect)


@pytest.mark.timeout(300)
def test_classify_topology_equals_the_classifier_applied_directly(kafka, client, bikes, uid,
                                                                  tmp_path, monkeypatch):
    model = channel_mean_model(tmp_path, size=224)
    labels = tmp_path / "labels.txt"
    labels.write_text("red\ngreen\nblue\n")
    topic = f"frames-{uid}"
    ensure_topics(kafka, [topic])
    ends = produce_frames(kafka, topic, (SourceFrame(i, i, f) for i, f in enumerate(bikes[:8])),
                          stream="bikes")
    monkeypatch.setenv("CLASSIFIER_MODEL", str(model))
    monkeypatch.setenv("CLASSIFIER_LABELS", str(labels))
    monkeypatch.setenv("CLASSIFIER_INPUT", topic)
    src = (ROOT / "topologies" / "classify.py").read_text()
    path = tmp_path / "classify.py"
    path.write_text(src.replace('Topology("classify"', f'Topology("cls-{uid}"'))
    topology = streamimg.load_topology(path)
    run_until_committed(topology, kafka, client, topic, ends[0])
    messages = read_topic(kafka, f"cls-{uid}.analytics")
    records = [json.loads(m.value()) for m in messages]
    direct = OnnxClassifier(model, ["red", "green", "blue"], top_k=5).classify_batch(
        np.stack(bikes[:8]))
    assert [r["frame"] for r in records] == list(range(8))
    for r, m, expect in zip(records, messages, direct, strict=True):
        assert [c["label"] for c in r["classes"]] == [c.label for c in expect]
        np.testing.assert_allclose([c["score"] for c in r["classes"]],
                                   [c.score for c in expect], rtol=1e-5)
        assert "classes" in json.loads(dict(m.headers())["streamimg.timings_ms"])


def test_classify_topology_without_a_model_fails_at_start_up(monkeypatch):
    monkeypatch.delenv("CLASSIFIER_MODEL", raising=False)
    with pytest.raises(streamimg.TopologyError, match="set CLASSIFIER_MODEL"):
        streamimg.load_topology(ROOT / "topologies" / "classify.py")
