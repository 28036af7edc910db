"""Hostile input mixed into a good stream: every bad record to the DLQ with its reason (one
log line each), every good frame processed once, nothing decoded that could not fit in memory."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
from confluent_kafka import Producer

import streamimg
from streamimg.admin import committed_offsets, ensure_topics, read_topic
from streamimg.codecs.frame import encode_frame
from streamimg.daemon import Daemon
from streamimg.sources.video import SourceFrame, produce_frames
from tests.harness.checker import check_exactly_once
from tests.helpers import ROOT, RssSampler, start_daemon, stop_process, wait_until


def test_hostile_records_are_dead_lettered_and_good_frames_go_on(kafka, client, uid):
    topic, name = f"in-{uid}", f"hostile-{uid}"
    ensure_topics(kafka, [topic])
    producer = Producer(kafka.producer())
    frame = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    kinds = []

    def send(value, headers, kind):
        producer.produce(topic, value=value, headers=headers, key=b"s")
        kinds.append(kind)

    value, headers = encode_frame(frame, stream="s", index=0)
    send(value, headers, "ok")
    send(os.urandom(3 * 1024 * 1024), headers, "oversized")  # over this daemon's 1 MiB
    bomb = [(k, b"60000" if k in ("streamimg.height", "streamimg.width") else v)
            for k, v in encode_frame(frame, stream="s", index=2, encoding="png")[1]]
    send(b"\x89PNG tiny", bomb, "bomb")  # 3.6 gigapixels declared
    send(os.urandom(5000), None, "random")
    send(None, headers, "null")
    value, headers = encode_frame(frame, stream="s", index=5)
    send(value, headers, "ok")
    assert producer.flush(30) == 0

    topology = streamimg.Topology(name, inputs=topic, max_frames=4, max_wait_ms=50)
    topology.source.palette(k=3).to_kafka_frames(encoding="png").to_kafka_analytics()
    small = dataclasses.replace(kafka, max_message_bytes=1024 * 1024)
    daemon = Daemon(topology, small, client, drain_timeout_s=30)
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        wait_until(lambda: committed_offsets(kafka, name, [topic]).get((topic, 0), -1)
                   >= len(kinds), 120, "all committed")
    finally:
        daemon.stop()
        thread.join(60)
    dead = {int(dict(m.headers())["streamimg.source.offset"]): m
            for m in read_topic(kafka, f"{name}.dlq")}
    reasons = {o: dict(m.headers())["streamimg.dlq.reason"].decode() for o, m in dead.items()}
    assert sorted(dead) == [1, 2, 3, 4], reasons
    assert "3145728 bytes exceeds max_message_bytes=1048576" in reasons[1]
    assert dead[1].value() is None  # by reference: the value is not copied
    assert dict(dead[1].headers())["streamimg.dlq.value_bytes"] == b"3145728"
    assert "60000x60000 pixels exceed the limit" in reasons[2]
    assert "missing header" in reasons[3]
    assert "null value" in reasons[4]
    report = check_exactly_once(kafka.bootstrap, inputs={(topic, 0): len(kinds)},
                                outputs=[f"{name}.frames", f"{name}.analytics"],
                                dlq=f"{name}.dlq", group=name,
                                bad={(topic, 0, o) for o in (1, 2, 3, 4)})
    assert report.ok, report.summary()
    assert len(read_topic(kafka, f"{name}.frames")) == 2


@pytest.mark.timeout(240)
def test_a_raising_map_function_logs_one_line_per_frame_and_no_traceback(kafka, uid, tmp_path):
    """Worker processes of the daemon's own: whatever they log lands in its output."""
    topic, name = f"in-{uid}", f"raise-{uid}"
    ensure_topics(kafka, [topic])
    frames = (SourceFrame(i, i, np.full((16, 16, 3), i, np.uint8)) for i in range(6))
    produce_frames(kafka, topic, frames, stream="s")
    path = tmp_path / "t.py"
    path.write_text(
        "from streamimg import Topology\n"
        f"topology = Topology({name!r}, inputs={topic!r}, max_frames=3, max_wait_ms=20)\n"
        "def check(frame):\n"
        "    if frame.shape == (16, 16, 3) and int(frame[0, 0, 0]) % 2:  # not at start-up\n"
        "        raise RuntimeError('planted failure')\n"
        "    return {'mean': float(frame.mean())}\n"
        "topology.source.analyze('stats', check).to_kafka_analytics()\n")
    log = tmp_path / "daemon.log"
    cmd = [sys.executable, "-m", "streamimg.cli", "run", str(path), "--bootstrap",
           kafka.bootstrap, "--processes", "--workers", "1"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=ROOT)
    try:
        wait_until(lambda: proc.poll() is not None
                   or committed_offsets(kafka, name, [topic]).get((topic, 0), -1) >= 6,
                   180, "all six frames committed")
        assert proc.poll() is None, log.read_text()[-3000:]
    finally:
        assert stop_process(proc, signal.SIGTERM) == 0, log.read_text()[-3000:]
    text = log.read_text()
    dead = [line for line in text.splitlines() if "planted failure" in line]
    assert len(dead) == 3 and all("WARNING streamimg.daemon: dead letter" in d for d in dead), text
    assert "Traceback" not in text and "Compute Failed" not in text, text[-3000:]


