"""What only Apache Kafka gives: records of an aborted transaction are hidden from
``read_committed`` readers (the embedded broker shows them; see the README's broker
section). Runs only when ``STREAMIMG_KAFKA_BOOTSTRAP`` points at an Apache Kafka cluster,
e.g. the one ``docker-compose.yml`` starts::

    STREAMIMG_KAFKA_BOOTSTRAP=127.0.0.1:9092 .venv/bin/pytest tests/test_apache_kafka.py
"""

from __future__ import annotations

import os
import signal
from collections import Counter

import pytest

from streamimg.admin import committed_offsets, ensure_topics, read_topic
from streamimg.config import KafkaConfig
from streamimg.sinks.records import read_lineage
from streamimg.sources.video import SourceFrame, produce_frames
from tests.helpers import start_daemon, stop_process, wait_until, write_topology

BOOTSTRAP = os.environ.get("STREAMIMG_KAFKA_BOOTSTRAP")
pytestmark = pytest.mark.skipif(
    not BOOTSTRAP, reason="STREAMIMG_KAFKA_BOOTSTRAP is not set: these tests need Apache Kafka "
    "(the embedded broker does not hide aborted transactions)")


@pytest.mark.timeout(300)
def test_read_committed_sees_no_record_of_an_aborted_transaction(cluster, bikes, tmp_path,
                                                                  uid):
    kafka = KafkaConfig(bootstrap=BOOTSTRAP, session_timeout_ms=6000,
                        heartbeat_interval_ms=1500)
    topic, name = f"in-{uid}", f"apache-{uid}"
    ensure_topics(kafka, [topic])
    n = 24
    ends = produce_frames(kafka, topic, (SourceFrame(i, i, bikes[i % len(bikes)])
                                         for i in range(n)), stream="cam")
    path = write_topology(tmp_path / "t.py", name, topic,
                          ".gaussian_blur(1.0).to_kafka_frames('raw').to_kafka_analytics()",
                          max_frames=4, max_wait_ms=50)
    # The first run kills itself with records in its second, open transaction.
    first = start_daemon(path, kafka, cluster, tmp_path / "d1.log",
                         env={"STREAMIMG_CRASH_AT": "before_commit:2"})
    assert first.wait(timeout=120) == -signal.SIGKILL, (tmp_path / "d1.log").read_text()
    # The restart (same transactional.id) fences the zombie and aborts its transaction.
    second = start_daemon(path, kafka, cluster, tmp_path / "d2.log")
    try:
        wait_until(lambda: committed_offsets(kafka, name, [topic]).get((topic, 0), -1) >= ends[0],
                   180, "every frame committed")
    finally:
        assert stop_process(second) == 0
    for out in (f"{name}.frames", f"{name}.analytics"):
        seen = Counter(read_lineage(m.headers())["offset"]
                       for m in read_topic(kafka, out, read_committed=True))
        assert sorted(seen) == list(range(n)), out
        assert set(seen.values()) == {1}, f"{out}: an aborted record is visible"
    # The aborted transaction really wrote records, which a read_uncommitted reader sees.
    assert len(read_topic(kafka, f"{name}.frames", read_committed=False)) > n
