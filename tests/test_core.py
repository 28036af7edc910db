"""The core's promises: tasks per batch, polling while batches compute, start-up checks."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time

import numpy as np
import pytest
from dask.utils import key_split

import streamimg
from streamimg.admin import committed_offsets, ensure_topics
from streamimg.daemon import Daemon, Listener
from streamimg.dispatch import task_prefix
from streamimg.sources.video import SourceFrame, produce_frames
from tests.harness.checker import check_exactly_once
from tests.helpers import wait_until


class Events(Listener):
    def __init__(self):
        self.assigned_n = self.revoked_n = 0
        self.submitted_frames: list[int] = []
        self.outcomes: list[str] = []

    def assigned(self, partitions):
        self.assigned_n += 1

    def revoked(self, partitions):
        self.revoked_n += 1

    def submitted(self, seq, frames, nbytes, ms):
        self.submitted_frames.append(frames)

    def outcome(self, outcome):
        self.outcomes.append(outcome.status)


@contextlib.contextmanager
def running(topology, kafka, client):
    """A daemon of ``topology`` on a thread: yields it and its :class:`Events`; stops it
    on leaving and checks that it exited with 0."""
    events = Events()
    daemon = Daemon(topology, kafka, client, drain_timeout_s=60, listeners=[events])
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", daemon.run()))
    thread.start()
    try:
        yield daemon, events
    finally:
        daemon.stop()
        thread.join(60)
    assert result.get("code") == 0


def run_to_end(topology, kafka, client, topic, ends, timeout_s=180):
    with running(topology, kafka, client) as (daemon, events):
        wait_until(lambda: all(committed_offsets(kafka, topology.name, [topic]).get(
            (topic, p), -1) >= e for p, e in ends.items()), timeout_s, "all committed")
    return daemon, events


def chunk_tasks(client, topology):
    """How many chunk tasks of ``topology`` the scheduler has run so far."""
    prefix = key_split(f"{task_prefix(topology.check())}-{'0' * 32}")

    def count(dask_scheduler):
        tp = dask_scheduler.task_prefixes.get(prefix)
        return 0 if tp is None else int(tp.state_counts.get("processing", 0))
    return client.run_on_scheduler(count)


@pytest.mark.parametrize("max_frames", [2, 8])
def test_a_batch_costs_one_task_per_worker_thread(kafka, client, bikes, uid, max_frames):
    topic, name = f"in-{uid}", f"tasks-{uid}"
    ensure_topics(kafka, [topic])
    ends = produce_frames(kafka, topic, (SourceFrame(i, i, f) for i, f in enumerate(bikes[:16])),
                          stream="s")
    topology = streamimg.Topology(name, inputs=topic, max_frames=max_frames, max_wait_ms=200)
    topology.source.gaussian_blur(1.0).palette(k=3).to_kafka_frames("raw").to_kafka_analytics()
    before = chunk_tasks(client, topology)
    _, events = run_to_end(topology, kafka, client, topic, ends)
    threads = sum(client.nthreads().values())
    expected = sum(min(n, threads) for n in events.submitted_frames)
    assert sum(events.submitted_frames) == 16
    assert max(events.submitted_frames) <= max_frames
    # One task per chunk, one chunk per worker thread: the graph does not grow with the
    # batch. How the 16 frames split into batches depends on timing (a batch closes early
    # while a worker thread is idle, as at the start), so the count follows the batches.
    assert chunk_tasks(client, topology) - before == expected
    # A full batch on 2 threads: 2 tasks for 8 frames, 0.25 a frame.
    from streamimg.batching import Batch, FrameInfo
    from streamimg.codecs.frame import encode_frame, parse_header
    from streamimg.dispatch import Dispatcher

    dispatch = Dispatcher(client, topology.check(), run="r")
    dispatch.start()
    messages = [encode_frame(f, stream="s", index=i) for i, f in enumerate(bikes[:max_frames])]
    batch = Batch([FrameInfo(topic, 0, i, b"s", parse_header(h)) for i, (_, h) in
                   enumerate(messages)], [v for v, _ in messages], [], {(topic, 0): max_frames})
    item = dispatch.submit(1, 0, batch)
    assert len(item.futures) == min(max_frames, threads)
    (done,) = wait_until(dispatch.ready, 60, "the full batch")
    assert len(done.records) == 2 * max_frames and not done.dead


def test_the_consumer_keeps_polling_while_a_batch_computes(kafka, client, tmp_path, uid):
    # Each batch computes for longer than max.poll.interval.ms: a daemon that stopped
    # polling while it waited would be thrown out of the group and lose its partitions.
    topic, name = f"in-{uid}", f"poll-{uid}"
    ensure_topics(kafka, [topic])
    frames = [np.full((16, 16, 3), i, np.uint8) for i in range(4)]
    ends = produce_frames(kafka, topic, (SourceFrame(i, i, f) for i, f in enumerate(frames)),
                          stream="s")
    topology = streamimg.Topology(name, inputs=topic, max_frames=2, max_wait_ms=50,
                                  max_in_flight=1)

    def slow(x):  # 3 s a frame of ours (flat), none for the start-up check's noise frame
        return x.map_blocks(lambda b: (time.sleep(3.0 if b.std() == 0 else 0), b)[1],
                            dtype=x.dtype)

    topology.source.map_frames(slow).to_kafka_frames(encoding="raw").to_kafka_analytics()
    kafka = dataclasses.replace(kafka, extra={"max.poll.interval.ms": 2000})
    started = time.monotonic()
    _, events = run_to_end(topology, kafka, client, topic, ends)
    assert time.monotonic() - started > 6.0  # two batches of 3 s each, one at a time
    # One assignment: never thrown out and re-admitted (the one revoke is the final close).
    assert events.assigned_n == 1 and events.revoked_n <= 1, vars(events)
    assert events.outcomes == ["committed", "committed"]
    report = check_exactly_once(kafka.bootstrap, inputs={(topic, 0): ends[0]},
                                outputs=[f"{name}.frames", f"{name}.analytics"], dlq=f"{name}.dlq",
                                group=name)
    assert report.ok, report.summary()


@pytest.mark.parametrize("body,message", [
    (lambda s: s.palette().annotate(detections=None).gaussian_blur(1.0).to_kafka_frames(),
     "frame operators must come before annotate"),
    (lambda s: s.annotate(detections="faces", palette=None).to_kafka_frames(),
     "no analytics named 'faces'"),
    (lambda s: s.palette().palette().to_kafka_analytics(), "used twice"),
    (lambda s: s.map_frames(lambda x: x.astype("float32")).to_kafka_frames(encoding="png"),
     "fails on a synthetic"),
    (lambda s: s.analyze("bad", lambda f: 1 / 0).to_kafka_analytics(), "ZeroDivisionError"),
])
def test_pipeline_mistakes_fail_when_the_topology_loads(body, message):
    topology = streamimg.Topology("mistake", inputs="x")
    body(topology.source)
    with pytest.raises(streamimg.TopologyError, match=message):
        topology.check()


def test_an_in_process_cluster_gets_payloads_without_copies(kafka, bikes, uid):
    # The CLI's default: worker threads in the daemon's process, payloads handed over in
    # memory. Outputs must equal the remote path's (and direct computation).
    from distributed import Client

    from streamimg.cluster import in_process_cluster
    from streamimg.worker import HANDOFF

    topic, name = f"in-{uid}", f"inproc-{uid}"
    ensure_topics(kafka, [topic])
    ends = produce_frames(kafka, topic, (SourceFrame(i, i, f) for i, f in enumerate(bikes[:8])),
                          stream="s")
    topology = streamimg.Topology(name, inputs=topic, max_frames=4, max_wait_ms=100)
    topology.source.gaussian_blur(1.0).to_kafka_frames("raw")
    with in_process_cluster(threads=2) as cluster, Client(cluster) as client:
        daemon, _ = run_to_end(topology, kafka, client, topic, ends)
    assert daemon._dispatch.in_process and not HANDOFF
    from streamimg.admin import read_topic
    from streamimg.codecs.frame import decode_payload, parse_header
    from streamimg.operators.blur import blur_frame
    out = read_topic(kafka, f"{name}.frames")
    assert len(out) == 8
    for m, frame in zip(out, bikes[:8], strict=True):
        got = decode_payload(parse_header(m.headers()), m.value())
        np.testing.assert_array_equal(got, blur_frame(frame, 1.0))


def test_the_daemon_logs_its_progress(kafka, client, bikes, uid, caplog):
    topic, name = f"in-{uid}", f"progress-{uid}"
    ensure_topics(kafka, [topic])
    ends = produce_frames(kafka, topic, (SourceFrame(i, i, f) for i, f in enumerate(bikes[:12])),
                          stream="s")
    topology = streamimg.Topology(name, inputs=topic, max_frames=2)
    topology.source.map_frames(
        lambda x: x.map_blocks(lambda b: (time.sleep(0.2), b)[1], dtype=x.dtype)
    ).to_kafka_frames("raw")
    caplog.set_level("INFO", logger="streamimg.daemon")
    daemon = Daemon(topology, kafka, client, progress_s=0.5)
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        wait_until(lambda: committed_offsets(kafka, name, [topic]).get((topic, 0), -1) >= ends[0],
                   120, "all committed")
    finally:
        daemon.stop()
        thread.join(60)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress:")]
    assert lines, [r.getMessage() for r in caplog.records]
    assert "frames/s in" in lines[0] and f"{topic}[0]" in "".join(lines)


def test_waiting_for_a_batch_does_not_spin_when_one_chunk_is_done():
    # A batch of two chunks where the first finishes at once and the second takes 3 s: the
    # poll thread's wait must block on the running chunk. It once returned at once whenever
    # a chunk of the oldest batch had finished, and the poll thread spun through Dask's
    # event loop (30 % of a core) while the workers starved of the GIL.
    from distributed import Client

    from streamimg.batching import Batch, FrameInfo
    from streamimg.cluster import in_process_cluster
    from streamimg.codecs.frame import encode_frame, parse_header
    from streamimg.dispatch import Dispatcher

    def slow_on_frame_one(x):
        return x.map_blocks(lambda b: (time.sleep(3.0 if b[0, 0, 0, 0] == 1 else 0), b)[1],
                            dtype=x.dtype)

    topology = streamimg.Topology("spin", inputs="x", frame_shape=(4, 4, 3))
    topology.source.map_frames(slow_on_frame_one).to_kafka_frames(encoding="raw")
    messages = [encode_frame(np.full((4, 4, 3), i, np.uint8), stream="s", index=i)
                for i in range(2)]
    batch = Batch([FrameInfo("x", 0, i, b"s", parse_header(h)) for i, (_, h) in
                   enumerate(messages)], [v for v, _ in messages], [], {("x", 0): 2})
    with in_process_cluster(threads=2) as cluster, Client(cluster) as client:
        dispatch = Dispatcher(client, topology.check(), run="r")
        dispatch.start()
        item = dispatch.submit(1, 0, batch)
        assert len(item.futures) == 2
        wait_until(lambda: item.futures[0].done(), 30, "the fast chunk")
        calls, started = 0, time.monotonic()
        while not dispatch.ready() and time.monotonic() - started < 60:
            dispatch.wait_head(0.5)
            calls += 1
        assert not dispatch.inflight
        # ~3 s of waiting in 0.5 s waits: a handful of calls, not thousands.
        assert calls <= 12, calls


def test_a_lone_frame_is_not_held_for_max_wait_when_the_workers_are_idle(kafka, client, bikes,
                                                                          uid):
    # max_wait_ms batches frames while the workers are busy; with nothing computing and
    # nothing more to read, holding a frame for it only adds latency.
    topic, name = f"in-{uid}", f"early-{uid}"
    ensure_topics(kafka, [topic])
    topology = streamimg.Topology(name, inputs=topic, max_frames=8, max_wait_ms=120_000)
    topology.source.gaussian_blur(1.0).to_kafka_frames("raw")
    ends = produce_frames(kafka, topic, (SourceFrame(i, i, f) for i, f in enumerate(bikes[:1])),
                          stream="s")
    started = time.monotonic()
    _, events = run_to_end(topology, kafka, client, topic, ends, timeout_s=60)
    assert time.monotonic() - started < 60  # not 120 s
    assert events.submitted_frames == [1] and events.outcomes == ["committed"]


def test_an_idle_daemon_waits_in_the_consumer_rather_than_polling_every_10_ms(
        kafka, client, bikes, uid, monkeypatch):
    # With nothing to read, compute or commit, the poll thread waits in consume() for the
    # first message (or until the batcher has something due, 0.1 s): it once woke every
    # 10 ms, ~100 consume calls a second at ~70-100 us of CPU each. A frame that comes then
    # must still be batched and committed.
    import confluent_kafka

    import streamimg.daemon

    calls: list[float] = []

    class CountingConsumer(confluent_kafka.Consumer):  # the real consumer, its calls counted
        def consume(self, *args, **kwargs):
            calls.append(time.monotonic())
            return super().consume(*args, **kwargs)

    monkeypatch.setattr(streamimg.daemon, "Consumer", CountingConsumer)
    topic, name = f"in-{uid}", f"idlepoll-{uid}"
    ensure_topics(kafka, [topic])
    topology = streamimg.Topology(name, inputs=topic, max_frames=8, max_wait_ms=120_000)
    topology.source.gaussian_blur(1.0).to_kafka_frames("raw")
    with running(topology, kafka, client) as (_, events):
        wait_until(lambda: events.assigned_n, 60, "the assignment")
        time.sleep(0.5)
        before = len(calls)
        time.sleep(2.0)
        idle = len(calls) - before
        ends = produce_frames(kafka, topic, iter([SourceFrame(0, 0, bikes[0])]), stream="s")
        wait_until(lambda: committed_offsets(kafka, name, [topic]).get((topic, 0), -1)
                   >= ends[0], 60, "the frame committed")
    assert idle <= 40, f"{idle} consume calls in 2 s of idling (~20 expected, not ~200)"
    assert events.submitted_frames == [1] and events.outcomes == ["committed"]


def test_a_frame_is_not_held_for_max_wait_while_a_worker_thread_is_idle(kafka, client, bikes,
                                                                       uid, tmp_path):
    # Frame 0 keeps one of the two worker threads busy until the test lets it go; frame 1,
    # read meanwhile, must start on the idle thread at once (not after max_wait_ms, nor
    # after frame 0's batch ends). With "early only when nothing computes" it waited.
    topic, name = f"in-{uid}", f"idle-{uid}"
    release = str(tmp_path / "release")
    ensure_topics(kafka, [topic])

    def hold_frame_zero(x):
        def block(b):
            deadline = time.monotonic() + 120
            while (b.size and not b.any() and not os.path.exists(release)
                   and time.monotonic() < deadline):
                time.sleep(0.02)
            return b
        return x.map_blocks(block, dtype=x.dtype)

    topology = streamimg.Topology(name, inputs=topic, max_frames=8, max_wait_ms=120_000)
    topology.source.map_frames(hold_frame_zero).to_kafka_frames("raw")
    with running(topology, kafka, client) as (_, events):
        try:
            produce_frames(kafka, topic, iter([SourceFrame(0, 0, np.zeros_like(bikes[0]))]),
                           stream="s")
            wait_until(lambda: events.submitted_frames, 60, "frame 0's batch")
            ends = produce_frames(kafka, topic, iter([SourceFrame(1, 1, bikes[1])]),
                                  stream="s")
            wait_until(lambda: len(events.submitted_frames) == 2, 60,
                       "frame 1's batch while frame 0 still computes")
            assert events.outcomes == []
        finally:
            open(release, "w").close()
        wait_until(lambda: committed_offsets(kafka, name, [topic]).get((topic, 0), -1)
                   >= ends[0], 60, "both committed")
    assert events.submitted_frames == [1, 1]


def test_opencv_splits_frames_only_over_cores_no_worker_thread_uses(client, tmp_path):
    # Dask runs one frame per worker thread; OpenCV's pool splitting each frame again over
    # every core oversubscribed them (heavy work: 2.3-4.2 ms more CPU a frame, measured).
    # Worker processes get cores // workers threads; the in-process cluster sets the daemon's
    # own pool likewise, unless the user's environment sets OPENCV_FOR_THREADS_NUM. The
    # session's local_cluster has already put the variable into this process's environment
    # (Dask's nanny does), which must not count as the user's.
    import subprocess
    import sys

    import cv2

    from streamimg.cluster import in_process_cluster, opencv_threads

    cores = len(os.sched_getaffinity(0))
    assert opencv_threads(2) == max(1, cores // 2) and opencv_threads(1) == cores
    assert opencv_threads(cores + 5) == 1
    assert set(client.run(cv2.getNumThreads).values()) == {opencv_threads(2)}
    assert "OPENCV_FOR_THREADS_NUM" in os.environ  # the nanny's copy, not the user's
    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(cores + 1)
        with in_process_cluster(threads=cores):
            assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(before)
    # A user's setting stands, in the daemon's pool and in the worker processes.
    user = str(cores + 1)
    script = tmp_path / "user.py"
    script.write_text(
        "import cv2\n"
        "from distributed import Client\n"
        "from streamimg.cluster import in_process_cluster, local_cluster\n"
        "if __name__ == '__main__':\n"
        "    with in_process_cluster(threads=2):\n"
        "        print(cv2.getNumThreads())\n"
        "    with local_cluster(n_workers=2) as c, Client(c) as client:\n"
        "        print(sorted(set(client.run(cv2.getNumThreads).values())))\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "OPENCV_FOR_THREADS_NUM": user},
                         cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [user, f"[{user}]"], out.stdout


def test_an_in_process_cluster_wakes_its_event_loop_less_unless_configured():
    # The loop's self-timing (admin.tick) every 200 ms instead of 20, profiling every
    # 100 ms instead of 10: both take the GIL from the worker threads. A user's own Dask
    # configuration of either key wins.
    import dask

    from streamimg.cluster import in_process_cluster

    with in_process_cluster(threads=1) as cluster:
        (worker,) = cluster.workers.values()
        assert cluster.scheduler._tick_interval == worker._tick_interval == 0.2
        assert dask.config.get("distributed.admin.tick.interval") == "20ms"  # not leaked
    with dask.config.set({"distributed.admin.tick.interval": "50ms"}), \
            in_process_cluster(threads=1) as cluster:
        (worker,) = cluster.workers.values()
        assert cluster.scheduler._tick_interval == worker._tick_interval == 0.05
