"""Gap records through the daemon: a live stream's lost captures reach the analytics topic.

A producer writes a gap record (headers only) between the frames before and after an
outage (``streamimg.sources.live``). The daemon must not take it for a frame: it writes
one analytics record per gap, in the transaction of the batch that read it, and commits
its offset; a malformed gap goes to the dead-letter topic naming the header.
"""

from __future__ import annotations

import json

import numpy as np
from confluent_kafka import Producer

from streamimg.admin import committed_offsets, ensure_topics
from streamimg.codecs.frame import encode_frame
from streamimg.codecs.gap import Gap, encode_gap
from tests.harness.checker import read_log
from tests.helpers import start_daemon, stop_process, wait_until, write_topology


def test_gaps_go_to_analytics_and_bad_gaps_to_the_dlq(kafka, cluster, tmp_path, uid):
    topic, name = f"in-{uid}", f"gaps-{uid}"
    ensure_topics(kafka, [topic], partitions=1)
    producer = Producer(kafka.producer())
    frame = np.full((6, 8, 3), 7, np.uint8)
    for i, ts in enumerate((1_000, 1_040, 5_000, 5_040)):
        value, headers = encode_frame(frame, stream="cam", index=i * (1 if i < 2 else 50),
                                      timestamp_ms=ts, encoding="raw")
        producer.produce(topic, key=b"cam", value=value, headers=headers, partition=0)
        if i == 1:  # the outage: captures 1080..4960 lost
            producer.produce(topic, key=b"cam", value=None, partition=0,
                             headers=encode_gap(Gap("cam", 1_080, 4_960, frames=98)))
    bad = [(k, v) for k, v in encode_gap(Gap("cam", 10, 20)) if k != "streamimg.gap.last_ts"]
    producer.produce(topic, key=b"cam", value=None, headers=bad, partition=0)
    assert producer.flush(30) == 0
    path = write_topology(tmp_path / "t.py", name, topic,
                          ".analyze('mean', lambda f: float(f.mean())).to_kafka_analytics()"
                          ".to_kafka_frames(encoding='raw')", max_frames=2, max_wait_ms=20)
    log = tmp_path / "daemon.log"
    run = start_daemon(path, kafka, cluster, log)
    try:
        wait_until(lambda: committed_offsets(kafka, name, [topic])[(topic, 0)] == 6, 120,
                   "every record committed, the gaps' included")
    finally:
        assert stop_process(run) == 0, log.read_text()[-3000:]

    analytics = [r for r in read_log(kafka.bootstrap, f"{name}.analytics")
                 if r.outcome == "committed"]
    gaps = [json.loads(r.value) for r in analytics if dict(r.headers).get("streamimg.gap")]
    assert gaps == [{"schema": 1, "stream": "cam",
                     "gap": {"first_missing_ms": 1_080, "last_missing_ms": 4_960, "frames": 98},
                     "source": {"topic": topic, "partition": 0, "offset": 2}}]
    frames = [json.loads(r.value)["frame"] for r in analytics
              if not dict(r.headers).get("streamimg.gap")]
    assert frames == [0, 1, 100, 150]
    assert len([r for r in read_log(kafka.bootstrap, f"{name}.frames")
                if r.outcome == "committed"]) == 4
    (dead,) = [r for r in read_log(kafka.bootstrap, f"{name}.dlq") if r.outcome == "committed"]
    assert "streamimg.gap.last_ts" in dict(dead.headers)["streamimg.dlq.reason"].decode()
