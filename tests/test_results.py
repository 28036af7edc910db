"""The results store and the results sink: real SQLite files, the real embedded broker.

The store tests also run on PostgreSQL when a server can be started here (``initdb`` on the
PATH and psycopg installed): the same code must work on both.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest
from confluent_kafka import Message, Producer
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from streamimg.admin import MissingTopicError, committed_offsets, ensure_topics
from streamimg.codecs.frame import FrameDecodeError, encode_frame, parse_header
from streamimg.config import ConfigError, KafkaConfig
from streamimg.results.images import image_name, to_jpeg
from streamimg.results.schema import frame_results_table
from streamimg.results.sink import ResultsSink, topology_name
from streamimg.results.store import (
    ImageRow,
    Reject,
    ResultRow,
    ResultsStore,
    StatusRow,
)
from tests.helpers import ROOT, TEST_KAFKA, stop_process, wait_until


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path, uid):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'results.db'}"
    else:
        import psycopg

        server = request.getfixturevalue("postgres")
        with psycopg.connect(server.replace("+psycopg", "") + "/postgres",
                             autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE t_{uid}")
        url = f"{server}/t_{uid}"
    s = ResultsStore(url)
    s.create()
    s.create()  # twice: existing tables are kept
    yield s
    s.close()


def _row(analysis, frame, topology="t", record=None):
    rec = record or {"schema": 1, "stream": analysis, "frame": frame, "faces": []}
    return ResultRow(analysis, frame, topology, 1_000 + 40 * frame, json.dumps(rec),
                     json.dumps({"faces": 2.5 + frame}))


def _count(s: ResultsStore, analysis: str) -> int:
    with s.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(frame_results_table)
                            .where(frame_results_table.c.analysis == analysis)).scalar_one()


# -- the store ------------------------------------------------------------------------------

def test_store_upserts_are_idempotent_and_queries_read_them(store):
    store.upsert_analysis("a", source="clip.mp4", models=["faces", "palette"], frame_step=2,
                          state="queued", started=1.5)
    store.upsert_analysis("a", state="running")  # other fields kept
    rows = [_row("a", f) for f in (4, 0, 2)]
    images = [ImageRow("a", 2, "t", 1_080, "/img/a/t/00000002.jpg"),
              ImageRow("a", 6, "t", 1_240, "/img/a/t/00000006.jpg")]  # before its record
    for _ in range(3):  # a replay after a crash: the same batch again
        store.apply(rows, images, {("x.analytics", 0): 3, ("x.frames", 0): 2}, "c")
    assert _count(store, "a") == 4
    got = store.results("a")
    assert [(r["frame"], r["topology"]) for r in got] == [(0, "t"), (2, "t"), (4, "t"), (6, "t")]
    assert got[1]["record"] == {"schema": 1, "stream": "a", "frame": 2, "faces": []}
    assert got[1]["image"] == "/img/a/t/00000002.jpg" and got[1]["timestamp_ms"] == 1_080
    assert got[1]["timings"] == {"faces": 4.5} and got[3]["timings"] is None
    assert got[3]["record"] is None and got[3]["timestamp_ms"] == 1_240
    assert [r["frame"] for r in store.results("a", offset=1, limit=2)] == [2, 4]
    assert store.results("nobody") == [] and store.frame_result("a", 5) is None
    # The record arrives later: it fills the row and its timestamp wins.
    store.apply([_row("a", 6)], [], {("x.analytics", 0): 4}, "c")
    assert store.frame_result("a", 6)["record"]["frame"] == 6
    assert store.frame_result("a", 6)["image"] == "/img/a/t/00000006.jpg"
    # A second topology of the same analysis: its own rows; frame_result picks by name.
    store.apply([_row("a", 0, "s", {"n": 1})], [], {}, "c")
    assert store.frame_result("a", 0)["topology"] == "s"
    assert store.frame_result("a", 0, "t")["record"]["frame"] == 0
    a = store.analysis("a")
    assert a["models"] == ["faces", "palette"] and a["state"] == "running"
    assert (a["source"], a["frame_step"], a["started"]) == ("clip.mp4", 2, 1.5)
    assert a["frames_done"] == 4  # distinct frames with a record: 0, 2, 4, 6
    assert store.analysis("nobody") is None
    store.upsert_analysis("b", state="done")
    assert [x["id"] for x in store.list_analyses()] == ["a", "b"]
    assert [x["id"] for x in store.list_analyses("done")] == ["b"]
    with pytest.raises(ValueError, match="state"):
        store.upsert_analysis("a", state="paused")
    with pytest.raises(ValueError, match="unknown analysis fields"):
        store.upsert_analysis("a", colour="red")
    with pytest.raises(ValueError):
        store.results("a", limit=-1)


def test_positions_never_go_backwards(store):
    store.apply([], [], {("t", 0): 10, ("t", 1): 5}, "c")
    store.apply([], [], {("t", 0): 7, ("t", 1): 8}, "c")  # e.g. a zombie's late batch
    store.apply([], [], {("t", 2): 1}, "other")
    assert store.positions("c") == {("t", 0): 10, ("t", 1): 8}
    assert store.positions("other") == {("t", 2): 1} and store.positions("none") == {}


def test_frames_done_is_recounted_and_each_reject_counted_once(store):
    store.apply([_row("a", f) for f in range(5)], [], {("t", 0): 5}, "c")
    store.apply([_row("a", f) for f in range(3, 8)], [], {("t", 0): 10}, "c")  # overlap
    assert store.analysis("a")["frames_done"] == 8
    assert store.analysis("a")["state"] is None  # met before anyone requested it
    bad = [Reject("t", 0, 10, "a", "not a JSON record"), Reject("t", 0, 11, None, "no stream")]
    store.apply([], [], {("t", 0): 12}, "c", bad)
    store.apply([], [], {("t", 0): 12}, "c", bad)  # replayed: counted once
    store.upsert_analysis("a", dead_letters=store.analysis("a")["dead_letters"] + 2)  # others'
    store.apply([], [], {("t", 0): 12}, "c", bad[:1])
    assert store.analysis("a")["dead_letters"] == 3
    assert [(r["offset"], r["analysis"]) for r in store.rejects("c")] == [(10, "a"), (11, None)]


def test_status_records_drive_the_analysis_row(store):
    store.upsert_analysis("a", source="clip.mp4", models=["faces"], state="queued",
                          started=10.0)
    store.apply([], [], {("s", 0): 2}, "c", statuses=[
        StatusRow("a", "running", 6, None, 11.0, "other.mp4", '["x"]'),
        StatusRow("a", "running", 12, None, 12.0)])  # the later one of a batch wins
    a = store.analysis("a")
    assert (a["state"], a["frames_ingested"], a["finished"]) == ("running", 12, None)
    assert (a["source"], a["models"], a["started"]) == ("clip.mp4", ["faces"], 10.0)  # kept
    store.apply([], [], {("s", 0): 3}, "c", statuses=[StatusRow("a", "done", 20, "", 13.5)])
    a = store.analysis("a")
    assert (a["state"], a["frames_ingested"], a["finished"], a["error"]) == (
        "done", 20, 13.5, None)
    # A request that did not come through the service: its status makes the row.
    store.apply([], [], {}, "c", statuses=[
        StatusRow("b", "failed", 3, "cannot open x.mp4", 20.0, "x.mp4", '["palette"]')])
    b = store.analysis("b")
    assert (b["state"], b["error"], b["started"], b["finished"]) == (
        "failed", "cannot open x.mp4", 20.0, 20.0)
    assert (b["source"], b["models"]) == ("x.mp4", ["palette"])
    # The service writing its request after the sink took the ingest job's status.
    store.apply([], [], {}, "c", statuses=[StatusRow("c", "running", 1, None, 6.0)])
    store.upsert_analysis("c", keep=("state", "started"), state="queued", started=5.0,
                          source="c.mp4")
    c = store.analysis("c")
    assert (c["state"], c["started"], c["source"]) == ("running", 6.0, "c.mp4")
    store.upsert_analysis("d", keep=("state",), state="queued")
    assert store.analysis("d")["state"] == "queued"


def test_a_failed_batch_stores_nothing(store):
    store.apply([_row("a", 0)], [], {("t", 0): 1}, "c")
    with pytest.raises(IntegrityError):  # the last statement fails: reason NOT NULL
        store.apply([_row("a", 1), _row("b", 0)], [ImageRow("a", 0, "t", 0, "/x.jpg")],
                    {("t", 0): 3}, "c", [Reject("t", 0, 2, "a", None)])
    assert [r["frame"] for r in store.results("a")] == [0]
    assert store.results("a")[0]["image"] is None and store.analysis("b") is None
    assert store.positions("c") == {("t", 0): 1} and store.analysis("a")["frames_done"] == 1


def test_store_refuses_other_databases(tmp_path):
    with pytest.raises(ValueError, match="only SQLite and PostgreSQL"):
        ResultsStore("mysql+pymysql://u@localhost/db")


# -- images and names -----------------------------------------------------------------------

def test_images_are_jpegs_of_the_frame_under_safe_names():
    assert image_name("clip-1", "va", 7) == "clip-1/va/00000007.jpg"
    assert image_name("../etc/x", "va", 0) == "%2E.%2Fetc%2Fx/va/00000000.jpg"
    assert image_name(".", "..", 1) == "%2E/%2E./00000001.jpg"
    rgb = np.zeros((24, 32, 3), np.uint8)
    rgb[..., 0] = 220  # red
    rgb[:12, :, 1] = 100  # and some green in the top half
    alpha = np.full((24, 32, 1), 255, np.uint8)
    cases = [(rgb, None, ("raw", "png", "jpeg")),
             (np.ascontiguousarray(rgb[..., ::-1]), "BGR", ("raw", "png", "jpeg")),
             (np.concatenate([rgb, alpha], axis=2), None, ("raw", "png")),
             (cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV), "HSV", ("raw", "png", "jpeg")),
             (cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab), "Lab", ("raw", "png")),
             (rgb.astype(np.uint16) * 256, None, ("raw", "png")),
             (rgb.astype(np.float32), None, ("raw",))]
    for frame, order, encodings in cases:
        for encoding in encodings:
            value, headers = encode_frame(frame, stream="s", index=0, encoding=encoding,
                                          order=order)
            jpeg = to_jpeg(parse_header(headers), value)
            if encoding == "jpeg" and order != "HSV":
                assert jpeg == value  # stored as it came
            bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            what = f"{encoding} {order} {frame.dtype}"
            assert bgr.shape == (24, 32, 3), what
            assert np.abs(bgr[20, 16].astype(int) - (0, 0, 220)).max() < 8, (what, bgr[20, 16])
            assert np.abs(bgr[2, 16].astype(int) - (0, 100, 220)).max() < 8, (what, bgr[2, 16])
    gray, headers = encode_frame(rgb[..., 0], stream="s", index=0, encoding="raw")
    assert cv2.imdecode(np.frombuffer(to_jpeg(parse_header(headers), gray), np.uint8),
                        cv2.IMREAD_UNCHANGED).shape == (24, 32)
    value, headers = encode_frame(rgb, stream="s", index=0, encoding="jpeg")
    small, _ = encode_frame(rgb[:20], stream="s", index=0, encoding="jpeg")
    for bad, why in ((b"", "not a valid"), (value[:100], "not a valid"),
                     (small, r"decodes to \(20, 32, 3\)")):
        with pytest.raises(FrameDecodeError, match=why):
            to_jpeg(parse_header(headers), bad)


def test_topology_names_come_from_the_topics():
    assert topology_name("va.analytics", "va.frames") == "va"
    assert topology_name("va.analytics", None) == "va"
    assert topology_name("anything", "else", topology="va") == "va"
    with pytest.raises(ConfigError, match="--topology"):
        topology_name("va.analytics", "vb.frames")
    with pytest.raises(ConfigError, match="--topology"):
        topology_name("results", None)


def test_a_batch_stores_good_records_and_rejects_each_bad_one(store, tmp_path):
    """``_store_batch`` on hand-made messages: every kind of malformed record, no broker."""
    sink = ResultsSink(KafkaConfig(), store, "va.analytics", "va.frames", str(tmp_path / "img"),
                       status_topic="videos.status", dlq_topic="va.dlq")
    frame = np.zeros((8, 8, 3), np.uint8)
    good, headers = encode_frame(frame, stream="s", index=1, encoding="png")
    bad_headers = [(k, b"9" if k == "streamimg.height" else v) for k, v in headers]
    nul_headers = [(k, b"s\x00" if k == "streamimg.stream" else v) for k, v in headers]
    webp_headers = [(k, b"webp" if k == "streamimg.encoding" else v) for k, v in headers]
    both = [(k, b"webp" if k == "streamimg.encoding" else v) for k, v in nul_headers]
    rec = {"schema": 1, "stream": "s", "frame": 1, "timestamp_ms": 5}
    analytics = [json.dumps(rec).encode(),  # offset 0: good
                 b"{not json", b"", b"[1, 2]", json.dumps({**rec, "stream": ""}).encode(),
                 json.dumps({**rec, "frame": True}).encode(),
                 json.dumps({**rec, "frame": -1}).encode(),
                 json.dumps({**rec, "schema": 2}).encode(),
                 json.dumps({**rec, "stream": "a\x00b"}).encode(),
                 b'{"stream": "\\ud800", "frame": 1}',
                 json.dumps({**rec, "stream": "x" * 300}).encode(),
                 b"\xff\xfe"]
    frames = [(good, headers), (None, headers), (b"png?", headers), (good, bad_headers),
              (good, nul_headers), (good, []), (good, webp_headers), (good, both)]
    timings = [("streamimg.timings_ms", b'{"decode": 0.05, "faces": 31.5}')]
    messages = [Message(topic="va.analytics", partition=0, offset=i, value=v, headers=timings)
                for i, v in enumerate(analytics)]
    messages += [Message(topic="va.frames", partition=1, offset=10 + i, value=v, headers=h)
                 for i, (v, h) in enumerate(frames)]
    status = {"id": "s", "state": "done", "frames": 1, "error": "", "source": "v.mp4",
              "models": ["faces"], "updated_ms": 5_000}
    messages += [Message(topic="videos.status", partition=0, offset=i, value=json.dumps(v)
                         .encode()) for i, v in enumerate([
                             status, {**status, "state": "paused"}, {"state": "running"}])]
    dlq = [("streamimg.dlq.stage", b"process"), ("streamimg.dlq.reason", b"RuntimeError: x")]
    messages += [Message(topic="va.dlq", partition=0, offset=0, value=good, key=b"s",
                         headers=headers + dlq),
                 Message(topic="va.dlq", partition=0, offset=1, value=b"?", key=b"k2",
                         headers=dlq)]
    sink._store_batch(messages)
    row = store.frame_result("s", 1)
    assert row["record"] == rec and row["topology"] == "va" and row["timestamp_ms"] == 5
    assert row["timings"] == {"decode": 0.05, "faces": 31.5}
    analysis = store.analysis("s")
    assert (analysis["state"], analysis["frames_ingested"], analysis["source"]) == (
        "done", 1, "v.mp4")
    assert cv2.imread(row["image"]).shape == (8, 8, 3)
    rejected = {(r["topic"], r["offset"]): (r["analysis"], r["reason"]) for r in store.rejects()}
    assert sorted(rejected) == [("va.analytics", i) for i in range(1, 12)] + [
        ("va.dlq", 0), ("va.dlq", 1)] + [("va.frames", i) for i in range(11, 18)] + [
        ("videos.status", 1), ("videos.status", 2)], rejected
    assert [rejected[("va.analytics", i)][0] for i in range(1, 12)] == [
        None, None, None, None, "s", "s", "s", None, None, None, None]
    assert [rejected[("va.frames", i)][0] for i in range(11, 18)] == [
        "s", "s", "s", None, None, "s", None]
    assert "NUL" in rejected[("va.analytics", 8)][1]
    assert "too long" in rejected[("va.analytics", 10)][1]
    assert "schema 2" in rejected[("va.analytics", 7)][1]
    assert "headers say (9, 8, 3)" in rejected[("va.frames", 13)][1]
    assert "unknown encoding 'webp'" in rejected[("va.frames", 16)][1]
    assert rejected[("va.dlq", 0)] == ("s", "dead letter (process) frame 1: RuntimeError: x")
    assert rejected[("va.dlq", 1)][0] == "k2"
    assert rejected[("videos.status", 1)][0] == "s" and "paused" in rejected[
        ("videos.status", 1)][1]
    assert rejected[("videos.status", 2)][0] is None
    assert store.analysis("s")["dead_letters"] == 9 and store.analysis("s")["frames_done"] == 1
    assert store.analysis("k2")["dead_letters"] == 1
    assert store.positions("streamimg-results") == {
        ("va.analytics", 0): 12, ("va.frames", 1): 18, ("videos.status", 0): 3,
        ("va.dlq", 0): 2}
    st = sink.stats
    assert (st.records, st.rows, st.images, st.statuses, st.dead_letters, st.rejects) == (
        25, 1, 1, 1, 2, 20)


def test_sink_refuses_missing_topics(kafka, tmp_path, uid):
    sink = ResultsSink(kafka, ResultsStore(f"sqlite:///{tmp_path / 'r.db'}"),
                       f"none-{uid}.analytics", f"none-{uid}.frames", str(tmp_path / "img"),
                       wait_topics_s=0.5)
    with pytest.raises(MissingTopicError, match=f"none-{uid}"):
        sink.run(threading.Event())


# -- the sink, in a process, against the real broker ----------------------------------------

SHAPES = {"a": (48, 64), "b": (40, 56)}  # per analysis: frame height, width


def _frame(stream: str, i: int) -> tuple[bytes, list]:
    h, w = SHAPES[stream[0]]
    image = np.full((h, w, 3), (i * 5) % 256, np.uint8)
    image[: h // 2, : w // 2] = (255, 0, 0)
    return encode_frame(image, stream=stream, index=i, timestamp_ms=1_000 + 40 * i,
                        encoding="jpeg")


def _analytics(stream: str, i: int, topic: str) -> bytes:
    h, w = SHAPES[stream[0]]
    return json.dumps({"schema": 1, "stream": stream, "frame": i, "timestamp_ms": 1_000 + 40 * i,
                       "shape": [h, w, 3], "source": {"topic": topic, "partition": 0,
                                                      "offset": i},
                       "palette": {"colors": [[i % 256, 0, 0]], "fractions": [1.0]}}).encode()


def _produce(kafka, records) -> dict[tuple[str, int], int]:
    """Produce ``(topic, partition, key, value, headers)`` idempotently; the end offsets."""
    producer = Producer({**kafka.producer(), "enable.idempotence": True, "acks": "all"})
    ends: dict[tuple[str, int], int] = {}
    errors: list[str] = []

    def delivered(err, msg):
        if err is not None:
            errors.append(err.str())
        else:
            key = (msg.topic(), msg.partition())
            ends[key] = max(ends.get(key, 0), msg.offset() + 1)

    for topic, partition, key, value, headers in records:
        producer.produce(topic, value=value, key=key, headers=headers, partition=partition,
                         on_delivery=delivered)
    assert producer.flush(30) == 0 and not errors, errors
    return ends


def _records(streams, frames, analytics, frames_topic):
    out = []
    for partition, stream in enumerate(streams):
        for i in frames:
            value, headers = _frame(stream, i)
            out.append((frames_topic, partition, stream.encode(), value, headers))
            out.append((analytics, partition, stream.encode(),
                        _analytics(stream, i, "in"), [("content-type", b"application/json")]))
    return out


def _start_sink(kafka, topics, db, images, log, env=None):
    analytics, frames, status, dlq = topics
    cmd = [sys.executable, "-m", "streamimg.results.sink", "--bootstrap", kafka.bootstrap,
           "--analytics", analytics, "--frames", frames, "--status", status, "--dlq", dlq,
           "--db", db, "--images", str(images), "--consumer", "sink-test",
           "--max-records", "10", "--max-wait-ms", "50"]
    for k, v in TEST_KAFKA.items():
        cmd += ["--kafka", f"{k}={v}"]
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=ROOT,
                                env={**os.environ, **(env or {})})


def _status(topic, partition, stream, state, frames):
    return (topic, partition, stream.encode(), json.dumps({
        "id": stream, "state": state, "frames": frames, "error": "", "source": f"{stream}.mp4",
        "models": ["faces"], "updated_ms": 1_000 * frames}).encode(), [])


@pytest.mark.timeout(120)
def test_sink_killed_mid_batch_stores_every_frame_once(kafka, tmp_path, uid):
    name = f"res-{uid}"
    topics = (f"{name}.analytics", f"{name}.frames", f"videos-{uid}.status", f"{name}.dlq")
    ensure_topics(kafka, topics[:3], partitions=2)  # the DLQ comes later: the sink waits
    streams = [f"a-{uid}", f"b-{uid}"]  # one analysis per partition
    db, images, log = f"sqlite:///{tmp_path / 'results.db'}", tmp_path / "images", \
        tmp_path / "sink.log"
    records = _records(streams, range(30), *topics[:2])
    bad_frame = encode_frame(np.zeros((40, 56, 3), np.uint8), stream=streams[1], index=999,
                             encoding="jpeg")[1]
    # Malformed records in the middle of each partition (records: 60 per stream).
    records[85:85] = [(topics[1], 1, streams[1].encode(), b"\xff\xd8 not a jpeg", bad_frame)]
    records[21:21] = [
        (topics[0], 0, b"x", b"{not json", []),
        (topics[0], 0, streams[0].encode(), json.dumps({"stream": streams[0]}).encode(), [])]
    records += [_status(topics[2], p, s, "running", 30) for p, s in enumerate(streams)]
    _produce(kafka, records)

    # Run 1 dies at its 3rd batch: images written, the database transaction never begun.
    first = _start_sink(kafka, topics, db, images, log,
                        env={"STREAMIMG_CRASH_AT": "results_after_images:3"})
    try:
        wait_until(lambda: "waiting for topics" in log.read_text(), 30, "the sink to wait")
        ensure_topics(kafka, topics[3:], partitions=1)
        code = first.wait(timeout=60)
    finally:
        stop_process(first, signal.SIGKILL)
    assert code == -signal.SIGKILL, log.read_text()[-3000:]
    store = ResultsStore(db)
    stored = sum(_count(store, s) for s in streams)
    assert 0 < stored < 60, f"{stored} rows after two batches"

    dead = encode_frame(np.zeros((40, 56, 3), np.uint8), stream=streams[1], index=50)[1] + [
        ("streamimg.dlq.stage", b"process"), ("streamimg.dlq.reason", b"RuntimeError: boom")]
    ends = _produce(kafka, _records(streams, range(30, 50), *topics[:2]) + [
        _status(topics[2], p, s, "done", 51) for p, s in enumerate(streams)] + [
        (topics[3], 0, streams[1].encode(), b"raw frame", dead)])
    second = _start_sink(kafka, topics, db, images, log)
    try:
        wait_until(lambda: store.positions("sink-test") == ends, 60, "all records stored")
    finally:
        assert stop_process(second, signal.SIGTERM, timeout_s=30) == 0, log.read_text()[-3000:]

    for stream in streams:
        assert _count(store, stream) == 50  # exactly one row per (analysis, frame)
        rows = store.results(stream, limit=1000)
        assert [r["frame"] for r in rows] == list(range(50))
        for r in rows:
            assert r["topology"] == name and r["record"]["frame"] == r["frame"]
            assert r["image"] == str(images / image_name(stream, name, r["frame"]))
            jpeg = cv2.imread(r["image"])
            assert jpeg is not None and jpeg.shape[:2] == SHAPES[stream[0]], r
            assert abs(int(jpeg[-1, -1, 0]) - (r["frame"] * 5) % 256) < 10  # its own frame
        a = store.analysis(stream)
        assert (a["state"], a["frames_ingested"], a["frames_done"], a["finished"]) == (
            "done", 51, 50, 51.0), a
        assert a["source"] == f"{stream}.mp4" and a["models"] == ["faces"]
    # a: a record without a frame index; b: an undecodable frame and the topology's DLQ.
    assert [store.analysis(s)["dead_letters"] for s in streams] == [1, 2]
    rejected = store.rejects("sink-test")
    assert [(r["topic"], r["analysis"]) for r in rejected] == [  # by topic name
        (topics[0], None), (topics[0], streams[0]), (topics[3], streams[1]),
        (topics[1], streams[1])]
    assert "not a JSON record" in rejected[0]["reason"]
    assert "no frame index" in rejected[1]["reason"]
    assert "RuntimeError: boom" in rejected[2]["reason"]
    assert "payload" in rejected[3]["reason"]
    assert log.read_text().count("rejected ") >= 3
    # Offsets live in the database only: the group never committed any to Kafka.
    assert set(committed_offsets(kafka, "sink-test", topics).values()) == {-1001}
    store.close()
