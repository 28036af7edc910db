"""Backpressure: a backlog far larger than the bound on work in flight never enters memory.

A slow operator and a backlog of raw 720p frames about 30 times ``max_in_flight_bytes``:
the daemon (``streamimg run``, its Dask workers threads in its own process, so one RSS
covers both) reads only up to the bound, pauses its partition while the bound holds and
keeps polling, and finishes the backlog. Its resident memory, sampled twice a second,
grows by far less than the backlog.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamimg.admin import committed_offsets, ensure_topics, read_topic
from streamimg.sources.video import SourceFrame, produce_frames
from tests.helpers import RssSampler, start_daemon, stop_process, wait_until, write_topology

FRAME = (720, 1280, 3)  # raw RGB: 2.76 MB a record
BOUND = 32 * 1024 * 1024  # max_in_flight_bytes of the topology
BACKLOG = 360  # frames: 995 MB, 30x the bound
STUCK = 16  # the first frames, slow
SLOW = """import time


def slow(x):
    def block(b):
        time.sleep(1.0 if b[0, 0, 0, 0] == 255 else 0.03)
        return b

    return x.map_blocks(block, dtype=x.dtype)


"""


@pytest.mark.timeout(300)
def test_a_backlog_30x_the_bound_keeps_memory_bounded_and_pauses(kafka, tmp_path, uid):
    topic, name = f"in-{uid}", f"bp-{uid}"
    ensure_topics(kafka, [topic])
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, FRAME, dtype=np.uint8) for _ in range(8)]
    for f in frames:
        f[0, 0, 0] = 0
    stuck = frames[0].copy()
    stuck[0, 0, 0] = 255  # the operator takes 1 s on such a frame: the bound holds a while
    ends = produce_frames(kafka, topic, (SourceFrame(i, i, stuck if i < STUCK else frames[i % 8])
                                         for i in range(BACKLOG)), stream="cam")
    backlog_bytes = BACKLOG * int(np.prod(FRAME))
    assert backlog_bytes > 29 * BOUND  # MB against MiB
    # 30 ms a frame, 1 s for the first STUCK frames: the bound is reached at once and,
    # while the slow frames compute, holds longer than the 1 s that pauses the partition.
    path = write_topology(tmp_path / "t.py", name, topic,
                          ".map_frames(slow).to_kafka_analytics().to_kafka_frames('raw')",
                          max_frames=4, max_in_flight=8, max_in_flight_bytes=BOUND)
    path.write_text(path.read_text().replace("topology = ", SLOW + "topology = "))
    stats = tmp_path / "stats.json"
    log = tmp_path / "daemon.log"
    # The bound must hold max.poll.interval.ms / 3 = 1 s before the partition pauses.
    proc = start_daemon(path, kafka, None, log, extra=[
        "--stats-file", str(stats), "--kafka", "max.poll.interval.ms=3000"])
    rss = RssSampler(proc.pid)
    try:
        wait_until(lambda: "assigned" in log.read_text() or proc.poll() is not None, 120,
                   "the daemon to get its partition")
        assert proc.poll() is None, log.read_text()
        rss.start()
        wait_until(lambda: committed_offsets(kafka, name, [topic]).get((topic, 0), -1)
                   >= ends[0] or proc.poll() is not None, 240, "the backlog to be committed",
                   interval_s=0.5)
        assert proc.poll() is None, log.read_text()[-3000:]
    finally:
        growth = rss.stop()
        code = stop_process(proc)
    assert code == 0, log.read_text()[-3000:]
    counters = json.loads(stats.read_text())
    print(f"RSS at assignment {rss.base / 1e6:.0f} MB, peak {rss.peak / 1e6:.0f} MB "
          f"(+{growth / 1e6:.0f} MB) over a {backlog_bytes / 1e6:.0f} MB backlog; "
          f"bound {BOUND / 1e6:.0f} MB; pauses {counters['pauses']}")
    # The partition was paused while the bound held, and polled again after.
    assert counters["pauses"] >= 1, counters
    assert "backpressure: pausing" in log.read_text()
    # What may be held: the payloads in flight (the bound) and their outputs, librdkafka's
    # prefetch queue (queued.max.messages.kbytes, 64 MiB by default), one fetch, the
    # allocator's slack; never the backlog (reading it all would add its 995 MB). Measured
    # with glibc's default settings: +390-407 MB.
    assert growth < 500e6, f"+{growth / 1e6:.0f} MB"
    records = read_topic(kafka, f"{name}.analytics")
    assert sorted(json.loads(m.value())["frame"] for m in records) == list(range(BACKLOG))