@pytest.mark.timeout(240)
def test_a_100_mb_record_is_dead_lettered_by_reference_and_memory_stays_bounded(kafka, uid,
                                                                                tmp_path):
    """A 100 MB record (the broker takes it) among good frames, under ``streamimg run``'s
    defaults (64 MiB ``max_message_bytes``): the daemon fetches it whole (a fetch returns
    its first record batch whatever its size), dead-letters it by reference with a log line,
    goes on with the frames behind it, and its RSS grows by a bounded multiple of the
    record, not more."""
    topic, name = f"in-{uid}", f"huge-{uid}"
    ensure_topics(kafka, [topic])
    frame = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    huge = 100 * 1024 * 1024
    producer = Producer({**kafka.producer(), "message.max.bytes": huge + (1 << 20)})
    for i in range(7):
        value, headers = encode_frame(frame, stream="s", index=i)
        if i == 3:
            value = os.urandom(huge)
        producer.produce(topic, value=value, headers=headers, key=b"s")
        producer.poll(0)
    assert producer.flush(60) == 0
    path = tmp_path / "t.py"
    path.write_text(f"import streamimg\ntopology = streamimg.Topology({name!r}, inputs={topic!r},"
                    " max_frames=2, max_wait_ms=20)\n"
                    "topology.source.palette(k=3).to_kafka_analytics()\n")
    log = tmp_path / "daemon.log"
    proc = start_daemon(path, kafka, None, log)
    rss = RssSampler(proc.pid, interval_s=0.2)
    try:
        wait_until(lambda: "assigned" in log.read_text() or proc.poll() is not None, 120,
                   "the daemon to get its partition")
        rss.start()
        wait_until(lambda: committed_offsets(kafka, name, [topic]).get((topic, 0), -1) >= 7
                   or proc.poll() is not None, 120, "all 7 records committed")
    finally:
        growth = rss.stop()
        code = stop_process(proc)
    text = log.read_text()
    assert code == 0, text[-3000:]
    print(f"RSS {rss.base / 1e6:.0f} MB at assignment, +{growth / 1e6:.0f} MB at its peak")
    assert re.search(rf"dead letter {topic}\[0\]@3 .*{huge} bytes exceeds max_message_bytes",
                     text), text[-3000:]
    (dead,) = read_topic(kafka, f"{name}.dlq")
    assert dead.value() is None  # by reference
    assert dict(dead.headers())["streamimg.dlq.value_bytes"] == str(huge).encode()
    frames = sorted(json.loads(m.value())["frame"] for m in read_topic(kafka, f"{name}.analytics"))
    assert frames == [0, 1, 2, 4, 5, 6]
    # At most librdkafka's copy of the record and Python's (the consumer hands it over as
    # bytes), and the allocator's slack; measured: +102 MB, the record held once at a time.
    assert growth < 3 * huge, f"+{growth / 1e6:.0f} MB"
