"""Fault injection: the daemon as a black box, killed at named points and at random, its
Dask workers killed mid-batch; every check is made from the log's transaction markers.

``make test`` runs the fast subset (a few kills each); ``make chaos`` sets
``STREAMIMG_CHAOS=1`` for at least 10 daemon kills and 5 worker kills.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time

import pytest

from streamimg.admin import committed_offsets, ensure_topics
from streamimg.faults import POINTS
from streamimg.sources.video import SourceFrame, produce_frames, read_video
from tests.harness.checker import check_exactly_once
from tests.harness.procs import DaskProcesses
from tests.helpers import clip, start_daemon, stop_process, wait_until, write_topology

CHAOS = os.environ.get("STREAMIMG_CHAOS") == "1"
BODY = (".gaussian_blur(sigma=2.0).palette(k=4)"
        ".to_kafka_frames(encoding='jpeg').to_kafka_analytics()")


def produce_input(kafka, topic, per_partition):
    """``per_partition`` frames of bikes.mp4 (640x272) into each of 2 partitions."""
    ensure_topics(kafka, [topic], partitions=2)
    frames = [f.image for f in read_video(clip("bikes.mp4"), limit=min(per_partition, 60))]
    ends = {}
    for p, stream in enumerate(("left", "right")):
        ends.update(produce_frames(
            kafka, topic, (SourceFrame(i, i, frames[i % len(frames)])
                           for i in range(per_partition)), stream=stream, partition=p))
    return {(topic, p): end for p, end in ends.items()}


def committed(kafka, group, topic):
    return sum(max(0, o) for o in committed_offsets(kafka, group, [topic]).values())


def assert_exactly_once(kafka, name, inputs):
    report = check_exactly_once(kafka.bootstrap, inputs=inputs,
                                outputs=[f"{name}.frames", f"{name}.analytics"],
                                dlq=f"{name}.dlq", group=name)
    assert report.ok, report.summary()
    return report


@pytest.mark.timeout(900 if CHAOS else 420)
def test_daemon_killed_at_crash_points_and_at_random_keeps_exactly_once(kafka, cluster, tmp_path,
                                                                         uid):
    topic, name = f"in-{uid}", f"kill-{uid}"
    inputs = produce_input(kafka, topic, 150 if CHAOS else 60)
    total = sum(inputs.values())
    path = write_topology(tmp_path / "t.py", name, topic, BODY, max_frames=2, max_wait_ms=20,
                          max_in_flight=3)
    log = tmp_path / "daemon.log"
    rng = random.Random(7)
    kills = 0
    # Each crash point, at the 2nd transaction of a run: the process kills itself there.
    for point in POINTS:
        proc = start_daemon(path, kafka, cluster, log,
                            env={"STREAMIMG_CRASH_AT": f"{point}:2"})
        try:
            code = proc.wait(timeout=120)
        finally:
            stop_process(proc, signal.SIGKILL)
        assert code == -signal.SIGKILL, f"{point}: exit {code}\n{log.read_text()[-3000:]}"
        kills += 1
    # Random kills while the stream runs (group join, mid-batch, mid-commit alike).
    for _ in range(6 if CHAOS else 2):
        before = committed(kafka, name, topic)
        if before >= total - 10:
            break
        proc = start_daemon(path, kafka, cluster, log)
        try:
            time.sleep(rng.uniform(0.5, 6.0))
        finally:
            stop_process(proc, signal.SIGKILL)
        kills += 1
    assert committed(kafka, name, topic) < total, "the input ran out before the last run"
    final = start_daemon(path, kafka, cluster, log)
    try:
        wait_until(lambda: committed(kafka, name, topic) >= total, 240, "the final run commits")
    finally:
        assert stop_process(final, signal.SIGTERM) == 0, log.read_text()[-3000:]
    assert kills >= (10 if CHAOS else 6)
    report = assert_exactly_once(kafka, name, inputs)
    # The kills really left aborted or open transactions behind (else the test proves little).
    assert report.counts[f"{name}.frames"].get("aborted", 0) > 0, report.counts


@pytest.mark.timeout(600 if CHAOS else 300)
def test_killed_dask_workers_lose_no_frame_and_the_daemon_goes_on(kafka, tmp_path, uid):
    topic, name = f"in-{uid}", f"wk-{uid}"
    inputs = produce_input(kafka, topic, 120 if CHAOS else 48)
    total = sum(inputs.values())
    # A slow operator keeps chunks running when a worker dies.
    path = write_topology(tmp_path / "t.py", name, topic,
                          ".map_frames(slow).gaussian_blur(sigma=2.0).palette(k=4)"
                          ".to_kafka_frames(encoding='jpeg').to_kafka_analytics()",
                          max_frames=4, max_wait_ms=20, max_in_flight=3)
    path.write_text(path.read_text().replace(
        "from streamimg import PixelFrames, Topology\n",
        "import time\nfrom streamimg import PixelFrames, Topology\n\n"
        "def slow(x):\n    return x.map_blocks(lambda b: (time.sleep(0.05), b)[1], "
        "dtype=x.dtype)\n"))
    log = tmp_path / "daemon.log"
    with DaskProcesses(tmp_path, n_workers=2) as dask:
        proc = start_daemon(path, kafka, None, log, scheduler=dask.address)
        try:
            wait_until(lambda: committed(kafka, name, topic) >= 4, 120, "first commits")
            for k in range(5 if CHAOS else 2):
                done = committed(kafka, name, topic)
                dask.kill_worker(k)
                dask.start_worker()
                wait_until(lambda d=done: committed(kafka, name, topic) > d + 4, 120,
                           "progress after a worker kill")
                assert proc.poll() is None, log.read_text()[-3000:]
            wait_until(lambda: committed(kafka, name, topic) >= total, 240, "all committed")
        finally:
            assert stop_process(proc, signal.SIGTERM) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert not re.search(r"dead letter \S+\[\d+\]@\d+", text), text[-3000:]
    assert '"dead_letters": 0' in text, text[-3000:]
    assert_exactly_once(kafka, name, inputs)
