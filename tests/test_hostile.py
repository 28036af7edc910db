"""Hostile input mixed into a good stream: every bad record to the DLQ with its reason,
every good frame processed once, nothing decoded that could not fit in memory."""

from __future__ import annotations

import dataclasses
import os
import threading

import numpy as np
from confluent_kafka import Producer

import streamimg
from streamimg.admin import committed_offsets, ensure_topics, read_topic
from streamimg.codecs.frame import encode_frame
from streamimg.daemon import Daemon
from tests.harness.checker import check_exactly_once
from tests.helpers import wait_until


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
