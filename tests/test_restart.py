"""Exactly-once across restarts: kill -9 and SIGTERM mid-stream, same instance id.

The embedded broker leaves the records of aborted transactions visible to
read_committed readers, so committed outputs are told from aborted ones by
lineage: per input partition, run k resumed at the lowest source offset among
its outputs, and its valid outputs are those between that offset and the next
run's resume offset. Exactly one valid output per input offset, none missing.
On Apache Kafka the aborted records are invisible and the same rule holds.
"""

from __future__ import annotations

import signal
from collections import defaultdict

import pytest

from streamimg.admin import committed_offsets, ensure_topics, read_topic
from streamimg.sinks.records import read_lineage
from streamimg.sources.video import SourceFrame, produce_frames, read_video
from tests.helpers import clip, start_daemon, stop_process, wait_until, write_topology

FRAMES_PER_PARTITION = 60


def valid_outputs(messages, partitions):
    """Apply the lineage rule; return ({partition: {offset: count}}, runs in order)."""
    runs: list[str] = []
    by_run: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for m in messages:  # one output partition: the order in which runs wrote
        lin = read_lineage(m.headers())
        if lin["run"] not in runs:
            runs.append(lin["run"])
        by_run[lin["run"]][lin["partition"]].append(lin["offset"])
    counts = {p: defaultdict(int) for p in partitions}
    for p in partitions:
        present = [r for r in runs if by_run[r][p]]
        resumes = [min(by_run[r][p]) for r in present]
        assert resumes == sorted(resumes), f"resume offsets went backwards: {resumes}"
        for k, run in enumerate(present):
            upper = resumes[k + 1] if k + 1 < len(present) else float("inf")
            for offset in by_run[run][p]:
                if resumes[k] <= offset < upper:
                    counts[p][offset] += 1
    return counts, runs


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

    for out in (f"{name}.analytics", f"{name}.frames"):
        counts, runs = valid_outputs(read_topic(kafka, out), list(ends))
        assert len(runs) == 3, f"{out}: expected outputs from 3 runs, saw {len(runs)}"
        for p, end in ends.items():
            missing = [o for o in range(end) if counts[p][o] == 0]
            doubled = {o: n for o, n in counts[p].items() if n != 1}
            assert not missing, f"{out}[{p}]: no valid output for offsets {missing}"
            assert not doubled, f"{out}[{p}]: offsets with several valid outputs {doubled}"
    assert read_topic(kafka, f"{name}.dlq") == []


def test_the_lineage_rule_catches_duplicates_and_gaps():
    # The checker above must be able to fail: feed it a duplicate and a gap.
    class M:
        def __init__(self, run, offset):
            self._h = [("streamimg.source.topic", b"t"), ("streamimg.source.partition", b"0"),
                       ("streamimg.source.offset", str(offset).encode()),
                       ("streamimg.run", run.encode())]

        def headers(self):
            return self._h

    # run a: 0..4 committed, 5..6 aborted (visible); run b resumes at 5.
    good = [M("a", o) for o in range(7)] + [M("b", o) for o in range(5, 10)]
    counts, runs = valid_outputs(good, [0])
    assert runs == ["a", "b"] and all(counts[0][o] == 1 for o in range(10))
    dup = good + [M("b", 7)]
    assert valid_outputs(dup, [0])[0][0][7] == 2
    gap = [M("a", o) for o in range(5)] + [M("b", o) for o in range(6, 10)]
    assert valid_outputs(gap, [0])[0][0][5] == 0
