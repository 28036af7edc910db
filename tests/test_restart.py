"""Exactly-once across restarts: kill -9 and SIGTERM mid-stream, same instance id.

Checked from the log's transaction markers (``tests/harness/checker.py``): the
embedded broker leaves the records of aborted transactions visible to
read_committed readers, so only the COMMIT/ABORT markers tell which outputs count.
"""

from __future__ import annotations

import signal

import pytest

from streamimg.admin import committed_offsets, ensure_topics
from streamimg.sources.video import SourceFrame, produce_frames, read_video
from tests.harness.checker import check_exactly_once
from tests.helpers import clip, start_daemon, stop_process, wait_until, write_topology

FRAMES_PER_PARTITION = 60


def committed_total(kafka, group, topic):
    return sum(max(0, o) for o in committed_offsets(kafka, group, [topic]).values())


@pytest.mark.timeout(400)
def test_kill_and_graceful_stop_mid_stream_keep_exactly_once(kafka, cluster, tmp_path, uid):
    topic, name = f"in-{uid}", f"restart-{uid}"
    ensure_topics(kafka, [topic], partitions=2)
    frames = [f.image for f in read_video(clip("bikes.mp4"), limit=FRAMES_PER_PARTITION)]
    ends = {}
    for p, stream in enumerate(("left", "right")):
        ends.update(produce_frames(
            kafka, topic, (SourceFrame(i, i, f) for i, f in enumerate(frames)),
            stream=stream, partition=p))
    total = sum(ends.values())
    path = write_topology(tmp_path / "t.py", name, topic,
                          ".gaussian_blur(sigma=2.0).palette(k=4)"
                          ".to_kafka_frames(encoding='jpeg').to_kafka_analytics()",
                          max_frames=2, max_wait_ms=20, max_in_flight=2)
    log = tmp_path / "daemon.log"

    # Run 1: killed with SIGKILL once some batches are committed (an open transaction
    # and batches in flight die with it).
    run1 = start_daemon(path, kafka, cluster, log)
    try:
        wait_until(lambda: committed_total(kafka, name, topic) >= 10, 120, "run 1 commits")
    finally:
        stop_process(run1, signal.SIGKILL)
    after1 = committed_total(kafka, name, topic)
    assert after1 < total, "run 1 finished everything before it was killed"

    # Run 2, same instance id: fences run 1's transaction; stopped gracefully mid-stream.
    run2 = start_daemon(path, kafka, cluster, log)
    try:
        wait_until(lambda: committed_total(kafka, name, topic) >= after1 + 20, 120,
                   "run 2 commits")
    finally:
        assert stop_process(run2, signal.SIGTERM) == 0, log.read_text()[-3000:]
    after2 = committed_total(kafka, name, topic)
    assert after2 < total, "run 2 finished everything before it was stopped"

    # Run 3 finishes the input.
    run3 = start_daemon(path, kafka, cluster, log)
    try:
        wait_until(lambda: committed_total(kafka, name, topic) >= total, 180, "run 3 commits")
    finally:
        assert stop_process(run3, signal.SIGTERM) == 0, log.read_text()[-3000:]
    assert committed_offsets(kafka, name, [topic]) == {(topic, p): e for p, e in ends.items()}

    report = check_exactly_once(kafka.bootstrap, inputs={(topic, p): e for p, e in ends.items()},
                                outputs=[f"{name}.analytics", f"{name}.frames"],
                                dlq=f"{name}.dlq", group=name)
    assert report.ok, report.summary()
    assert report.counts[f"{name}.frames"]["committed"] == total


@pytest.mark.timeout(400)
def test_a_second_instance_fences_the_idle_first_one_which_exits_3(kafka, cluster, tmp_path, uid):
    topic, name = f"in-{uid}", f"fence-{uid}"
    ensure_topics(kafka, [topic])
    frames = [f.image[:64, :64] for f in read_video(clip("bikes.mp4"), limit=6)]

    def publish(first, last):
        return produce_frames(kafka, topic, (SourceFrame(i, i, frames[i])
                                             for i in range(first, last)), stream="s")

    path = write_topology(tmp_path / "t.py", name, topic, ".to_kafka_analytics()",
                          max_frames=2, max_wait_ms=20)
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    publish(0, 3)
    # A probes 20 s after its last commit: by then B has joined the group. (On the embedded
    # broker a group whose leader leaves in the middle of a rebalance can stay stuck.)
    a = start_daemon(path, kafka, cluster, log_a, env={"STREAMIMG_FENCE_CHECK_S": "20"})
    b = None
    try:
        wait_until(lambda: committed_total(kafka, name, topic) >= 3, 120, "A commits")
        # A's input is idle now. B, with the same instance id, fences A in init_transactions
        # (before it logs "consuming"); A must notice by itself, without new input.
        b = start_daemon(path, kafka, cluster, log_b)
        wait_until(lambda: "consuming" in log_b.read_text(), 180, "B to start")
        assert a.wait(timeout=120) == 3, log_a.read_text()[-3000:]
        text = log_a.read_text()
        assert len([line for line in text.splitlines() if "took over" in line]) == 1, text
        assert "Traceback" not in text
        # B goes on: the partition moves to it and it processes new frames exactly once.
        publish(3, 6)
        wait_until(lambda: committed_total(kafka, name, topic) >= 6, 180, "B commits")
    finally:
        stop_process(a, signal.SIGKILL)
        if b is not None:
            assert stop_process(b, signal.SIGTERM) == 0, log_b.read_text()[-3000:]
    report = check_exactly_once(kafka.bootstrap, inputs={(topic, 0): 6},
                                outputs=[f"{name}.analytics"], dlq=f"{name}.dlq", group=name)
    assert report.ok, report.summary()
    assert report.counts[f"{name}.analytics"]["committed"] == 6
